"""Exact references: the exact nudge derivative, implicit differentiation, BPTT.

At the free fixed point ``u*`` with Jacobian ``J_u = dF/du``:

- exact nudge (generalized EP with exact ``da*/dbeta``): solve ``J_u w + dl/da = 0``
  (forward mode), then ``v = da/du w``;
- implicit differentiation (recurrent backprop): solve ``J_u^T delta + dl/du = 0``
  (reverse mode); ``delta`` is the RBP adjoint (in activity space) and
  ``g = (dF/dtheta)^T delta / B`` is the exact gradient of the loss at the fixed point;
- BPTT: autodiff through the free solver's ``steps`` unrolled updates of the free phase
  (synchronous or alternating, as the solver relaxes; ``lax.scan``).

The linear systems are solved matrix-free (JVPs or VJPs only) by a Lineax solver object
(:mod:`eqprop.linear`; default: the damped linearised relaxation with a GMRES fallback).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import lineax as lx
import jax.numpy as jnp
from jax import Array

from ..linear import DampedThenGMRES, solve_linear
from ..network.base import BipartiteModel, EquilibriumModel
from ..registry import ESTIMATORS
from ..guards import RelaxStats
from ..relax import sweep_map
from ..solvers import FixedPoint, FixedPointSolver
from .base import Estimate, Estimator, FreePhase, assemble

PyTree = Any


def converged_only(v: PyTree, free: FreePhase, converged_tol: float) -> PyTree:
    """Zero the rows of ``v`` whose example's free-phase residual exceeds
    ``converged_tol`` (``0``: keep all): the exact formulas hold only at a fixed point.

    **Arguments:** ``v``: pytree with leaves ``(B, ...)``; ``free``: the free phase
    (its ``stats.residual`` ``(B,)``); ``converged_tol``: the residual threshold.

    **Returns:** a pytree like ``v``.
    """
    if converged_tol <= 0:
        return v
    keep = free.stats.residual <= converged_tol  # (B,)
    # where, not a product: a left-out example's solve may be huge or non-finite
    return jax.tree.map(lambda t: jnp.where(keep.reshape((-1,) + (1,) * (t.ndim - 1)), t, 0), v)


def sweep_groups(model: EquilibriumModel) -> tuple[tuple[str, ...], ...] | None:
    """The groups an alternating linear solve sweeps (:class:`~eqprop.linear.DampedIteration`):
    ``model.partition()`` of a :class:`~eqprop.network.BipartiteModel`, else ``None``."""
    return model.partition() if isinstance(model, BipartiteModel) else None


def exact_nudge_derivative(
    model: EquilibriumModel, free: FreePhase, y: Array, linear: lx.AbstractLinearSolver,
    converged_tol: float = 0.0,
) -> tuple[PyTree, RelaxStats]:
    """``da*/dbeta`` at ``beta = 0``, exactly: ``-J^{-1} dl/da`` in activity space (the
    exact nudge derivative of generalized EP; Laborieux and Zenke 2024, arXiv
    2309.02214).

    Solves ``J_u w + dl/da = 0`` with ``J_u = dF/du`` at the free fixed point (JVPs
    only), then ``v = act'(u*) w``.

    **Arguments:** ``model``; ``free``: the free phase; ``y``: labels ``(B,)``;
    ``linear``: a Lineax solver (:mod:`eqprop.linear`); ``converged_tol``: examples whose
    free residual exceeds it get a zero right-hand side (``0``: none).

    **Returns:** ``v`` (pytree like the activity, leaves ``(B, ...)``) and the linear
    solve's :class:`~eqprop.relax.RelaxStats` (``residual`` ``(B,)``).
    """
    _, jvp = jax.linearize(lambda u: model.field(u, free.drive), free.u)
    # left-out examples get a zero right-hand side: their blocks stay 0 and cost the solve nothing
    e = converged_only(model.nudge(model.activity(free.u), y), free, converged_tol)
    w, stats = solve_linear(jvp, e, linear, groups=sweep_groups(model))
    _, v = jax.jvp(model.activity, (free.u,), (w,))
    return v, stats


def rbp_delta(
    model: EquilibriumModel, free: FreePhase, y: Array, linear: lx.AbstractLinearSolver,
    converged_tol: float = 0.0,
) -> tuple[PyTree, RelaxStats]:
    """The recurrent-backprop adjoint ``delta = -J^{-T} dl/da`` (per example, activity
    space; Almeida 1987, Pineda 1987).

    Solves ``J_u^T delta + dl/du = 0`` at the free fixed point (VJPs only); this
    ``delta`` equals ``-J^{-T} dl/da`` with ``J`` the activity-coordinate Jacobian, and
    ``(dF/dtheta)^T delta`` is the exact gradient of the loss at the fixed point.

    **Arguments:** as :func:`exact_nudge_derivative`.

    **Returns:** ``delta`` (pytree like the state, leaves ``(B, ...)``) and the linear
    solve's :class:`~eqprop.relax.RelaxStats` (``residual`` ``(B,)``).
    """
    _, vjp = jax.vjp(lambda u: model.field(u, free.drive), free.u)
    dl_du = jax.grad(lambda u: jnp.sum(model.loss(model.activity(u), y)))(free.u)
    dl_du = converged_only(dl_du, free, converged_tol)  # see exact_nudge_derivative
    return solve_linear(lambda lam: vjp(lam)[0], dl_du, linear, groups=sweep_groups(model))


class _Exact(Estimator):
    """Shared fields of the exact estimators: ``linear``, the Lineax solver of the linear
    system (default ``"auto"``, :class:`~eqprop.linear.DampedThenGMRES`), and
    ``converged_tol``: examples whose free-phase residual exceeds it are left out of the
    gradient (``0``: none)."""

    linear: lx.AbstractLinearSolver = eqx.field(static=True, default=DampedThenGMRES())
    converged_tol: float = eqx.field(static=True, default=0.0)


@ESTIMATORS.register("exact-nudge")
class ExactNudge(_Exact):
    """Generalized EP with the exact ``da*/dbeta = -J^{-1} dl/da`` (no finite-nudge bias;
    arXiv 2309.02214 Eq. 5).

    Laborieux and Zenke 2024: ``g = (dF/dtheta)^T v / B + readout gradient`` with ``v``
    from :func:`exact_nudge_derivative`. Equals :class:`Implicit` when ``J`` is symmetric
    (tied weights); otherwise differs by the asymmetry bias.
    """

    def __call__(self, model, x, y, free, key):
        v, stats = exact_nudge_derivative(model, free, y, self.linear, self.converged_tol)
        g = assemble(model, x, y, free.u, converged_only(v, free, self.converged_tol))
        return g, Estimate(error_vector=v, phases=None, linear=stats)


@ESTIMATORS.register("implicit")
class Implicit(_Exact):
    """Implicit differentiation (recurrent backprop; Almeida 1987, Pineda 1987): the
    exact gradient of the loss at the fixed point.

    ``g = (dF/dtheta)^T delta / B + readout gradient`` with ``delta`` from
    :func:`rbp_delta`: the reference every estimator is compared against.

    **Settings** (its fields, shared with :class:`ExactNudge`): ``linear``, the Lineax
    solver of ``J^T delta = -dl/da`` (default :class:`~eqprop.linear.DampedThenGMRES`,
    ``[dynamics] linear_solver``); ``converged_tol``: examples whose free-phase residual
    exceeds it are left out of the gradient (``0``: none).

    **Call:** as :meth:`eqprop.estimate.Estimator.__call__`: ``(model, x (B, ...), y (B,),
    free, key)`` to ``(gradient shaped like model, Estimate)``, the :class:`Estimate`'s
    ``error_vector`` being ``delta`` (like the state) and ``linear`` the solve's
    :class:`~eqprop.guards.RelaxStats`. **Raises:** ``ValueError`` from :meth:`check` (a
    solver that cannot relax the model).
    """

    def __call__(self, model, x, y, free, key):
        delta, stats = rbp_delta(model, free, y, self.linear, self.converged_tol)
        g = assemble(model, x, y, free.u, converged_only(delta, free, self.converged_tol))
        return g, Estimate(error_vector=delta, phases=None, linear=stats)


def unrolled_loss(model: EquilibriumModel, x: Array, y: Array, solver: FixedPointSolver) -> Array:
    """Mean loss after exactly ``solver.steps`` updates of the solver's step map from the
    initial state (differentiable; ``lax.scan``).

    The step map is the one the solver relaxes with (:func:`eqprop.relax.sweep_map`):
    synchronous steps, or with ``update = "alternating"`` sweeps over the model's
    ``partition()``, ``steps`` counting group updates (rounded up to whole sweeps, as
    :func:`eqprop.relax.relax` does). Uses ``steps``, ``dt`` and ``update`` and the
    model's projection; ``tol`` and the solver's kind (e.g. Anderson) are not used: the
    loss is that of the plain iteration's state after its whole budget.

    **Arguments:** ``model``; ``x``: inputs ``(B, ...)``; ``y``: labels ``(B,)``;
    ``solver``: a :class:`~eqprop.solvers.FixedPointSolver`.

    **Returns:** a scalar.

    **Raises:** ``ValueError`` (at trace time) for alternating updates of a model that is
    not bipartite (:meth:`~eqprop.solvers.FixedPointSolver.check`).
    """
    drive = model.prepare(x)
    groups, group_field = None, None
    if solver.update == "alternating":
        solver.check(model)
        groups = model.partition()
        group_field = lambda u, group: model.field_on(u, drive, group)  # noqa: E731
    step, per_sweep = sweep_map(lambda u: model.field(u, drive), solver.dt, groups, group_field,
                                model.projector())
    sweeps = -(-solver.steps // per_sweep)
    u, _ = jax.lax.scan(lambda u, _: (step(u)[1], None), model.init_state(drive), None,
                        length=sweeps)
    return jnp.mean(model.loss(model.activity(u), y))


@ESTIMATORS.register("bptt")
class BPTT(Estimator):
    """Backprop through time through the free phase (memory grows with its steps).

    The exact gradient of the loss after ``free.steps`` unrolled updates (the free
    solver's, synchronous or alternating) from the initial state (:func:`unrolled_loss`). It relaxes its own free phase and ignores
    the one it is given; its :class:`~eqprop.estimate.Estimate` is empty.
    """

    free: FixedPointSolver = eqx.field(static=True, default=FixedPoint(steps=150))

    def __call__(self, model, x, y, free, key):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        g = jax.grad(lambda p: unrolled_loss(eqx.combine(p, static), x, y, self.free))(params)
        return g, Estimate(error_vector=None, phases=None)
