"""Every estimator against the exact gradient: the math of eqprop, pinned."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqprop
from eqprop.estimate import (
    EP, OnlineHEP, circle_derivative, exact_nudge_derivative, free_phase, make_estimator, rbp_delta,
)
from helpers import cos, flat, flat_params, rel, solvers
from eqprop.solvers import FixedPoint
from eqprop.network import named_parameters

F64 = jnp.float64
EXACT = solvers(free_steps=300, nudged_steps=300, linear_steps=4000, linear_tol=1e-13)


def batch(n_in, n_classes, b=6, seed=1):
    x = jax.random.uniform(jax.random.PRNGKey(seed), (b, n_in), F64)
    return x, jnp.arange(b) % n_classes


def setup(model, n_in, n_classes, dyn=EXACT):
    x, y = batch(n_in, n_classes)
    return x, y, free_phase(model, x, dyn)


def grad(name, model, x, y, free, dyn=EXACT, **kw):
    return make_estimator(name, dyn, **kw)(model, x, y, free, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def tied():
    m = eqprop.layered([12, 16, 10, 5], key=jax.random.PRNGKey(0), dtype=F64)
    return (m, *setup(m, 12, 5))


@pytest.fixture(scope="module")
def untied90():
    m = eqprop.layered([12, 16, 10, 5], key=jax.random.PRNGKey(0), feedback="untied",
                       asymmetry_angle=90.0, dtype=F64)
    return (m, *setup(m, 12, 5))


def test_free_phase_converges(tied):
    m, x, y, free = tied
    assert float(jnp.max(free.stats.residual)) < 1e-10
    assert int(free.stats.nonfinite_step) == -1


def test_implicit_equals_bptt_through_long_relaxation(tied):
    m, x, y, free = tied
    g_imp, _ = grad("implicit", m, x, y, free)
    g_bptt, _ = grad("bptt", m, x, y, free)
    assert rel(flat_params(g_imp), flat_params(g_bptt)) < 1e-4


def test_bptt_with_few_steps_differs_from_implicit(tied):
    """The reference is not trivially equal: BPTT through 3 steps is a different gradient."""
    m, x, y, free = tied
    g_imp, _ = grad("implicit", m, x, y, free)
    short = solvers(free_steps=3)
    g_bptt, _ = grad("bptt", m, x, y, free, dyn=short)
    assert rel(flat_params(g_bptt), flat_params(g_imp)) > 1e-2


def test_bptt_unrolls_the_update_the_solver_relaxes_with(tied):
    """With ``update = "alternating"`` BPTT differentiates the alternating sweep the free
    phase runs (K group updates, as relax counts them), not K synchronous steps; through a
    long relaxation either is the implicit gradient."""
    from eqprop.estimate import unrolled_loss

    m, x, y, free = tied
    drive = m.prepare(x)
    losses = {}
    for update in ("synchronous", "alternating"):
        solver = FixedPoint(steps=5, update=update)
        u, _ = solver.relax(m, lambda u: m.field(u, drive), m.init_state(drive),
                            field_on=lambda u, g: m.field_on(u, drive, g))
        losses[update] = float(jnp.mean(m.loss(m.activity(u), y)))
        assert float(unrolled_loss(m, x, y, solver)) == pytest.approx(losses[update], rel=1e-12)
    assert abs(losses["synchronous"] - losses["alternating"]) > 1e-4  # different relaxations
    g_imp, _ = grad("implicit", m, x, y, free)
    g_alt, _ = grad("bptt", m, x, y, free, dyn=solvers(free_steps=300, update="alternating"))
    assert rel(flat_params(g_alt), flat_params(g_imp)) < 1e-6
    # (an odd count: 2k synchronous steps of a layered net leave its output where k
    # alternating sweeps do, the synchronous iteration running two decoupled copies)
    g_short, _ = grad("bptt", m, x, y, free, dyn=solvers(free_steps=5, update="alternating"))
    g_sync, _ = grad("bptt", m, x, y, free, dyn=solvers(free_steps=5))
    assert rel(flat_params(g_short), flat_params(g_sync)) > 1e-2


def test_implicit_matches_finite_differences_of_the_loss(tied):
    """Implicit gradient vs a central difference of L(theta) along a random direction."""
    m, x, y, _ = tied
    params, static = eqx.partition(m, eqx.is_inexact_array)
    direction = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(7), p.shape, p.dtype), params)

    def loss_at(eps):
        mm = eqx.combine(jax.tree.map(lambda p, d: p + eps * d, params, direction), static)
        f = free_phase(mm, x, EXACT)
        return float(jnp.mean(mm.loss(mm.activity(f.u), y)))

    h = 1e-5
    fd = (loss_at(h) - loss_at(-h)) / (2 * h)
    g, _ = grad("implicit", m, x, y, free_phase(m, x, EXACT))
    analytic = float(flat_params(g) @ flat_params(direction))
    assert abs(fd - analytic) < 1e-6 * max(1.0, abs(fd))


def test_exact_nudge_equals_implicit_when_tied(tied):
    m, x, y, free = tied
    g_imp, info_imp = grad("implicit", m, x, y, free)
    g_ex, info_ex = grad("exact-nudge", m, x, y, free)
    assert cos(flat_params(g_ex), flat_params(g_imp)) > 0.9999
    assert rel(flat_params(g_ex), flat_params(g_imp)) < 1e-6
    # da*/dbeta is the RBP delta itself for a symmetric Jacobian
    assert rel(flat(info_ex.error_vector), flat(info_imp.error_vector)) < 1e-6


def test_contrast_form_equals_generalized_form(tied):
    """Classic EP (contrast of local products at two fixed points) = generalized EP + O(beta^2)."""
    m, x, y, free = tied
    g_imp, _ = grad("implicit", m, x, y, free)
    for beta in (0.1, 0.01):
        g_c, _ = grad("contrast", m, x, y, free, beta=beta, points=2)
        g_ep, _ = grad("ep", m, x, y, free, beta=beta, points=2)
        assert rel(flat_params(g_c), flat_params(g_ep)) < 2 * beta**2
        assert rel(flat_params(g_c), flat_params(g_imp)) < 4 * beta**2
    # and the primitive really is the energy of the drive: dPhi/da = h(a)
    a = m.activity(free.u)
    dphi = jax.grad(lambda a: jnp.sum(m.primitive(a, x)))(a)
    h = m.interaction(a, free.drive)
    assert rel(flat(dphi), flat(h)) < 1e-12


def test_contrast_refuses_untied(untied90):
    m, x, y, free = untied90
    with pytest.raises(ValueError, match="tied"):
        make_estimator("contrast", EXACT, beta=0.1).check(m)


def test_hep_error_falls_geometrically_with_points():
    """At a fixed finite beta = 0.5 the hEP error is O(beta^N): >= 10x per step N = 2 -> 4 -> 6."""
    m = eqprop.layered([6, 10, 8, 4], key=jax.random.PRNGKey(3), activation="tanh", init_scale=0.5, dtype=F64)
    x, y, free = setup(m, 6, 4)
    exact, _ = exact_nudge_derivative(m, free, y, EXACT.linear)
    err = {n: rel(flat(circle_derivative(m, free, y, 0.5, n, FixedPoint(steps=300))[0]), flat(exact)) for n in (2, 4, 6)}
    assert err[4] * 10 <= err[2]
    assert err[6] * 10 <= err[4]
    one_sided_small, _, _ = circle_derivative(m, free, y, 0.05, 1, FixedPoint(steps=300))
    assert err[4] < rel(flat(one_sided_small), flat(exact))


def test_hep_n1_and_n2_are_one_sided_and_symmetric_ep(tied):
    m, x, y, free = tied
    a0 = m.activity(free.u)
    v1, _, st1 = circle_derivative(m, free, y, 0.3, 1, FixedPoint(steps=300))
    v2, _, st2 = circle_derivative(m, free, y, 0.3, 2, FixedPoint(steps=300))
    _, a = st2["real"]
    plus, minus = jax.tree.map(lambda t: t[0], a), jax.tree.map(lambda t: t[1], a)
    sym = jax.tree.map(lambda p, q: (p - q) / 0.6, plus, minus)
    one = jax.tree.map(lambda p, q: (p - q) / 0.3, plus, a0)
    assert rel(flat(v2), flat(sym)) < 1e-12
    assert rel(flat(v1), flat(one)) < 1e-12
    assert "complex" not in st2  # N = 2 needs no complex states


def test_check_every_reaches_the_nudged_phases_and_keeps_the_gradient(tied):
    """``check_every`` reaches the nudged phases (real and complex): they stop on a
    multiple of k sweeps, and the hEP gradient is the per-step test's to within the tolerance."""
    m, x, y, _ = tied
    grads, steps = {}, {}
    for k in (1, 7):
        dyn = solvers(free_steps=400, nudged_steps=400, tol=1e-9, check_every=k)
        free = free_phase(m, x, dyn)
        g, info = grad("hep", m, x, y, free, dyn, beta=0.5, points=4)
        grads[k], steps[k] = flat_params(g), int(info.phases.steps)
    assert steps[7] % 7 == 0 and steps[1] <= steps[7] < steps[1] + 7 and steps[1] < 400
    assert rel(grads[7], grads[1]) < 1e-7


def test_conjugate_points_computed_once():
    from eqprop.estimate import circle_points

    real, cplx = circle_points(0.5, 6)
    assert real == [0.5, -0.5] and len(cplx) == 2  # k = 1, 2; k = 4, 5 are their conjugates
    real, cplx = circle_points(0.5, 5)
    assert real == [0.5] and len(cplx) == 2


def test_untied_biases_separate(untied90):
    """At 90 degrees hEP still matches the exact da/dbeta (finite-nudge bias gone), while the
    exact-nudge gradient differs from the implicit one (asymmetry bias remains)."""
    m, x, y, free = untied90
    exact, _ = exact_nudge_derivative(m, free, y, EXACT.linear)
    v6, _, _ = circle_derivative(m, free, y, 0.5, 6, FixedPoint(steps=300))
    finite_nudge_bias = rel(flat(v6), flat(exact))
    assert finite_nudge_bias < 1e-2
    g_imp, _ = grad("implicit", m, x, y, free)
    g_ex, _ = grad("exact-nudge", m, x, y, free)
    g_hep, _ = grad("hep", m, x, y, free, beta=0.5, points=6)
    assert cos(flat_params(g_ex), flat_params(g_imp)) < 0.99  # 0.976 at this seed's exact 90 degrees
    assert cos(flat_params(g_hep), flat_params(g_ex)) > 0.9999
    delta, _ = rbp_delta(m, free, y, EXACT.linear)
    assert cos(flat(exact), flat(delta)) < 0.99
    assert rel(flat(exact), flat(delta)) > 10 * finite_nudge_bias


def test_sign_pinned_step_against_estimate_lowers_loss(tied):
    m, x, y, free = tied

    def loss(mm):
        f = free_phase(mm, x, EXACT)
        return float(jnp.mean(mm.loss(mm.activity(f.u), y)))

    g, _ = grad("ep", m, x, y, free, beta=0.1, points=1)
    step = lambda s: eqx.apply_updates(m, jax.tree.map(lambda t: s * t, g))
    base = loss(m)
    assert loss(step(-0.05)) < base < loss(step(+0.05))


def test_online_hep_converges_and_its_lag_bias_shrinks_with_segment_length():
    """Online hEP: the running estimate settles as periods grow (changes halve when the
    periods double), and its distance to the exact da/dbeta falls as the nudge rotates
    more slowly (lag bias ~ 1/T2); with slow rotation it is within 1%."""
    m = eqprop.layered([6, 10, 8, 4], key=jax.random.PRNGKey(3), activation="tanh", init_scale=0.5, dtype=F64)
    x, y, free = setup(m, 6, 4)
    exact, _ = exact_nudge_derivative(m, free, y, EXACT.linear)

    def online(t2, periods):
        est = OnlineHEP(nudged=FixedPoint(steps=t2), beta=0.5, points=4, periods=periods)
        return flat(est(m, x, y, free, None)[1].error_vector)

    v = {p: online(40, p) for p in (1, 2, 4, 8)}
    changes = [rel(v[2], v[1]), rel(v[4], v[2]), rel(v[8], v[4])]
    assert changes[1] < 0.6 * changes[0] and changes[2] < 0.6 * changes[1]
    err_fast, err_slow = rel(online(10, 4), flat(exact)), rel(online(160, 4), flat(exact))
    assert err_slow * 3 < err_fast
    assert err_slow < 1e-2


def test_complex_nudges_need_a_holomorphic_activation():
    m = eqprop.layered([4, 5, 3], key=jax.random.PRNGKey(0), activation="hard-sigmoid")
    for est in (make_estimator("hep", EXACT, points=4), make_estimator("online-hep", EXACT)):
        with pytest.raises(ValueError, match="not holomorphic"):
            est.check(m)
    make_estimator("ep", EXACT, points=2).check(m)  # real nudges are fine


def test_ep_rejects_more_than_two_points():
    with pytest.raises(ValueError, match="hep"):
        EP(points=3)


def test_float32_path():
    """The float32 path gives float32 gradients equal to the float64 computation."""
    x, y = batch(12, 5)
    dyn = solvers(free_steps=200, nudged_steps=40, linear_steps=400, linear_tol=1e-6)
    out = {}
    m64 = eqprop.layered([12, 16, 10, 5], key=jax.random.PRNGKey(0), dtype=F64)
    for dtype in (jnp.float32, F64):
        m = jax.tree.map(lambda v: v.astype(dtype) if eqx.is_inexact_array(v) else v, m64)
        xd = x.astype(dtype)
        free = free_phase(m, xd, dyn)
        out[dtype] = [make_estimator(n, dyn, **kw)(m, xd, y, free, None)[0]
                      for n, kw in (("hep", dict(beta=0.5, points=4)), ("implicit", {}))]
    g32 = out[jnp.float32]
    assert all(v.dtype == jnp.float32 for g in g32 for v in jax.tree.leaves(eqx.filter(g, eqx.is_array)))
    for g_lo, g_hi in zip(g32, out[F64]):
        assert cos(flat_params(g_lo).astype(F64), flat_params(g_hi)) > 0.99999
    assert cos(flat_params(g32[0]), flat_params(g32[1])) > 0.99


def test_exact_estimators_leave_out_unconverged_examples(tied):
    """converged_tol: an example whose free phase did not converge adds nothing to the
    implicit gradient; the others are untouched."""
    m, x, y, free = tied
    res = free.stats.residual.at[0].set(1.0)  # pretend example 0 did not converge
    fake = eqx.tree_at(lambda f: f.stats.residual, free, res)
    masked = solvers(free_steps=300, nudged_steps=300, linear_steps=4000, linear_tol=1e-13, converged_tol=1e-3)
    g_masked, _ = make_estimator("implicit", masked)(m, x, y, fake, None)
    rest = free_phase(m, x[1:], EXACT)
    g_rest, _ = make_estimator("implicit", EXACT)(m, x[1:], y[1:], rest, None)
    # the task part is averaged over the full batch (B) instead of B - 1; the readout is direct
    b = x.shape[0]
    g_masked_p = named_parameters(g_masked)
    for k, v in named_parameters(g_rest).items():
        if not k.startswith("readout"):
            assert rel(g_masked_p[k] * b / (b - 1), v) < 1e-6


def test_linear_solve_falls_back_to_gmres_where_the_iteration_diverges():
    """J w + r = 0 with J = A - I, A with an eigenvalue 2.5: the damped iteration
    w <- A w + r diverges, GMRES (the "auto" fallback) still solves it."""
    from eqprop.linear import make_linear_solver, solve_linear

    a = jnp.diag(jnp.array([0.2, -0.4, 2.5, 0.5]))
    rhs = {"h": jnp.array([[1.0, -2.0, 0.5, 3.0], [0.3, 0.0, -1.0, 2.0]], F64)}
    matvec = lambda w: {"h": w["h"] @ a.T - w["h"]}  # noqa: E731
    exact = -rhs["h"] @ jnp.linalg.inv(a - jnp.eye(4)).T
    dyn = dict(max_steps=200, rtol=1e-10)
    w_fp, st = solve_linear(matvec, rhs, make_linear_solver("fixed-point", **dyn))
    assert not rel(w_fp["h"], exact) < 1e-3  # the iteration alone fails here
    for solver in ("auto", "gmres"):
        w, _ = solve_linear(matvec, rhs, make_linear_solver(solver, **dyn))
        assert rel(w["h"], exact) < 1e-8


def test_auto_linear_solve_under_vmap_runs_gmres_only_when_a_lane_needs_it():
    """Several seeds in one program vmap the linear solve: the "auto" solver's fallback
    must stay lazy (a lax.cond on a batched predicate becomes a select that ran GMRES on
    every step, 20x the cost). Lanes whose damped iteration converges cost what the
    damped iteration costs (counted matvecs); a lane that needs GMRES gets its answer
    and the others keep theirs."""
    from eqprop.linear import make_linear_solver, solve_linear

    calls = []

    def solve(a, rhs, solver):
        def matvec(w):
            jax.debug.callback(lambda: calls.append(1))
            return {"h": w["h"] @ a.T - w["h"]}
        return solve_linear(matvec, {"h": rhs}, make_linear_solver(solver, max_steps=200, rtol=1e-10))[0]["h"]

    def exact(a, rhs):
        return -rhs @ jnp.linalg.inv(a - jnp.eye(4)).T

    contracting = jnp.stack([jnp.diag(jnp.array([0.2, -0.4, 0.3, 0.5])),
                             jnp.diag(jnp.array([0.1, 0.4, -0.3, 0.6]))])
    rhs = jnp.array([[[1.0, -2.0, 0.5, 3.0]], [[0.3, 0.0, -1.0, 2.0]]], F64)
    counts = {}
    for solver in ("fixed-point", "auto"):
        calls.clear()
        w = jax.jit(jax.vmap(lambda a, r, s=solver: solve(a, r, s)))(contracting, rhs)
        jax.block_until_ready(w)
        counts[solver] = len(calls)
        for i in range(2):
            assert rel(w[i], exact(contracting[i], rhs[i])) < 1e-8
    assert counts["auto"] == counts["fixed-point"] > 0, counts

    # one lane needs GMRES (eigenvalue 2.5: the damped iteration diverges): both lanes right
    mixed = contracting.at[1, 2, 2].set(2.5)
    w = jax.jit(jax.vmap(lambda a, r: solve(a, r, "auto")))(mixed, rhs)
    for i in range(2):
        assert rel(w[i], exact(mixed[i], rhs[i])) < 1e-8
