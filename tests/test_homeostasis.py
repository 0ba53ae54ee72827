"""Jacobian homeostasis: the probe estimate, its gradient, its effect, the training step."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

import eqprop
from eqprop.diagnostics import diagnostics, weight_angles
from eqprop.estimate import free_phase, make_estimator
from eqprop.homeostasis import (Homeostasis, exact_loss, explicit_jacobian, homeostasis_grad,
                                jacobian_probes, neuron_count, probe_figures, probe_loss,
                                probe_symmetry, probe_vectors)
from eqprop.update import init_optimizer, make_train_step
from helpers import cos, flat_params, solvers

F64 = jnp.float64
DYN = solvers(free_steps=80, nudged_steps=30, linear_steps=500, linear_tol=1e-12)


def net(feedback="untied", angle=90.0, sizes=(8, 10, 7, 4)):
    return eqprop.layered(list(sizes), key=jax.random.PRNGKey(0), feedback=feedback,
                          asymmetry_angle=angle, dtype=F64)


def batch(n_in=8, b=3):
    return jax.random.uniform(jax.random.PRNGKey(1), (b, n_in), F64), jnp.arange(b) % 4


@pytest.fixture(scope="module")
def untied():
    m = net()
    x, y = batch()
    free = free_phase(m, x, DYN)
    return m, x, y, free


def test_explicit_jacobian_is_w_total_minus_identity(untied):
    m, x, _, free = untied
    j = explicit_jacobian(m, x, m.activity(free.u))
    n = neuron_count(m.activity(free.u))
    assert j.shape == (n, n) and n >= 17
    # populations in sorted order h1 (10), h2 (7), ...: the block h1 -> h2 is W^T
    w = m.weights["h1->h2"]
    assert jnp.allclose(j[10:17, 0:10], w.T)
    assert jnp.allclose(jnp.diag(j), -1.0)


def test_probe_loss_is_unbiased(untied):
    m, x, _, free = untied
    a = m.activity(free.u)
    exact = exact_loss(m, x, a, examples=3)
    j = explicit_jacobian(m, x, a)
    assert jnp.allclose(exact, 0.5 * jnp.sum((j - j.T) ** 2) / j.shape[0])
    est = probe_loss(m, a, free.drive, jax.random.PRNGKey(3), probes=2000)
    assert float(exact) > 0.05
    assert abs(float(est) / float(exact) - 1) < 0.03


def test_probe_loss_vanishes_when_tied():
    m = net("tied", 0.0)
    x, _ = batch()
    free = free_phase(m, x, DYN)
    a = m.activity(free.u)
    assert float(exact_loss(m, x, a)) == 0.0
    assert abs(float(probe_loss(m, a, free.drive, jax.random.PRNGKey(3), probes=50))) < 1e-12


def test_jacobian_probes_are_j_and_j_transpose_of_the_same_probes(untied):
    """``jacobian_probes`` applies ``J`` (a JVP) and ``J^T`` (a VJP) to the same probes:
    per example and probe they equal the explicit Jacobian's products."""
    from jax.flatten_util import ravel_pytree

    m, x, _, free = untied
    a = m.activity(free.u)
    eps = probe_vectors(jax.random.PRNGKey(4), a, 3)
    assert all(l.shape == (3,) + t.shape for l, t in zip(jax.tree.leaves(eps), jax.tree.leaves(a)))
    je, jte = jacobian_probes(m, a, free.drive, eps)
    for i in range(x.shape[0]):
        j = explicit_jacobian(m, x, a, i)
        for p in range(3):
            pick = lambda t: t[p, i:i + 1]  # noqa: E731  (probe p of example i)
            e = ravel_pytree(jax.tree.map(pick, eps))[0]
            assert jnp.allclose(ravel_pytree(jax.tree.map(pick, je))[0], j @ e, atol=1e-12)
            assert jnp.allclose(ravel_pytree(jax.tree.map(pick, jte))[0], j.T @ e, atol=1e-12)


def test_probe_symmetry_estimates_the_exact_symmetry():
    """On one example, the probe estimate of ``||J_sym|| / (||J_sym|| + ||J_anti||)``
    tends to the explicit Jacobian's figure; it is 1 when the weights are tied."""
    for feedback, angle in (("untied", 90.0), ("untied", 30.0)):
        m = net(feedback, angle)
        x, _ = batch(b=1)
        free = free_phase(m, x, DYN)
        a = m.activity(free.u)
        j = explicit_jacobian(m, x, a)
        ns, na = jnp.linalg.norm(j + j.T), jnp.linalg.norm(j - j.T)
        exact = float(ns / (ns + na))
        est = float(probe_symmetry(m, a, free.drive, jax.random.PRNGKey(6), 4000))
        assert abs(est - exact) < 0.01, (feedback, angle, est, exact)
    m = net("tied", 0.0)
    x, _ = batch()
    free = free_phase(m, x, DYN)
    a = m.activity(free.u)
    assert float(probe_symmetry(m, a, free.drive, jax.random.PRNGKey(6), 5)) > 1 - 1e-12
    # the diagnostics' pair: the symmetry with the key, the loss with a key folded from it
    key = jax.random.PRNGKey(7)
    s, l = probe_figures(m, a, free.drive, key, 5)
    assert s == probe_symmetry(m, a, free.drive, key, 5)
    assert l == probe_loss(m, a, free.drive, jax.random.fold_in(key, 1), 5)


def test_homeostasis_gradient_matches_exact_gradient(untied):
    m, x, _, free = untied
    a = jax.lax.stop_gradient(m.activity(free.u))
    params, static = eqx.partition(m, eqx.is_inexact_array)
    g_exact = jax.grad(lambda p: exact_loss(eqx.combine(p, static), x, a, examples=3))(params)
    _, g_probe = jax.jit(lambda k: homeostasis_grad(m, x, free.u, k, 2000))(jax.random.PRNGKey(5))
    assert cos(flat_params(g_probe), flat_params(g_exact)) > 0.95
    # the readout and the input projection do not enter the Jacobian
    assert float(jnp.max(jnp.abs(g_probe.weights["input->h1"]))) == 0.0


def test_homeostasis_alone_restores_symmetry():
    m = net()
    x, y = batch()
    est = make_estimator("exact-nudge", DYN)
    before = diagnostics(m, x, y, est, DYN)
    opt = optax.adam(0.02)
    state = opt.init(eqx.filter(m, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(m, state, key):
        free = free_phase(m, x, DYN)
        _, g = homeostasis_grad(m, x, free.u, key, 5)
        upd, state = opt.update(g, state, eqx.filter(m, eqx.is_inexact_array))
        return eqx.apply_updates(m, upd), state

    for i in range(40):
        m, state = step(m, state, jax.random.PRNGKey(i))
    after = diagnostics(m, x, y, est, DYN)
    assert after["jacobian_symmetry"] > before["jacobian_symmetry"] + 0.05
    assert after["angle"] < before["angle"] - 10
    assert after["homeo_loss"] < 0.5 * before["homeo_loss"]


def test_train_step_with_homeostasis_reports_loss_and_every():
    m = net(sizes=(8, 10, 7, 4))
    x, y = batch()
    est = make_estimator("hep", solvers(free_steps=20, nudged_steps=5), beta=0.5, points=2)
    opt = optax.sgd(0.0)  # lr 0: compare gradients through the updates of a second optimizer
    plain = make_train_step(est, optax.sgd(1.0))
    homeo = make_train_step(est, optax.sgd(1.0), Homeostasis(coef=1.0, probes=3, every=2))
    state = init_optimizer(opt, m)
    key = jax.random.PRNGKey(0)
    m0, _, met0 = plain(m, state, x, y, key)
    m1, _, met1 = homeo(m, state, x, y, key, jnp.asarray(0))
    m2, _, met2 = homeo(m, state, x, y, key, jnp.asarray(1))
    assert "homeo_loss" not in met0
    assert bool(met1["homeo_applied"]) and float(met1["homeo_loss"]) > 0
    assert not bool(met2["homeo_applied"]) and float(met2["homeo_loss"]) == 0
    w0, w1, w2 = (mm.weights["h1->h2"] for mm in (m0, m1, m2))
    assert not jnp.allclose(w0, w1)  # homeostasis changed the update on batch 0
    assert jnp.allclose(w0, w2)  # and skipped batch 1 (every = 2)
    assert make_train_step(est, opt, Homeostasis(coef=0.0)) is not None


def test_angles_of_pairs():
    tied = weight_angles(net("tied", 0.0))
    assert "angle/h1-h2" in tied and set(tied.values()) == {0.0}
    a = weight_angles(net("untied", 0.0))
    assert set(a) == set(tied) and a["angle"] < 1e-4
    assert 60 < weight_angles(net("untied", 90.0))["angle"] < 120
    ff = eqprop.graph({"h": 5, "out": 3}, [["input", "h"], ["h", "out"]], input_size=4,
                      n_classes=3, key=jax.random.PRNGKey(0), feedback="untied")
    assert weight_angles(ff) == {}
