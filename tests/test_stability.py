"""Stability certificates (eqprop.stability, docs/stability.md) against the truth.

Every certificate is checked against what it claims: the exact spectral radius against
power iteration and against a factor in dt; the Lyapunov certificate against the
eigenvalues; the contraction bound against the weights' norm and against measured
Lipschitz ratios; each ``certified = True`` against 100 random perturbations relaxed
back by the dynamics; constructed unstable cases are not certified. The projected
certificate runs on small clipped models written here (a BoxProjectedModel), among them
the DEEP dynamics of Farinha et al. 2020, whose whole-J Gershgorin test can never pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqprop
from eqprop import stability as st
from eqprop.stability.certificates import _flat_bounds, _relax
from eqprop.cli import main
from eqprop.config import ConfigError, load_config
from eqprop.network import InteractionModel, make_readout
from eqprop.network.base import BoxProjectedModel
from eqprop.solvers import FixedPoint

jax.config.update("jax_enable_x64", True)

F64 = jnp.float64
SOLVER = FixedPoint(steps=400)


# -- small models ----------------------------------------------------------------------


class LinearField(InteractionModel):
    """``F(u) = u C + x U - u`` with the identity activation: ``u* = x U (I - C)^-1``."""

    C: jax.Array
    U: jax.Array
    readout: eqprop.network.Readout
    output: str = eqx.field(static=True, default="h")
    holomorphic = True

    def prepare(self, x):
        return x @ self.U

    def init_state(self, drive):
        return {"h": jnp.zeros_like(drive)}

    def activity(self, u):
        return dict(u)

    def interaction(self, a, drive):
        return {"h": a["h"] @ self.C + drive}

    def field(self, u, drive):
        return {"h": self.interaction(u, drive)["h"] - u["h"]}

    def fixed_point(self, x):
        n = self.C.shape[0]
        return {"h": jnp.linalg.solve((jnp.eye(n) - self.C).T, (x @ self.U).T).T}


class Bent(LinearField):
    """``h(a) = a C + 0.1 tanh(a) + x U``: not linear in ``a``."""

    def interaction(self, a, drive):
        return {"h": a["h"] @ self.C + 0.1 * jnp.tanh(a["h"]) + drive}


class Gated(LinearField):
    """``h(a) = (a * x U) C + x U``: linear in ``a``, but the coupling depends on the input."""

    def interaction(self, a, drive):
        return {"h": (a["h"] * drive) @ self.C + drive}


class Clipped(BoxProjectedModel):
    """``F(s) = s A + x U`` on states clipped to ``[0, 1]`` (the test's box model)."""

    A: jax.Array
    U: jax.Array
    readout: eqprop.network.Readout
    output: str = eqx.field(static=True, default="s")
    holomorphic = False

    def prepare(self, x):
        return x @ self.U

    def init_state(self, drive):
        return {"s": jnp.full_like(drive, 0.5)}

    def activity(self, u):
        return dict(u)

    def field(self, u, drive):
        return {"s": u["s"] @ self.A + drive}

    def state_bounds(self):
        return {"s": (0.0, 1.0)}


class Deep(BoxProjectedModel):
    """The DEEP dynamics (Farinha et al. 2020): ``ds_j/dt = sum_i W_ij s_i - s_j sum_k W_jk``
    over ``c`` clamped neurons (the input ``x``) and ``n`` free ones, clipped to [0, 1];
    ``W`` is ``(c + n, c + n)`` with nothing into the clamped neurons and no self-loops."""

    W: jax.Array
    readout: eqprop.network.Readout
    output: str = eqx.field(static=True, default="s")
    holomorphic = False

    _c: int = eqx.field(static=True, default=3)

    def prepare(self, x):
        c = self._c
        return x @ self.W[:c, c:]

    def init_state(self, drive):
        return {"s": jnp.zeros_like(drive)}

    def activity(self, u):
        return dict(u)

    def field(self, u, drive):
        c = self._c
        wf = self.W[c:, c:]
        return {"s": drive + u["s"] @ wf - u["s"] * jnp.sum(wf, axis=1)}

    def state_bounds(self):
        return {"s": (0.0, 1.0)}


def _readout(n):
    return make_readout("mse", n, n, key=jax.random.PRNGKey(0), dtype=F64)


def linear(c, u=None):
    c = jnp.asarray(c, F64)
    n = c.shape[0]
    u = jnp.eye(2, n, dtype=F64) if u is None else jnp.asarray(u, F64)
    return LinearField(C=c, U=u, readout=_readout(n))


X2 = jnp.asarray([[1.0, 0.5], [-0.3, 2.0], [0.2, 0.1]], F64)


def deep(seed, n_free=5, scale=1.0):
    c, n = 3, n_free  # two inputs and a bias
    w = scale * jax.random.uniform(jax.random.PRNGKey(seed), (c + n, c + n), F64, -1, 1)
    mask = np.ones((c + n, c + n))
    mask[:, :c] = 0  # nothing into the clamped neurons
    np.fill_diagonal(mask, 0)
    return Deep(W=w * mask, readout=_readout(n), _c=c)


@pytest.fixture(scope="module")
def net():
    """A tied layered network (float64) at its free fixed points of a batch of 5."""
    m = eqprop.layered([4, 6, 5, 3], key=jax.random.PRNGKey(0), dtype=F64, init_scale=2.0)
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 4), F64)
    u = _relax(m, x, SOLVER)  # jitted free phase, shared with st.stability
    return m, x, u


# -- the spectral radius ----------------------------------------------------------------


def test_spectral_radius_exact_is_power_iteration(net):
    m, x, u = net
    j, f, _ = st.state_jacobian(m, x, u)
    assert np.max(np.abs(f)) < 1e-10  # at the fixed point
    for dt in (1.0, 0.5):
        exact = st.iteration_radius(j, dt)
        power = st.spectral_radius_power(m, x, u, dt=dt, iters=1000)
        np.testing.assert_allclose(power, exact, rtol=5e-3)
    # dt enters as I + dt J: the two radii differ, so a dropped or doubled dt fails above
    assert np.max(np.abs(st.iteration_radius(j, 1.0) - st.iteration_radius(j, 0.5))) > 0.05
    # the Jacobian is dF/du, not its transpose or dh/da: against an explicit formula
    # (rows F_h1 = act(u_h2) W^T + ..., F_h2 = act(u_h1) W + ..., columns u_h1, u_h2)
    w = np.asarray(m.weights["h1->h2"])
    slope = jax.vmap(jax.grad(eqprop.activations.sigmoid4))
    d1, d2 = np.asarray(slope(u["h1"][0])), np.asarray(slope(u["h2"][0]))
    ref = np.block([[-np.eye(6), w * d2[None, :]], [w.T * d1[None, :], -np.eye(5)]])
    np.testing.assert_allclose(j[0], ref, atol=1e-12)
    assert np.max(np.abs(ref - ref.T)) > 1e-3  # the transpose would fail


def test_spectral_radius_of_a_complex_pair():
    """A rotation-dominated iteration: the dominant eigenvalues are a complex pair."""
    th = 0.3
    c = 0.9 * np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 0.2]])
    m = linear(c, np.eye(2, 3))
    u = m.fixed_point(X2)
    exact = st.iteration_radius(st.state_jacobian(m, X2, u)[0], 1.0)
    np.testing.assert_allclose(exact, 0.9, rtol=1e-12)
    np.testing.assert_allclose(st.spectral_radius_power(m, X2, u, dt=1.0, iters=600), 0.9, rtol=5e-3)


# -- the alternating sweep ------------------------------------------------------------------


def _group_masks(u, groups):
    """``(N,)`` 0/1 vectors of one example's flattened state, one per group (ravel order)."""
    from jax.flatten_util import ravel_pytree

    one = {p: v[:1] for p, v in u.items()}
    return [np.asarray(ravel_pytree({p: (jnp.ones_like(v) if p in g else jnp.zeros_like(v))
                                     for p, v in one.items()})[0]) for g in groups]


def test_the_sweeps_radius_is_the_chain_rule_product_at_the_fixed_point(net):
    """At a fixed point each group update ``S_g(u) = u + dt P_g F(u)`` leaves ``u*`` in place,
    so ``dS/du = (I + dt P_B J)(I + dt P_A J)`` with ``J = dF/du(u*)``: the sweep's radius
    against that product built from the state Jacobian, and power iteration of the sweep
    against both."""
    m, x, u = net
    groups = m.partition()
    assert len(groups) == 2
    j, _, _ = st.state_jacobian(m, x, u)
    pa, pb = _group_masks(u, groups)
    n = j.shape[-1]
    for dt in (1.0, 0.5):
        ref = [np.max(np.abs(np.linalg.eigvals((np.eye(n) + dt * pb[:, None] * jb)
                                               @ (np.eye(n) + dt * pa[:, None] * jb)))) for jb in j]
        exact = st.sweep_radius(m, x, u, dt=dt, groups=groups)
        np.testing.assert_allclose(exact, ref, rtol=1e-10)
        power = st.spectral_radius_power(m, x, u, dt=dt, iters=1000, groups=groups)
        np.testing.assert_allclose(power, exact, rtol=5e-3)
    # not the synchronous map's radius (which a sweep certificate ignoring groups gives): at
    # dt = 1 on a bipartite net the sweep squares it (Gauss-Seidel against Jacobi)
    sync = st.iteration_radius(j, 1.0)
    np.testing.assert_allclose(st.sweep_radius(m, x, u, dt=1.0, groups=groups), sync ** 2, rtol=1e-8)
    assert np.min(sync - sync ** 2) > 0.05


def test_the_sweep_is_certified_where_the_synchronous_map_cycles():
    """A pooled conv net whose synchronous update ends in a 2-cycle (test_conv): at the
    fixed point the alternating sweep reaches, the sweep's certificate holds and the
    synchronous map's fails, and 30 perturbations relaxed by each map agree with each."""
    m = eqprop.convnet((8, 8, 1), (6, 8), n_classes=3, key=jax.random.PRNGKey(0), output_size=5,
                       dtype=F64, init_scale=6.0)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1), F64)
    alt = FixedPoint(steps=600, update="alternating")
    settings = st.StabilitySettings(exact_max=1024)
    r, u = st.stability(m, x, alt, settings=settings)
    assert r["converged_fraction"] == 1.0 and r["spectral_radius"]["map"] == "alternating"
    assert r["certified"] and r["method"] == "spectral-exact" and r["spectral_radius"]["max"] < 1
    sync = st.certify(m, x, u, dt=1.0, settings=settings)
    assert sync["spectral_radius"]["map"] == "synchronous"
    assert not sync["certified"] and sync["spectral_radius"]["max"] >= 1 and "rho(I + dt J)" in sync["reason"]
    kw = dict(dt=1.0, trials=30, scale=1e-6, steps=300)  # rho 0.91 (sweep), 1.006 (synchronous)
    assert np.min(st.perturbation_check(m, x, u, update="alternating", **kw)) == 1.0
    assert np.min(st.perturbation_check(m, x, u, **kw)) < 1.0
    # power iteration of the sweep (a net too large for the dense Jacobian) agrees
    power = st.certify(m, x, u, dt=1.0, settings=st.StabilitySettings(exact_max=10, power_iters=600),
                       groups=m.partition())
    assert power["spectral_radius"]["method"] == "power"
    assert power["spectral_radius"]["max"] == pytest.approx(r["spectral_radius"]["max"], rel=5e-3)


# -- Lyapunov -------------------------------------------------------------------------------


def test_lyapunov_agrees_with_the_eigenvalues():
    rng = np.random.default_rng(0)
    js = []
    for k in range(16):
        a = rng.normal(size=(6, 6))
        shift = np.max(np.linalg.eigvals(a).real) + (0.2 if k % 2 == 0 else -0.2)
        js.append(a - shift * np.eye(6))  # even: Hurwitz by 0.2; odd: an eigenvalue at +0.2
    js = np.stack(js)
    ly = st.lyapunov(js)
    hurwitz = np.max(np.linalg.eigvals(js).real, axis=-1) < 0
    np.testing.assert_array_equal(ly["certified"], hurwitz)
    np.testing.assert_array_equal(hurwitz, np.arange(16) % 2 == 0)
    np.testing.assert_allclose(ly["max_real_eig"], np.where(hurwitz, -0.2, 0.2), atol=1e-9)
    # P solves J^T P + P J = -I (not J P + P J^T): a non-normal J tells the two apart
    from scipy.linalg import solve_continuous_lyapunov
    p = solve_continuous_lyapunov(js[0].T, -np.eye(6))
    np.testing.assert_allclose(js[0].T @ p + p @ js[0], -np.eye(6), atol=1e-9)
    assert np.isclose(ly["p_min_eig"][0], np.min(np.linalg.eigvalsh((p + p.T) / 2)))
    # a zero eigenvalue (singular equation) is never certified
    assert not st.lyapunov(np.zeros((1, 3, 3)))["certified"][0]


# -- the contraction bound ----------------------------------------------------------------


def test_contraction_bound_is_the_weights_norm_and_bounds_lipschitz_ratios(net):
    m, x, u = net
    assert st.linear_interaction(m, x[:1])
    assert st.activation_lipschitz(m, u) == pytest.approx(1.0, abs=1e-9)  # sigmoid4' = 1 at 1/2
    w = np.asarray(m.weights["h1->h2"])
    # C = [[0, W], [W^T, 0]]: ||C||_2 = ||W||_2, exactly and by power iteration
    for exact_max in (512, 0):
        got = float(st.coupling_norm(m, x[:1], exact_max=exact_max, iters=200))
        assert got == pytest.approx(np.linalg.norm(w, 2), rel=1e-8)
    bound = st.contraction_bound(m, x, u)
    assert bound == pytest.approx(np.linalg.norm(w, 2), rel=1e-8)
    # ||G(u) - G(v)|| <= bound ||u - v|| for G(u) = u + F(u) = h(act(u)), per example
    reps = 20
    xr = jnp.repeat(x, reps, axis=0)
    drive = m.prepare(xr)
    rng = np.random.default_rng(7)
    a = jax.tree.map(lambda t: np.repeat(t, reps, axis=0) + 0.5 * rng.standard_normal(
        (reps * t.shape[0],) + t.shape[1:]), u)
    b = jax.tree.map(lambda t: t + 1e-3 * rng.standard_normal(t.shape), a)
    ga, gb = (jax.tree.map(jnp.add, w_, m.field(w_, drive)) for w_ in (a, b))
    sq = lambda p, q: sum(jnp.sum((s - t) ** 2, axis=1)  # noqa: E731
                          for s, t in zip(jax.tree.leaves(p), jax.tree.leaves(q)))
    ratios = np.sqrt(np.asarray(sq(ga, gb) / sq(a, b)))
    assert ratios.max() <= bound * (1 + 1e-9)
    assert ratios.max() > 0.3 * bound  # the bound is not vacuous


def test_a_nonlinear_interaction_has_no_contraction_bound():
    m = Bent(C=0.1 * jnp.eye(3, dtype=F64), U=jnp.eye(2, 3, dtype=F64), readout=_readout(3))
    u = _relax(m, X2, SOLVER)
    assert not st.linear_interaction(m, X2[:1])
    gated = Gated(C=m.C, U=m.U, readout=m.readout)
    assert not st.linear_interaction(gated, X2[:1]) and st.linear_interaction(linear(m.C), X2[:1])
    r = st.certify(m, X2, u, dt=1.0)
    assert r["contraction_bound"] is None and r["method"] == "spectral-exact" and r["certified"]
    with pytest.raises(st.StabilityError) as e:
        st.make_enforcer(m, X2[:1])
    msg = str(e.value)
    assert msg.startswith("stability.enforce: 'contraction' needs") and "Bent" in msg
    assert "\n" not in msg


# -- every certificate against the truth --------------------------------------------------


def _returned(m, x, u, dt, steps=600, scale=1e-2):
    return st.perturbation_check(m, x, u, dt=dt, trials=100, scale=scale, steps=steps,
                                 seed=3)


def test_contraction_certificate_returns_from_far(net):
    m, x, _ = net
    small = eqx.tree_at(lambda t: t.weights, m, {k: 0.3 * v for k, v in m.weights.items()})
    r, u = st.stability(small, x, SOLVER)
    assert r["certified"] and r["method"] == "contraction" and r["margins"]["contraction"] > 0
    np.testing.assert_array_equal(_returned(small, x, u, 1.0, scale=3.0), 1.0)  # from any start


def test_spectral_certificate_without_contraction_is_confirmed():
    """Non-normal coupling: ||C|| = 3 > 1 but rho(C) = 0.5: only the local certificate."""
    m = linear([[0.5, 3.0], [0.0, 0.5]], np.eye(2))
    u = m.fixed_point(X2)
    r = st.certify(m, X2, u, dt=1.0)
    assert r["contraction_bound"] > 3 and r["margins"]["contraction"] < 0
    assert r["certified"] and r["method"] == "spectral-exact"
    assert r["spectral_radius"]["max"] == pytest.approx(0.5, abs=1e-6)
    assert r["lyapunov"]["certified_fraction"] == 1.0
    np.testing.assert_array_equal(_returned(m, X2, u, 1.0), 1.0)


def test_an_unstable_fixed_point_is_not_certified():
    m = linear([[1.5, 0.0], [0.0, 0.2]], np.eye(2))
    u = m.fixed_point(X2)
    assert np.max(st.per_example_residual(m, X2, u, dt=1.0)) < 1e-12  # a true fixed point
    r = st.certify(m, X2, u, dt=1.0)
    assert not r["certified"] and "rho(I + dt J) = 1.5" in r["reason"] and r["why"] == "rho >= 1"
    assert r["lyapunov"]["certified_fraction"] == 0.0
    np.testing.assert_array_equal(_returned(m, X2, u, 1.0), 0.0)
    # an oscillating step: stable flow (Hurwitz), unstable iteration at dt = 1
    m = linear([[-1.5, 0.0], [0.0, 0.2]], np.eye(2))
    u = m.fixed_point(X2)
    r = st.certify(m, X2, u, dt=1.0)
    assert not r["certified"] and r["lyapunov"]["certified_fraction"] == 1.0
    assert st.certify(m, X2, u, dt=0.5)["certified"]  # rho(I + J / 2) = 0.25
    np.testing.assert_array_equal(_returned(m, X2, u, 1.0), 0.0)
    np.testing.assert_array_equal(_returned(m, X2, u, 0.5), 1.0)


def test_a_state_off_its_fixed_point_is_not_certified():
    m = linear([[0.5, 0.0], [0.0, 0.2]], np.eye(2))
    u = jax.tree.map(lambda t: t + 0.1, m.fixed_point(X2))
    m2 = Bent(C=m.C, U=m.U, readout=m.readout)  # no contraction bound to fall back on
    r = st.certify(m2, X2, u, dt=1.0)
    assert not r["certified"] and "not at a fixed point" in r["reason"]
    # and that its figures are not a verdict on the fixed point (a review read rho 1.28 at
    # unsettled states as an unstable sweep), with what to do
    assert "say nothing about a fixed point's stability" in r["reason"]
    assert "--set dynamics.free_steps=N" in r["reason"]
    assert r["why"] == "3/3 not settled"
    # the table says why on the seed's own row, and the long reason below it
    table = st.format_table({"target": "t", "model": "Bent", "dt": 1.0, "examples": 3,
                             "per_seed": [{**r, "seed": 0}, {**st.certify(m, X2, m.fixed_point(X2), dt=1.0), "seed": 1}]})
    rows = table.splitlines()
    assert rows[1].endswith("why not")
    assert rows[2].split()[:2] == ["0", "NO"] and rows[2].endswith("3/3 not settled")
    assert rows[3].split()[:2] == ["1", "yes"] and rows[3].endswith("-")
    assert any(line.startswith("seed 0: 3 of 3 examples not at a fixed point") for line in rows)


def test_the_table_says_a_reason_shared_by_seeds_once_with_its_ranges():
    """A 10-seed DEEP table repeated one long sentence per seed: seeds whose reasons differ
    only in their figures share a line, each differing figure as its range."""
    from eqprop.stability.table import _seed_list

    assert _seed_list([0, 1, 2, 3, 5, 7, 8]) == "0-3, 5, 7, 8"
    m = linear([[0.5, 0.0], [0.0, 0.2]], np.eye(2))
    bent = Bent(C=m.C, U=m.U, readout=m.readout)
    rows = []
    for seed, shift in enumerate((0.1, 0.3, 0.1, 0.0, 0.2)):
        u = jax.tree.map(lambda t: t + shift, m.fixed_point(X2))
        rows.append({**st.certify(bent if shift else m, X2, u, dt=1.0), "seed": seed})
    table = st.format_table({"target": "t", "model": "Bent", "dt": 1.0, "examples": 3, "per_seed": rows})
    notes = [line for line in table.splitlines() if "not at a fixed point" in line]
    residuals = sorted(r["residual_max"] for r in rows if r["seed"] != 3)
    assert len(notes) == 1 and notes[0].startswith("seeds 0-2, 4: 3 of 3 examples not at a fixed point "
                                                   f"(residual {residuals[0]:.4g} to {residuals[-1]:.4g} "
                                                   "> residual_tol")


def test_a_settled_state_near_a_slow_fixed_point_returns():
    """A state settled to within residual_tol next to a fixed point with rho near 1 (the
    user review's DEEP seeds): it is certified, and perturbations of it return to where
    the unperturbed state goes, not to the slightly-off state itself (before, the check
    said 0% returned)."""
    m = Clipped(A=jnp.asarray([[-0.01]], F64), U=jnp.asarray([[0.005]], F64), readout=_readout(1))
    x = jnp.ones((1, 1), F64)
    u = {"s": jnp.full((1, 1), 0.501, F64)}  # the fixed point is 0.5; residual 1e-5
    r = st.certify(m, x, u, dt=0.5)
    assert r["certified"] and r["projected"]["radius_max"] == pytest.approx(0.995)
    np.testing.assert_array_equal(_returned(m, x, u, 0.5, steps=3000), 1.0)
    # perturbations smaller than the state's own distance to the fixed point (a review:
    # eqprop stability sizes them to the held neurons' reach, 2e-4 against a drift of 3e-4
    # on a DEEP net, and said 0% returned of a certified seed): around the state relaxed on
    back = st.perturbation_check(m, x, u, dt=0.5, trials=20, scale=3e-4, steps=3000, seed=0)
    np.testing.assert_array_equal(back, 1.0)
    # an unstable neuron, settled as closely, still does not return
    bad = Clipped(A=jnp.asarray([[0.01]], F64), U=jnp.asarray([[-0.005]], F64), readout=_readout(1))
    assert not st.certify(bad, x, u, dt=0.5)["certified"]
    np.testing.assert_array_equal(_returned(bad, x, u, 0.5, steps=3000), 0.0)


# -- the projected certificate ----------------------------------------------------------------


def test_projected_certificate_of_a_clipped_model():
    # s0 settles inside at 0.3; s1 is pushed below 0 and s2 above 1 (outward fields)
    a = jnp.asarray([[-1.0, 0.0, 0.0], [0.2, -1.0, 0.0], [0.0, 0.3, -1.0]], F64)
    m = Clipped(A=a, U=jnp.asarray([[0.3, -1.0, 2.0]], F64), readout=_readout(3))
    x = jnp.ones((1, 1), F64)
    r, u = st.stability(m, x, FixedPoint(steps=400, dt=0.5))
    np.testing.assert_allclose(u["s"], [[0.3, 0.0, 1.0]], atol=1e-12)
    assert r["certified"] and r["method"] == "projected"
    p = r["projected"]
    assert p["saturated_fraction_mean"] == pytest.approx(2 / 3) and p["free_neurons_mean"] == 1
    # outward fields (F_j = sum_i s_i A_ij + U_j): F_1 = 0.3 * 1 - 1 = -0.7 at s1 = 0,
    # F_2 = -1 + 2 = 1 at s2 = 1: the least is 0.7
    assert r["margins"]["outward"] == pytest.approx(0.7, abs=1e-12)
    assert p["radius_max"] == pytest.approx(0.5, abs=1e-12)  # |1 + 0.5 * (-1)|
    # J = A^T: s1's field changes by 0.3 per unit of s2 (row 1 of J, column 1 of A); s2's by 0
    assert p["hold_radius_min"] == pytest.approx(0.7 / 0.3, rel=1e-12)
    assert st.perturbation_steps(r, 10) == int(np.ceil(3 * np.log(100) / np.log(2)))
    np.testing.assert_array_equal(_returned(m, x, u, 0.5), 1.0)

    # an interior unstable neuron (positive self-feedback) at its fixed point 0.5
    bad = Clipped(A=jnp.asarray([[0.5]], F64), U=jnp.asarray([[-0.25]], F64), readout=_readout(1))
    u = {"s": jnp.full((1, 1), 0.5, F64)}
    r = st.certify(bad, x, u, dt=0.5)
    assert not r["certified"] and "J_free" in r["reason"] and r["why"] == "rho(free) >= 1"
    np.testing.assert_array_equal(_returned(bad, x, u, 0.5), 0.0)

    # a neuron held on a bound by a zero field: degenerate, not certified
    flat = Clipped(A=jnp.asarray([[-1.0]], F64), U=jnp.asarray([[0.0]], F64), readout=_readout(1))
    r = st.certify(flat, x, {"s": jnp.zeros((1, 1), F64)}, dt=0.5)
    assert not r["certified"] and r["margins"]["outward"] == 0.0


def test_deep_dynamics_projected_certificate_and_the_whole_j_gershgorin():
    """The DEEP field conserves the free neurons' activity: J's columns sum to zero, J has
    a zero eigenvalue, the whole-J Gershgorin test fails for every W and rho(I + dt J) >= 1;
    the projected certificate is the one that can hold, and where it does the clipped
    dynamics return to the fixed point."""
    x = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]], F64)  # XOR, bias
    for seed in (0, 1):
        m = deep(seed)
        r, u = st.stability(m, x, FixedPoint(steps=4000, dt=0.05))
        g = r["gershgorin"]
        assert g["column_sum_max"] < 1e-12 and not g["holds"] and g["column_margin_min"] <= 1e-12
        assert r["spectral_radius"]["max"] >= 1 - 1e-9
        assert r["method"] == "projected" and r["certified"]  # (measured for these two W)
        assert r["projected"]["saturated_fraction_mean"] >= 0.5
        np.testing.assert_array_equal(_returned(m, x, u, 0.05, steps=4000), 1.0)


def test_per_epoch_figures_of_a_clipped_model_are_its_projected_certificate():
    """[stability] every on the DEEP dynamics recorded rho(I + dt J) of the whole J, at
    least 1 whatever the weights (a review read it as instability): a clipped model's
    per-epoch figures are the projected certificate's, as eqprop stability computes them."""
    from eqprop.stability import epoch_figures

    x = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]], F64)
    free = FixedPoint(steps=4000, dt=0.05)
    for seed in (0, 1):
        m = deep(seed)
        r, _ = st.stability(m, x, free)
        fig = epoch_figures(m, x, free)
        assert set(fig) == {"projected_radius", "projected_certified", "saturated_fraction"}
        assert fig["projected_radius"] == pytest.approx(r["projected"]["radius_max"], rel=1e-9)
        assert fig["projected_certified"] == r["projected"]["certified_fraction"] == 1.0
        assert fig["saturated_fraction"] == pytest.approx(r["projected"]["saturated_fraction_mean"])
        assert fig["projected_radius"] < 1 <= r["spectral_radius"]["max"] + 1e-9
        small = st.StabilitySettings(exact_max=2)  # beyond the dense Jacobian: nothing, not rho
        assert epoch_figures(m, x, free, settings=small) == {}


# -- enforcement during training, the per-epoch figures and the CLI ---------------------------

TOML = """
[data]
name = "synthetic"
batch_size = 32

[model]
sizes = [16, 8, 6, 4]
init_scale = 4.0
dtype = "float64"

[dynamics]
free_steps = 30
nudged_steps = 5

[optim]
lr = 0.5

[train]
epochs = 1
max_batches = 4

[stability]
examples = 4
{extra}
"""


def _norm(model):
    return float(np.linalg.norm(np.asarray(model.weights["h1->h2"]), 2))


@pytest.fixture(scope="module")
def enforced_run(tmp_path_factory):
    from eqprop.train import loop

    cfg = tmp_path_factory.mktemp("cfg") / "c.toml"
    cfg.write_text(TOML.format(extra='every = 1\nenforce = "contraction"\ntarget = 0.9'))
    bounds, steps = [], []
    real, real_step = loop.program_enforcer, loop._call_step

    def recording(program):
        enforce = real(program)

        def wrapped(model):
            out = enforce(model)
            bounds.append((_norm(model), _norm(out)))
            return out

        return wrapped

    def step(*args):
        steps.append(1)
        return real_step(*args)

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "program_enforcer", recording)
    mp.setattr(loop, "_call_step", step)
    try:
        out = tmp_path_factory.mktemp("runs") / "r"
        assert main(["train", str(cfg), "--out", str(out), "-q"]) == 0
    finally:
        mp.undo()
    return cfg, out, bounds, len(steps)


def test_contraction_enforced_at_every_step(enforced_run):
    _, out, bounds, steps = enforced_run
    assert len(bounds) == steps + 1 == 5  # the initial network and every optimizer step
    before, after = np.asarray(bounds).T  # sigmoid4: L = 1, bound = ||W||_2
    assert before[0] > 1.5  # init_scale 4: far from a contraction at the start
    assert np.all(after <= 0.9 * (1 + 1e-9))
    np.testing.assert_allclose(after[before > 0.9], 0.9, rtol=1e-9)  # rescaled, not zeroed
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for rec in recs:
        assert rec["contraction_bound"] <= 0.9 * (1 + 1e-6) and rec["spectral_radius"] < 1


def test_cli_json_of_a_run_and_of_a_config(enforced_run, tmp_path, capsys):
    cfg, out, _, _ = enforced_run
    js = tmp_path / "s.json"
    assert main(["stability", str(out), "--json", str(js), "--perturb", "10"]) == 0
    text = capsys.readouterr().out
    assert "seed" in text and "contraction" in text
    res = json.loads(js.read_text())
    (row,) = res["per_seed"]
    assert row["certified"] is True and row["method"] == "contraction"
    assert row["margins"]["contraction"] == pytest.approx(0.1, abs=1e-6)
    assert row["perturbation"]["returned_fraction_min"] == 1.0
    # a config: the initial networks, one row per seed, and a failed contraction is said
    assert main(["stability", str(cfg), "--json", str(js), "--set", "train.seeds=2",
                 "--set", "stability.enforce='none'"]) == 0
    res = json.loads(js.read_text())
    assert res["update"] == "synchronous" and "alternates its groups" not in capsys.readouterr().out
    assert [r["seed"] for r in res["per_seed"]] == [0, 1]
    for r in res["per_seed"]:
        assert isinstance(r["certified"], bool) and r["method"] in ("contraction", "spectral-exact")
        assert r["contraction_bound"] > 1 and r["margins"]["contraction"] < 0
        assert set(r["margins"]) >= {"contraction", "spectral", "lyapunov"}
    # relaxed by alternating sweeps: the table and the JSON say which map the certificate
    # is of
    assert main(["stability", str(cfg), "--json", str(js), "--set", "dynamics.update='alternating'",
                 "--set", "stability.enforce='none'", "--perturb", "10"]) == 0
    out = capsys.readouterr().out
    assert "rho(sweep): of the alternating sweep the solver runs, the largest over the examples" in out
    assert "lyapunov P>0: the examples whose P solving J^T P + P J = -I is positive definite" in out
    res = json.loads(js.read_text())
    assert res["update"] == "alternating"
    for r in res["per_seed"]:  # the sweep's certificate: never the synchronous map's contraction
        assert r["spectral_radius"]["map"] == "alternating" and r["method"] == "spectral-exact"
        assert r["certified"] == (r["spectral_radius"]["max"] < 1 and r["converged_fraction"] == 1)


def test_one_line_errors(enforced_run, tmp_path, capsys):
    cfg, _, _, _ = enforced_run
    for bad, key in (("stability.enforce='spectral'", "stability.enforce"),
                     ("stability.target=1.0", "stability.target"),
                     ("stability.examples=0", "stability.examples")):
        with pytest.raises(ConfigError, match=key):
            load_config(cfg, [bad])
        assert main(["stability", str(cfg), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("eqprop: error:") and key in err and "\n" not in err
    assert main(["stability", "--help"]) == 0
    assert "usage: eqprop stability" in capsys.readouterr().out
    assert main(["stability", str(tmp_path / "missing.toml")]) == 2
    assert main(["stability", str(cfg), "--perturb", "-1"]) == 2
    assert "--perturb" in capsys.readouterr().err
    # the box of a BoxProjectedModel must name every population
    m = Clipped(A=-jnp.eye(2, dtype=F64), U=jnp.ones((1, 2), F64), readout=_readout(2))
    with pytest.raises(st.StabilityError, match="no bounds for population"):
        _flat_bounds(m, {"s": jnp.zeros((1, 2)), "t": jnp.zeros((1, 1))})


def test_docs_stability_md_explains_the_deep_gershgorin():
    text = (Path(__file__).resolve().parents[1] / "docs" / "stability.md").read_text()
    for phrase in ("column", "sums to zero", "zero eigenvalue", "projected", "eqprop stability",
                   "per_seed"):
        assert phrase in text


def test_stability_says_when_the_free_solver_is_not_the_step_map_it_certifies(tmp_path, capsys):
    """A review's heavy-ball plugin solver was certified with rho(I + dt J) of the plain
    step, silently: the table now says which iteration its certificates are of."""
    from eqprop.cli import main
    from eqprop.guards import Guards
    from eqprop.registry import SOLVERS
    from eqprop.solvers import FixedPointSolver

    class Momentum(FixedPointSolver):
        """u <- u + dt F(u) + 0.2 (u - u_prev), fixed budget."""

        def solve(self, field, u0, *, batch_ndim=1, groups=None, field_on=None, project=None):
            g = Guards(bound=self.bound, batch_ndim=batch_ndim)

            def body(i, c):
                u, prev = c
                return jax.tree.map(lambda a, f, p: a + self.dt * f + 0.2 * (a - p), u, field(u), prev), u

            u, _ = jax.lax.fori_loop(0, self.steps, body, (u0, u0))
            return u, g.report(field, u, self.steps, jnp.asarray(-1))

    SOLVERS.register("test-momentum")(Momentum)
    try:
        assert main(["stability", "digits-quick", "--set", 'dynamics.solver="test-momentum"',
                     "--set", 'dynamics.update="synchronous"', "--set", "stability.examples=2"]) == 0
    finally:
        SOLVERS.unregister("test-momentum")
    out = capsys.readouterr().out
    assert ("dynamics.solver = 'test-momentum' (Momentum): the certificates are of the step map "
            "u <- P(u + dt F(u)) and of the fixed points every solver shares") in out
    assert main(["stability", "digits-quick", "--set", "stability.examples=2"]) == 0
    assert "the certificates are of the step map" not in capsys.readouterr().out
