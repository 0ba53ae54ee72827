"""Gradient check: every estimator against the exact (implicit-differentiation) gradient.

On one batch, for each estimator SPEC: cosine similarity and relative error of its
gradient against the implicit gradient, per parameter and in total; the cosine of each
population's error vector (its ``da/dbeta`` estimate) against the recurrent-backprop
``delta``; the relaxation figures of its nudged phases or linear solve; for hEP the
decay of the Fourier coefficients of ``a*(beta_k)`` around the circle; and a warning
line for each figure beyond its limit (:func:`eqprop.guards.estimate_problems`).

Two cases are set apart. An estimator whose gradient is not taken at the free fixed point
(its :meth:`~eqprop.estimate.Estimator.inference` is its own: ``bp``, which differentiates
the feed-forward counterpart of the network) is refused: its cosine with the recurrent
network's gradient would compare two different networks. A model in mixed precision
(:class:`~eqprop.network.MixedPrecisionModel` with ``compute_dtype`` ``bfloat16`` or
``float16``) has its estimates made as it trains (lower-precision products, from its own
free phase) and compared with the reference computed in float32 compute (the same
parameters, relaxed and differentiated in float32): the result's ``precision`` says so.

``eqprop gradcheck`` prints this beside the asymmetry diagnostics of
:mod:`eqprop.diagnostics` (``angle``, ``jacobian_symmetry``, ``alignment``,
``cos_finite_nudge``, ``cos_asymmetry``, ``homeo_loss``, ...) of the config's estimator:
the command composes the two (:func:`format_table` takes the diagnostics as its second
argument, the JSON holds them at the top level); this module does not import
:mod:`eqprop.diagnostics`, and both take their comparisons from :mod:`eqprop.metrics`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .estimate import CircleDecay, Estimator, free_phase, make_estimator, parse_spec
from .guards import NONCONVERGED_TOL, EqpropWarning, RelaxStats, circle_summary, estimate_problems, share
from .linear import DampedThenGMRES, linear_solver_name
from .metrics import compare, cosine
from .network.base import BoxProjectedModel, EquilibriumModel, MixedPrecisionModel
from .registry import ESTIMATORS
from .settings import SettingError
from .solvers import SETTLE_FACTOR, SETTLE_MIN_STEPS, SETTLE_TOL, PhaseSolvers, can_alternate, settle
from .train.step import all_finite

__all__ = ["gradcheck", "build_specs", "format_table", "to_json", "settle", "SETTLE_FACTOR", "SETTLE_MIN_STEPS", "SETTLE_TOL"]


def _stats(stats: RelaxStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {
        "steps": int(jnp.max(stats.steps)),
        "residual_max": float(jnp.max(stats.residual)),
        "residual_mean": float(stats.residual_mean()),
        "nonconverged_fraction": float(stats.nonconverged_fraction()),
        # diverged: flagged by the guards, or a residual that is not finite at the end
        "finite": bool(jnp.all(stats.nonfinite_step < 0) & jnp.all(jnp.isfinite(stats.residual))),
    }


def _circle(decay: CircleDecay | None) -> dict[str, Any] | None:
    if decay is None:
        return None
    return {
        "points": decay.points,
        "beta": decay.beta,
        "decay_rate_mean": float(decay.rate_mean()),
        "decay_rate_median": float(decay.rate_median()),
        "decay_rate_max": float(jnp.max(decay.rate)),
        "error_mean": float(decay.error_mean()),
        "beta_suggested": float(decay.beta_suggested()),
        "coefficients": [float(v) for v in jnp.mean(decay.norms, axis=1)],
    }


def _problems(entry: Mapping[str, Any], free: Mapping[str, Any], linear_solver: str | None,
              compute_dtype: str | None = None) -> list[str]:
    """:func:`~eqprop.guards.estimate_problems` of one estimator's entry, taken from the
    free phase ``free`` (its STATS: reported once, apart; but a free state with any
    example above :data:`~eqprop.guards.NONCONVERGED_TOL`, the test that makes the
    reference settle on, also moves hEP's circle and the nudged phases and linear solves
    started from it, and the advice then says so first), with ``linear_solver`` the
    registered name of the estimator's linear solver and ``compute_dtype`` the model's."""
    ph, lin, circ = entry.get("phases"), entry.get("linear"), entry.get("circle")
    figures = {
        "nudged_residual_mean": ph and ph["residual_mean"],
        "nudged_nonconverged_fraction": ph and ph["nonconverged_fraction"],
        "linear_residual_mean": lin and lin["residual_mean"],
        "hep_decay_mean": circ and circ["decay_rate_mean"],
        "hep_decay_median": circ and circ["decay_rate_median"],
        "hep_error_mean": circ and circ["error_mean"],
        "hep_beta_suggested": circ and circ["beta_suggested"],
    }
    out = estimate_problems(figures, beta=circ and circ["beta"], free_residual=free["residual_max"],
                            linear_solver=linear_solver, compute_dtype=compute_dtype)
    if not entry["finite"]:
        out.insert(0, "its gradient is not finite (a nudged phase or linear solve diverged"
                   + (", started from a free state that is not a fixed point" if not free["residual_max"] <=
                      NONCONVERGED_TOL else "") + "): no cosine")
    return out


#: a batch whose largest example carries at least this share of recurrent backprop's
#: ``|delta|^2`` has its batch cosines ``cos a/<population>`` set by that one example
#: (:func:`_concentration`; on a trained CNN one example of 50 carried 79%)
CONCENTRATED_SHARE = 0.5


def _per_example_sq(tree: Mapping[str, Any]) -> np.ndarray:
    """``(B,)``: the squared norm of each example's vector, summed over the populations."""
    return sum(np.sum(np.reshape(np.asarray(v, dtype=np.float64), (np.shape(v)[0], -1)) ** 2, axis=1)
               for v in tree.values())


def _concentration(delta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """How much of the batch's recurrent-backprop ``delta`` its largest example carries:
    ``{"example": i, "share": |delta_i|^2 / sum_j |delta_j|^2, "max_over_median": |delta_i| /
    median_j |delta_j|}``; ``None`` without a ``delta``, under 3 examples, or a non-finite one."""
    if not delta:
        return None
    sq = _per_example_sq(delta)
    if sq.shape[0] < 3 or not np.all(np.isfinite(sq)) or not sq.sum() > 0:
        return None
    i, norms = int(np.argmax(sq)), np.sqrt(sq)
    median = float(np.median(norms))
    return {"example": i, "share": float(sq[i] / sq.sum()),
            "max_over_median": float(norms[i] / median) if median > 0 else float("inf")}


def _at_example(v: Mapping[str, Any], delta: Mapping[str, Any], i: int) -> dict[str, Any]:
    """An estimator's error vector ``v`` against ``delta`` at example ``i`` (all populations
    together: cosine and size ratio) and on the batch without it (cosine per population)."""
    vi = np.concatenate([np.ravel(np.asarray(v[p])[i]) for p in delta])
    di = np.concatenate([np.ravel(np.asarray(delta[p])[i]) for p in delta])
    dn = float(np.linalg.norm(di))
    return {"cosine": cosine(vi, di), "norm_ratio": float(np.linalg.norm(vi)) / dn if dn > 0 else None,
            "without": {p: cosine(np.delete(np.asarray(v[p]), i, axis=0),
                                  np.delete(np.asarray(delta[p]), i, axis=0)) for p in delta}}


#: a per-parameter cosine below :data:`HIDDEN_BELOW` and at least :data:`HIDDEN_GAP` below
#: the total is named (:func:`_hidden_parameters`)
HIDDEN_BELOW, HIDDEN_GAP = 0.9, 0.1

#: diagnostics that are yes/no flags, printed as 0 or 1
FLAGS = ("probe_settled_on",)


def _hidden_parameters(entry: Mapping[str, Any]) -> str | None:
    """A sentence naming the parameters whose cosine is below :data:`HIDDEN_BELOW` and at
    least :data:`HIDDEN_GAP` below the total (the total weighs each parameter by the size of
    its gradient: a large, exact readout gradient can hide a layer whose estimate is poor;
    reviews read a total of 0.998 over a first-layer kernel at 0.19, and 0.966 over one at
    0.58), or ``None``."""
    total = entry.get("total", {}).get("cosine")
    if total is None:
        return None
    poor = sorted((q["cosine"], name) for name, q in entry.get("parameters", {}).items()
                  if q.get("cosine") is not None and q["cosine"] < min(HIDDEN_BELOW, total - HIDDEN_GAP))
    if not poor:
        return None
    listed = ", ".join(f"{name} {c:.3f}" for c, name in poor)
    return (f"the total cosine {total:.4f} hides {listed}: it weighs each parameter by its "
            "gradient's size (the per-parameter table has each)")


def _no_comparison(entry: dict[str, Any]) -> None:
    """Blank the cosines of an entry that has nothing valid to compare (``None``)."""
    entry["total"] = {"cosine": None, "relative_error": None}
    entry["parameters"] = {n: {"cosine": None, "relative_error": None} for n in entry["parameters"]}
    entry["error_vectors"] = {}
    entry.pop("top_example", None)


def gradcheck(
    model: EquilibriumModel,
    x: jax.Array,
    y: jax.Array,
    estimators: Mapping[str, Estimator],
    solvers: PhaseSolvers,
    *,
    key: jax.Array | None = None,
    settle_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compare each estimator with the implicit gradient on the batch ``(x, y)``.

    The batch is relaxed once (``solvers.free``); every estimator starts from that free
    state, as it does in training. So does the reference, implicit differentiation
    (recurrent backprop, the exact gradient of the loss at the fixed point), when that
    state is a fixed point (every example's residual below
    :data:`~eqprop.guards.NONCONVERGED_TOL`). When it is not, the reference relaxes on
    from it (:func:`settle`: ``settle_steps`` updates, by default ten free budgets and at
    least 1000, stopping at a residual of :data:`SETTLE_TOL`), since the implicit formula linearised at an
    unsettled state is not the gradient of anything: the cosines then measure each
    estimate as it trains against the gradient it stands for, and
    ``relaxation["reference_free"]`` says how settled the reference is. (Measured on a
    trained Fashion-MNIST CNN, 50 sweeps where ~500 settle: the reference at the
    estimators' state gave the training estimate a cosine of 0.33, the settled one 0.87;
    docs/results.md.)

    **Arguments:**

    - ``model``: one network (not stacked over seeds);
    - ``x``: input batch ``(B, ...)``; ``y``: its integer labels ``(B,)``;
    - ``estimators``: ``{spec: estimator}``, e.g. from :func:`build_specs`;
    - ``solvers``: the free phase's solver, and the linear solver and ``converged_tol``
      of the reference (the estimators carry their own solvers);
    - ``key``: PRNG key passed to every estimator (default ``PRNGKey(0)``);
    - ``settle_steps``: the reference's budget when it settles (default: :func:`settle`'s);
    - ``progress``: called with the name of each stage before it runs (``"free phase"``,
      ``"reference (implicit)"``, then each SPEC), e.g. to drive a progress bar: the exact
      SPECs started from an unsettled state can take minutes each.

    **Returns:** ``{spec: {"total": {"cosine", "relative_error"}, "parameters": {name:
    {"cosine", "relative_error"}}, "error_vectors": {population: cosine}, "phases":
    STATS | None, "linear": STATS | None, "circle": CIRCLE | None, "problems": [str]},
    ..., "relaxation": {"free": STATS, "implicit_solve": STATS, "clipped_fraction": float |
    None, "problems": [str] (the free phase beyond the tolerance)}, "reference": "implicit" |
    None}``, Python floats, ints, bools and strings.
    With a mixed-precision model the result also has ``"precision": {"estimates":
    compute_dtype, "reference": "float32"}`` (absent otherwise) and
    ``relaxation["reference_free"]``, the float32 free phase of the reference (relaxed
    from the start, with the settling budget, not from the estimators' state), which is
    also there (STATS) when the reference relaxed on; ``relaxation["reference_relaxed_on"]``
    (bool, with it) says whether it did (not whether it settled: ``reference_free`` says
    that). ``relaxation["update"]`` is the free solver's update order (steps are group
    updates under ``"alternating"``). The reference's linear solve
    (``relaxation["implicit_solve"]``) is :func:`reference_solvers`' whatever the
    configured one.
    Each entry has ``"finite"`` (bool): whether its gradient is finite; where it is not
    (a diverged nudged phase or linear solve), its cosines and relative errors are
    ``None`` and a problem says so. ``relaxation["reference_problem"]`` is ``None``, or
    why the reference cannot be trusted (:func:`reference_problem`: not finite, its
    linear solve diverged or stopped short, its free phase did not settle); then
    ``reference`` is ``None`` and every cosine is ``None``.
    ``reference`` is ``None`` when the model clips its states to a box
    (:class:`~eqprop.network.BoxProjectedModel`) and some sit on its bounds at the free
    fixed point (:func:`clipped_fraction`): the cosines are then not comparisons with
    the gradient and must not be read as such. ``error_vectors`` holds the
    batch cosine of each population's error vector with the recurrent-backprop ``delta``
    (``{}`` for an estimator without one, e.g. ``bptt``).
    ``relaxation["delta_concentration"]`` (``None`` without a trusted reference) is
    ``{"example", "share", "max_over_median"}``: the example of the batch with the largest
    ``delta``, its share of ``sum |delta|^2`` and its norm over the median's; an entry with
    an error vector then has ``"top_example": {"cosine", "norm_ratio", "without":
    {population: cosine}}``, its error vector at that example against ``delta`` (cosine,
    size ratio) and the batch cosines without it. On a trained network one slow example
    can carry most of ``delta`` and set the batch cosines alone: :func:`format_table` says
    so from :data:`CONCENTRATED_SHARE` on. ``STATS`` (the nudged phases,
    the linear solve, the free phase) is ``{"steps", "residual_max", "residual_mean",
    "nonconverged_fraction", "finite"}`` (the fraction of (phase, example) residuals above
    :data:`~eqprop.guards.NONCONVERGED_TOL`). ``CIRCLE`` (hEP and symmetric EP, ``N >=
    2``; :class:`~eqprop.estimate.CircleDecay`) is ``{"points", "beta",
    "decay_rate_mean", "decay_rate_median", "decay_rate_max", "error_mean",
    "beta_suggested", "coefficients"}``: the fitted geometric rate per order of the Fourier
    coefficients of ``a*(beta_k)`` around the circle (mean, median and largest over the
    batch), the estimated
    relative error ``min(rate^N, 1)`` (batch mean), a smaller radius to try, and the
    batch-mean ``||c_m||`` for ``m = 1 .. N``. ``problems``: the sentences of
    :func:`~eqprop.guards.estimate_problems` (nudged phases or linear solve above the
    tolerance, hEP's coefficients not decaying), ``[]`` when none.

    **Raises:** ``ValueError`` (from ``Estimator.check``, prefixed with the SPEC) when an
    estimator cannot handle ``model``, before anything is computed, or when
    ``solvers.free`` cannot relax it;
    ``ValueError`` (one line quoting the SPEC) for an estimator that is not an estimate
    of the recurrent network's gradient at its free fixed point (``bp``).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    for spec, est in estimators.items():
        if not est.at_fixed_point():
            raise ValueError(
                f"estimator SPEC {spec!r}: {est.name!r} is not an estimate of the recurrent network's "
                "gradient at its free fixed point (it differentiates its own inference map: for 'bp' "
                "the feed-forward pass), so a cosine with implicit differentiation would compare two "
                "different networks; pass the recurrent estimators to compare with -e (e.g. "
                "-e hep -e exact-nudge)")
        try:
            est.check(model)
        except ValueError as err:  # which of several -e it was
            raise ValueError(f"estimator SPEC {spec!r}: {err}") from None
    say = progress or (lambda stage: None)
    say("free phase")
    free = eqx.filter_jit(free_phase)(model, x, solvers.free)
    say("reference (implicit)")
    reference = make_estimator("implicit", reference_solvers(solvers, settle_steps))
    ref_model, ref_free, precision, settled = model, free, None, None
    if float(jnp.max(free.stats.residual)) > NONCONVERGED_TOL:
        # implicit differentiation is the gradient only at a fixed point: the reference
        # relaxes on, from the estimators' free state, until it is one
        settled = settle(solvers.free, settle_steps)
    if isinstance(model, MixedPrecisionModel) and model.compute_dtype != "float32":
        # the reference in float32 compute, at its own (float32) fixed point
        ref_model = model.with_compute_dtype("float32")
        ref_free = eqx.filter_jit(free_phase)(ref_model, x, settled or settle(solvers.free, settle_steps))
        precision = {"estimates": model.compute_dtype, "reference": "float32"}
    elif settled is not None:
        ref_free = eqx.filter_jit(free_phase)(model, x, settled, free.u)
    g_ref, info_ref = eqx.filter_jit(reference)(ref_model, x, y, ref_free, key)
    delta = info_ref.error_vector
    free_stats = _stats(free.stats)
    out: dict[str, Any] = {}
    ref_stats = _stats(ref_free.stats)
    solve_stats = _stats(info_ref.linear)
    untrusted = reference_problem(ref_stats, solve_stats, bool(all_finite(g_ref)))
    concentrated = None if untrusted else _concentration(delta)
    for spec, est in estimators.items():
        say(spec)
        g, info = eqx.filter_jit(est)(model, x, y, free, key)
        entry = compare(g, g_ref)
        entry["finite"] = bool(all_finite(g))
        entry["error_vectors"] = (
            {p: cosine(info.error_vector[p], delta[p]) for p in delta}
            if info.error_vector is not None else {}
        )
        if concentrated is not None and info.error_vector is not None:
            entry["top_example"] = _at_example(info.error_vector, delta, concentrated["example"])
        entry["phases"] = _stats(info.phases)
        entry["linear"] = _stats(info.linear)
        entry["circle"] = _circle(info.circle)
        entry["problems"] = _problems(entry, free_stats, linear_solver_name(getattr(est, "linear", None)),
                                      getattr(model, "compute_dtype", None))
        if not entry["finite"]:
            _no_comparison(entry)
        out[spec] = entry
    clipped = clipped_fraction(model, free.u)
    if clipped or untrusted:  # no reference: no comparison either, only the phases' figures
        for spec in estimators:
            _no_comparison(out[spec])
    for spec in estimators:
        hidden = _hidden_parameters(out[spec])
        if hidden:
            out[spec]["problems"].append(hidden)
    problems = estimate_problems(free_stats, update=solvers.free.update,
                                 compute_dtype=getattr(model, "compute_dtype", None),
                                 alternates=can_alternate(model))
    if not problems and settled is not None:  # the mean is within the tolerance, some examples are not
        problems.append(f"{share(free_stats['nonconverged_fraction'])} of the examples did not "
                        f"converge (residual max {free_stats['residual_max']:.3g} > {NONCONVERGED_TOL:g}, "
                        "though the mean is below it): every estimate of the batch is taken there")
    out["relaxation"] = {"free": free_stats, "implicit_solve": solve_stats,
                         "clipped_fraction": clipped, "update": solvers.free.update,
                         "reference_problem": untrusted, "problems": problems,
                         "delta_concentration": None if clipped else concentrated}
    if precision is not None or settled is not None:
        out["relaxation"]["reference_free"] = ref_stats
        out["relaxation"]["reference_relaxed_on"] = settled is not None
    out["reference"] = "implicit" if not clipped and untrusted is None else None
    if precision is not None:
        out["precision"] = precision
    return out


def reference_solvers(solvers: PhaseSolvers, steps: int | None = None) -> PhaseSolvers:
    """The solvers of gradcheck's reference: ``solvers`` with a linear solve as robust as
    the library has, whatever the configured one (the exact SPECs keep theirs): the damped
    iteration in the free solver's update order with a GMRES fallback
    (:class:`~eqprop.linear.DampedThenGMRES`), the configured ``dt``, a relative tolerance
    of at most ``1e-5`` and a budget of ``steps`` (default: the configured one, at least
    :data:`SETTLE_MIN_STEPS`)."""
    linear = solvers.linear
    dt = getattr(linear, "dt", solvers.free.dt)
    rtol = min(getattr(linear, "rtol", 1e-5) or 1e-5, 1e-5)
    budget = getattr(linear, "max_steps", 1000)
    budget = steps if steps is not None else max(budget, SETTLE_MIN_STEPS)
    robust = DampedThenGMRES(dt=dt, rtol=rtol, max_steps=budget, update=solvers.free.update)
    return dataclasses.replace(solvers, linear=robust)


def reference_problem(free: Mapping[str, Any], solve: Mapping[str, Any] | None, finite: bool) -> str | None:
    """Why the reference cannot be compared with (a sentence), or ``None`` when it can:
    its gradient is not finite, its linear solve diverged or stopped above
    :data:`~eqprop.guards.NONCONVERGED_TOL`, or its free phase (``free``: STATS) did not
    settle: implicit differentiation is the gradient only at a fixed point and with
    the linear system solved."""
    if not finite:
        return "its gradient is not finite"
    if solve is not None and not solve["finite"]:
        return f"its linear solve diverged (residual max {solve['residual_max']:.3g})"
    if solve is not None and not solve["residual_mean"] <= NONCONVERGED_TOL:
        return (f"its linear solve stopped at residual mean {solve['residual_mean']:.3g} > "
                f"{NONCONVERGED_TOL:g} after {solve['steps']} steps")
    if not free["finite"]:
        return "its free phase diverged"
    if not free["residual_max"] <= NONCONVERGED_TOL:
        return (f"its free phase did not settle ({share(free['nonconverged_fraction'])} of the examples "
                f"above {NONCONVERGED_TOL:g} after {free['steps']} steps)")
    return None


def clipped_fraction(model: EquilibriumModel, u: Any) -> float | None:
    """The fraction of state entries on the bounds of a
    :class:`~eqprop.network.BoxProjectedModel`'s box at the state ``u`` (``None`` for a
    model without a box). Where it is positive, the implicit gradient (of the unprojected
    field) is not the gradient of the clipped fixed point: :func:`gradcheck` then reports
    no reference (``"reference": None``) and :func:`format_table` says so instead of
    printing cosines."""
    if not isinstance(model, BoxProjectedModel):
        return None
    on = total = 0
    for p, (lo, hi) in model.state_bounds().items():
        v = np.asarray(u[p])
        on += int(np.sum((v <= np.asarray(lo)) | (v >= np.asarray(hi))))
        total += v.size
    return on / total if total else 0.0


def build_specs(specs: Sequence[str], solvers: PhaseSolvers,
                defaults: Mapping[str, Any]) -> dict[str, Estimator]:
    """Estimators from SPEC strings (``"hep:points=6:beta=0.5"``).

    **Arguments:** ``specs``: SPEC strings; ``solvers``: the solvers they are wired to;
    ``defaults``: settings a SPEC does not give (e.g. the config's ``[estimator]``).

    **Returns:** ``{spec: estimator}`` in the order given.

    Each estimator checks its settings against their declared bounds and choices when
    it is made (:func:`eqprop.estimate.base.check_settings`), exactly as the
    configuration does: a SPEC cannot pass a value (a negative ``beta``) that training
    refuses.

    **Raises:** ``ValueError`` for an unknown estimator name or setting, or a value out
    of its bounds (one line quoting the SPEC and naming the key). A SPEC given twice is
    kept once, with an :class:`~eqprop.guards.EqpropWarning`.
    """
    comparable = [n for n, cls in ESTIMATORS.items() if cls.at_fixed_point()]
    out = {}
    for spec in specs:
        if spec in out:
            warnings.warn(f"estimator SPEC {spec!r} is given twice: it is checked once", EqpropWarning,
                          stacklevel=2)
            continue
        try:  # an unknown name is offered only what gradcheck compares (not bp)
            out[spec] = parse_spec(spec, solvers, defaults, offer=comparable)
        except SettingError as err:
            raise ValueError(f"estimator SPEC {spec!r}: {err.key}: {err}") from None
    return out


def _comparison_lines(result: Mapping[str, Any], specs: list[str], params: list[str], pops: list[str],
                      width: int) -> list[str]:
    """The cosine tables of :func:`format_table`: totals and error vectors, per parameter."""
    lines: list[str] = []
    cw = {p: max(12, len("cos a/" + p) + 2) for p in pops}  # every header keeps a gap
    head = f"{'estimator':<{width}}{'cosine':>10}{'rel.err':>10}" + "".join(
        f"{'cos a/' + p:>{cw[p]}}" for p in pops)
    lines += [head, "-" * len(head)]
    for s in specs:
        t = result[s]["total"]
        ev = result[s]["error_vectors"]
        if t["cosine"] is None:  # a gradient that is not finite
            lines.append(f"{s:<{width}}{'not finite':>20}" + "".join(f"{'-':>{cw[p]}}" for p in pops))
            continue
        lines.append(
            f"{s:<{width}}{t['cosine']:>10.6f}{t['relative_error']:>10.2e}"
            + "".join(f"{ev[p]:>{cw[p]}.6f}" if p in ev else f"{'-':>{cw[p]}}" for p in pops)
        )
    lines += ["(cosine, rel.err: the whole gradient, the readout's included; cos a/<population>: the "
              "error vector, da/dbeta, against recurrent backprop's delta over the whole batch, where "
              "the diagnostics' alignment/<population> averages per-example cosines)",
              "", "per parameter (cosine / relative error):"]
    pw = max(len("parameter"), *(len(p) for p in params)) + 2
    sw = {s: max(len(s), 17) + 2 for s in specs}  # "0.98203 / 1.9e-01" is 17 wide
    lines.append(f"{'parameter':<{pw}}" + "".join(f"{s:>{sw[s]}}" for s in specs))
    for p in params:
        row = f"{p:<{pw}}"
        for s in specs:
            q = result[s]["parameters"][p]
            row += ("not finite" if q["cosine"] is None else
                    f"{q['cosine']:.5f} / {q['relative_error']:.1e}").rjust(sw[s])
        lines.append(row)
    return lines


def format_table(result: Mapping[str, Any], diagnostics: Mapping[str, float] | None = None, *,
                 source: str = "the configured estimator",
                 describe: Callable[[str], str] | None = None,
                 notes: Mapping[str, str] | None = None) -> str:
    """A human-readable table of a :func:`gradcheck` result.

    **Arguments:**

    - ``result``: what :func:`gradcheck` returns;
    - ``diagnostics``: the ``{key: float}`` of :func:`eqprop.diagnostics.diagnostics` on
      the same batch, listed after the table (default: none);
    - ``source``: which estimator the diagnostics are of, named in their heading;
    - ``describe``: ``key -> one line`` printed beside each diagnostic (e.g.
      :func:`eqprop.diagnostics.describe`; default: none);
    - ``notes``: ``{marker: note}`` printed under the diagnostics when a line of
      ``describe`` ends in that marker (e.g. :data:`eqprop.diagnostics.DIAGNOSTIC_NOTES`).

    **Returns:** the table as one string (no trailing newline).
    """
    specs = [k for k, v in result.items()
             if k not in ("relaxation", "reference", "precision") and isinstance(v, Mapping)]
    if not specs:
        return "(no estimators)"
    params = list(result[specs[0]]["parameters"])
    pops = sorted({p for s in specs for p in result[s]["error_vectors"]})
    width = max(12, *(len(s) for s in specs)) + 2
    lines = ["gradient check against implicit differentiation (exact gradient at the fixed point)", ""]
    precision = result.get("precision")
    if precision:
        lines[-1:] = [f"mixed precision: the estimates computed in {precision['estimates']} (model."
                      f"compute_dtype, from its own free phase), the reference in "
                      f"{precision['reference']} compute at its {precision['reference']} fixed point", ""]
    clipped = result["relaxation"].get("clipped_fraction")
    if result.get("reference", "implicit") is None:  # no exact reference to compare with
        if clipped:  # units on the clip bounds
            lines += [f"{100 * clipped:.1f}% of the state entries sit on the bounds of the model's box at the "
                      "free fixed point: the implicit gradient of the unclipped field is not the gradient "
                      "of the clipped fixed point there, so no cosine is reported (look for interior "
                      "fixed points: smaller weights or inputs)"]
        else:
            lines += ["no cosine is reported: the reference (implicit differentiation) cannot be trusted, "
                      f"{result['relaxation'].get('reference_problem')} (below)"]
    else:
        lines += _comparison_lines(result, specs, params, pops, width)
    free = result["relaxation"]["free"]
    unit = "group updates" if result["relaxation"].get("update") == "alternating" else "steps"
    solve_unit = "iterations" if unit == "steps" else unit  # a linear solve's, in the same order
    lines += ["", f"free phase: {free['steps']} {unit}, residual max {free['residual_max']:.2e} "
              f"mean {free['residual_mean']:.2e}, finite: {free['finite']}"]
    lines += [f"free phase: WARNING: {p}" for p in result["relaxation"].get("problems", [])]
    ref_free = result["relaxation"].get("reference_free")
    if ref_free:
        kind = f" ({precision['reference']})" if precision else ""
        on = result["relaxation"].get("reference_relaxed_on")
        how = ("" if not on else
               ", relaxed on from the estimators' free state, which is not a fixed point"
               if result["relaxation"].get("reference_problem") else
               f", relaxed from the start in {precision['reference']} with the settling budget, since the "
               "estimators' free state is not a fixed point: each cosine compares the estimate as training "
               "computes it (from that unsettled state) with the exact gradient at the fixed point" if precision else
               ", relaxed on from the estimators' free state, which is not a fixed point: each cosine "
               "compares the estimate as training computes it (from that unsettled state) with the exact "
               "gradient at the fixed point")
        lines.append(f"reference's free phase{kind}: {ref_free['steps']} {unit}, residual max "
                     f"{ref_free['residual_max']:.2e} mean {ref_free['residual_mean']:.2e}{how}")
    solve = result["relaxation"].get("implicit_solve")
    if solve:
        lines.append(f"reference's linear solve (damped, GMRES fallback): {solve['steps']} "
                     f"{solve_unit}, residual max {solve['residual_max']:.2e} "
                     f"mean {solve['residual_mean']:.2e}")
    problem = result["relaxation"].get("reference_problem")
    if problem and not clipped:  # clipped: said above, the reference is void there anyway
        lines.append(f"reference: WARNING: {problem}: implicit differentiation is the gradient only at a "
                     "fixed point with its linear system solved, so no cosine is reported"
                     + ("" if "free phase" not in problem else
                        "; the free phase's own warning says what may settle it"))
    conc = result["relaxation"].get("delta_concentration")
    concentrated = conc is not None and conc["share"] >= CONCENTRATED_SHARE
    if concentrated:
        lines.append(f"reference: example {conc['example']} of the batch carries {100 * conc['share']:.0f}% "
                     f"of recurrent backprop's |delta|^2 ({conc['max_over_median']:.3g}x the median "
                     "example's norm: a slow mode near the edge of stability), so the cos a/<population> "
                     "above are mostly that one example's")
    withheld = bool(clipped) or bool(problem)
    for s in specs:
        before = len(lines)
        top = result[s].get("top_example")
        if concentrated and top:
            ratio = "" if top["norm_ratio"] is None else f", {top['norm_ratio']:.3g}x its size"
            rest = ", ".join(f"cos a/{p} {c:.4f}" for p, c in top["without"].items())
            lines.append(f"{s}: at example {conc['example']} cosine {top['cosine']:.4f} with delta{ratio}; "
                         f"on the batch without it {rest}")
        ph = result[s].get("phases")
        if ph:
            lines.append(f"{s}: {ph['steps']} {unit} (max over phases), residual max {ph['residual_max']:.2e} "
                         f"mean {ph['residual_mean']:.2e}, {share(ph['nonconverged_fraction'])} of "
                         f"(phase, example) above {NONCONVERGED_TOL:g}")
        lin = result[s].get("linear")
        if lin:
            lines.append(f"{s}: linear solve {lin['steps']} {solve_unit}, "
                         f"residual max {lin['residual_max']:.2e} mean {lin['residual_mean']:.2e}")
        circ = result[s].get("circle")
        if circ:
            coef = " ".join(f"{c:.1e}" for c in circ["coefficients"])
            lines.append(f"{s}: circle |beta| = {circ['beta']:g}, N = {circ['points']}: ||c_1..c_N|| {coef}; "
                         + circle_summary(circ["decay_rate_median"], circ["decay_rate_mean"],
                                          circ["error_mean"], circ["decay_rate_max"], circ["points"])
                         + "; compare rel.err above, which unsettled nudged phases also move")
        for said in result[s].get("problems", []):
            lines.append(f"{s}: WARNING: {said}")
        if withheld and len(lines) == before:  # no table above: every estimator gets its line
            lines.append(f"{s}: computed (gradient finite: {result[s].get('finite')}); no phases of its "
                         "own to report, and no cosine (above)")
    diag = {k: v for k, v in (diagnostics or {}).items() if isinstance(v, float)}
    if diag:
        lines += ["", f"asymmetry diagnostics ({source}; see eqprop.diagnostics):"]
        kw = max(len(k) for k in diag) + 2
        # fixed decimals (a cosine of 0.9999995 is not printed as "1"), tiny ones in e-notation
        def num(k, v):
            if k in FLAGS:
                return str(int(v))
            return f"{v:.3e}" if v != 0 and not 1e-3 <= abs(v) < 1e4 else f"{v:.7f}"
        lines += [(f"  {k:<{kw}}{num(k, v):<14}{describe(k) if describe else ''}").rstrip()
                  for k, v in diag.items()]
        if describe:
            lines += [f"  {mark} {note}" for mark, note in (notes or {}).items()
                      if any(describe(k).endswith(mark) for k in diag)]
    return "\n".join(lines)


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a result (e.g. a :func:`gradcheck` result merged with the
    diagnostics): NumPy floats become plain floats; other leaves are kept."""
    return jax.tree.map(lambda v: float(v) if isinstance(v, (np.floating, float)) else v, dict(result))
