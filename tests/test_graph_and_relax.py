"""Graph networks (loops, skips), relaxation reports, and property tests on random networks."""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

import eqprop
from eqprop.estimate import circle_derivative, exact_nudge_derivative, free_phase, make_estimator
from eqprop.relax import relax
from helpers import cos, flat, flat_params, rel, solvers
from eqprop.solvers import FixedPoint

F64 = jnp.float64
EXACT = solvers(free_steps=300, nudged_steps=300, linear_steps=4000, linear_tol=1e-13)


def run(model, n_in, n_classes, b=5):
    x = jax.random.uniform(jax.random.PRNGKey(2), (b, n_in), F64)
    y = jnp.arange(b) % n_classes
    free = free_phase(model, x, EXACT)
    g = lambda name, **kw: make_estimator(name, EXACT, **kw)(model, x, y, free, None)
    return x, y, free, g


def test_untied_graph_with_loop_and_skip():
    """in -> h1 -> h2 -> out, skip h1 -> out, and the loop out -> h1 (no other feedback)."""
    m = eqprop.graph(
        {"h1": 10, "h2": 8, "out": 4},
        [["input", "h1"], ["h1", "h2"], ["h2", "out"], ["h1", "out"], ["out", "h1"]],
        input_size=7, n_classes=4, key=jax.random.PRNGKey(1), feedback="untied", dtype=F64,
        activation="tanh", init_scale=0.5,
    )
    assert [p.name for p in m.projections][-1] == "out->h1" and not m.symmetric
    x, y, free, g = run(m, 7, 4)
    assert float(jnp.max(free.stats.residual)) < 1e-10
    g_imp, _ = g("implicit")
    g_bptt, _ = g("bptt")
    assert rel(flat_params(g_bptt), flat_params(g_imp)) < 1e-4
    g_ex, info_ex = g("exact-nudge")
    g_hep, info_hep = g("hep", beta=0.5, points=6)
    assert rel(flat(info_hep.error_vector), flat(info_ex.error_vector)) < 1e-3
    assert cos(flat_params(g_hep), flat_params(g_ex)) > 0.9999
    assert cos(flat_params(g_ex), flat_params(g_imp)) < 0.999  # a loop is not symmetric


def test_tied_graph_with_skip_is_energy_based():
    m = eqprop.graph(
        {"h1": 9, "h2": 6, "out": 3},
        [["input", "h1"], ["h1", "h2"], ["h2", "out"], ["h1", "out"]],
        input_size=5, n_classes=3, key=jax.random.PRNGKey(4), feedback="tied", dtype=F64,
    )
    x, y, free, g = run(m, 5, 3)
    g_imp, _ = g("implicit")
    assert rel(flat_params(g("bptt")[0]), flat_params(g_imp)) < 1e-4
    assert cos(flat_params(g("exact-nudge")[0]), flat_params(g_imp)) > 0.9999
    assert rel(flat_params(g("contrast", beta=0.01, points=2)[0]), flat_params(g_imp)) < 1e-3


def test_asymmetry_angle_initialisation():
    """B = sin(a) B_init + cos(a) W^T: 0 degrees gives B = W^T exactly, 90 an independent B."""
    for angle, expect_sym in ((0.0, True), (90.0, False)):
        m = eqprop.layered([5, 6, 7, 4], key=jax.random.PRNGKey(0), feedback="untied", asymmetry_angle=angle, dtype=F64)
        w, b = m.weights["h1->h2"], m.weights["h2->h1"]
        assert jnp.allclose(b, w.T) == expect_sym
    m = eqprop.layered([5, 6, 7, 4], key=jax.random.PRNGKey(0), feedback="untied", asymmetry_angle=45.0, dtype=F64)
    w, b = m.weights["h1->h2"], m.weights["h2->h1"]
    c = float(jnp.vdot(w.T, b) / (jnp.linalg.norm(w) * jnp.linalg.norm(b)))
    assert 0.4 < c < 0.95


def test_graph_rejects_bad_structure():
    kw = dict(input_size=3, n_classes=2, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="clamped"):
        eqprop.graph({"out": 2}, [["out", "input"]], **kw)
    with pytest.raises(ValueError, match="unknown population"):
        eqprop.graph({"out": 2}, [["input", "hx"]], **kw)
    with pytest.raises(ValueError, match="twice"):
        eqprop.graph({"h": 2, "out": 2}, [["input", "h"], ["h", "out"], ["out", "h"]], **kw)


def test_relax_tolerance_stops_early():
    m = eqprop.layered([6, 8, 4], key=jax.random.PRNGKey(0), dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), F64)
    free = free_phase(m, x, solvers(free_steps=500, tol=1e-6))
    assert 0 < int(free.stats.steps) < 500
    assert float(jnp.max(free.stats.residual)) < 1e-6
    fixed = free_phase(m, x, solvers(free_steps=37))
    assert int(fixed.stats.steps) == 37


def test_tol_fraction_lets_stragglers_go():
    """Three fast examples (rate 0.5) and one straggler (rate 0.01): with q = 1/4 the loop
    stops once the fast ones are converged; with q = 0 or q < 1/4 it waits for the slow one."""
    k = jnp.array([[0.5], [0.5], [0.5], [0.01]], F64)
    field = lambda u: -k * (u - 1.0)  # noqa: E731
    u0 = jnp.zeros((4, 1), F64)
    runs = {q: relax(field, u0, dt=1.0, steps=2000, tol=1e-6, tol_fraction=q) for q in (0.0, 0.2, 0.25)}
    # residual before step t is k (1 - k)^t: below 1e-6 from t = 19 (fast), t = 917 (slow)
    assert int(runs[0.25][1].steps) == 20
    assert int(runs[0.0][1].steps) == int(runs[0.2][1].steps) == 918
    r = runs[0.25][1].residual
    assert bool(jnp.all(r[:3] < 1e-6)) and float(r[3]) > 1e-3
    assert bool(jnp.all(runs[0.0][1].residual < 1e-6))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_check_every_tests_the_tolerance_every_k_sweeps(k):
    """Rates 0.5 (converged, residual below 1e-6, before step 20) and 0.01 (before step 918):
    testing every k steps stops at the first multiple of k at or past those steps, with the
    same iterates as the per-step test until then."""
    rate = jnp.array([[0.5], [0.5], [0.5], [0.01]], F64)
    field = lambda u: -rate * (u - 1.0)  # noqa: E731
    u0 = jnp.zeros((4, 1), F64)
    for q, first in ((0.25, 20), (0.0, 918)):
        u, stats = relax(field, u0, dt=1.0, steps=2000, tol=1e-6, tol_fraction=q, check_every=k)
        steps = -(-first // k) * k
        assert int(stats.steps) == steps
        exact, _ = relax(field, u0, dt=1.0, steps=steps)  # the fixed budget: the same iterate
        assert float(jnp.max(jnp.abs(u - exact))) == 0.0
    # a budget that is not a multiple of k ends with a shorter chunk, on the budget exactly
    u, stats = relax(field, u0, dt=1.0, steps=50, tol=1e-6, check_every=k)
    assert int(stats.steps) == 50
    assert float(jnp.max(jnp.abs(u - relax(field, u0, dt=1.0, steps=50)[0]))) == 0.0


def test_check_every_on_alternating_sweeps_and_divergence():
    """Alternating updates count steps as group updates (2 a sweep): k sweeps = 2k steps.
    Divergence is caught at the end of the chunk in which it happened."""
    m = eqprop.layered([6, 8, 8, 4], key=jax.random.PRNGKey(0), dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), F64)
    per_step = free_phase(m, x, solvers(free_steps=400, tol=1e-8, update="alternating"))
    chunked = free_phase(m, x, solvers(free_steps=400, tol=1e-8, update="alternating", check_every=4))
    n = int(per_step.stats.steps)
    assert int(chunked.stats.steps) == -(-n // 8) * 8  # the next multiple of 4 sweeps
    assert float(jnp.max(chunked.stats.residual)) <= float(jnp.max(per_step.stats.residual))
    u0 = {"h": jnp.ones((2, 3)), "out": jnp.ones((2, 2))}
    field = lambda u: {"h": 2.0 * u["h"] ** 2, "out": -u["out"]}  # h explodes
    _, one = relax(field, u0, dt=1.0, steps=1000, tol=1e-9)
    _, five = relax(field, u0, dt=1.0, steps=1000, tol=1e-9, check_every=5)
    first = int(one.nonfinite_step)
    assert 0 < first < 1000 and int(five.nonfinite_step) == -(-first // 5) * 5
    assert bool(five.nonfinite["h"]) and not bool(five.nonfinite["out"])
    with pytest.raises(ValueError, match="check_every"):
        relax(field, u0, dt=1.0, steps=10, tol=1e-3, check_every=0)


def test_free_phase_warm_mask():
    """``warm[i]``: example i starts from ``u0`` (here its fixed point, so it stays put);
    the others start cold, exactly as without ``u0``."""
    m = eqprop.layered([6, 8, 8, 4], key=jax.random.PRNGKey(0), dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), F64)
    star = free_phase(m, x, solvers(free_steps=400)).u
    warm = jnp.array([True, False, True, False])
    one = solvers(free_steps=3)
    mixed = free_phase(m, x, one, u0=star, warm=warm)
    cold = free_phase(m, x, one)
    for p in star:
        assert float(jnp.max(jnp.abs(mixed.u[p][warm] - star[p][warm]))) < 1e-9
        assert bool(jnp.all(mixed.u[p][~warm] == cold.u[p][~warm]))
        assert float(jnp.max(jnp.abs(cold.u[p] - star[p]))) > 1e-3  # 3 steps are not enough


def test_relax_reports_nonfinite_step_and_population():
    """A field that blows up in one population is stopped and reported, not hidden."""
    u0 = {"h": jnp.ones((2, 3)), "out": jnp.ones((2, 2))}
    field = lambda u: {"h": 2.0 * u["h"] ** 2, "out": -u["out"]}  # h explodes, out decays
    u, stats = relax(field, u0, dt=1.0, steps=1000)
    assert 0 < int(stats.nonfinite_step) < 1000
    assert int(stats.steps) == int(stats.nonfinite_step)
    assert bool(stats.nonfinite["h"]) and not bool(stats.nonfinite["out"])


def test_complex_states_relax():
    m = eqprop.layered([4, 5, 3], key=jax.random.PRNGKey(0), dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 4), F64)
    free = free_phase(m, x, EXACT)
    v, stats, states = circle_derivative(m, free, jnp.array([0, 1]), 0.5, 3, FixedPoint(steps=200))
    betas, a = states["complex"]
    assert jnp.iscomplexobj(a[m.output]) and float(jnp.max(stats.residual)) < 1e-10


@settings(max_examples=2, deadline=None)  # each example compiles four estimators (the suite's slowest test)
@given(
    sizes=st.lists(st.integers(2, 7), min_size=2, max_size=4),
    batch=st.integers(1, 4),
    seed=st.integers(0, 1000),
    activation=st.sampled_from(["sigmoid4", "tanh", "dsilu"]),
)
def test_property_tied_random_networks(sizes, batch, seed, activation):
    """Any small tied network: implicit == BPTT, exact nudge == implicit, hEP(6) ~ exact."""
    n_in = sizes[0] + 1
    n_classes = sizes[-1]
    m = eqprop.layered([n_in] + sizes, key=jax.random.PRNGKey(seed), activation=activation,
                       init_scale=0.5, dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, n_in), F64)
    y = jnp.arange(batch) % n_classes
    dyn = solvers(free_steps=400, nudged_steps=400, linear_steps=4000, linear_tol=1e-13)
    free = free_phase(m, x, dyn)
    g = lambda name, **kw: make_estimator(name, dyn, **kw)(m, x, y, free, None)
    g_imp = flat_params(g("implicit")[0])
    assert rel(flat_params(g("bptt")[0]), g_imp) < 1e-4
    assert rel(flat_params(g("exact-nudge")[0]), g_imp) < 1e-6
    assert cos(flat_params(g("hep", beta=0.1, points=6)[0]), g_imp) > 0.999


def test_exploding_state_is_reported_like_nan():
    """A state that grows without bound (finite all along) is caught by the state bound."""
    u0 = {"h": jnp.ones((2, 3)), "out": jnp.ones((2, 2))}
    field = lambda u: {"h": 0.5 * u["h"], "out": -u["out"]}  # h grows 1.5x a step, never NaN
    _, free_running = relax(field, u0, dt=1.0, steps=60)
    assert int(free_running.nonfinite_step) == -1  # finite, so unbounded relax says nothing
    _, bounded = relax(field, u0, dt=1.0, steps=60, bound=1e6)
    assert int(bounded.nonfinite_step) == 35  # 1.5^35 > 1e6 > 1.5^34
    assert bool(bounded.nonfinite["h"]) and not bool(bounded.nonfinite["out"])


def test_free_phase_uses_the_state_bound():
    m = eqprop.layered([4, 5, 3], key=jax.random.PRNGKey(0), dtype=F64, activation="tanh")
    m = jax.tree.map(lambda v: v * 1e7 if v.ndim == 1 else v, m)  # huge biases: |u| ~ 1e7
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 4), F64)
    stats = free_phase(m, x, solvers(free_steps=10)).stats
    assert int(stats.nonfinite_step) == 1 and any(bool(v) for v in stats.nonfinite.values())


def test_alternating_updates_follow_one_synchronous_chain():
    """Bipartite network, dt = 1: the synchronous iteration runs two decoupled copies;
    alternating updates reproduce one of them exactly (half the work per step)."""
    m = eqprop.layered([7, 9, 8, 6, 4], key=jax.random.PRNGKey(5), dtype=F64)
    g0, g1 = m.partition()
    assert set(g0) == {"h1", "h3"} and set(g1) == {"h2"}
    x = jax.random.uniform(jax.random.PRNGKey(6), (3, 7), F64)
    alt = free_phase(m, x, solvers(free_steps=12, update="alternating"))
    sync_even = free_phase(m, x, solvers(free_steps=12))
    sync_odd = free_phase(m, x, solvers(free_steps=11))
    for p in g1:  # the second group is updated last: step 12 of the copy
        assert rel(alt.u[p], sync_even.u[p]) < 1e-12
    for p in g0:  # the first group was last updated at step 11
        assert rel(alt.u[p], sync_odd.u[p]) < 1e-12


def test_alternating_needs_a_bipartite_network():
    m = eqprop.graph({"h1": 5, "h2": 5, "out": 3}, [["input", "h1"], ["h1", "h2"], ["h2", "out"], ["h1", "out"]],
                     input_size=4, n_classes=3, key=jax.random.PRNGKey(0))
    assert m.partition() is None
    with pytest.raises(ValueError, match="bipartite"):
        free_phase(m, jnp.ones((2, 4)), solvers(update="alternating"))


def test_alternating_updates_give_the_same_gradients():
    m = eqprop.layered([8, 10, 7, 4], key=jax.random.PRNGKey(2), dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(3), (4, 8), F64)
    y = jnp.arange(4) % 4
    out = {}
    for update in ("synchronous", "alternating"):
        # the linear solves sweep in the update order too: solve them to well below the 1e-8 asserted
        dyn = solvers(free_steps=200, nudged_steps=200, linear_tol=1e-11, update=update)
        free = free_phase(m, x, dyn)
        out[update] = [flat_params(make_estimator(n, dyn, **kw)(m, x, y, free, None)[0])
                       for n, kw in (("hep", dict(beta=0.5, points=4)), ("implicit", {}))]
    for a, b in zip(out["alternating"], out["synchronous"]):
        assert rel(a, b) < 1e-8
