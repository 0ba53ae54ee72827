"""Neuron-level directed networks (Farinha et al. 2020, arXiv 2006.08798): the masks, the
DEEP dynamics and rule against NumPy transcriptions of the authors' notebooks, the rate
dynamics against exact gradients, XOR trained by the DEEP rule, and the one-line errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eqprop.build import build_model, phase_solvers
from eqprop.config import ConfigError, parse_config
from eqprop.estimate import free_phase, make_estimator
from eqprop.network import DeepNetwork, RateNetwork, TiedRateNetwork, directed, layered
from eqprop.network.directed import connectivity_mask
from eqprop.settings import SettingError
from eqprop.solvers import FixedPoint, PhaseSolvers
from eqprop.train.program import build_program

F64 = jnp.float64
XOR_X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = jnp.array([0, 1, 1, 0])
EXACT = phase_solvers(free_steps=600, nudged_steps=600, tol=1e-13, linear_steps=4000,
                      linear_tol=1e-13, linear_solver="fixed-point")


def cosine(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- masks -------------------------------------------------------------------------------


def test_complete_mask_is_every_pair_but_self_loops_and_into_clamped():
    m = connectivity_mask(3, 4, 2, "complete")
    n, c = 10, 4
    assert m.shape == (n, n)
    assert not m[:, :c].any() and not np.diag(m).any()
    assert m.sum() == n * (n - c) - (n - c)  # every pair into a free neuron but its self-loop


def test_layered_mask_is_the_layered_mlp():
    m = connectivity_mask(3, 5, 2, "layered", layers=(2, 3))
    # inputs 0-2, bias 3, h1 4-5, h2 6-8, out 9-10
    want = np.zeros((11, 11), bool)
    want[0:3, 4:6] = True
    want[3, 4:] = True
    want[4:6, 6:9] = want[6:9, 4:6] = True
    want[6:9, 9:11] = want[9:11, 6:9] = True
    np.testing.assert_array_equal(m, want)
    with pytest.raises(ValueError, match="sum to hidden"):
        connectivity_mask(3, 5, 2, "layered", layers=(2, 2))


def test_random_mask_is_a_subset_at_its_density():
    full = connectivity_mask(8, 40, 4, "complete")
    m = connectivity_mask(8, 40, 4, "random", density=0.3, key=jax.random.PRNGKey(0))
    assert not (m & ~full).any()
    assert abs(m.sum() / full.sum() - 0.3) < 0.03


def test_masked_weights_stay_exactly_zero_through_training():
    model = directed(3, 6, 2, key=jax.random.PRNGKey(0), connectivity="random", density=0.4,
                     dtype=F64)
    off = ~np.asarray(model.mask)
    assert off.any() and np.all(np.asarray(model.W)[off] == 0)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 3), F64)
    y = jnp.array([0, 1, 1, 0])
    solvers = PhaseSolvers(free=FixedPoint(steps=60), nudged=FixedPoint(steps=30))
    opt = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.5, momentum=0.9))
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(est, model, state):
        g, _ = est(model, x, y, free_phase(model, x, solvers.free), jax.random.PRNGKey(2))
        up, state = opt.update(g, state, eqx.filter(model, eqx.is_inexact_array))
        return g, eqx.apply_updates(model, up), state

    for est in (make_estimator("hep", solvers, beta=0.5, points=2),
                make_estimator("deep-rule", solvers, beta=1.0, l1=1e-3)):
        for _ in range(3):
            g, model, state = step(est, model, state)
            assert np.all(np.asarray(g.W)[off] == 0), est.name
    assert np.all(np.asarray(model.W)[off] == 0)
    assert np.any(np.asarray(model.W)[~off] != 0)


def test_tied_rate_network_is_symmetric_and_keeps_one_weight_per_pair():
    model = directed(3, 4, 2, key=jax.random.PRNGKey(0), feedback="tied", dtype=F64)
    assert isinstance(model, TiedRateNetwork) and model.symmetric
    c = model.n_clamped
    free = np.asarray(model.mask)[c:, c:]
    assert not (free & free.T).any()  # one entry per pair (upper triangle)
    k = np.asarray(model.coupling())
    np.testing.assert_array_equal(k, k.T)
    # dPhi/da = h(a): the energy's gradient is the interaction
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 3), F64)
    a = model.unflat(jax.random.uniform(jax.random.PRNGKey(2), (2, model.n_free), F64))
    grad = jax.grad(lambda a: jnp.sum(model.primitive(a, x)))(a)
    h = model.interaction(a, model.prepare(x))
    for p in h:
        np.testing.assert_allclose(grad[p], h[p], rtol=1e-12, atol=1e-12)


# -- the DEEP dynamics and rule against the authors' equations ----------------------------


def _notebook_weights(model: DeepNetwork) -> np.ndarray:
    return np.asarray(model.weights())


def _numpy_deep_phase(w, s, y_target, beta, dt, steps):
    """The authors' notebook loop: dS = S W - S * sum(W, 1); outputs += beta (Y - S_out);
    S_free += dt dS; clip to [0, 1]. Returns the trajectory (steps + 1, B, n)."""
    traj = [s.copy()]
    for _ in range(steps):
        ds = s @ w - s * w.sum(axis=1)
        if beta:
            ds[:, -y_target.shape[1]:] += beta * (y_target - s[:, -y_target.shape[1]:])
        s = s.copy()
        s[:, FREE0:] += dt * ds[:, FREE0:]
        s[:, FREE0:] = np.clip(s[:, FREE0:], 0.0, 1.0)
        traj.append(s.copy())
    return np.stack(traj)


FREE0 = 3  # 2 inputs and the bias


def _xor_deep(key=0, scale=4.0):
    return directed(2, 5, 2, key=jax.random.PRNGKey(key), dynamics="deep", dtype=F64,
                    init_scale=scale)


def test_deep_dynamics_match_the_papers_equations_step_by_step():
    model = _xor_deep()
    assert isinstance(model, DeepNetwork) and not model.holomorphic
    w = _notebook_weights(model)
    s0 = np.concatenate([np.asarray(XOR_X), np.ones((4, 1)), np.zeros((4, 7))], axis=1)
    traj = _numpy_deep_phase(w, s0, np.zeros((4, 2)), 0.0, 0.05, 300)
    clipped = 0
    for steps in (7, 300):
        free = free_phase(model, XOR_X, FixedPoint(steps=steps, dt=0.05))
        got = np.asarray(model.flat(free.u))
        np.testing.assert_allclose(got, traj[steps][:, FREE0:], rtol=0, atol=1e-12)
        clipped += int(np.sum((got == 0) | (got == 1)))
    assert clipped > 0  # the clip was exercised


def test_deep_fixed_points_are_those_of_the_clipped_step():
    model = _xor_deep()
    free = free_phase(model, XOR_X, FixedPoint(steps=3000, dt=0.05))
    s = np.asarray(model.flat(free.u))
    f = np.asarray(model.flat(model.field(free.u, free.drive)))
    on_bound = (s == 0) | (s == 1)
    assert on_bound.any()
    assert np.max(np.abs(f[on_bound])) > 1e-3  # the paper's field is not zero there ...
    assert np.max(np.abs(np.clip(s + 0.05 * f, 0, 1) - s)) < 1e-10  # ... the clipped step is still


def test_every_solver_reports_the_projected_residual_of_a_clipped_model():
    """At the clipped fixed point ||F|| stays large on the saturated neurons, but the
    residual every solver reports is that of the projected step, (P(u + dt F) - u) / dt:
    zero there, so a tolerance stops the relaxation (it never did with ||F||)."""
    from eqprop.solvers import Anderson

    model = _xor_deep()
    long = free_phase(model, XOR_X, FixedPoint(steps=30000, dt=0.05))
    f = np.asarray(model.flat(model.field(long.u, long.drive)))
    assert np.max(np.abs(f)) > 1e-3 and float(jnp.max(long.stats.residual)) < 1e-12
    for solver in (FixedPoint(steps=30000, dt=0.05, tol=1e-6),
                   Anderson(steps=3000, dt=0.05, tol=1e-6)):
        short = free_phase(model, XOR_X, solver)
        r = np.asarray(short.stats.residual)
        if isinstance(solver, FixedPoint):
            assert int(short.stats.steps) < 30000  # the tolerance stopped it
            assert np.max(r) <= 1e-6
        # Anderson stalls on the clipped map (docs/directed.md): it must say so, truthfully
        s = np.asarray(model.flat(short.u))
        g = np.asarray(model.flat(model.field(short.u, short.drive)))
        natural = np.linalg.norm((np.clip(s + 0.05 * g, 0, 1) - s) / 0.05, axis=1)
        np.testing.assert_allclose(r, natural, rtol=1e-6, atol=1e-12)  # the residual it names


def test_every_estimator_refuses_a_step_that_oscillates():
    """The step check is the solvers' (FixedPointSolver.check -> model.check_step), so any
    estimator refuses it, not only the DEEP rule."""
    model = directed(2, 3, 2, key=jax.random.PRNGKey(0), dynamics="rate", init_scale=100.0, dtype=F64)
    lam = np.linalg.eigvals(model.jacobian())
    safe = float(np.min(-2 * lam[lam.real < -1e-9].real / np.abs(lam[lam.real < -1e-9]) ** 2))
    bad = phase_solvers(free_steps=10, nudged_steps=10, dt=1.1 * safe)
    with pytest.raises(ValueError, match=r"^dynamics\.dt: the Euler step oscillates"):
        bad.free.check(model)  # the free phase of every estimator (the trainer checks it first)
    for name in ("ep", "hep", "online-hep"):  # and the nudged phases
        with pytest.raises(ValueError, match=r"^dynamics\.dt: the Euler step oscillates"):
            make_estimator(name, bad).check(model)
    make_estimator("hep", phase_solvers(free_steps=10, nudged_steps=10, dt=0.9 * safe)).check(model)
    raw = _config(dynamics="rate", init_scale=100.0)
    raw["estimator"] = {"name": "implicit"}
    raw["dynamics"]["dt"] = 1.1 * safe
    with pytest.raises(ConfigError, match=r"^dynamics\.dt: the Euler step oscillates"):
        build_program(parse_config(raw))


def test_gradcheck_says_when_units_sit_on_the_clip_bounds():
    from eqprop.gradcheck import clipped_fraction, format_table, gradcheck

    model = _xor_deep()
    solvers = phase_solvers(free_steps=3000, nudged_steps=200, dt=0.05)
    res = gradcheck(model, XOR_X, XOR_Y, {"deep-rule": make_estimator("deep-rule", solvers)}, solvers)
    frac = res["relaxation"]["clipped_fraction"]
    free = free_phase(model, XOR_X, solvers.free)
    s = np.asarray(model.flat(free.u))
    assert frac == pytest.approx(np.mean((s == 0) | (s == 1))) and frac > 0
    assert res["reference"] is None
    assert res["deep-rule"]["total"] == {"cosine": None, "relative_error": None}  # no comparison
    assert all(v["cosine"] is None for v in res["deep-rule"]["parameters"].values())
    table = format_table(res)
    assert "sit on the bounds of the model's box" in table and "cosine" not in table.split("\n", 3)[3]
    rate = directed(2, 3, 2, key=jax.random.PRNGKey(0), dynamics="rate", dtype=F64)
    assert clipped_fraction(rate, free_phase(rate, XOR_X, EXACT.free).u) is None
    res = gradcheck(rate, XOR_X, XOR_Y, {"exact-nudge": make_estimator("exact-nudge", EXACT)}, EXACT)
    assert res["reference"] == "implicit" and res["exact-nudge"]["total"]["cosine"] > 0.5


def test_deep_linear_part_conserves_the_free_activity():
    """EP_REFERENCE section 7: every column of J = W^T - diag(sum_k W_jk) sums to zero."""
    model = _xor_deep(scale=1.0)
    j = model.jacobian()
    np.testing.assert_allclose(j.sum(axis=0), 0.0, atol=1e-14)
    assert np.min(np.abs(np.linalg.eigvals(j))) < 1e-12


@pytest.mark.parametrize("dynamics, feedback", [("deep", "untied"), ("rate", "untied"),
                                               ("rate", "tied")])
def test_jacobian_is_the_fields_derivative_at_the_initial_state(dynamics, feedback):
    """``jacobian`` (behind the dt check) is dF/du at the initial state, for any input."""
    model = directed(3, 4, 2, key=jax.random.PRNGKey(1), dynamics=dynamics, feedback=feedback,
                     dtype=F64)
    drive = model.prepare(jax.random.uniform(jax.random.PRNGKey(2), (1, 3), F64))
    u0 = model.flat(model.init_state(drive))[0]
    want = jax.jacfwd(lambda s: model.flat(model.field(model.unflat(s[None]), drive))[0])(u0)
    np.testing.assert_allclose(model.jacobian(), np.asarray(want), atol=1e-14)


def test_deep_rule_matches_the_papers_rule():
    model = _xor_deep()
    w = _notebook_weights(model)
    solvers = PhaseSolvers(free=FixedPoint(steps=200, dt=0.05), nudged=FixedPoint(steps=150, dt=0.05))
    free = free_phase(model, XOR_X, solvers.free)
    s0 = np.concatenate([np.asarray(XOR_X), np.ones((4, 1)), np.asarray(model.flat(free.u))], axis=1)
    y1h = np.eye(2)[np.asarray(XOR_Y)]
    traj = _numpy_deep_phase(w, s0, y1h, 10.0, 0.05, 150)
    dw = np.zeros_like(w)
    for t in range(1, 151):
        for b in range(4):
            dw += np.outer(traj[t, b], traj[t, b] - traj[t - 1, b])
    dw /= 4 * 150
    mask = np.asarray(model.mask)
    g, info = make_estimator("deep-rule", solvers, beta=10.0, l1=0.0)(model, XOR_X, XOR_Y, free, None)
    np.testing.assert_allclose(np.asarray(g.W), -dw * mask, rtol=1e-10, atol=1e-13)
    assert np.abs(dw * mask).max() > 1e-3
    g1, _ = make_estimator("deep-rule", solvers, beta=10.0, l1=0.1)(model, XOR_X, XOR_Y, free, None)
    np.testing.assert_allclose(np.asarray(g1.W - g.W), 0.1 * np.sign(w) * mask, atol=1e-12)
    # the error vector is the one-sided estimate of da*/dbeta in eqprop's sign
    np.testing.assert_allclose(np.asarray(model.flat(info.error_vector)),
                               (traj[-1, :, FREE0:] - s0[:, FREE0:]) / -10.0, atol=1e-12)


def test_binary_readout_is_the_notebooks_single_output_neuron():
    """readout = "binary" (the binary XOR notebook): one output neuron, target y in {0, 1},
    nudge beta (y - s_out), prediction s_out > 0.5; the DEEP rule on it equals the
    notebook's rule with a one-column target, and the config sizes the output from it."""
    model = directed(2, 5, 1, key=jax.random.PRNGKey(0), dynamics="deep", dtype=F64,
                     init_scale=4.0, n_classes=2, readout="binary")
    a = jnp.array([[0.7], [0.3], [0.51], [0.0]], F64)
    y = jnp.array([1, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(model.readout.logits(a).argmax(-1)), [1, 0, 1, 0])
    np.testing.assert_allclose(np.asarray(model.readout.loss(a, y)), 0.5 * (np.asarray(a[:, 0]) - [1, 1, 0, 0]) ** 2)
    np.testing.assert_allclose(np.asarray(model.readout.loss_grad(a, y)), np.asarray(a) - np.array([[1], [1], [0], [0]]))
    w = _notebook_weights(model)
    solvers = PhaseSolvers(free=FixedPoint(steps=200, dt=0.05), nudged=FixedPoint(steps=150, dt=0.05))
    free = free_phase(model, XOR_X, solvers.free)
    s0 = np.concatenate([np.asarray(XOR_X), np.ones((4, 1)), np.asarray(model.flat(free.u))], axis=1)
    traj = _numpy_deep_phase(w, s0, np.asarray(XOR_Y, float)[:, None], 10.0, 0.05, 150)
    dw = sum(np.outer(traj[t, b], traj[t, b] - traj[t - 1, b]) for t in range(1, 151) for b in range(4))
    g, _ = make_estimator("deep-rule", solvers, beta=10.0, l1=0.0)(model, XOR_X, XOR_Y, free, None)
    np.testing.assert_allclose(np.asarray(g.W), -dw / (4 * 150) * np.asarray(model.mask), rtol=1e-10, atol=1e-13)
    assert np.abs(np.asarray(g.W)[:, -1]).max() > 1e-3  # the output column learns
    cfg = parse_config({"data": {"name": "xor", "batch_size": 4},
                        "model": {"kind": "directed", "hidden": 5, "dynamics": "deep", "readout": "binary"}})
    built = build_model(cfg, input_size=2, n_classes=2, key=jax.random.PRNGKey(0))
    assert built.sizes == (2, 5, 1)
    with pytest.raises(ConfigError, match=r"^model.readout: readout 'binary' reads two classes, the data has 10$"):
        build_model(cfg, input_size=2, n_classes=10, key=jax.random.PRNGKey(0))
    layered_cfg = parse_config({"model": {"sizes": [2, 5, 2], "readout": "binary"}})
    with pytest.raises(ConfigError, match=r"^model.sizes: the last size must be 1, the output units "
                       r"of readout 'binary' for 2 classes, got 2$"):
        build_model(layered_cfg, input_size=2, n_classes=2, key=jax.random.PRNGKey(0))
    one = parse_config({"model": {"sizes": [2, 5, 1], "readout": "binary"}})
    assert build_model(one, input_size=2, n_classes=2, key=jax.random.PRNGKey(0)).readout.n_classes == 2


def test_xor_is_learned_by_the_deep_rule_and_not_against_it():
    """The paper's XOR (complete net, 5 hidden, dt 0.05, T1 = T2 = 1000, beta 10, lr 100),
    10 seeds, both signs in one vmapped program: the rule solves XOR on several seeds, its
    negation on none (at this budget the paper's rule solves 3-5 of 10 seeds)."""
    solvers = PhaseSolvers(free=FixedPoint(steps=1000, dt=0.05),
                           nudged=FixedPoint(steps=1000, dt=0.05))
    est = make_estimator("deep-rule", solvers, beta=10.0)

    def run(key, sign):
        m = directed(2, 5, 2, key=key, dynamics="deep", dtype=F64)

        def epoch(m, _):
            free = free_phase(m, XOR_X, solvers.free)
            g, _ = est(m, XOR_X, XOR_Y, free, key)
            return eqx.tree_at(lambda t: t.W, m, m.W - 100.0 * sign * g.W), None

        m, _ = jax.lax.scan(epoch, m, None, length=150)
        free = free_phase(m, XOR_X, solvers.free)
        return jnp.mean(m.predict(m.activity(free.u)) != XOR_Y)

    keys = jax.random.split(jax.random.PRNGKey(0), 10)
    signs = jnp.array([1.0, -1.0], F64)
    err = jax.jit(jax.vmap(jax.vmap(run, (0, None)), (None, 0)))(keys, signs)
    err = np.asarray(err)
    assert np.sum(err[0] == 0) >= 3, err[0]
    assert np.sum(err[1] == 0) == 0, err[1]


# -- rate dynamics: exact references and hEP ----------------------------------------------


def _rate(key=0, **kw):
    return directed(3, 5, 2, key=jax.random.PRNGKey(key), dtype=F64, init_scale=1.5, **kw)


def _batch():
    x = jax.random.uniform(jax.random.PRNGKey(7), (3, 3), F64)
    return x, jnp.array([0, 1, 1])


@eqx.filter_jit
def _estimate(est, model, x, y):
    free = free_phase(model, x, EXACT.free)
    return est(model, x, y, free, jax.random.PRNGKey(0))[0].W


def _grad(name, model, x, y, **settings):
    return np.asarray(_estimate(make_estimator(name, EXACT, **settings), model, x, y))


def test_rate_implicit_gradient_matches_finite_differences():
    model, (x, y) = _rate(), _batch()
    assert isinstance(model, RateNetwork)
    g = _grad("implicit", model, x, y)

    @jax.jit
    def loss(w):
        m = eqx.tree_at(lambda t: t.W, model, w)
        free = free_phase(m, x, FixedPoint(steps=800, tol=1e-14))
        return jnp.mean(m.loss(m.activity(free.u), y))

    mask = np.asarray(model.mask)
    picks = np.argwhere(mask)[:: max(1, int(mask.sum()) // 12)]
    eps = 1e-6
    for i, j in picks:
        e = jnp.zeros_like(model.W).at[i, j].set(eps)
        fd = float(loss(model.W + e) - loss(model.W - e)) / (2 * eps)
        assert abs(fd - g[i, j]) <= 1e-6 + 1e-5 * abs(fd), (i, j, fd, g[i, j])
    assert np.all(g[~mask] == 0)


def test_rate_hep_is_exact_when_w_is_symmetric_and_biased_like_exact_nudge_when_not():
    model, (x, y) = _rate(), _batch()
    c = model.n_clamped
    w = np.asarray(model.W)
    sym = w.copy()
    sym[c:, c:] = (w[c:, c:] + w[c:, c:].T) / 2
    symmetric = eqx.tree_at(lambda t: t.W, model, jnp.asarray(sym))
    hep = _grad("hep", symmetric, x, y, beta=0.1, points=6)
    implicit = _grad("implicit", symmetric, x, y)
    assert cosine(hep, implicit) > 0.9999
    np.testing.assert_allclose(hep, implicit, atol=1e-4 * np.abs(implicit).max())

    hep = _grad("hep", model, x, y, beta=0.1, points=6)
    nudge = _grad("exact-nudge", model, x, y)
    implicit = _grad("implicit", model, x, y)
    assert cosine(hep, nudge) > 0.9999
    assert cosine(nudge, implicit) < 0.995  # the asymmetry bias is visible


def test_rate_complex_states_use_real_weights():
    """hEP's complex states: the field of a complex state is the holomorphic extension
    (real and imaginary parts through the real W, no complex W)."""
    model, (x, _) = _rate(), _batch()
    drive = model.prepare(x)
    u = model.unflat(jax.random.normal(jax.random.PRNGKey(3), (3, model.n_free), F64)
                     + 0.1j * jax.random.normal(jax.random.PRNGKey(4), (3, model.n_free), F64))
    f = model.flat(model.field(u, drive))
    a = model.flat(model.activity(u))
    k = np.asarray(model.coupling()).astype(complex)
    want = np.asarray(drive.inputs) + np.asarray(a) @ k - np.asarray(model.flat(u))
    np.testing.assert_allclose(np.asarray(f), want, atol=1e-12)
    assert jnp.iscomplexobj(f) and not jnp.iscomplexobj(model.W)


# -- one-line errors ----------------------------------------------------------------------


def _config(**model):
    raw = {"data": {"name": "xor", "batch_size": 4},
           "model": {"kind": "directed", "hidden": 3, "dtype": "float64", **model},
           "dynamics": {"free_steps": 5, "nudged_steps": 5},
           "estimator": {"name": "hep", "points": 2}, "train": {"epochs": 1}}
    return raw


def test_unknown_connectivity_is_one_line():
    with pytest.raises(ConfigError, match=r"^model\.connectivity: .*'complete'") as e:
        parse_config(_config(connectivity="ring"))
    assert "\n" not in str(e.value)
    from eqprop.network import Directed
    with pytest.raises(SettingError, match="'complete', 'layered', 'random', got 'ring'") as e:
        Directed(connectivity="ring")
    assert e.value.key == "connectivity"


@pytest.mark.parametrize("model, message", [
    ({"density": 0.3}, r"^model\.density: applies to connectivity = 'random' only, got "
                       r"connectivity = 'complete'$"),
    ({"connectivity": "layered", "density": 0.9}, r"^model\.density: applies to connectivity = "
                                                   r"'random' only"),
    ({"dynamics": "deep", "activation": "tanh"}, r"^model\.activation: applies to dynamics = "
                                                  r"'rate' only"),
    ({"layers": [3]}, r"^model\.layers: only meaningful with connectivity = 'layered'$"),
])
def test_a_key_another_setting_makes_moot_is_refused(model, message):
    """A review trained the complete network with density = 0.3 without a word: a key that
    would do nothing is a one-line error, as layers and asymmetry_angle already were."""
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(**model))


def test_refusals_of_a_directed_config_advise_what_it_can_do():
    """A review was told to use a holomorphic activation (DEEP has none that helps) and
    read 'estimator.name: estimator.beta: ...' (the key twice)."""
    from eqprop.config import load_config

    with pytest.raises(ConfigError, match=r"^estimator\.name, model\.dynamics: estimator 'hep' "
                       r"needs complex nudges, but DeepNetwork is not holomorphic .* use dynamics "
                       r"without the clip to a box \(for a directed network, model\.dynamics = "
                       r"'rate'\) or real nudges"):
        build_program(load_config("xor-deep", ['estimator.name="hep"', "estimator.points=4"]))
    with pytest.raises(ConfigError, match=r"^estimator\.beta: beta \* dynamics\.dt = 2\.5 >= 2"):
        build_program(load_config("xor-deep", ["estimator.beta=50"]))
    # a rate directed network with a non-holomorphic activation: the activation is the key
    with pytest.raises(ConfigError, match=r"^estimator\.name, model\.activation: .*use a "
                       r"holomorphic activation"):
        build_program(parse_config(_config(activation="hard-sigmoid") | {
            "estimator": {"name": "hep", "points": 4}}))


def test_gradcheck_gives_every_estimator_a_line_when_no_cosine_is_shown(capsys):
    """On the DEEP net's clipped fixed point no cosine table is shown; a review's
    `-e bptt` then left no trace at all."""
    from eqprop.cli import main

    assert main(["gradcheck", "xor-deep", "-e", "deep-rule", "-e", "bptt",
                 "--set", "dynamics.free_steps=200"]) == 0
    out = capsys.readouterr().out
    assert "so no cosine is reported" in out
    assert "\nbptt: computed (gradient finite: True); no phases of its own to report" in out
    assert "\ndeep-rule: 1000 steps (max over phases)" in out  # its nudged phases: their own line
    assert "deep-rule: computed" not in out


def test_the_moot_keys_still_parse_where_they_act():
    parse_config(_config(connectivity="random", density=0.3))
    parse_config(_config(dynamics="rate", activation="tanh"))
    parse_config(_config(dynamics="deep", activation="sigmoid4"))  # its default, written out


def test_unreachable_output_is_one_line():
    config = parse_config(_config(connectivity="random", density=0.02))
    with pytest.raises(ConfigError, match=r"^model\.connectivity: .*unreachable from every input"):
        build_program(config)
    with pytest.raises(ValueError, match="unreachable"):
        directed(2, 3, 2, key=jax.random.PRNGKey(0), connectivity="random", density=0.02)


def test_oscillating_euler_step_is_refused_before_training():
    raw = _config(dynamics="deep", init_scale=100.0)
    raw["estimator"] = {"name": "deep-rule"}
    raw["dynamics"]["dt"] = 1.0
    with pytest.raises(ConfigError, match=r"^dynamics\.dt: the Euler step oscillates .* use dt < "):
        build_program(parse_config(raw))
    model = directed(2, 3, 2, key=jax.random.PRNGKey(0), dynamics="deep", init_scale=100.0)
    lam = np.linalg.eigvals(model.jacobian())
    safe = np.min(-2 * lam[lam.real < -1e-9].real / np.abs(lam[lam.real < -1e-9]) ** 2)
    model.check_step(0.9 * safe)  # below the limit it names: accepted
    with pytest.raises(ValueError, match="dynamics.dt"):
        model.check_step(1.1 * safe)


def test_deep_rule_refuses_a_nudge_that_makes_the_step_oscillate():
    """The nudge's own term -beta s_out: the nudged Euler step oscillates when dt beta >= 2."""
    model = _xor_deep()
    make_estimator("deep-rule", phase_solvers(nudged_steps=10, dt=0.05), beta=10.0).check(model)
    with pytest.raises(ValueError, match=r"^estimator\.beta: beta \* dynamics\.dt = 3 >= 2.*use beta < 6\.66667 at dt = 0\.3"):
        make_estimator("deep-rule", phase_solvers(nudged_steps=10, dt=0.3), beta=10.0).check(model)


def test_deep_rule_refuses_models_that_are_not_directed():
    est = make_estimator("deep-rule")
    with pytest.raises(ValueError, match="^estimator 'deep-rule' needs a directed network"):
        est.check(layered([4, 5, 2], key=jax.random.PRNGKey(0), readout="mse"))
    from eqprop.network import Directed
    with pytest.raises(SettingError, match="'tied' applies to dynamics = 'rate' only") as e:
        Directed(dynamics="deep", feedback="tied")
    assert e.value.key == "feedback"


@pytest.mark.parametrize("degrees", [0.0, 45.0, 90.0, 135.0])
def test_the_asymmetry_angle_of_a_directed_net_is_exact(degrees):
    """``asymmetry_angle``: the free block's angle with its transpose is the one asked for
    (to 1e-6 degrees in float64), its norm is the draw's, and the weights from the clamped
    neurons are the draw's."""
    from eqprop.diagnostics import weight_angles

    key = jax.random.PRNGKey(3)
    kw = dict(key=key, n_classes=4, readout="softmax", dtype=jnp.float64)
    drawn = directed(6, 9, 4, **kw)
    net = directed(6, 9, 4, asymmetry_angle=degrees, **kw)
    assert weight_angles(net)["angle"] == pytest.approx(degrees, abs=1e-6)
    c = 7  # 6 inputs and the bias
    np.testing.assert_allclose(jnp.linalg.norm(net.W[c:, c:]), jnp.linalg.norm(drawn.W[c:, c:]), rtol=1e-12)
    np.testing.assert_array_equal(net.W[:c], drawn.W[:c])
    assert not np.any(np.asarray(net.W)[~np.asarray(net.mask)])  # masked entries stay zero


def test_the_asymmetry_angle_needs_untied_rate_dynamics():
    base = {"kind": "directed", "hidden": 4, "asymmetry_angle": 90.0}
    for extra in ({"dynamics": "deep"}, {"feedback": "tied"}):
        with pytest.raises(ConfigError, match=r"^model\.asymmetry_angle: applies to dynamics = 'rate'"):
            parse_config({"model": {**base, **extra}})


def test_gradcheck_says_which_seeds_network_it_checks(capsys, tmp_path):
    """A 10-seed config: gradcheck checks one network, says which, and --seed-index picks
    another (a review could not tell which seed the table was of)."""
    import json

    from eqprop.cli import main

    tables = {}
    for i in (0, 4):
        assert main(["gradcheck", "xor-directed-hep", "--seed-index", str(i),
                     "--json", str(tmp_path / f"{i}.json")]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"seed {i} of the 10 seeds' networks (--seed-index picks another)\n")
        tables[i] = json.loads((tmp_path / f"{i}.json").read_text())
        assert tables[i]["seed_index"] == i
    assert tables[0]["hep"]["total"] != tables[4]["hep"]["total"]  # another network
    assert main(["gradcheck", "xor-directed-hep", "--seed-index", "10"]) == 2
    assert "--seed-index 10: the config has 10 seed(s), indices 0 to 9" in capsys.readouterr().err
