"""Estimators of ``da*/dbeta`` from finite nudges: EP, holomorphic EP, online hEP.

All nudged phases start at the free fixed point and relax together on a leading
axis (``vmap``): real nudges with real states, complex nudges with complex states.

hEP with ``N`` points (Laborieux and Zenke 2022, arXiv 2209.00530; 2024, arXiv
2309.02214) averages ``(a(beta_k) - a(0)) / beta_k`` over
``beta_k = |beta| exp(2 pi i k / N)``: the discrete Cauchy integral of ``a(beta)/beta^2``,
whose error is ``O(|beta|^N)`` while ``a*(beta)`` is holomorphic on the closed disc. ``N = 1`` is one-sided EP, ``N = 2`` symmetric EP
(subtracting ``a(0)`` changes nothing for ``N >= 2``). Conjugate points give conjugate
states, so only ``k = 0 .. N/2`` are relaxed and the others enter as twice the real part.

The same points give the discrete Fourier coefficients of ``a*(beta)`` around the circle
(:func:`circle_decay`): hEP's check, at no extra relaxation, that the circle lies inside
the radius of convergence, where the estimate is exact up to ``O(|beta|^N)``.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ..guards import HEP_ERROR_TARGET, Guards, RelaxStats, residual_norm
from ..network.base import EquilibriumModel
from ..network.ops import PRECISION
from ..registry import ESTIMATORS
from ..relax import euler_step
from ..settings import POSITIVE, POSITIVE_INT, SettingError, setting
from ..solvers import FixedPoint, FixedPointSolver
from .base import Estimate, Estimator, FreePhase, assemble, nudged_field, nudged_field_on

PyTree = Any


#: the direction of a one-sided nudge (``[estimator] sign`` of ``ep`` and ``contrast``)
SIGNS = ("positive", "negative", "random")

SIGN_DOC = ("One-sided nudge: 'positive' (+beta dl/da, away from the target), 'negative' (toward "
            "it, Scellier and Bengio's), 'random' (per batch).")


def signed_beta(beta: float, sign: str, key: Array) -> float | Array:
    """The signed strength of a one-sided nudge.

    The nudged field is ``F + b dl/da_out`` (eqprop's convention): ``b > 0`` pushes the
    output *away from* the target (up the loss), ``b < 0`` *toward* it, which is the
    physical nudge of Scellier and Bengio 2017 (their ``beta > 0``, eqprop's ``b =
    -beta``). ``(a(b) - a(0)) / b`` estimates ``da*/dbeta`` either way, with a bias
    ``O(b)`` of opposite sign for the two directions; a random sign per batch (their
    recommendation) cancels it on average.

    **Arguments:** ``beta``: the strength ``|b| > 0``; ``sign``: ``"positive"``,
    ``"negative"`` or ``"random"``; ``key``: the step's PRNG key (``"random"`` draws
    ``+-1`` with equal probability from it, so a resumed run draws the same signs).

    **Returns:** ``b``: ``beta`` or ``-beta`` (Python floats), or a traced scalar for
    ``"random"``.

    **Raises:** ``ValueError`` for another ``sign``.
    """
    if sign == "positive":
        return beta
    if sign == "negative":
        return -beta
    if sign == "random":
        return jnp.where(jax.random.bernoulli(key), beta, -beta)
    raise ValueError(f"sign must be one of {', '.join(map(repr, SIGNS))}, got {sign!r}")


def circle_points(beta: float, n: int) -> tuple[list[float], list[complex]]:
    """The nudges to relax for ``n`` points on the circle of radius ``beta``.

    **Arguments:** ``beta``: the radius (``> 0``); ``n``: the number of points ``N``.

    **Returns:** ``(real, complex)``: the real points (``beta``, and ``-beta`` for even
    ``n``) and the complex points ``beta exp(2 pi i k / n)`` with ``0 < k < n/2`` (each
    standing for itself and its conjugate), so that ``len(real) + 2 len(complex) = n``.

    **Raises:** ``ValueError`` when ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"points must be >= 1, got {n}")
    real = [beta] + ([-beta] if n % 2 == 0 else [])
    cplx = [beta * complex(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n))
            for k in range(1, (n + 1) // 2)]
    return real, cplx


def nudged_phases(
    model: EquilibriumModel, free: FreePhase, y: Array, betas: Array, solver: FixedPointSolver,
) -> tuple[PyTree, RelaxStats]:
    """Relax one nudged phase per entry of ``betas`` with ``solver``, together on a
    leading axis, each from the free fixed point.

    **Arguments:** ``model``; ``free``: the free phase (leaves ``(B, ...)``); ``y``:
    labels ``(B,)``; ``betas``: ``(P,)`` nudges, real or complex (complex ones relax
    complex states); ``solver``: the nudged phases'
    :class:`~eqprop.solvers.FixedPointSolver`.

    **Returns:** states with leaves ``(P, B, ...)`` and stats with ``residual``
    ``(P, B)``.

    **Raises:** ``ValueError`` when ``solver`` cannot relax ``model``.
    """
    dtype = jnp.result_type(jax.tree.leaves(free.u)[0].dtype, betas.dtype)
    u0 = jax.tree.map(lambda v: jnp.broadcast_to(v.astype(dtype), betas.shape + v.shape), free.u)
    field = jax.vmap(lambda u, beta: nudged_field(model, free.drive, y, beta)(u))
    field_on = None
    if solver.update == "alternating":
        def field_on(u, group):  # the group is static: closed over, not vmapped
            one = lambda ui, beta: nudged_field_on(model, free.drive, y, beta)(ui, group)  # noqa: E731
            return jax.vmap(one)(u, betas)
    return solver.relax(model, lambda u: field(u, betas), u0, batch_ndim=2, field_on=field_on)


def circle_derivative(
    model: EquilibriumModel, free: FreePhase, y: Array, beta: float, n: int, solver: FixedPointSolver,
) -> tuple[PyTree, RelaxStats, dict]:
    """hEP estimate of ``da*/dbeta`` with ``n`` points on the circle of radius ``beta``.

    ``v = (1/n) sum_k (a(beta_k) - a(0)) / beta_k`` (the discrete Cauchy integral;
    Laborieux and Zenke 2022, arXiv 2209.00530); conjugate points enter as twice the
    real part. ``n = 1`` is one-sided EP, ``n = 2`` symmetric EP.

    **Arguments:** ``model``; ``free``: the free phase; ``y``: labels ``(B,)``;
    ``beta``: the radius ``|beta|`` (for ``n = 1``, the one nudge ``b`` of
    :func:`signed_beta`: negative or traced is fine); ``n``: the number of points ``N``;
    ``solver``: the nudged phases' solver.

    **Returns:** ``v`` (real, pytree like the activity, leaves ``(B, ...)``), the
    phases' stats (``residual`` ``(P, B)`` with ``P = len(real) + len(complex)`` of
    :func:`circle_points`) and their activities ``{"real" | "complex": (betas, a)}``
    (``betas`` ``(P_k,)``, ``a`` leaves ``(P_k, B, ...)``; a key only when it has
    points).

    **Raises:** ``ValueError`` when ``n < 1`` or ``solver`` cannot relax ``model``.
    """
    real, cplx = circle_points(beta, n)
    a0 = model.activity(free.u)
    ftype = jax.tree.leaves(free.u)[0].dtype
    total = jax.tree.map(jnp.zeros_like, a0)
    stats, states = [], {}
    if real:
        b = jnp.asarray(real, ftype)
        u, s = nudged_phases(model, free, y, b, solver)
        a = model.activity(u)
        total = jax.tree.map(
            lambda t, ak, a0_: t + jnp.sum((ak - a0_) / b.reshape((-1,) + (1,) * a0_.ndim), axis=0),
            total, a, a0)
        stats.append(s)
        states["real"] = (b, a)
    if cplx:
        ctype = jnp.result_type(ftype, jnp.complex64)
        b = jnp.asarray(cplx, ctype)
        u, s = nudged_phases(model, free, y, b, solver)
        a = model.activity(u)
        total = jax.tree.map(
            lambda t, ak, a0_: t + 2 * jnp.sum(jnp.real((ak - a0_) / b.reshape((-1,) + (1,) * a0_.ndim)), axis=0),
            total, a, a0)
        stats.append(s)
        states["complex"] = (b, a)
    v = jax.tree.map(lambda t: t / n, total)
    return v, RelaxStats.concat(stats), states


class CircleDecay(eqx.Module):
    """How the discrete Fourier coefficients of ``a*(beta_k)`` fall around the nudge circle
    (:func:`circle_decay`): hEP's check that the circle lies well inside the radius of
    convergence of ``a*(beta)``.

    **Fields:** ``norms``: ``(N, B)``, ``||c_m||`` per example for the orders
    ``m = 1 .. N`` (norm over every unit of every population); ``rate``: ``(B,)``, the
    fitted geometric rate per order, per example (``0`` where every coefficient is below
    the rounding floor); ``beta``: the radius ``|beta|``; ``points``: ``N`` (both static);
    ``bounded``: ``(B,)``, where a single order is above the floor (``N >= 2``): the rate
    is then fitted through the floor, an upper bound of the true one (a review saw 47% of
    a trained digits net's examples so, the median rate reading 0.02x every epoch).
    """

    norms: Array
    rate: Array
    beta: float = eqx.field(static=True)
    points: int = eqx.field(static=True)
    bounded: Array | None = None

    def floor_fraction(self) -> Array:
        """The fraction of the batch whose rate is an upper bound set by the rounding
        floor (:attr:`bounded`; 0 when not recorded)."""
        return jnp.mean(self.bounded) if self.bounded is not None else jnp.zeros(())

    def rate_mean(self) -> Array:
        """The mean rate over the batch (a real scalar)."""
        return jnp.mean(self.rate)

    def rate_median(self) -> Array:
        """The median rate over the batch (a real scalar): what the typical example sees,
        where one outlier's rate (into the hundreds) dominates :meth:`rate_mean`."""
        return jnp.median(self.rate)

    def error(self) -> Array:
        """``(B,)``: the estimated relative error of each example's Cauchy estimate,
        ``min(rate^N, 1)`` (its first alias, ``||c_{1+N}|| / ||c_1||`` under geometric
        decay; NaN counts as 1)."""
        e = self.rate ** self.points
        return jnp.where(e < 1, e, 1.0)

    def error_mean(self) -> Array:
        """The batch mean of :meth:`error` (a real scalar)."""
        return jnp.mean(self.error())

    def beta_suggested(self, target: float = HEP_ERROR_TARGET) -> Array:
        """A smaller radius to try: the one at which the 90th percentile of the rates
        would give an estimated error ``target``, ``|beta| target^(1/N) / rate`` (inside
        the radius of convergence ``R`` the rate is ``|beta| / R``), never above
        ``|beta|``. A real scalar."""
        worst = jnp.quantile(self.rate, 0.9)
        good = target ** (1.0 / self.points)
        return self.beta * jnp.where(worst > good, good / jnp.where(worst > 0, worst, 1.0), 1.0)


def circle_decay(model: EquilibriumModel, free: FreePhase, states: dict, beta: float,
                 n: int) -> CircleDecay | None:
    """The decay of the discrete Fourier coefficients of ``a*(beta)`` around the circle,
    from the points :func:`circle_derivative` already relaxed (no extra relaxation).

    With ``d_k = a(beta_k) - a(0)`` at ``beta_k = |beta| exp(2 pi i k / N)`` (the
    conjugate points ``k > N/2`` enter as the conjugates of those relaxed),

        c_m = (1/N) sum_k d_k exp(-2 pi i k m / N),   m = 1 .. N - 1,  and  c_N = c_0,

    which equal ``|beta|^m`` times the Taylor coefficients of ``a*(beta)`` at ``0`` plus
    their aliases of order ``m + N, m + 2N, ...`` (``c_0`` of ``d`` is the alias of
    order ``N``). Inside the radius of convergence ``R`` they fall geometrically, at the
    rate ``|beta| / R`` per order, and the Cauchy estimate's relative error is about
    ``rate^N`` (the alias ``c_{1+N}`` of ``c_1``); near or outside it they fall slowly or
    not at all, and more points help little or not at all (Laborieux and Zenke 2022,
    arXiv 2209.00530). The
    decay fails when the coefficients do not fall by a factor ``1 / HEP_ERROR_LIMIT = 10``
    over the ``N`` orders the circle resolves (:func:`eqprop.guards.estimate_problems`).

    The rate per example is ``exp(slope)`` of the least-squares line through
    ``log ||c_m||``, ``m = 1 .. N`` (for ``N = 2``: ``||c_2|| / ||c_1||``); a fitted rate
    rather than the ratio of two coefficients, so that one coefficient that happens to
    be small (a Taylor coefficient near zero) does not pass for decay. A coefficient
    below the rounding floor (``64`` rounding units of ``1 + ||a(0)||``) is left out of the
    line where at least two orders are above it (it would flatten the line, and the
    estimated error would grow with ``N``), and counts at the floor otherwise; an example
    whose coefficients are all below it has rate ``0`` (nothing to resolve).
    Phases stopped before convergence need no floor: a truncated relaxation is itself a
    holomorphic function of ``beta``, whose coefficients these are (their residual is
    reported, and warned about, apart).

    **Arguments:** ``model``; ``free``: the free phase; ``states``: the activities
    :func:`circle_derivative` returned; ``beta``: the radius;
    ``n``: the number of points ``N``.

    **Returns:** a :class:`CircleDecay`, or ``None`` for ``N = 1`` (one point: no decay
    to measure).
    """
    if n < 2:
        return None
    a0 = model.activity(free.u)
    orders = np.arange(1, n + 1)  # order N is the DFT's index 0
    phases = []  # (weights (N, P_k), activities (P_k, B, ...)) per group of relaxed points
    if "real" in states:
        ks = [0] + ([n // 2] if n % 2 == 0 else [])
        w = np.exp(-2j * np.pi * np.outer(orders, ks) / n).real / n
        phases.append((w, states["real"][1]))
    if "complex" in states:
        ks = np.arange(1, (n + 1) // 2)
        w = 2 * np.exp(-2j * np.pi * np.outer(orders, ks) / n) / n  # the point and its conjugate
        phases.append((w, states["complex"][1]))

    def coefficient(leaf0, *leaves):  # (N, B, ...) real
        out = 0
        for (w, _), ak in zip(phases, leaves):
            d = ak - leaf0
            out = out + jnp.real(jnp.tensordot(jnp.asarray(w, d.dtype), d, axes=1, precision=PRECISION))
        return out

    c = jax.tree.map(coefficient, a0, *[a for _, a in phases])
    norms = residual_norm(c, batch_ndim=2)  # (N, B)
    eps = jnp.finfo(norms.dtype).eps
    floor = 64 * eps * (1 + residual_norm(a0))  # (B,): rounding in a(beta_k) - a(0)
    return CircleDecay(norms=norms, rate=fitted_rate(norms, floor), beta=float(beta), points=n,
                       bounded=floor_bounded(norms, floor))


def floor_bounded(norms: Array, floor: Array) -> Array:
    """``(B,)``: where exactly one order of ``norms`` ``(N, B)`` is above ``floor``
    ``(B,)`` with ``N >= 2``: :func:`fitted_rate` then fits the line through the floor,
    and the rate is an upper bound of the true one."""
    if norms.shape[0] < 2:
        return jnp.zeros(norms.shape[1:], bool)
    return jnp.sum(norms > floor, axis=0) == 1


def fitted_rate(norms: Array, floor: Array) -> Array:
    """The geometric rate per order of coefficient norms, per example (:func:`circle_decay`).

    ``exp(slope)`` of the least-squares line through ``log ||c_m||`` over the orders
    ``m = 1 .. N`` above ``floor``, where there are at least two: orders at the floor would
    flatten the line and raise the estimated error as ``N`` grows (measured: N = 6
    estimated at 5.4e-4 against N = 2 at 5.1e-4, measured 1.3e-6 and 8.7e-4). With fewer,
    the line through every order, those below the floor counted at it; ``0`` where none is
    above it.

    **Arguments:** ``norms``: ``(N, B)``; ``floor``: ``(B,)``.

    **Returns:** ``(B,)``.
    """
    n = norms.shape[0]
    orders = jnp.arange(1, n + 1, dtype=norms.dtype)[:, None]
    resolved = norms > floor
    logs = jnp.log(jnp.maximum(norms, floor))

    def slope(w):  # weighted least squares, w (N, B) of 0/1
        count = jnp.maximum(jnp.sum(w, axis=0), 1)
        m = orders - jnp.sum(w * orders, axis=0) / count
        centred = logs - jnp.sum(w * logs, axis=0) / count
        return jnp.sum(w * m * centred, axis=0) / jnp.maximum(jnp.sum(w * m ** 2, axis=0), 1e-30)

    w = resolved.astype(norms.dtype)
    s = jnp.where(jnp.sum(w, axis=0) >= 2, slope(w), slope(jnp.ones_like(w)))
    return jnp.where(jnp.any(resolved, axis=0), jnp.exp(s), 0.0)


class HolomorphicEP(Estimator):
    """Holomorphic EP: ``N`` nudges on a circle of radius ``beta`` (any ``N >= 1``).

    ``g = (dF/dtheta)^T v / B + readout gradient`` with ``v`` the discrete Cauchy
    integral of :func:`circle_derivative` (Laborieux and Zenke 2022, arXiv 2209.00530;
    2024, arXiv 2309.02214). Its error is ``O(beta^N)`` where ``a*(beta)`` is
    holomorphic on the closed disc; outside that radius it is biased whatever ``N``. Its
    :class:`~eqprop.estimate.Estimate` carries the nudged phases' stats and, for
    ``N >= 2``, the decay of the Fourier coefficients around the circle
    (:func:`circle_decay`), which says when ``beta`` is too large.

    **Settings:** ``beta``: the radius ``|beta|`` (``> 0``); ``points``: ``N >= 1``
    (``N > 2`` needs complex states, so a holomorphic activation); ``nudged``: the
    nudged phases' solver.

    **Call:** as :meth:`eqprop.estimate.Estimator.__call__`: ``(model, x (B, ...), y (B,),
    free, key)`` to ``(gradient shaped like model, Estimate)``, the :class:`Estimate`'s
    ``error_vector`` being ``v`` (like the state), ``phases`` the nudged phases' stats
    (``(P, B)`` residuals) and ``circle`` a :class:`CircleDecay` (``N >= 2``).
    **Raises:** ``ValueError`` from :meth:`check`: ``N > 2`` on a model that is not
    holomorphic (``model.holomorphic``: e.g. a clipped or hard-sigmoid network), or a
    nudged solver that cannot relax the model.
    """

    beta: float = setting(0.5, "Nudging strength (radius of the nudge circle).", bounds=POSITIVE)
    points: int = setting(2, "Number of nudged points N on the circle.", bounds=POSITIVE_INT)
    nudged: FixedPointSolver = eqx.field(static=True, default=FixedPoint(steps=20))

    def needs_complex(self) -> bool:
        """True when ``points > 2`` (the circle then has complex points)."""
        return self.points > 2

    def __call__(self, model, x, y, free, key):
        v, stats, states = circle_derivative(model, free, y, self.beta, self.points, self.nudged)
        decay = circle_decay(model, free, states, self.beta, self.points)
        return assemble(model, x, y, free.u, v), Estimate(error_vector=v, phases=stats, circle=decay)


def check_sign(name: str, points: int, sign: str) -> None:
    """Refuse a ``sign`` other than ``"positive"`` for a symmetric estimate (``points =
    2``), which nudges both ways and has no sign.

    **Raises:** :class:`~eqprop.settings.SettingError` (key ``sign``)."""
    if points != 1 and sign != "positive":
        raise SettingError("sign", f"applies to the one-sided {name!r} (points = 1); points = "
                           f"{points} nudges both ways, got sign = {sign!r}")


class EP(HolomorphicEP):
    """Classic finite-nudge EP in generalized form: one-sided (``points=1``) or symmetric (2).

    One-sided: ``v = (a(b) - a(0)) / b`` with ``b = +-beta`` (Scellier and Bengio 2017,
    bias ``O(beta)``); symmetric: ``(a(beta) - a(-beta)) / (2 beta)`` (Laborieux et al.
    2021, bias ``O(beta^2)``). Real nudges only.

    **Settings:** ``beta``: the strength ``|b| > 0``; ``points``: 1 or 2; ``sign`` (one-sided
    only): ``"positive"`` (``b = +beta``: the output pushed away from the target, eqprop's
    convention), ``"negative"`` (``b = -beta``: pulled toward it, Scellier and Bengio's
    physical nudge; needed where the output saturates, e.g. hard-sigmoid with an MSE
    readout, whose units at 0 get no signal from a push away) or ``"random"`` (a sign per
    batch drawn from the step's key, their recommendation: the ``O(beta)`` bias cancels
    on average); see :func:`signed_beta`. ``nudged``: the nudged phases' solver.

    **Raises:** :class:`~eqprop.settings.SettingError` for ``points`` not 1 or 2, or a
    ``sign`` other than ``"positive"`` with ``points = 2``.
    """

    points: int = setting(1, "1 (one-sided) or 2 (symmetric); use 'hep' for more.",
                          bounds=POSITIVE_INT)
    sign: str = setting("positive", SIGN_DOC, choices=SIGNS)

    def __check_init__(self):
        if self.points not in (1, 2):
            raise SettingError("points", f"'ep' takes 1 (one-sided) or 2 (symmetric); use 'hep' "
                               f"for more, got {self.points}")
        check_sign("ep", self.points, self.sign)

    def __call__(self, model, x, y, free, key):
        beta = signed_beta(self.beta, self.sign, key) if self.points == 1 else self.beta
        v, stats, states = circle_derivative(model, free, y, beta, self.points, self.nudged)
        decay = circle_decay(model, free, states, self.beta, self.points)
        return assemble(model, x, y, free.u, v), Estimate(error_vector=v, phases=stats, circle=decay)


class OnlineHEP(Estimator):
    """Online hEP: one complex trajectory, never reset, with the nudge rotating on the circle.

    ``beta(t) = beta exp(2 pi i k(t) / N)`` advances one point every ``nudged.steps``
    steps for ``periods`` periods, from the free fixed point (Laborieux and Zenke 2024,
    arXiv 2309.02214). The time average of ``a(t) / beta(t)`` (the first Fourier
    coefficient, real part) replaces ``da*/dbeta``; the real part of the time average of
    the *state* ``u(t)`` replaces the free fixed point ``u*`` where the gradient is
    assembled. Its bias shrinks as ``periods`` grows (the start-up transient) and as
    ``nudged.steps`` grows (the lag of the state behind the nudge).

    **Settings:** ``beta``: the radius ``|beta|``; ``points``: ``N >= 2`` per period;
    ``periods``; ``nudged``: only its ``steps``, ``dt`` and ``bound`` (and the model's
    projection) are used: plain synchronous steps, no tolerance, no alternating updates.

    Its stats report ``residual`` ``(B,)`` of the nudged field at the last state, and
    ``nonfinite_step``, the first step whose state was not finite or beyond ``bound``
    (the guards of :mod:`eqprop.guards`). It has no circle check (its points are never
    relaxed to their fixed points).

    **Raises:** :class:`~eqprop.settings.SettingError` for ``points < 2``.
    """

    beta: float = setting(0.5, "Nudging strength (radius of the nudge circle).", bounds=POSITIVE)
    points: int = setting(4, "Points per period of the rotating nudge (>= 2).", bounds=POSITIVE_INT)
    periods: int = setting(4, "Oscillation periods of the rotating nudge.", bounds=POSITIVE_INT)
    nudged: FixedPointSolver = eqx.field(static=True, default=FixedPoint(steps=20))

    def needs_complex(self) -> bool:
        """Always true: the rotating nudge is complex."""
        return True

    def __check_init__(self):
        if self.points < 2:
            raise SettingError("points", f"'online-hep' needs points >= 2, got {self.points}")

    def __call__(self, model, x, y, free, key):
        ftype = jax.tree.leaves(free.u)[0].dtype
        ctype = jnp.result_type(ftype, jnp.complex64)
        seg, n = self.nudged.steps, self.points
        project = model.projector()
        total = seg * n * self.periods
        u0 = jax.tree.map(lambda v: v.astype(ctype), free.u)
        zeros = jax.tree.map(jnp.zeros_like, u0)
        guards = Guards(bound=self.nudged.bound)  # the nudged solver's bound, as every phase

        def body(t, carry):
            u, u_sum, f_sum, bad = carry
            k = (t // seg) % n
            beta = self.beta * jnp.exp(2j * jnp.pi * k / n).astype(ctype)
            f = nudged_field(model, free.drive, y, beta)(u)
            u = euler_step(u, f, self.nudged.dt, project)
            a = model.activity(u)
            bad = jnp.where((bad < 0) & ~guards.within(u), t + 1, bad)
            return (u, jax.tree.map(jnp.add, u_sum, u),
                    jax.tree.map(lambda s, ai: s + ai / beta, f_sum, a), bad)

        u, u_sum, f_sum, bad = jax.lax.fori_loop(0, total, body, (u0, zeros, zeros, jnp.asarray(-1)))
        v = jax.tree.map(lambda s: jnp.real(s) / total, f_sum)
        u_bar = jax.tree.map(lambda s: jnp.real(s) / total, u_sum)
        last = self.beta * jnp.exp(2j * jnp.pi * ((total - 1) // seg % n) / n).astype(ctype)
        stats = guards.report(nudged_field(model, free.drive, y, last), u, total, bad)
        return assemble(model, x, y, u_bar, v), Estimate(error_vector=v, phases=stats)


# registered in the order the configuration lists them
ESTIMATORS.register("ep", EP)
ESTIMATORS.register("hep", HolomorphicEP)
ESTIMATORS.register("online-hep", OnlineHEP)
