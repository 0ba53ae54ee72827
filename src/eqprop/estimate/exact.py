"""Exact references: the exact nudge derivative, implicit differentiation, BPTT.

At the free fixed point ``u*`` with Jacobian ``J_u = dF/du``:

- exact nudge (generalized EP with exact ``da*/dbeta``): solve ``J_u w + dl/da = 0``
  (forward mode), then ``v = da/du w``;
- implicit differentiation (recurrent backprop): solve ``J_u^T delta + dl/du = 0``
  (reverse mode); ``delta`` is the RBP adjoint (in activity space) and
  ``g = (dF/dtheta)^T delta / B`` is the exact gradient of the loss at the fixed point;
- BPTT: autodiff through ``free_steps`` unrolled steps of the free phase (``lax.scan``).

The linear systems are solved by the linearised relaxation itself,
``w <- w + dt (J_u w + r)``, which converges exactly when the relaxation does (same
spectrum), with a budget ``linear_steps`` and a tolerance ``linear_tol`` relative to
``||r||``.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ..network.base import EquilibriumModel
from ..relax import Dynamics, RelaxStats, relax, residual_norm
from .base import Estimate, Estimator, FreePhase, assemble

PyTree = Any


def solve_linear(
    matvec: Callable[[PyTree], PyTree], rhs: PyTree, dynamics: Dynamics
) -> tuple[PyTree, RelaxStats]:
    """Solve ``matvec(w) + rhs = 0`` by the damped iteration ``w <- w + dt (matvec(w) + rhs)``."""
    tol = dynamics.linear_tol * jnp.max(residual_norm(rhs)) if dynamics.linear_tol > 0 else 0.0
    return relax(
        lambda w: jax.tree.map(jnp.add, matvec(w), rhs),
        jax.tree.map(jnp.zeros_like, rhs),
        dt=dynamics.dt,
        steps=dynamics.linear_steps,
        tol=tol,
    )


def exact_nudge_derivative(
    model: EquilibriumModel, free: FreePhase, y: Array, dynamics: Dynamics
) -> tuple[PyTree, RelaxStats]:
    """``da*/dbeta`` at ``beta = 0``, exactly: ``-J^{-1} dl/da`` in activity space."""
    _, jvp = jax.linearize(lambda u: model.field(u, free.drive), free.u)
    e = model.nudge(model.activity(free.u), y)
    w, stats = solve_linear(jvp, e, dynamics)
    _, v = jax.jvp(model.activity, (free.u,), (w,))
    return v, stats


def rbp_delta(
    model: EquilibriumModel, free: FreePhase, y: Array, dynamics: Dynamics
) -> tuple[PyTree, RelaxStats]:
    """The recurrent-backprop adjoint ``delta = -J^{-T} dl/da`` (per example, activity space)."""
    _, vjp = jax.vjp(lambda u: model.field(u, free.drive), free.u)
    dl_du = jax.grad(lambda u: jnp.sum(model.loss(model.activity(u), y)))(free.u)
    return solve_linear(lambda lam: vjp(lam)[0], dl_du, dynamics)


class ExactNudge(Estimator):
    """Generalized EP with the exact ``da*/dbeta`` (no finite-nudge bias)."""

    name = "exact-nudge"

    def __call__(self, model, x, y, free, key):
        v, stats = exact_nudge_derivative(model, free, y, self.dynamics)
        return assemble(model, x, y, free.u, v), Estimate(error_vector=v, phases=stats)


class Implicit(Estimator):
    """Implicit differentiation (RBP): the exact gradient of the loss at the fixed point."""

    name = "implicit"

    def __call__(self, model, x, y, free, key):
        delta, stats = rbp_delta(model, free, y, self.dynamics)
        return assemble(model, x, y, free.u, delta), Estimate(error_vector=delta, phases=stats)


def unrolled_loss(model: EquilibriumModel, x: Array, y: Array, dynamics: Dynamics) -> Array:
    """Mean loss after exactly ``free_steps`` steps from the initial state (differentiable)."""
    drive = model.prepare(x)

    def step(u, _):
        f = model.field(u, drive)
        return jax.tree.map(lambda ui, fi: ui + dynamics.dt * fi, u, f), None

    u, _ = jax.lax.scan(step, model.init_state(drive), None, length=dynamics.free_steps)
    return jnp.mean(model.loss(model.activity(u), y))


class BPTT(Estimator):
    """Backprop through time through the free phase (memory grows with ``free_steps``)."""

    name = "bptt"

    def __call__(self, model, x, y, free, key):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        g = jax.grad(lambda p: unrolled_loss(eqx.combine(p, static), x, y, self.dynamics))(params)
        return g, Estimate(error_vector=None, phases=None)
