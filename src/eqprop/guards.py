"""The guards of every relaxation, in one place: bound, non-finite states, tolerance and
the bookkeeping of :class:`RelaxStats`.

Every fixed-point solver (:func:`eqprop.relax.relax`, :func:`eqprop.anderson.anderson`,
free or nudged, real or complex, one phase or phases stacked on a leading axis), the
linear solves of :mod:`eqprop.linear` and online hEP's trajectory build their stats
here, so that a residual, a divergence or a failed tolerance means the same whichever
solver, phase or estimator produced it:

- **bound / non-finite**: a state with a NaN or infinite entry, or one with ``|u| >
  bound``, counts as diverged (:meth:`Guards.within` for a whole state,
  :meth:`Guards.within_each` per example of a flattened state);
- **tolerance**: a loop keeps iterating while some example's residual is above ``tol``
  (or more than a fraction ``tol_fraction`` of them; ``tol = 0``: the whole budget),
  :meth:`Guards.keep_going`;
- **bookkeeping**: :meth:`Guards.report` returns the :class:`RelaxStats` of the state a
  solver returns: its residual ``||F(u)||`` per example, the step at which it diverged
  and which populations did;
- **the figures the metrics read** (:meth:`RelaxStats.residual_mean`,
  :meth:`RelaxStats.nonconverged_fraction`, above :data:`NONCONVERGED_TOL`).

:class:`EstimateWarning` is the warning category of estimates whose assumptions fail
(nudged phases or linear solves that did not converge, hEP coefficients that do not
decay); :func:`estimate_problems` says which figures of a record are beyond their limit.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

PyTree = Any

__all__ = ["NONCONVERGED_TOL", "HEP_ERROR_LIMIT", "HEP_ERROR_TARGET", "RelaxStats", "Guards",
           "residual_norm", "nonfinite_populations", "stop_test", "EstimateWarning",
           "estimate_problems", "problem_kind", "warned_epochs", "Thinning", "warn_at_caller", "hep_rate",
           "circle_summary", "circle_brief", "share"]

#: residual above which an example (or a (phase, example) pair) counts as not settled, in
#: the metrics and the warnings (the solvers stop at their own ``tol``)
NONCONVERGED_TOL = 1e-3

#: hEP: the Fourier coefficients of ``a*(beta_k)`` around the circle must fall by at least a
#: factor ``1 / HEP_ERROR_LIMIT`` over the ``N`` orders the circle resolves: a fitted rate
#: ``rho`` per order with ``rho^N`` (the estimated relative error of the Cauchy estimate,
#: averaged over the examples) above it is a failed decay
#: (:func:`eqprop.estimate.nudge.circle_decay`)
HEP_ERROR_LIMIT = 0.1

#: hEP: the estimated relative error at which the suggested smaller ``|beta|`` aims
HEP_ERROR_TARGET = 0.01


class RelaxStats(eqx.Module):
    """What a relaxation reports: the same meaning for every solver, phase and estimator
    (also the linear solves of :mod:`eqprop.linear`).

    **Fields:**

    - ``steps``: updates taken (integer scalar; group updates for alternating sweeps,
      map evaluations for Anderson, iterations for a linear solver);
    - ``residual``: ``||F(u)||`` per example at the returned state (for a linear solve
      ``||A w - b||``), ``(B,)``, or ``(P, B)`` for phases stacked on a leading axis;
      NaN where that state is not finite;
    - ``nonfinite_step``: the step after which a state was first found NaN, infinite or
      beyond ``bound`` (exploding), ``-1`` if none (integer scalar);
    - ``nonfinite``: ``{population: bool scalar}``, whether any entry of its final state
      (over every example and phase) is NaN, infinite or beyond ``bound``.
    """

    steps: Array
    residual: Array
    nonfinite_step: Array
    nonfinite: dict[str, Array]

    @property
    def finite(self) -> Array:
        """Whether the relaxation stayed finite (and within ``bound``): a bool scalar."""
        return self.nonfinite_step < 0

    def residual_mean(self) -> Array:
        """The mean residual over every (phase,) example: a real scalar."""
        return jnp.mean(self.residual)

    def nonconverged_fraction(self, tol: float = NONCONVERGED_TOL) -> Array:
        """The fraction of (phase,) examples whose residual is above ``tol`` (NaN counts
        as above): a real scalar."""
        return jnp.mean(~(self.residual <= tol))

    @staticmethod
    def concat(stats: "list[RelaxStats]") -> "RelaxStats":
        """Stats of several groups of stacked phases as one: ``residual`` concatenated on
        the phase axis (``(P, B)``), the largest ``steps`` and ``nonfinite_step``, and a
        population non-finite in any group."""
        if len(stats) == 1:
            return stats[0]
        return RelaxStats(
            steps=jnp.max(jnp.stack([s.steps for s in stats])),
            residual=jnp.concatenate([s.residual for s in stats]),
            nonfinite_step=jnp.max(jnp.stack([s.nonfinite_step for s in stats])),
            nonfinite={k: jnp.any(jnp.stack([s.nonfinite[k] for s in stats]))
                       for k in stats[0].nonfinite},
        )


def residual_norm(f: PyTree, batch_ndim: int = 1) -> Array:
    """Per-example norm of a batched pytree: ``sqrt(sum |f|^2)`` over every leaf and
    every axis but the first ``batch_ndim``.

    **Arguments:** ``f``: pytree with leaves ``(B, ...)`` (``batch_ndim = 1``) or
    ``(P, B, ...)`` (``batch_ndim = 2``), real or complex.

    **Returns:** ``(B,)`` or ``(P, B)``, real.
    """
    sq = [jnp.sum(jnp.abs(v) ** 2, axis=tuple(range(batch_ndim, v.ndim))) for v in jax.tree.leaves(f)]
    return jnp.sqrt(sum(sq))


def nonfinite_populations(u: PyTree, bound: float = jnp.inf) -> dict[str, Array]:
    """Per population, whether any entry of its state is NaN, infinite or beyond
    ``bound`` in absolute value.

    **Arguments:** ``u``: a state (a dict of populations, or any pytree, whose leaves are
    then named ``"0"``, ``"1"``, ... in leaf order); ``bound``: the divergence bound.

    **Returns:** ``{name: bool scalar}`` (reduced over every axis, batch included).
    """
    return {k: ~jnp.all(jnp.isfinite(v)) | (jnp.max(jnp.abs(v)) > bound)
            for k, v in _as_dict(u).items()}


def stop_test(r: Array, tol, tol_fraction: float) -> Array:
    """Whether to keep iterating, from per-example residuals ``r`` (``(B,)`` or
    ``(P, B)``): some example above ``tol`` (``tol_fraction <= 0``), or more than a
    fraction ``tol_fraction`` of them. Returns a bool scalar."""
    if tol_fraction <= 0:
        return jnp.max(r) > tol
    return jnp.mean(r > tol) > tol_fraction


@dataclass(frozen=True)
class Guards:
    """The guards of one relaxation (built inside a solver's trace; ``tol`` may be traced).

    **Fields:** ``tol``: stop once every example's residual is below it (``0``: never
    test it, run the whole budget); ``tol_fraction``: once at most this fraction is above
    it; ``bound``: a state with ``|u| > bound`` counts as diverged, like a NaN;
    ``batch_ndim``: leading batch axes of every leaf (1, or 2 for stacked phases).
    """

    tol: float | Array = 0.0
    tol_fraction: float = 0.0
    bound: float = float("inf")
    batch_ndim: int = 1

    @property
    def checks_residual(self) -> bool:
        """Whether the loop tests the tolerance (``tol`` traced or positive)."""
        return not (isinstance(self.tol, (int, float)) and self.tol <= 0)

    def keep_going(self, r: Array) -> Array:
        """:func:`stop_test` of the residuals ``r`` (``(B,)`` or ``(P, B)``): bool scalar."""
        return stop_test(r, self.tol, self.tol_fraction)

    def within(self, u: PyTree) -> Array:
        """Every entry of the state ``u`` finite and within ``bound``: a bool scalar (one
        reduction per leaf; NaN fails ``<=``)."""
        if self.bound == float("inf"):  # a single sum per leaf: NaN and inf propagate
            return jnp.all(jnp.stack([jnp.isfinite(jnp.sum(v)) for v in jax.tree.leaves(u)]))
        return jnp.all(jnp.stack([jnp.max(jnp.abs(v)) <= self.bound for v in jax.tree.leaves(u)]))

    def within_each(self, x: Array) -> Array:
        """Per example of a flattened state ``x`` ``(..., D)``: finite and within
        ``bound``, ``(...)`` bools."""
        if self.bound == float("inf"):
            return jnp.isfinite(jnp.sum(x, axis=-1))
        return jnp.max(jnp.abs(x), axis=-1) <= self.bound

    def report(self, field: Callable[[PyTree], PyTree] | None, u: PyTree, steps: Array,
               nonfinite_step: Array, residual: Array | None = None) -> RelaxStats:
        """The :class:`RelaxStats` of the state ``u`` a solver returns.

        **Arguments:** ``field``: ``u -> F(u)`` (for a linear solve ``w -> A w - b``),
        evaluated once at ``u`` unless ``residual`` is given; ``u``: the returned state;
        ``steps``, ``nonfinite_step``: integer scalars; ``residual``: ``||F(u)||`` per
        example when the solver already knows it (it must be that norm at ``u``).
        """
        if residual is None:
            residual = residual_norm(field(u), self.batch_ndim)
        return RelaxStats(steps=jnp.asarray(steps), residual=residual,
                          nonfinite_step=jnp.asarray(nonfinite_step),
                          nonfinite=nonfinite_populations(u, self.bound))


def _as_dict(u: PyTree) -> dict[str, Array]:
    if isinstance(u, dict):
        return u
    return {str(i): v for i, v in enumerate(jax.tree.leaves(u))}


class EqpropWarning(UserWarning):
    """Base of eqprop's warnings (what :func:`warnings_as_lines` prints as one line)."""


class EstimateWarning(EqpropWarning):
    """An estimate whose assumptions fail: nudged phases or linear solves that did not
    converge, or hEP Fourier coefficients that do not decay around the circle."""


@contextlib.contextmanager
def warnings_as_lines(prefix: str = "eqprop: warning: ") -> Iterator[None]:
    """Within the block, every :class:`EqpropWarning` (estimates, checkpoints, data) is
    shown, each time it is raised (an estimate warning once per epoch that fails, thinned
    out by the trainer's :class:`Thinning`, not once per source line), as one ``prefix + message`` line on stderr instead of Python's
    two-line ``file:line: Category: ...`` form; other warnings are shown as before. The CLI
    runs every command inside it; scripts that call :func:`eqprop.train.train` can do the
    same. Restores the warning state on exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", EqpropWarning)
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, EqpropWarning):
                print(f"{prefix}{message}", file=sys.stderr, flush=True)
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def hep_rate(figures: Mapping[str, Any]) -> tuple[float | None, bool]:
    """``(rate, is_median)``: hEP's circle rate as a record shows it, the median
    (``hep_decay_median``: the typical example's, where one outlier's rate can reach the
    hundreds and set the mean), or the mean of a record written before the median
    (``hep_decay_mean``); ``(None, False)`` without either."""
    median = figures.get("hep_decay_median")
    if median is not None:
        return median, True
    return figures.get("hep_decay_mean"), False


def circle_brief(figures: Mapping[str, Any]) -> str | None:
    """hEP's circle check of an epoch record in a few words, the same on the epoch line
    and in ``eqprop report``: ``"hEP circle 12x per order (median), est. error 79%"``,
    the factor by which each Fourier coefficient of ``a*(beta)`` follows the last (below
    1: they fall, as an exact estimate needs) and the truncation error it implies, an
    estimate ("est.": with N = 2 it can be 10x off, as ``eqprop gradcheck`` says); ``None``
    for a record without the check. Records written before the median show the mean."""
    rate, median = hep_rate(figures)
    error = figures.get("hep_error_mean")
    if rate is None or error is None:
        return None
    which = "median" if median else "mean"
    if rate == 0:  # no order above the rounding floor: not a decay of 0x
        return f"hEP circle at the rounding floor ({which}), est. error {share(error)}"
    floor = figures.get("hep_floor_fraction")
    at_floor = f"; {share(floor)} of examples at the rounding floor: at most that" if floor else ""
    return f"hEP circle {rate:.2g}x per order ({which}{at_floor}), est. error {share(error)}"


def share(fraction: float) -> str:
    """A fraction as a percentage that is 0% or 100% only when it is exactly that: one
    significant digit under 1% (``0.1%``), one decimal above 99% (a review read "(0% of
    (phase, example) pairs above it)" beside a mean above the tolerance: 0.14%)."""
    pct = 100 * float(fraction)
    if pct <= 0 or pct >= 100 or 1 <= pct <= 99:
        return f"{pct:.0f}%"
    if pct < 1:
        return f"{pct:.1g}%"
    return f"{pct:.1f}%" if pct < 99.95 else ">99.9%"


def _percent(value: float, limit: float) -> str:
    """``value`` as a percentage with as many digits as it takes to differ from ``limit``'s
    (a review read "10% > 10%" for 0.1004)."""
    for digits in range(0, 4):
        text = f"{100 * value:.{digits}f}"
        if float(text) != 100 * limit:
            return text + "%"
    return f"{100 * value:.4g}%"


def circle_summary(rate_median: float, rate_mean: float, error_mean: float,
                   rate_max: float | None = None, points: int | None = None) -> str:
    """hEP's circle check in words, one clause, the same in ``eqprop gradcheck`` and
    ``eqprop eval``: how the Fourier coefficients of ``a*(beta)`` change per order (a
    factor below 1 is a decay, above 1 a growth) and the truncation error it implies.

    **Arguments:** ``rate_median``, ``rate_mean``, ``rate_max``: the fitted factor per
    order over the batch (:class:`eqprop.estimate.nudge.CircleDecay`); ``error_mean``:
    the batch mean of ``min(rate^N, 1)``, a relative error (0.01 = 1%); ``points``: ``N``,
    whose value ``2`` adds that the estimate then rests on one ratio, ``c_2 / c_1``, while
    the error is set by ``c_3``, which the circle does not resolve (measured: 2.1e-3
    estimated, 3.3e-2 measured on a trained digits net).

    **Returns:** e.g. ``"Fourier coefficients fall: each order is 0.19x the last (median;
    mean 0.19, max 0.2): estimated truncation error 4.7e-05 (relative, ...)"``.
    """
    spread = f"median; mean {rate_mean:.3g}" + (f", max {rate_max:.3g}" if rate_max is not None else "")
    if rate_median == 0:  # fitted_rate's 0: no order above the rounding floor ("0x" misled)
        return (f"the median example has no Fourier coefficient above the rounding floor (64 rounding "
                f"units of |a|): at this |beta| its nudged response is within rounding, so its rate "
                f"reads 0 and its truncation error cannot be told from rounding ({spread}; estimated "
                f"error {error_mean:.2g} over the batch, those examples counted as 0)")
    if not rate_median < 1:
        return (f"Fourier coefficients do not fall: each order is {rate_median:.3g}x the last "
                f"({spread}), so the circle's truncation error cannot be estimated (each such example "
                f"counts as 1: mean {error_mean:.2g})")
    caveat = ("; with N = 2 it rests on c_2/c_1 alone while the error is set by c_3, which two "
              "points do not resolve, so it can be off by 10x or more" if points == 2 else "")
    return (f"Fourier coefficients fall: each order is {rate_median:.3g}x the last ({spread}): estimated "
            f"truncation error {error_mean:.2g} (relative, the batch mean of min(factor^N, 1); an order "
            f"of magnitude, not a measurement{caveat})")


def estimate_problems(figures: Mapping[str, Any], *, beta: float | None = None,
                      free_residual: float | None = None, update: str | None = None,
                      linear_solver: str | None = None, compute_dtype: str | None = None,
                      alternates: bool = True) -> list[str]:
    """Which estimate figures of a record (an epoch record, an evaluation, a gradcheck
    entry) are beyond their limit, each as a short sentence.

    **Arguments:** ``figures``: a mapping that may hold ``residual_mean`` and
    ``nonconverged_fraction`` (the free phase), ``nudged_residual_mean``,
    ``nudged_nonconverged_fraction``, ``linear_residual_mean``, ``hep_decay_mean``,
    ``hep_decay_median``, ``hep_error_mean`` and ``hep_beta_suggested`` (missing or ``None``:
    not applicable; the message quotes the median rate where there is one);
    ``beta``: the circle's radius, named in the hEP sentence; ``free_residual``: the free
    phase's ``residual_mean`` where the caller reports the free phase apart (gradcheck's
    table, once for all estimators): no sentence of its own, it only tells the hEP sentence
    that the circle was measured from an unsettled state; ``update``: the free solver's
    update (``dynamics.update``), so that the free sentence's advice fits it (under
    ``"alternating"`` it does not suggest the alternating update; ``None``: both advices);
    ``alternates``: whether the model can be relaxed with alternating updates
    (:func:`~eqprop.solvers.can_alternate`; a review was advised them for a directed
    network, which refuses them);
    ``linear_solver``: the registered name of the linear solver (``dynamics.linear_solver``),
    so that the linear sentence suggests GMRES only where it is not already used (``None``:
    suggests it); ``compute_dtype``: ``[model] compute_dtype``: in ``"bfloat16"`` or
    ``"float16"`` the free and nudged sentences add that a residual near the threshold can be
    the rounding floor of the products, which more steps do not lower (a review raised
    ``nudged_steps`` 5x in bfloat16 and the residual stayed at 1.6e-3; float32: 1.8e-5).

    **Returns:** ``[]`` when every figure is within its limit:

    - the free phase: ``residual_mean > NONCONVERGED_TOL`` (every estimate is taken at
      the free state, so an unsettled one makes any estimator's gradient wrong);
    - nudged phases: ``nudged_residual_mean > NONCONVERGED_TOL``;
    - linear solves: ``linear_residual_mean > NONCONVERGED_TOL`` (or not finite);
    - for both, when the free phase is unsettled, the sentence puts that first: a phase or
      solve started from a state that is not a fixed point need not settle, whatever its
      budget;
    - hEP: ``hep_error_mean > HEP_ERROR_LIMIT`` (the Fourier coefficients around the
      circle do not fall by a factor 10 over ``N`` orders: the circle is not well inside
      the radius of convergence), naming ``hep_beta_suggested``; when the free phase is
      unsettled too, the sentence says the circle was measured from an unsettled state
      and names no radius (the drift of the free state, not the radius, may be at fault).
    """
    out = []
    roundoff = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}.get(compute_dtype or "")
    floor = (f"; in {compute_dtype} compute (unit roundoff {roundoff:.1e}) this can be the rounding "
             "floor of its products, which more steps do not lower: compare with --set "
             "model.compute_dtype='\"float32\"'") if roundoff else ""
    r = figures.get("residual_mean")
    unsettled = r is not None and not r <= NONCONVERGED_TOL
    drifting = unsettled or (free_residual is not None and not free_residual <= NONCONVERGED_TOL)
    if unsettled:
        frac = figures.get("nonconverged_fraction")
        out.append(f"free phases did not converge: residual_mean {r:.3g} > {NONCONVERGED_TOL:g}"
                   + (f" ({share(frac)} of examples above it)" if frac is not None else "")
                   + ("; raise dynamics.free_steps (group updates: two make a sweep; eqprop "
                      "stability gives the sweep's rate)" if update == "alternating" else
                      "; raise dynamics.free_steps, or, where the synchronous update oscillates "
                      "(a 2-cycle: see eqprop stability), lower dynamics.dt"
                      + (" or use dynamics.update = 'alternating'" if alternates else "")) + floor)
    first = ("; the free state they start from is not a fixed point: settle the free phase first "
             "(the free phase's warning says how)") if drifting else ""
    r = figures.get("nudged_residual_mean")
    if r is not None and not r <= NONCONVERGED_TOL:
        frac = figures.get("nudged_nonconverged_fraction")
        out.append(f"nudged phases did not converge: nudged_residual_mean {r:.3g} > {NONCONVERGED_TOL:g}"
                   + (f" ({share(frac)} of (phase, example) pairs above it)" if frac is not None else "")
                   + (first or "; raise dynamics.nudged_steps or lower estimator.beta" + floor))
    r = figures.get("linear_residual_mean")
    if r is not None and not r <= NONCONVERGED_TOL:
        out.append(f"linear solves did not converge: linear_residual_mean {r:.3g} > {NONCONVERGED_TOL:g}"
                   + (first or "; raise dynamics.linear_steps"
                      + (" or use dynamics.linear_solver = 'auto' (GMRES where the damped iteration "
                         "stalls)" if linear_solver in (None, "fixed-point") else "")))
    err = figures.get("hep_error_mean")
    if err is not None and not err <= HEP_ERROR_LIMIT:
        rate, median = hep_rate(figures)
        smaller = figures.get("hep_beta_suggested")
        radius = f"|beta| = {beta:g}" if beta is not None else "the nudge circle"
        out.append(
            "the Fourier coefficients of a*(beta) do not decay around the nudge circle"
            + (f" (each order {rate:.3g}x the last{' (median)' if median else ''}"
               if rate is not None else " (")
            + f", estimated truncation error {_percent(err, HEP_ERROR_LIMIT)} > {100 * HEP_ERROR_LIMIT:g}%)"
            + (": measured from an unsettled free state, which also moves a*(beta); settle the "
               "free phase before changing estimator.beta" if drifting else
               f": {radius} is not well inside the radius of convergence, and more points help "
               "little or not at all; "
               + (f"try estimator.beta = {smaller:.3g} (a first step, where the rate would scale with "
                  "|beta|: check the error there again)" if smaller is not None else "lower estimator.beta")))
    return out


def problem_kind(sentence: str) -> str:
    """The kind of a warning sentence (:func:`estimate_problems`'): its words before the
    figures, ``"free phases did not converge"``, by which a run counts its epochs."""
    return sentence.split(":")[0].split(" (")[0].strip()


def warned_epochs(records: Any) -> dict[str, int]:
    """How many of ``records`` (epoch records, as in ``metrics.jsonl``) each kind of
    :func:`estimate_problems` sentence fires in (kinds that never fire are absent)."""
    counts: dict[str, int] = {}
    for rec in records:
        for kind in dict.fromkeys(problem_kind(s) for s in estimate_problems(rec)):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Thinning:
    """Which epochs' warnings of a long run are shown: each kind (:func:`problem_kind`) at
    the 1st, 2nd, 4th, 8th, ... epoch it fires in, so that 2000 epochs of an occasional
    unsettled phase are a dozen lines, not hundreds (a review counted 70 over a 2000-epoch
    XOR run), while every epoch's figures stay in ``metrics.jsonl`` and the run's summary
    counts the epochs of each kind (``warned_epochs``).

    **Arguments:** ``counts``: epochs per kind before this process (a resumed run's, from
    its records: :func:`warned_epochs`), so the thinning continues where it stopped.
    """

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts = dict(counts or {})

    def shown(self, sentences: list[str], kind: str | None = None) -> list[str]:
        """The sentences of one epoch to show (counting every one), those after their
        kind's first epoch saying which epoch of that kind this is; ``kind``: the kind of
        every sentence, where its words before the colon hold figures."""
        out, explained = [], False
        for sentence in sentences:
            k = kind or problem_kind(sentence)
            n = self.counts[k] = self.counts.get(k, 0) + 1
            if n & (n - 1):  # not a power of two: counted, not shown
                continue
            if n > 1:  # the thinning explained once per message (a review read it twice)
                sentence += (f" (the {_ordinal(n)} epoch with this warning"
                             + ("; from here on each kind is shown at the 4th, 8th, 16th, ... "
                                "epoch it fires in: every epoch's figures are in metrics.jsonl"
                                if n == 2 and not explained else "") + ")")
                explained = explained or n == 2
            out.append(sentence)
        return out


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside the eqprop package (the
    user's ``train(...)`` line, not a line of the trainer that no user reads); where every
    frame is eqprop's (the CLI), to the outermost."""
    import os

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
