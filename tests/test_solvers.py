"""Anderson acceleration (eqprop.solvers.anderson) against the plain relaxation."""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import eqprop
from eqprop.estimate import make_estimator
from eqprop.estimate.base import FreePhase, nudged_field
from eqprop.relax import relax, residual_norm
from eqprop.solvers import anderson

from helpers import flat, flat_params, rel, solvers

TOL = 1e-10


def _setup(sizes=(8, 12, 10, 4), batch=6, seed=0):
    model = eqprop.layered(list(sizes), key=jax.random.PRNGKey(seed), dtype=jnp.float64)
    x = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, sizes[0]), jnp.float64)
    y = jnp.arange(batch) % sizes[-1]
    drive = model.prepare(x)
    return model, x, y, drive


def _maxdiff(a, b):
    return float(jnp.max(jnp.abs(flat(a) - flat(b))))


@pytest.fixture(scope="module")
def net():
    model, x, y, drive = _setup()
    field = lambda u: model.field(u, drive)
    u0 = model.init_state(drive)
    u_p, s_p = jax.jit(lambda u: relax(field, u, dt=1.0, steps=2000, tol=TOL))(u0)
    u_a, s_a = jax.jit(lambda u: anderson(field, u, steps=2000, tol=TOL))(u0)
    return model, x, y, drive, (u_p, s_p), (u_a, s_a)


def test_anderson_converges_in_fewer_steps_to_the_same_point(net):
    model, x, y, drive, (u_p, s_p), (u_a, s_a) = net
    field = lambda u: model.field(u, drive)
    u0 = model.init_state(drive)
    # both to 1e-8: Anderson takes clearly fewer steps
    _, p8 = relax(field, u0, dt=1.0, steps=2000, tol=1e-8)
    _, a8 = anderson(field, u0, steps=2000, tol=1e-8)
    assert int(a8.steps) <= 0.6 * int(p8.steps), (int(a8.steps), int(p8.steps))
    assert float(jnp.max(a8.residual)) < 1e-8
    assert int(a8.nonfinite_step) == -1
    # the reported residual is the true one, and the fixed points agree
    assert jnp.allclose(s_a.residual, residual_norm(field(u_a)), rtol=1e-6, atol=1e-14)
    assert float(jnp.max(s_a.residual)) < TOL
    assert _maxdiff(u_a, u_p) < 1e-7
    assert set(s_a.nonfinite) == set(u_a) and not any(bool(v) for v in s_a.nonfinite.values())
    assert s_a.residual.shape == s_p.residual.shape == (x.shape[0],)


def test_tol_zero_runs_every_step(net):
    model, _, _, drive, _, _ = net
    u0 = model.init_state(drive)
    _, s = anderson(lambda u: model.field(u, drive), u0, steps=7, tol=0.0)
    assert int(s.steps) == 7


def test_memory_zero_is_the_plain_iteration(net):
    model, _, _, drive, _, _ = net
    field = lambda u: model.field(u, drive)
    u0 = model.init_state(drive)
    u_p, _ = relax(field, u0, dt=1.0, steps=10)
    # anderson returns the last accepted (evaluated) iterate: 11 evaluations = 10 steps
    u_a, _ = anderson(field, u0, steps=11, memory=0)
    assert _maxdiff(u_a, u_p) < 1e-12


@pytest.mark.parametrize("name,settings", [("implicit", {}), ("hep", {"beta": 0.5, "points": 2}),
                                           ("exact-nudge", {})])
def test_estimators_agree_whichever_solver_found_the_fixed_point(net, name, settings):
    model, x, y, drive, (u_p, s_p), (u_a, s_a) = net
    dyn = solvers(nudged_steps=400, tol=1e-12, linear_tol=1e-12, linear_steps=3000)
    est = make_estimator(name, dyn, **settings)
    g_p, _ = est(model, x, y, FreePhase(u=u_p, drive=drive, stats=s_p), None)
    g_a, _ = est(model, x, y, FreePhase(u=u_a, drive=drive, stats=s_a), None)
    assert rel(flat_params(g_a), flat_params(g_p)) < 1e-6


def test_complex_nudged_field(net):
    model, x, y, drive, (u_p, _), _ = net
    field = nudged_field(model, drive, y, jnp.asarray(0.5j, jnp.complex128))
    u0 = jax.tree.map(lambda v: v.astype(jnp.complex128), u_p)
    c_p, s_p = relax(field, u0, dt=1.0, steps=2000, tol=TOL)
    c_a, s_a = anderson(field, u0, steps=2000, tol=TOL)
    assert all(v.dtype == jnp.complex128 for v in jax.tree.leaves(c_a))
    assert float(jnp.max(s_a.residual)) < TOL
    assert int(s_a.steps) < int(s_p.steps)
    assert _maxdiff(c_a, c_p) < 1e-7
    assert float(jnp.max(jnp.abs(flat(c_a).imag))) > 1e-3  # genuinely complex


def test_stacked_phases(net):
    model, x, y, drive, (u_p, _), _ = net
    betas = jnp.asarray([0.5, -0.5, 0.2], jnp.float64)
    u0 = jax.tree.map(lambda v: jnp.broadcast_to(v, betas.shape + v.shape), u_p)
    fv = jax.vmap(lambda u, b: nudged_field(model, drive, y, b)(u))
    field = lambda u: fv(u, betas)
    s_p = relax(field, u0, dt=1.0, steps=2000, tol=TOL, batch_ndim=2)
    s_a = jax.jit(lambda u: anderson(field, u, steps=2000, tol=TOL, batch_ndim=2))(u0)
    assert s_a[1].residual.shape == (3, x.shape[0])
    assert float(jnp.max(s_a[1].residual)) < TOL
    assert _maxdiff(s_a[0], s_p[0]) < 1e-7


def _sin_field(u):
    return {"h": 0.9 * jnp.sin(3 * u["h"]) / 3 + 0.3 - u["h"]}


def test_safeguard_keeps_the_residual_below_the_initial_one():
    # plain iteration (dt = 0.5) converges; unsafeguarded Anderson with m = 10 and no
    # damping overshoots (its residual grows ~5x at some step)
    u0 = {"h": jax.random.normal(jax.random.PRNGKey(0), (8, 6), jnp.float64)}
    r0 = residual_norm(_sin_field(u0))
    # the budget may be traced (it only enters the loop condition): one compilation each
    run = jax.jit(lambda u, sg, k: anderson(_sin_field, u, steps=k, memory=10, dt=0.5, safeguard=sg),
                  static_argnums=1)
    worst = {True: 0.0, False: 0.0}
    for k in range(1, 10):
        for sg in (True, False):
            worst[sg] = max(worst[sg], float(jnp.max(run(u0, sg, k)[1].residual / r0)))
    assert worst[True] <= 1.0 + 1e-12
    assert worst[False] > 1.5
    _, plain = relax(_sin_field, u0, dt=0.5, steps=400, tol=TOL)
    _, safe = anderson(_sin_field, u0, steps=400, tol=TOL, memory=10, dt=0.5)
    assert float(jnp.max(safe.residual)) < TOL and int(safe.steps) < int(plain.steps)


def test_nonfinite_field_is_reported_like_relax():
    u0 = {"a": jnp.ones((4, 3)), "b": jnp.ones((4, 2))}

    def field(u):  # finite for a few steps, then NaN in population "a"
        return {"a": jnp.where(u["a"] > 3.5, jnp.nan, 1.0) + 0 * u["a"], "b": -u["b"]}

    for tol in (0.0, 1e-8):
        _, sr = relax(field, u0, dt=1.0, steps=20, tol=tol)
        u, sa = anderson(field, u0, steps=20, tol=tol, memory=0)
        assert int(sr.nonfinite_step) > 0
        assert int(sa.nonfinite_step) > 0 and int(sa.steps) == int(sa.nonfinite_step)
        assert bool(sa.nonfinite["a"]) and not bool(sa.nonfinite["b"])
        assert not bool(sa.finite)
    # a field NaN from the start: stops after the first evaluation, like relax
    bad = lambda u: jax.tree.map(lambda v: v * jnp.nan, u)
    _, sr = relax(bad, u0, dt=1.0, steps=20, tol=1e-8)
    _, sa = anderson(bad, u0, steps=20, tol=1e-8)
    assert int(sa.nonfinite_step) == int(sr.nonfinite_step) == 1


def test_float32_state_stays_float32():
    model = eqprop.layered([8, 12, 10, 4], key=jax.random.PRNGKey(0), dtype=jnp.float32)
    drive = model.prepare(jnp.ones((3, 8), jnp.float32))
    u, s = anderson(lambda u: model.field(u, drive), model.init_state(drive), steps=200, tol=1e-5)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(u))
    assert float(jnp.max(s.residual)) < 1e-5


@jax.jit
def _both(model, x):
    drive = model.prepare(x)
    field = lambda u: model.field(u, drive)
    u0 = model.init_state(drive)
    u_p, s_p = relax(field, u0, dt=1.0, steps=3000, tol=TOL)
    u_a3, s_a3 = anderson(field, u0, steps=3000, tol=TOL, memory=3)
    u_a6, s_a6 = anderson(field, u0, steps=3000, tol=TOL, memory=6)
    return u_p, s_p, (u_a3, s_a3), (u_a6, s_a6)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 3.0))
def test_anderson_fixed_point_equals_relax_fixed_point(seed, scale):
    # fixed shapes (one compilation); random weights, inputs and input scale
    model, x, y, drive = _setup((5, 9, 7, 3), 4, seed)
    u_p, s_p, *runs = _both(model, scale * x)
    assert float(jnp.max(s_p.residual)) < TOL  # a contraction: the reference converged
    for u_a, s_a in runs:
        assert float(jnp.max(s_a.residual)) < TOL
        assert _maxdiff(u_a, u_p) < 1e-7


def test_anderson_from_config_trains():
    """``[dynamics] solver = "anderson"`` reaches the training step through build.py."""
    import optax

    from eqprop import build
    from eqprop.config import parse_config
    from eqprop.update import init_optimizer, make_train_step

    cfg = parse_config({"model": {"sizes": [6, 8, 3]}, "dynamics": {"solver": "anderson", "tol": 1e-6,
                                                                   "free_steps": 100, "nudged_steps": 30}})
    dyn = build.build_solvers(cfg)
    assert isinstance(dyn.free, eqprop.Anderson) and dyn.free.memory == 5
    model = build.build_model(cfg, input_size=6, n_classes=3, key=jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 6), jnp.float32)
    y = jnp.arange(4) % 3
    opt = optax.sgd(0.1)
    step = make_train_step(build.build_estimator(cfg), opt, solver=dyn.free)
    _, _, m = step(model, init_optimizer(opt, model), x, y, jax.random.PRNGKey(2))
    assert 0 < int(m["free_steps"]) < 100 and float(m["residual"]) < 1e-5


def test_tol_fraction_lets_stragglers_go():
    """As for ``relax``: three fast examples (rate 0.5), one straggler (rate 0.01). With
    ``memory = 0`` (the plain iteration) the counts are exact: the residual of iterate t
    is k (1 - k)^t, below 1e-6 from t = 19 (fast) and t = 917 (slow), and Anderson
    evaluates iterates 0 .. t."""
    k = jnp.array([[0.5], [0.5], [0.5], [0.01]], jnp.float64)
    field = lambda u: -k * (u - 1.0)  # noqa: E731
    u0 = jnp.zeros((4, 1), jnp.float64)
    runs = {q: anderson(field, u0, steps=2000, tol=1e-6, tol_fraction=q, memory=0) for q in (0.0, 0.2, 0.25)}
    assert int(runs[0.25][1].steps) == 20
    assert int(runs[0.0][1].steps) == int(runs[0.2][1].steps) == 918
    r = runs[0.25][1].residual
    assert bool(jnp.all(r[:3] < 1e-6)) and float(r[3]) > 1e-3


def _alternating(model, drive):
    return {"groups": model.partition(), "field_on": lambda u, group: model.field_on(u, drive, group)}


def test_anderson_on_the_alternating_sweep(net):
    """Anderson accelerates the alternating sweep: the same fixed point as the plain
    iteration (synchronous or alternating), in fewer group updates than the plain
    alternating iteration; the reported residual is the alternating one."""
    model, x, y, drive, (u_p, _), _ = net
    field = lambda u: model.field(u, drive)  # noqa: E731
    alt = _alternating(model, drive)
    u0 = model.init_state(drive)
    u_alt, s_alt = relax(field, u0, dt=1.0, steps=4000, tol=1e-10, **alt)
    u_a, s_a = jax.jit(lambda u: anderson(field, u, steps=4000, tol=1e-10, memory=3, **alt))(u0)
    assert float(jnp.max(s_a.residual)) < 1e-10 and int(s_a.steps) % 2 == 0
    assert int(s_a.steps) <= 0.6 * int(s_alt.steps), (int(s_a.steps), int(s_alt.steps))
    assert _maxdiff(u_a, u_alt) < 1e-8 and _maxdiff(u_a, u_p) < 1e-8
    assert float(jnp.max(residual_norm(field(u_a)))) < 1e-8  # a zero of the field itself


def test_delay_takes_plain_steps_first(net):
    """With ``delay = d`` the first d iterates are those of the plain iteration (Anderson
    returns the last evaluated iterate: d + 1 evaluations give iterate d), synchronous and
    alternating; afterwards Anderson takes over and still converges."""
    model, x, y, drive, (u_p, _), _ = net
    field = lambda u: model.field(u, drive)  # noqa: E731
    u0 = model.init_state(drive)
    for kw, per in (({}, 1), (_alternating(model, drive), 2)):
        u_r, _ = relax(field, u0, dt=1.0, steps=10 * per, **kw)
        u_d, _ = anderson(field, u0, steps=11 * per, memory=5, delay=10 * per, **kw)
        u_n, _ = anderson(field, u0, steps=11 * per, memory=5, **kw)
        assert _maxdiff(u_d, u_r) < 1e-12
        assert _maxdiff(u_n, u_r) > 1e-6  # without the delay Anderson has already moved elsewhere
        u_c, s_c = anderson(field, u0, steps=4000, tol=1e-10, memory=5, delay=10 * per, **kw)
        assert float(jnp.max(s_c.residual)) < 1e-10 and _maxdiff(u_c, u_p) < 1e-8


@pytest.mark.parametrize("unroll", [1, 5, 37, 40])
def test_unroll_leaves_the_fixed_budget_relaxation_unchanged(unroll):
    """``[dynamics] unroll`` only regroups the loop's sweeps (a budget it does not divide,
    and one larger than the budget, included): the same states, bit for bit, and the same
    first non-finite step."""
    field = lambda u: jnp.tanh(0.5 * u + 1.0) - u  # noqa: E731
    u0 = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)
    ref, ref_stats = relax(field, u0, dt=0.5, steps=37)
    u, stats = relax(field, u0, dt=0.5, steps=37, unroll=unroll)
    assert jnp.array_equal(u, ref) and int(stats.steps) == int(ref_stats.steps) == 37
    blow = lambda u: 2.0 * u + 1.0  # noqa: E731  (diverges: |u| passes the bound at step 9)
    bad = relax(blow, u0, dt=1.0, steps=37, bound=1e3, unroll=unroll)[1].nonfinite_step
    assert int(bad) == int(relax(blow, u0, dt=1.0, steps=37, bound=1e3)[1].nonfinite_step) > 0


def test_unroll_is_a_dynamics_key():
    from eqprop.build import build_solvers
    from eqprop.config import Config, ConfigError, with_updates

    solvers = build_solvers(with_updates(Config(), dynamics={"unroll": 8}))
    assert solvers.free.unroll == solvers.nudged.unroll == 8
    with pytest.raises(ConfigError, match=r"^dynamics\.unroll: must be >= 0"):
        with_updates(Config(), dynamics={"unroll": -1})


def test_refusals_name_the_model_and_what_it_lacks():
    """A review's plugin was told of "a bipartite network (e.g. a layered network without
    skips)" and "a tied network": the refusal names the class and the capability."""
    import jax

    from eqprop.build import build_model
    from eqprop.config import load_config
    from eqprop.estimate.contrast import Contrast
    from eqprop.solvers import FixedPoint

    m = build_model(load_config("xor-directed-hep", []), input_size=2, n_classes=2,
                    key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"needs a bipartite network .*: RateNetwork is not a "
                       r"BipartiteModel$"):
        FixedPoint(update="alternating").check(m)
    with pytest.raises(ValueError, match=r"an EnergyModel with symmetric = True; RateNetwork is not "
                       r"an EnergyModel; use 'ep' or 'hep'$"):
        Contrast().check(m)
