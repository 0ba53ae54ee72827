"""An estimate whose assumptions fail says so (issue 16, section 3): every solver, phase
and estimator honours the same guards (:mod:`eqprop.guards`) and reports the same
statistics, training logs and warns about the nudged phases and linear solves, and hEP
checks that its circle lies inside the radius of convergence.

Over the shared table (tests/table.py): the solvers of :data:`SOLVERS_UNDER_TEST` plus
Anderson with its delay past the budget, x the phases (free; nudged with real and with
complex states, stacked), x the estimators of :data:`ESTIMATORS_UNDER_TEST`; with the
issue's reproducers (Anderson with ``anderson_delay >= free_steps``; Anderson ignoring
``state_bound``; hEP N = 4 whose nudged phases do not converge; a circle far beyond
the radius of convergence whose phases all converge).
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqprop.build import phase_solvers
from eqprop.cli import main
from eqprop.config import parse_config
from eqprop.estimate import estimate_metrics, free_phase, make_estimator, nudged_field
from eqprop.estimate.nudge import circle_decay, circle_derivative, nudged_phases
from eqprop.guards import (HEP_ERROR_LIMIT, NONCONVERGED_TOL, EstimateWarning, Thinning,
                           estimate_problems, problem_kind)
from eqprop.relax import residual_norm
from eqprop.solvers import Anderson, FixedPoint
from eqprop.train import RunDir, train
from helpers import flat_params, rel
from table import (ESTIMATORS_UNDER_TEST, EXACT, SOLVERS_UNDER_TEST, SolverCase, estimate,
                   gradient, relax_free, setup)

MODEL = "layered-tied"  # bipartite: every solver of the table applies

#: the table's solvers, plus Anderson whose delay reaches the budget (the issue's
#: reproducer: its residuals were reported as inf, its examples as unconverged)
GUARD_SOLVERS = SOLVERS_UNDER_TEST + (
    SolverCase("anderson-delay-past-budget", Anderson(steps=60, delay=60)),
)
SOLVER_PARAMS = [pytest.param(s, id=s.id) for s in GUARD_SOLVERS]
PHASES = ("free", "nudged-real", "nudged-complex")
BETAS = {"nudged-real": [0.5, -0.5], "nudged-complex": [0.5j, 0.5 * np.exp(2j * np.pi / 3)]}


def _max_abs(tree) -> float:
    return max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(tree))


@eqx.filter_jit
def _relax(solver, model, x, y, free, betas):
    """``(u, stats, ||F(u)||)``: the phase relaxed by ``solver`` (the free phase when
    ``betas`` is None, else nudged phases stacked on a leading axis) and the residual
    recomputed at the state it returned."""
    if betas is None:
        f = free_phase(model, x, solver)
        return f.u, f.stats, residual_norm(model.field(f.u, f.drive))
    u, stats = nudged_phases(model, free, y, betas, solver)
    field = jax.vmap(lambda ui, b: nudged_field(model, free.drive, y, b)(ui))
    return u, stats, residual_norm(field(u, betas), batch_ndim=2)


def _run(solver, phase):
    s = setup(MODEL)
    betas = None if phase == "free" else jnp.asarray(BETAS[phase])
    return _relax(solver, s.model, s.x, s.y, s.free, betas)


# -- every solver x phase: the same stats ---------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("solver", SOLVER_PARAMS)
def test_every_solver_reports_the_residual_of_the_state_it_returns(solver, phase):
    """``residual`` is ``||F(u)||`` per (phase,) example at the returned state, finite,
    for every solver, delay or not, real or complex, one phase or stacked; a relaxation
    that converged counts no example as unconverged."""
    u, stats, recomputed = _run(solver.solver, phase)
    shape = (4,) if phase == "free" else (2, 4)
    assert stats.residual.shape == shape and bool(stats.finite)
    np.testing.assert_allclose(np.asarray(stats.residual), np.asarray(recomputed), rtol=1e-6, atol=1e-13)
    assert float(stats.nonconverged_fraction()) == 0.0
    if solver.solver.tol > 0:
        assert float(jnp.max(stats.residual)) < 1e-10


@pytest.mark.parametrize("phase", ["free", "nudged-complex"])
@pytest.mark.parametrize("solver", SOLVER_PARAMS)
def test_every_solver_honours_the_bound(solver, phase):
    """A state beyond ``bound`` counts as diverged for every solver: the free phase
    crossing it on its way, the nudged phases pushed across it by a large nudge."""
    s = setup(MODEL)
    top = _max_abs(s.free.u)
    bound, scale = (0.5 * top, 1.0) if phase == "free" else (1.05 * top, 40.0)
    betas = None if phase == "free" else scale * jnp.asarray(BETAS[phase])
    unbounded = _relax(solver.solver, s.model, s.x, s.y, s.free, betas)
    assert _max_abs(unbounded[0]) > bound  # the bound binds: the test is not vacuous
    bounded = dataclasses.replace(solver.solver, bound=bound)
    _, stats, _ = _relax(bounded, s.model, s.x, s.y, s.free, betas)
    assert not bool(stats.finite) and int(stats.nonfinite_step) >= 1
    assert any(bool(v) for v in stats.nonfinite.values())


def test_anderson_delay_past_the_budget_is_the_plain_iteration():
    """The issue's reproducer: ``anderson_delay >= free_steps`` gave every example an
    infinite residual (``nonconverged_fraction`` 1.0), and ``converged_tol`` then dropped
    every example from the implicit gradient. Now the stats are the plain iteration's,
    also when the plain iteration converges before the delay ends."""
    s = setup(MODEL)
    plain = relax_free(s.model, s.x, FixedPoint(steps=60))
    for delay in (60, 100):
        free = relax_free(s.model, s.x, Anderson(steps=60, delay=delay))
        assert int(free.stats.steps) == 60
        np.testing.assert_allclose(np.asarray(free.stats.residual), np.asarray(plain.stats.residual))
        assert np.all(np.isfinite(np.asarray(free.stats.residual)))
        assert float(free.stats.nonconverged_fraction()) == 0.0
    settled = relax_free(s.model, s.x, Anderson(steps=400, tol=1e-12, delay=399))
    assert int(settled.stats.steps) < 399 and float(jnp.max(settled.stats.residual)) < 1e-12
    # converged_tol keeps every example: the gradient is the one without it
    kept = dataclasses.replace(EXACT, converged_tol=1e-3)
    g = estimate(make_estimator("implicit", kept), s.model, s.x, s.y, free)
    assert rel(flat_params(g), flat_params(gradient(MODEL, "implicit"))) < 1e-6


TINY = {
    "data": {"name": "synthetic", "batch_size": 16},
    "model": {"sizes": [16, 8, 4]},
    "dynamics": {"free_steps": 15, "nudged_steps": 5},
    "optim": {"name": "sgd", "lr": 0.2},
    "train": {"epochs": 2, "max_batches": 2, "seed": 3},
}


def _toml(d: dict) -> str:
    def value(v):
        return json.dumps(v)
    return "\n".join(f"[{sec}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in keys.items())
                     for sec, keys in d.items()) + "\n"


@pytest.mark.parametrize("solver", ["fixed-point", "anderson"])
def test_state_bound_stops_training_whichever_solver(solver, tmp_path, capsys):
    """The issue's reproducer: ``--set dynamics.state_bound=0.5`` stopped the plain solver
    with exit 3 while Anderson trained on with exit 0."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(_toml({**TINY, "dynamics": {**TINY["dynamics"], "solver": solver}}))
    code = main(["train", str(cfg), "--out", str(tmp_path / "r"), "-q",
                 "--set", "dynamics.state_bound=0.5"])
    assert code == 3
    assert "exploding state" in capsys.readouterr().err


# -- every estimator: its phases' figures ---------------------------------------------

#: nudged phases and linear solves far too short to converge
SHORT = phase_solvers(free_steps=400, nudged_steps=1, tol=1e-12, linear_steps=2,
                      linear_tol=1e-13, linear_solver="fixed-point")
EXPECTED_KEYS = {
    "ep-symmetric": {"nudged", "hep"}, "hep-6": {"nudged", "hep"}, "online-hep": {"nudged"},
    "contrast": {"nudged", "hep"}, "exact-nudge": {"linear"}, "bptt": set(),
}


@pytest.mark.parametrize("est", [pytest.param(e, id=e.id) for e in ESTIMATORS_UNDER_TEST])
def test_every_estimator_reports_its_phases_and_flags_them(est):
    """Each estimator's :class:`Estimate` carries the stats of what it relaxed or solved
    (nudged phases, linear solve, hEP's circle); cut short, they are beyond the
    tolerance and :func:`estimate_problems` says so."""
    s = setup(MODEL)
    settings = dict(est.settings)
    if "beta" in settings:  # a nudge large enough for one step to leave it unsettled
        settings["beta"] = max(settings["beta"], 1.0)
    estimator = make_estimator(est.name, SHORT, **settings)
    _, info = eqx.filter_jit(estimator)(s.model, s.x, s.y, s.free, jax.random.PRNGKey(0))
    m = {k: float(v) for k, v in estimate_metrics(info).items()}
    kinds = {k.split("_")[0] for k in m}
    assert kinds == EXPECTED_KEYS[est.id]
    figures = {"nudged_residual_mean": m.get("nudged_residual"),
               "nudged_nonconverged_fraction": m.get("nudged_nonconverged"),
               "linear_residual_mean": m.get("linear_residual")}
    problems = estimate_problems(figures)
    if "nudged" in kinds:
        assert m["nudged_residual"] > NONCONVERGED_TOL and m["nudged_nonconverged"] > 0.5
        assert any("nudged phases did not converge" in p for p in problems)
    if "linear" in kinds:
        assert m["linear_residual"] > NONCONVERGED_TOL
        assert any("linear solves did not converge" in p for p in problems)
    if not kinds:
        assert problems == []


def test_online_hep_honours_the_nudged_bound():
    s = setup(MODEL)
    bound = 1.05 * _max_abs(s.free.u)
    solvers = dataclasses.replace(EXACT, nudged=FixedPoint(steps=20, bound=bound))
    for beta, finite in ((0.01, True), (40.0, False)):
        est = make_estimator("online-hep", solvers, beta=beta, points=4, periods=2)
        _, info = eqx.filter_jit(est)(s.model, s.x, s.y, s.free, None)
        assert bool(info.phases.finite) == finite


# -- training: the nudged and linear-solve figures, logged, shown and warned about -----


def _records(out):
    return RunDir(out).read_metrics()


@pytest.fixture(scope="module")
def unsettled(tmp_path_factory):
    """A run whose nudged phases cannot converge in their budget (one nudged step, a
    large nudge): hEP N = 4 on a small network."""
    out = tmp_path_factory.mktemp("guards") / "unsettled"
    config = parse_config({**TINY, "dynamics": {"free_steps": 15, "nudged_steps": 1},
                           "model": {"sizes": [16, 8, 4], "activation": "tanh"},
                           "estimator": {"name": "hep", "points": 4, "beta": 4.0}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, out, progress=False)
    return out, [w for w in caught if issubclass(w.category, EstimateWarning)]


def test_unconverged_nudged_phases_are_logged_and_warned_once_per_epoch(unsettled):
    out, caught = unsettled
    records = _records(out)
    for r in records:
        assert r["nudged_residual_mean"] > NONCONVERGED_TOL
        assert 0.5 < r["nudged_nonconverged_fraction"] <= 1.0
        assert "linear_residual_mean" not in r
        assert {"hep_decay_mean", "hep_error_mean", "hep_floor_fraction"} <= r.keys()
    assert [str(w.message).split(":")[0] for w in caught] == ["epoch 1", "epoch 2"]
    assert all("nudged phases did not converge" in str(w.message) for w in caught)
    assert {w.filename for w in caught} == {__file__}  # the user's train() line, not the trainer's


def test_a_long_run_shows_each_kind_of_warning_at_its_1st_2nd_4th_8th_epoch():
    """A 2000-epoch directed XOR run printed 70 warnings (a review): each kind is shown at
    the 1st, 2nd, 4th, ... epoch it fires in, kinds counted apart, the figures not in the kind."""
    free = "free phases did not converge: residual_mean {:.3g} > 0.001 (2% of examples above it)"
    nudged = "nudged phases did not converge: nudged_residual_mean {:.3g} > 0.001; raise x"
    assert problem_kind(free.format(0.5)) == problem_kind(free.format(0.07)) \
        == "free phases did not converge"
    circle = estimate_problems({"hep_error_mean": 0.5, "hep_decay_mean": 0.9}, beta=1.0)[0]
    assert problem_kind(circle) == "the Fourier coefficients of a*(beta) do not decay around the nudge circle"
    thin = Thinning()
    shown = {}
    for epoch in range(1, 41):
        said = thin.shown([free.format(epoch)] + ([nudged.format(epoch)] if epoch % 3 == 0 else []))
        if said:
            shown[epoch] = said
    assert [e for e, s in shown.items() if any(x.startswith("free") for x in s)] == [1, 2, 4, 8, 16, 32]
    assert [e for e, s in shown.items() if any(x.startswith("nudged") for x in s)] == [3, 6, 12, 24]
    assert shown[1] == [free.format(1)]  # the first: as it was
    assert shown[2][0].endswith("(the 2nd epoch with this warning; from here on each kind is shown "
                                "at the 4th, 8th, 16th, ... epoch it fires in: every epoch's figures "
                                "are in metrics.jsonl)")
    both = Thinning({"free phases did not converge": 1, "nudged phases did not converge": 1})
    said = both.shown([free.format(2), nudged.format(2)])  # explained once per message
    assert said[1] == nudged.format(2) + " (the 2nd epoch with this warning)"
    assert shown[32][0].endswith("(the 32nd epoch with this warning)")
    assert shown[24] == [nudged.format(24) + " (the 8th epoch with this warning)"]
    assert thin.counts == {"free phases did not converge": 40, "nudged phases did not converge": 13}
    # a resumed run continues from its records' counts
    assert Thinning({"free phases did not converge": 3}).shown([free.format(1)]) == \
        [free.format(1) + " (the 4th epoch with this warning)"]


def test_the_summary_counts_warned_epochs_and_a_resumed_run_thins_on(unsettled, tmp_path, capsys):
    import shutil

    from eqprop.train import with_epochs
    from eqprop.train.summary import format_summary

    out, _ = unsettled
    summary = json.loads((out / "summary.json").read_text())
    kinds = summary["warned_epochs"]
    assert kinds["nudged phases did not converge"] == 2 and set(kinds.values()) == {2}
    assert "warnings   nudged phases did not converge: 2 of 2 epochs" in format_summary(summary)
    run = tmp_path / "run"
    shutil.copytree(out, run)
    from eqprop.config import load_run_config

    config = with_epochs(load_run_config(RunDir(run).config), 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(config, run, resume=True, progress=False)
    caught = [str(w.message) for w in caught if issubclass(w.category, EstimateWarning)]
    assert [m.split(":")[0] for m in caught] == ["epoch 4"]  # the 3rd epoch is not shown
    assert "nudged phases did not converge" in caught[0] and "(the 4th epoch with this warning)" in caught[0]
    assert summary["warned_epochs"]["nudged phases did not converge"] == 4


def test_eval_and_report_show_the_nudged_figures(unsettled, tmp_path, capsys):
    out, _ = unsettled
    assert main(["eval", str(out)]) == 0
    io = capsys.readouterr()
    assert "nudged phases (hep): residual" in io.out and "hEP circle" in io.out
    assert "eqprop: warning: nudged phases did not converge" in io.err
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "nudged residual" in md and "## Estimates whose assumptions failed" in md
    assert "unsettled, epoch 2: nudged phases did not converge" in md


def test_linear_solve_figures_are_logged_and_a_converged_run_is_not_warned(tmp_path, capsys):
    config = parse_config({**TINY, "estimator": {"name": "exact-nudge"},
                           "dynamics": {"free_steps": 15, "linear_steps": 200}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, tmp_path / "run", progress=True)
    assert not [w for w in caught if issubclass(w.category, EstimateWarning)]
    for r in _records(tmp_path / "run"):
        assert r["linear_residual_mean"] < NONCONVERGED_TOL
        assert not {"nudged_residual_mean", "hep_error_mean"} & r.keys()
    assert "linear res" in capsys.readouterr().out  # the epoch line


def test_unconverged_free_phases_are_warned_in_train_eval_report_and_gradcheck(tmp_path, capsys):
    """The free phase is where every estimate is taken: one step of it leaves every
    example unsettled, and training (once per epoch), eval, the report and gradcheck each
    say so; the nudged phases (20 steps from there) are not what is blamed."""
    config = {**TINY, "model": {"sizes": [16, 8, 8, 4]},  # two coupled populations
              "dynamics": {"free_steps": 1, "nudged_steps": 20, "update": "synchronous"},
              "estimator": {"name": "hep", "points": 2, "beta": 0.05}}
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(parse_config(config), out, progress=False)
    caught = [str(w.message) for w in caught if issubclass(w.category, EstimateWarning)]
    assert [m.split(":")[0] for m in caught] == ["epoch 1", "epoch 2"]
    assert all(m.split(": ", 1)[1].startswith("free phases did not converge: residual_mean")
               and "dynamics.free_steps" in m for m in caught)
    # hEP's circle, relaxed from that unsettled state, does not decay; its sentence says
    # why and suggests no radius (the beta it would compute is meaningless here)
    assert all("measured from an unsettled free state" in m and "try estimator.beta" not in m
               for m in caught)
    for r in _records(out):
        assert r["residual_mean"] > NONCONVERGED_TOL and r["nonconverged_fraction"] == 1.0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert "eqprop: warning: free phases did not converge" in capsys.readouterr().err
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "run, epoch 2: free phases did not converge" in (tmp_path / "rep" / "report.md").read_text()
    (tmp_path / "c.toml").write_text(_toml(config))
    assert main(["gradcheck", str(tmp_path / "c.toml")]) == 0
    table = capsys.readouterr().out
    assert "free phase: WARNING: free phases did not converge" in table
    # the estimator's own lines know the free state is unsettled (said once, above): its
    # circle sentence names no radius, and the free phase is not blamed again per estimator
    hep = [line for line in table.splitlines() if line.startswith("hep: WARNING")]
    circle = [line for line in hep if "do not decay" in line]
    assert circle and all("measured from an unsettled free state" in line
                          and "try estimator.beta" not in line for line in circle)
    assert not [line for line in hep if "free phases did not converge" in line]
    # the reference settles on, and the diagnostics are taken at that fixed point too
    assert "reference's free phase: " in table and "relaxed on from the estimators' free state" in table
    assert "taken at the fixed point: the batch relaxed on, up to 1000 updates" in table
    probe = [line for line in table.splitlines() if line.strip().startswith("probe_nonconverged")]
    assert probe and float(probe[0].split()[1]) == 0.0
    # relaxed 60 steps, the same network is settled and nothing is said of its free phase
    config["dynamics"]["free_steps"] = 60
    (tmp_path / "c.toml").write_text(_toml(config))
    assert main(["gradcheck", str(tmp_path / "c.toml")]) == 0
    assert "free phase: WARNING" not in capsys.readouterr().out


def test_gradcheck_reference_settles_where_the_estimators_free_state_has_not():
    """Implicit differentiation is the gradient only at a fixed point. Where the free
    phase stops short (3 steps), gradcheck's reference relaxes on from that state and
    the cosine of ``implicit`` itself is then its cosine with the implicit gradient at
    the settled fixed point (not 1, as it was against itself: the trained CNN's 0.33
    came from there); where the free phase settles, the reference is that state."""
    from eqprop.gradcheck import SETTLE_TOL, format_table, gradcheck, settle
    from eqprop.metrics import cosine
    s = setup(MODEL)
    short = dataclasses.replace(EXACT, free=FixedPoint(steps=3))
    implicit = make_estimator("implicit", EXACT)
    r = gradcheck(s.model, s.x, s.y, {"implicit": implicit}, short)
    free = relax_free(s.model, s.x, short)
    assert float(jnp.max(free.stats.residual)) > 10 * NONCONVERGED_TOL
    at_short = flat_params(estimate(implicit, s.model, s.x, s.y, free))
    on = relax_free(s.model, s.x, settle(short.free), free.u)  # what the reference does
    at_fixed = flat_params(estimate(implicit, s.model, s.x, s.y, on))
    assert rel(at_fixed, flat_params(estimate(implicit, s.model, s.x, s.y, s.free))) < 1e-4
    expect = cosine(at_short, at_fixed)
    assert expect < 0.9999  # the test has teeth: the two gradients differ
    assert r["implicit"]["total"]["cosine"] == pytest.approx(expect, abs=1e-9)
    assert r["relaxation"]["reference_relaxed_on"] is True
    assert r["relaxation"]["reference_free"]["residual_max"] < SETTLE_TOL
    table = format_table(r)
    assert "relaxed on from the estimators' free state" in table and "reference: WARNING" not in table
    settled = gradcheck(s.model, s.x, s.y, {"implicit": implicit}, EXACT)
    assert "reference_free" not in settled["relaxation"]
    assert settled["implicit"]["total"]["cosine"] == pytest.approx(1.0, abs=1e-12)
    # a reference that cannot settle either (a budget of 3 more steps) is said to be untrusted
    bad = gradcheck(s.model, s.x, s.y, {"implicit": implicit}, short, settle_steps=3)
    table = format_table(bad)
    assert "reference: WARNING: its free phase did not settle" in table and bad["reference"] is None
    assert bad["implicit"]["total"]["cosine"] is None and "no cosine is reported" in table
    assert "free phase: 3 steps" in table  # the relaxation figures are still printed


# -- hEP: the Fourier coefficients around the circle ------------------------------------


@eqx.filter_jit
def _circle(model, free, y, beta, n):
    """The hEP estimate, its circle's coefficients, and every point of the circle relaxed."""
    v, _, states = circle_derivative(model, free, y, beta, n, EXACT.nudged)
    decay = circle_decay(model, free, states, beta, n)
    betas = beta * jnp.exp(2j * jnp.pi * jnp.arange(n) / n)
    u, _ = nudged_phases(model, free, y, betas, EXACT.nudged)
    return v, decay, model.activity(u)


@pytest.mark.parametrize("n", [5, 6])
def test_the_coefficients_are_the_dft_of_every_point_of_the_circle(n):
    """From the points relaxed (conjugates left out), the same coefficients as a DFT of
    all ``N`` points relaxed one by one; ``c_1 = |beta|`` times the hEP estimate."""
    s, beta = setup(MODEL), 0.5
    v, decay, a = _circle(s.model, s.free, s.y, beta, n)
    a0 = s.model.activity(s.free.u)
    d = np.concatenate([np.asarray(a[p] - a0[p]) for p in a0], axis=-1)  # (N, B, D)
    c = np.fft.fft(d, axis=0) / n  # c[m] = (1/N) sum_k d_k exp(-2 pi i k m / N)
    orders = np.roll(c, -1, axis=0)  # m = 1 .. N - 1, then N (= index 0)
    np.testing.assert_allclose(np.asarray(decay.norms), np.linalg.norm(orders, axis=-1), rtol=1e-7)
    np.testing.assert_allclose(c[1].imag, 0, atol=1e-12)  # real Taylor coefficients
    vv = np.concatenate([np.asarray(v[p]) for p in a0], axis=-1)
    np.testing.assert_allclose(c[1].real, beta * vv, rtol=1e-7, atol=1e-14)


@eqx.filter_jit
def _hep(model, x, y, free, solvers, beta, points):
    est = make_estimator("hep", solvers, beta=beta, points=points)
    g, info = est(model, x, y, free, None)
    return g, estimate_metrics(info), jnp.max(info.phases.residual)


def _hep_case(beta, points):
    s = setup(MODEL)
    g, m, residual = _hep(s.model, s.x, s.y, s.free, EXACT, beta, points)
    error = rel(flat_params(g), flat_params(gradient(MODEL, "implicit")))
    figures = {"hep_decay_mean": float(m["hep_decay"]), "hep_error_mean": float(m["hep_error"]),
               "hep_beta_suggested": float(m["hep_beta_suggested"])}
    return error, figures, float(residual)


def test_a_circle_well_inside_the_radius_decays():
    error, figures, residual = _hep_case(0.05, 4)
    assert residual < 1e-10 and error < 1e-5
    assert figures["hep_decay_mean"] < 0.1 and figures["hep_error_mean"] < 1e-3
    assert figures["hep_beta_suggested"] == 0.05
    assert estimate_problems(figures, beta=0.05) == []


def test_the_estimated_error_does_not_grow_with_points_at_the_rounding_floor():
    """At a small radius the high orders fall below the rounding floor; they are left out
    of the fitted line, so more points never raise the estimated error (a review saw
    N = 6 estimated above N = 2 while measured 700x below)."""
    s = setup(MODEL)
    errors, floored = [], []
    for n in (2, 4, 8):
        _, decay, _ = _circle(s.model, s.free, s.y, 0.01, n)
        floor = 64 * np.finfo(np.float64).eps * (1 + np.asarray(residual_norm(s.model.activity(s.free.u))))
        floored.append(bool(np.any(np.asarray(decay.norms) < floor)))
        errors.append(float(decay.error_mean()))
    assert floored == [False, False, True]  # the case: N = 8 reaches the floor
    assert errors[2] <= errors[1] <= errors[0] and errors[1] < 1e-6
    # the fit itself: orders at the floor are left out where two or more are above it
    from eqprop.estimate.nudge import fitted_rate
    norms = jnp.array([[1e-1], [1e-3], [1e-5], [1e-7], [1e-7], [1e-7]])
    floor = jnp.array([1e-6])
    assert float(fitted_rate(norms, floor)[0]) == pytest.approx(1e-2, rel=1e-6)  # not ~0.1 (flattened)
    assert float(fitted_rate(norms[:2], floor)[0]) == pytest.approx(1e-2, rel=1e-6)
    assert float(fitted_rate(jnp.array([[1e-1], [1e-8]]), floor)[0]) == pytest.approx(1e-5, rel=1e-6)
    assert float(fitted_rate(jnp.array([[1e-8], [1e-8]]), floor)[0]) == 0.0  # nothing resolved


@pytest.mark.parametrize("points", [4, 8])
def test_a_circle_beyond_the_radius_is_flagged_although_every_phase_converged(points):
    """|beta| = 5 on this network: every nudged phase converges, the estimate is wrong,
    and more points make it no better; the coefficients do not decay, and the warning
    names a smaller |beta|, at which the estimate is better."""
    error, figures, residual = _hep_case(5.0, points)
    assert residual < 1e-10  # every phase converged
    assert error > 0.3  # and the estimate is wrong
    assert figures["hep_decay_mean"] > 0.9 and figures["hep_error_mean"] > HEP_ERROR_LIMIT
    (problem,) = estimate_problems(figures, beta=5.0)
    smaller = figures["hep_beta_suggested"]
    assert "do not decay" in problem and f"try estimator.beta = {smaller:.3g}" in problem
    assert smaller < 0.6 * 5.0
    if points == 4:
        assert _hep_case(smaller, points)[0] < error


def test_eqprop_warnings_print_as_one_line_each_time(capsys):
    """Inside ``warnings_as_lines`` an eqprop warning (estimates, checkpoints) is one
    prefixed line every time it is raised (a failing epoch each epoch, not once per source
    line); other warnings and the state after the block are untouched."""
    from eqprop.guards import EstimateWarning, warnings_as_lines
    from eqprop.train.checkpoint import CheckpointWarning

    others = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *a, **k: others.append(str(message))
        before = (warnings.showwarning, list(warnings.filters))
        with warnings_as_lines("[run] warning: "):
            for epoch in (1, 2):
                warnings.warn("nudged phases did not converge", EstimateWarning)
            warnings.warn("latest: payload corrupt, used the previous entry", CheckpointWarning)
            warnings.warn("something else", UserWarning)
        assert (warnings.showwarning, list(warnings.filters)) == before
    assert capsys.readouterr().err.splitlines() == (
        ["[run] warning: nudged phases did not converge"] * 2
        + ["[run] warning: latest: payload corrupt, used the previous entry"])
    assert others == ["something else"]


def test_the_epoch_line_shows_the_median_rate_which_one_outlier_does_not_move(unsettled):
    """One outlier example's rate (into the hundreds on a trained CNN) dominates the batch
    mean; the record keeps both, and the epoch line and the report show the median."""
    from eqprop.estimate.nudge import CircleDecay
    from eqprop.train.loop import _estimate_text
    from eqprop.train.report import _estimate_cell as report_text

    circle = CircleDecay(norms=jnp.ones((2, 4)), rate=jnp.array([0.2, 0.3, 0.25, 300.0]),
                         beta=0.5, points=2)
    assert float(circle.rate_median()) == pytest.approx(0.275)
    assert float(circle.rate_mean()) > 75
    out, _ = unsettled
    for r in _records(out):
        assert r["hep_decay_median"] <= r["hep_decay_mean"] + 1e-12
        rec = dict(r, hep_decay_mean=123.0)
        shown = f"hEP circle {r['hep_decay_median']:.2g}x per order (median)"
        assert shown in _estimate_text(rec) and shown in report_text(rec)
        assert "123" not in _estimate_text(rec) and "123" not in report_text(rec)


def test_the_hep_warning_quotes_the_median_rate():
    figures = {"hep_decay_mean": 612.0, "hep_decay_median": 1.5, "hep_error_mean": 0.89,
               "hep_beta_suggested": 0.01}
    (problem,) = estimate_problems(figures, beta=0.5)
    assert "(each order 1.5x the last (median), estimated truncation error 89%" in problem and "612" not in problem
    del figures["hep_decay_median"]  # a record written before the median: the mean, unlabelled
    (problem,) = estimate_problems(figures, beta=0.5)
    assert "(each order 612x the last, estimated truncation error 89%" in problem
    # just above the limit, with the digits that show it is above (not "10% > 10%")
    (problem,) = estimate_problems({"hep_error_mean": 0.1004, "hep_decay_median": 0.32}, beta=0.5)
    assert "estimated truncation error 10.04% > 10%" in problem


def test_the_free_phase_advice_fits_the_update_and_the_epoch_line_shows_its_residual(unsettled):
    """A fresh user running alternating updates was told to 'use dynamics.update =
    "alternating"', and the epoch line showed the nudged residual but not the free one."""
    from eqprop.train.loop import _estimate_text

    figures = {"residual_mean": 0.2, "nonconverged_fraction": 0.9}
    (sync,) = estimate_problems(figures, update="synchronous")
    (alt,) = estimate_problems(figures, update="alternating")
    assert "use dynamics.update = 'alternating'" in sync and "lower dynamics.dt" in sync
    assert "alternating'" not in alt and "dt" not in alt and "raise dynamics.free_steps" in alt
    # a model that refuses alternating updates (a directed network) is not advised them
    (cannot,) = estimate_problems(figures, update="synchronous", alternates=False)
    assert "alternating" not in cannot and cannot.endswith("lower dynamics.dt")
    from eqprop.config import load_config
    from eqprop.solvers import can_alternate
    from eqprop.train import build_program

    assert not can_alternate(build_program(load_config("xor-deep")).model)
    assert can_alternate(build_program(load_config("digits-quick")).model)
    out, _ = unsettled
    for r in _records(out):
        line = _estimate_text(r)
        assert line.startswith(f" | free res {r['residual_mean']:.1e} "
                               f"({100 * r['nonconverged_fraction']:.0f}% > {NONCONVERGED_TOL:g})")
        assert "free res" not in _estimate_text(r, relaxes=False)  # bp: a forward pass


def test_gradcheck_reports_a_diverged_gradient_as_not_finite_never_as_a_cosine():
    """A linear solve that diverges (the damped iteration at dt = 5, beyond its stable
    step) gives a NaN gradient: gradcheck says it is not finite (no cosine of 0.0, as
    a NaN-safe cosine would print), names the cause, keeps the other estimators'
    cosines, and advises GMRES only where the solver is not already using it; a reference
    that diverges the same way leaves every cosine out."""
    from eqprop.gradcheck import format_table, gradcheck, to_json
    from eqprop.linear import DampedIteration
    s = setup(MODEL)
    diverging = dataclasses.replace(EXACT, linear=DampedIteration(dt=5.0, max_steps=400))
    good = make_estimator("hep", EXACT)
    r = gradcheck(s.model, s.x, s.y, {"exact-nudge": make_estimator("exact-nudge", diverging),
                                      "hep": good}, EXACT)
    bad = r["exact-nudge"]
    assert bad["finite"] is False and bad["total"] == {"cosine": None, "relative_error": None}
    assert all(q["cosine"] is None for q in bad["parameters"].values()) and bad["error_vectors"] == {}
    assert bad["problems"][0].startswith("its gradient is not finite")
    assert "linear_solver = 'auto'" in bad["problems"][1]  # fixed-point alone: GMRES is advice
    assert r["hep"]["finite"] is True and r["hep"]["total"]["cosine"] > 0.99
    table = format_table(r)
    row = next(line for line in table.splitlines() if line.startswith("exact-nudge "))
    assert "not finite" in row and "0.000000" not in row
    from eqprop.cli import strict_json
    assert strict_json(to_json(r))["exact-nudge"]["total"]["cosine"] is None  # JSON null, as the CLI writes
    # the reference does not use that solver: its own is damped with a GMRES fallback and
    # the settling budget, so it stays the exact gradient
    r = gradcheck(s.model, s.x, s.y, {"hep": good}, diverging)
    assert r["reference"] == "implicit" and r["relaxation"]["reference_problem"] is None
    assert r["hep"]["total"]["cosine"] > 0.99


def test_a_reference_that_cannot_be_trusted_is_never_compared_with():
    """Each reason the implicit reference is not the gradient withholds every cosine."""
    from eqprop.gradcheck import reference_problem
    ok = {"finite": True, "residual_max": 1e-7, "residual_mean": 1e-8, "nonconverged_fraction": 0.0,
          "steps": 100}
    assert reference_problem(ok, ok, True) is None
    assert reference_problem(ok, ok, False) == "its gradient is not finite"
    assert "diverged" in reference_problem(ok, {**ok, "finite": False, "residual_max": float("inf")}, True)
    assert "stopped at residual mean" in reference_problem(ok, {**ok, "residual_mean": 0.5}, True)
    assert "did not settle" in reference_problem({**ok, "residual_max": 0.5, "nonconverged_fraction": 0.5},
                                                 ok, True)
    assert "diverged" in reference_problem({**ok, "finite": False}, ok, True)


def test_a_reference_whose_gradient_is_not_finite_withholds_every_cosine(monkeypatch):
    """End to end, the one reason the unit test above cannot reach through a real solve:
    the reference's linear solve converges but its gradient holds a NaN (injected into
    one leaf): no cosine is reported, the reason is named, the relaxation lines stay."""
    import eqprop.gradcheck as gc
    original = gc.make_estimator

    def poisoned(name, *args, **kwargs):
        est = original(name, *args, **kwargs)
        if name != "implicit":
            return est

        def reference(model, x, y, free, key):
            g, info = est(model, x, y, free, key)
            leaves, treedef = jax.tree.flatten(g)
            leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
            return jax.tree.unflatten(treedef, leaves), info
        return reference

    monkeypatch.setattr(gc, "make_estimator", poisoned)
    s = setup(MODEL)
    r = gc.gradcheck(s.model, s.x, s.y, {"hep": make_estimator("hep", EXACT)}, EXACT)
    assert r["reference"] is None and r["relaxation"]["reference_problem"] == "its gradient is not finite"
    assert r["relaxation"]["implicit_solve"]["residual_mean"] <= NONCONVERGED_TOL  # the solve converged
    assert r["hep"]["finite"] is True and r["hep"]["total"]["cosine"] is None
    table = gc.format_table(r)
    assert "no cosine is reported" in table and "its gradient is not finite" in table
    assert "\nfree phase: " in table and "reference's linear solve" in table and "0.000000" not in table


def test_linear_and_nudged_advice_blames_an_unsettled_free_state_first():
    """The advice of a failed linear solve or nudged phase fits the settings in force:
    no GMRES advice where GMRES runs; and when the free state they start from is not a
    fixed point, that is named first (more steps or a smaller beta do not cure it)."""
    figures = {"linear_residual_mean": 0.5, "nudged_residual_mean": 0.5}
    assert "'auto'" in " ".join(estimate_problems(figures, linear_solver="fixed-point"))
    for name in ("auto", "gmres"):
        text = " ".join(estimate_problems(figures, linear_solver=name))
        assert "linear_solver" not in text and "dynamics.linear_steps" in text
    drifting = estimate_problems(figures, free_residual=0.1, linear_solver="fixed-point")
    assert len(drifting) == 2 and all("settle the free phase first" in p for p in drifting)
    assert not any("lower estimator.beta" in p or "linear_solver" in p for p in drifting)


def test_gradcheck_names_each_stage_and_warns_on_a_spec_given_twice():
    from eqprop.gradcheck import build_specs, gradcheck
    from eqprop.guards import EqpropWarning
    s = setup(MODEL)
    with pytest.warns(EqpropWarning, match="given twice"):
        specs = build_specs(["hep", "hep", "exact-nudge"], EXACT, {})
    assert list(specs) == ["hep", "exact-nudge"]
    stages = []
    gradcheck(s.model, s.x, s.y, specs, EXACT, progress=stages.append)
    assert stages == ["free phase", "reference (implicit)", "hep", "exact-nudge"]


def test_gradcheck_flags_stragglers_when_the_mean_residual_is_within_the_tolerance():
    """The reference settles on when any example is above the tolerance (the max); the
    free phase's line then says so even where the mean is below it, so that the table
    never reports a settled-on reference with no word on the free phase."""
    from eqprop.gradcheck import gradcheck
    s = setup(MODEL)
    for steps in range(4, 60):
        short = dataclasses.replace(EXACT, free=FixedPoint(steps=steps))
        r = relax_free(s.model, s.x, short).stats.residual
        if float(jnp.mean(r)) <= NONCONVERGED_TOL < float(jnp.max(r)):
            break
    else:
        raise AssertionError("no budget leaves the mean within the tolerance and the max above it")
    r = gradcheck(s.model, s.x, s.y, {"hep": make_estimator("hep", EXACT)}, short)
    assert r["relaxation"]["reference_relaxed_on"] is True
    assert any("did not converge (residual max" in p for p in r["relaxation"]["problems"])


def test_gradcheck_states_the_diagnostics_budget_and_warns_when_it_leaves_the_batch_unsettled(tmp_path, capsys):
    """With ``[diagnostics] free_steps`` set, the diagnostics heading states that budget
    and, where it leaves examples unsettled, a warning says so (their bias cosines are
    not taken at a fixed point); unset, the batch relaxes on and nothing is warned."""
    config = {**TINY, "model": {"sizes": [16, 8, 8, 4]},
              "dynamics": {"free_steps": 1, "nudged_steps": 20, "update": "synchronous"},
              "estimator": {"name": "hep", "points": 2, "beta": 0.05},
              "diagnostics": {"free_steps": 2}}
    (tmp_path / "c.toml").write_text(_toml(config))
    assert main(["gradcheck", str(tmp_path / "c.toml")]) == 0
    table = capsys.readouterr().out
    assert "taken after diagnostics.free_steps = 2 free updates" in table
    assert "diagnostics: WARNING: 100% of the batch did not settle in diagnostics.free_steps = 2" in table
    config["diagnostics"]["free_steps"] = 200
    (tmp_path / "c.toml").write_text(_toml(config))
    assert main(["gradcheck", str(tmp_path / "c.toml")]) == 0
    table = capsys.readouterr().out
    assert "free_steps = 200 free updates" in table and "diagnostics: WARNING" not in table


def test_gradcheck_warns_when_the_probe_batch_does_not_settle_even_relaxed_on(tmp_path, capsys, monkeypatch):
    """Without a diagnostics budget the probe batch relaxes on; where even that leaves it
    unsettled (here a settling budget of 2 updates), the bias cosines are said to be
    untrusted, and the reference withholds every cosine."""
    import eqprop.solvers as solvers_module
    monkeypatch.setattr(solvers_module, "SETTLE_FACTOR", 1)
    monkeypatch.setattr(solvers_module, "SETTLE_MIN_STEPS", 2)
    config = {**TINY, "model": {"sizes": [16, 8, 8, 4]},
              # nudged_steps 17: settings no other test uses, so that no jitted diagnostics
              # program traced with the real settling budget (a trace-time constant) is reused
              "dynamics": {"free_steps": 1, "nudged_steps": 17, "update": "synchronous"},
              "estimator": {"name": "hep", "points": 2, "beta": 0.05}}
    (tmp_path / "c.toml").write_text(_toml(config))
    assert main(["gradcheck", str(tmp_path / "c.toml")]) == 0
    table = capsys.readouterr().out
    assert "diagnostics: WARNING: 100% of the batch did not settle even relaxed on, up to 2 updates" in table
    assert "reference: WARNING: its free phase did not settle" in table and "no cosine is reported" in table


def test_the_circle_summary_says_fall_or_grow_and_keeps_small_errors_visible():
    from eqprop.guards import circle_summary

    # a decay: the truncation error of N = 6 at factor 0.19 is ~5e-5, printed as such
    # (a percentage with one decimal printed 0.0% beside a measured 1.5e-4)
    text = circle_summary(0.19, 0.2, 0.19 ** 6, 0.21)
    assert "fall: each order is 0.19x the last (median; mean 0.2, max 0.21)" in text
    assert "estimated truncation error 4.7e-05" in text and "grow" not in text
    # a growth: never called a "decay rate", no truncation error claimed
    text = circle_summary(19.4, 201.6, 1.0)
    assert "do not fall: each order is 19.4x the last (median; mean 202)" in text
    assert "cannot be estimated" in text and "estimated truncation error" not in text
    # with two points the estimate rests on one ratio: said (a review: 2.1e-3 against 3.3e-2)
    assert "c_2/c_1 alone" in circle_summary(0.05, 0.05, 0.0025, points=2)
    assert "c_2/c_1" not in circle_summary(0.05, 0.05, 0.0025 ** 2, points=4)
    # fitted_rate's 0 (no order above the rounding floor, |beta| 0.01 on a trained CNN)
    # is not "each order is 0x the last", a perfect decay
    text = circle_summary(0.0, 0.0811, 0.039, 0.762, points=2)
    assert "0x" not in text and "no Fourier coefficient above the rounding floor" in text
    assert "(median; mean 0.0811, max 0.762; estimated error 0.039" in text


def test_low_precision_advice_names_the_rounding_floor():
    """In bfloat16 a review raised nudged_steps 5x and the residual stayed at 1.6e-3 (its
    products' rounding floor; float32: 1.8e-5): the advice says more steps may not help
    and how to check; float32 and unknown dtypes keep the plain advice."""
    figures = {"nudged_residual_mean": 1.6e-3, "residual_mean": 2e-3}
    for dtype, roundoff in (("bfloat16", "3.9e-03"), ("float16", "4.9e-04")):
        free, nudged = estimate_problems({"residual_mean": 2e-3}, compute_dtype=dtype, update="alternating") + \
            estimate_problems({"nudged_residual_mean": 1.6e-3}, compute_dtype=dtype)
        for text in (free, nudged):
            assert f"in {dtype} compute (unit roundoff {roundoff}) this can be the rounding floor" in text
            assert "model.compute_dtype='\"float32\"'" in text
    for dtype in ("float32", None):
        assert not any("rounding floor" in p for p in estimate_problems(figures, compute_dtype=dtype))
    # from an unsettled free state the nudged sentence defers to the free one, which names it once
    both = estimate_problems(figures, compute_dtype="bfloat16")
    assert sum("rounding floor" in p for p in both) == 1 and "settle the free phase first" in both[1]


def test_the_circle_in_brief_names_the_statistic_it_shows():
    """The epoch line and the report say "median" only of a median (records before it
    hold the mean), and a record without hEP's check shows nothing."""
    from eqprop.guards import circle_brief

    assert circle_brief({"hep_decay_median": 12.0, "hep_decay_mean": 490.0,
                         "hep_error_mean": 0.79}) == "hEP circle 12x per order (median), est. error 79%"
    assert circle_brief({"hep_decay_mean": 0.19, "hep_error_mean": 4.7e-5}) == \
        "hEP circle 0.19x per order (mean), est. error 0.005%"
    assert circle_brief({"residual_mean": 0.1}) is None
    assert circle_brief({"hep_decay_median": 0.0, "hep_error_mean": 0.04}) == \
        "hEP circle at the rounding floor (median), est. error 4%"
    # examples whose second order is at the rounding floor: their rate is only a bound
    assert circle_brief({"hep_decay_median": 0.02, "hep_error_mean": 0.01, "hep_floor_fraction": 0.58}) == \
        "hEP circle 0.02x per order (median; 58% of examples at the rounding floor: at most that), est. error 1%"


def test_the_circle_counts_the_examples_whose_rate_the_rounding_floor_bounds():
    """A review: on a trained digits net the median rate read 0.02x every epoch, set by the
    rounding floor for about half of the examples; CircleDecay.bounded names them."""
    from eqprop.estimate.nudge import CircleDecay, fitted_rate, floor_bounded

    norms = jnp.asarray([[1.0, 1.0, 1e-9, 1.0], [0.1, 1e-9, 1e-9, 0.5], [0.01, 1e-9, 1e-9, 1e-9]])
    floor = jnp.full((4,), 1e-6)
    bounded = floor_bounded(norms, floor)
    assert bounded.tolist() == [False, True, False, False]  # 3, 1, 0 and 2 orders resolved
    rate = fitted_rate(norms, floor)
    assert float(rate[0]) == pytest.approx(0.1) and float(rate[2]) == 0
    assert float(rate[1]) == pytest.approx(1e-6 ** 0.5, rel=1e-3)  # through the floor: a bound
    circle = CircleDecay(norms=norms, rate=rate, beta=1.0, points=3, bounded=bounded)
    assert float(circle.floor_fraction()) == 0.25
    assert not floor_bounded(norms[:1], floor).any()  # N = 1: no line to bound


def test_a_share_reads_0_or_100_percent_only_when_it_is():
    """A review read "(0% of (phase, example) pairs above it)" beside a mean above the
    tolerance: the fraction was 0.14%."""
    from eqprop.guards import share

    assert [share(f) for f in (0.0, 0.0014, 0.00004, 0.004, 0.01, 0.5, 0.99, 0.996, 0.99999, 1.0)] == \
        ["0%", "0.1%", "0.004%", "0.4%", "1%", "50%", "99%", "99.6%", ">99.9%", "100%"]
    from eqprop.guards import estimate_problems

    text = " ".join(estimate_problems({"nudged_residual_mean": 0.00131, "nudged_nonconverged_fraction": 0.0014}))
    assert "(0.1% of (phase, example) pairs above it)" in text
