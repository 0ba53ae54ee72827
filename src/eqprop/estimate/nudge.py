"""Estimators of ``da*/dbeta`` from finite nudges: EP, holomorphic EP, online hEP.

All nudged phases start at the free fixed point and relax together on a leading
axis (``vmap``): real nudges with real states, complex nudges with complex states.

hEP with ``N`` points (Laborieux and Zenke 2022, arXiv 2209.00530; 2024, arXiv
2309.02214) averages ``(a(beta_k) - a(0)) / beta_k`` over
``beta_k = |beta| exp(2 pi i k / N)``: the discrete Cauchy integral of ``a(beta)/beta^2``,
whose error is ``O(|beta|^N)`` while ``a*(beta)`` is holomorphic on the closed disc. ``N = 1`` is one-sided EP, ``N = 2`` symmetric EP
(subtracting ``a(0)`` changes nothing for ``N >= 2``). Conjugate points give conjugate
states, so only ``k = 0 .. N/2`` are relaxed and the others enter as twice the real part.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ..network.base import EquilibriumModel
from ..registry import ESTIMATORS
from ..relax import RelaxStats, euler_step, nonfinite_populations, residual_norm
from ..settings import POSITIVE, POSITIVE_INT, SettingError, setting
from ..solvers import FixedPoint, FixedPointSolver
from .base import Estimate, Estimator, FreePhase, assemble, nudged_field, nudged_field_on

PyTree = Any


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


def _concat_stats(stats: list[RelaxStats]) -> RelaxStats:
    """Stats of several phase groups as one (per-phase ``residual`` ``(P, B)``)."""
    if len(stats) == 1:
        return stats[0]
    return RelaxStats(
        steps=jnp.max(jnp.stack([s.steps for s in stats])),
        residual=jnp.concatenate([s.residual for s in stats]),
        nonfinite_step=jnp.max(jnp.stack([s.nonfinite_step for s in stats])),
        nonfinite={k: jnp.any(jnp.stack([s.nonfinite[k] for s in stats])) for k in stats[0].nonfinite},
    )


def circle_derivative(
    model: EquilibriumModel, free: FreePhase, y: Array, beta: float, n: int, solver: FixedPointSolver,
) -> tuple[PyTree, RelaxStats, dict]:
    """hEP estimate of ``da*/dbeta`` with ``n`` points on the circle of radius ``beta``.

    ``v = (1/n) sum_k (a(beta_k) - a(0)) / beta_k`` (the discrete Cauchy integral;
    Laborieux and Zenke 2022, arXiv 2209.00530); conjugate points enter as twice the
    real part. ``n = 1`` is one-sided EP, ``n = 2`` symmetric EP.

    **Arguments:** ``model``; ``free``: the free phase; ``y``: labels ``(B,)``;
    ``beta``: the radius ``|beta|``; ``n``: the number of points ``N``; ``solver``: the
    nudged phases' solver.

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
    return v, _concat_stats(stats), states


class HolomorphicEP(Estimator):
    """Holomorphic EP: ``N`` nudges on a circle of radius ``beta`` (any ``N >= 1``).

    ``g = (dF/dtheta)^T v / B + readout gradient`` with ``v`` the discrete Cauchy
    integral of :func:`circle_derivative` (Laborieux and Zenke 2022, arXiv 2209.00530;
    2024, arXiv 2309.02214). Its error is ``O(beta^N)`` where ``a*(beta)`` is
    holomorphic on the closed disc; outside that radius it is biased whatever ``N``.

    **Settings:** ``beta``: the radius ``|beta|`` (``> 0``); ``points``: ``N >= 1``
    (``N > 2`` needs complex states, so a holomorphic activation); ``nudged``: the
    nudged phases' solver.
    """

    beta: float = setting(0.5, "Nudging strength (radius of the nudge circle).", bounds=POSITIVE)
    points: int = setting(2, "Number of nudged points N on the circle.", bounds=POSITIVE_INT)
    nudged: FixedPointSolver = eqx.field(static=True, default=FixedPoint(steps=20))

    def needs_complex(self) -> bool:
        """True when ``points > 2`` (the circle then has complex points)."""
        return self.points > 2

    def __call__(self, model, x, y, free, key):
        v, stats, _ = circle_derivative(model, free, y, self.beta, self.points, self.nudged)
        return assemble(model, x, y, free.u, v), Estimate(error_vector=v, phases=stats)


class EP(HolomorphicEP):
    """Classic finite-nudge EP in generalized form: one-sided (``points=1``) or symmetric (2).

    One-sided: ``v = (a(beta) - a(0)) / beta`` (Scellier and Bengio 2017, bias
    ``O(beta)``); symmetric: ``(a(beta) - a(-beta)) / (2 beta)`` (Laborieux et al. 2021,
    bias ``O(beta^2)``). Real nudges only. Settings as :class:`HolomorphicEP`.

    **Raises:** :class:`~eqprop.settings.SettingError` for ``points`` not 1 or 2.
    """

    points: int = setting(1, "1 (one-sided) or 2 (symmetric); use 'hep' for more.",
                          bounds=POSITIVE_INT)

    def __check_init__(self):
        if self.points not in (1, 2):
            raise SettingError("points", f"'ep' takes 1 (one-sided) or 2 (symmetric); use 'hep' "
                               f"for more, got {self.points}")


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
    ``periods``; ``nudged``: only its ``steps`` and ``dt`` (and the model's projection)
    are used: plain synchronous steps, no tolerance, no alternating updates.

    Its stats report ``residual`` ``(B,)`` of the nudged field at the last state.

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

        def body(t, carry):
            u, u_sum, f_sum = carry
            k = (t // seg) % n
            beta = self.beta * jnp.exp(2j * jnp.pi * k / n).astype(ctype)
            f = nudged_field(model, free.drive, y, beta)(u)
            u = euler_step(u, f, self.nudged.dt, project)
            a = model.activity(u)
            return (u, jax.tree.map(jnp.add, u_sum, u),
                    jax.tree.map(lambda s, ai: s + ai / beta, f_sum, a))

        u, u_sum, f_sum = jax.lax.fori_loop(0, total, body, (u0, zeros, zeros))
        v = jax.tree.map(lambda s: jnp.real(s) / total, f_sum)
        u_bar = jax.tree.map(lambda s: jnp.real(s) / total, u_sum)
        last = self.beta * jnp.exp(2j * jnp.pi * ((total - 1) // seg % n) / n).astype(ctype)
        nonfinite = nonfinite_populations(u)
        stats = RelaxStats(
            steps=jnp.asarray(total),
            residual=residual_norm(nudged_field(model, free.drive, y, last)(u)),
            nonfinite_step=jnp.where(jnp.any(jnp.stack(list(nonfinite.values()))), total, -1),
            nonfinite=nonfinite,
        )
        return assemble(model, x, y, u_bar, v), Estimate(error_vector=v, phases=stats)


# registered in the order the configuration lists them
ESTIMATORS.register("ep", EP)
ESTIMATORS.register("hep", HolomorphicEP)
ESTIMATORS.register("online-hep", OnlineHEP)
