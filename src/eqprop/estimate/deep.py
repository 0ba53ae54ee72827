"""The DEEP learning rule of complete directed networks (Farinha et al. 2020, arXiv
2006.08798): presynaptic activity times the postsynaptic temporal derivative along the
nudged trajectory.

From the free fixed point ``s(0)``, the nudged phase runs ``T2`` projected Euler steps of
the field plus ``beta (y - s_out)`` (for the ``mse`` readout; in general
``-beta dl/da``: toward the target, the paper's sign), and

    Delta W_ij = (1 / (B T2)) sum_b sum_{t=1..T2} s_i(t) (s_j(t) - s_j(t-1))

over the batch ``b`` (``i`` over every neuron, the clamped inputs and bias included;
``j`` over the free ones). The paper ascends ``W += lr Delta W``; in eqprop's convention
(an estimate of ``+dL/dtheta``, descended by the optimizer) the rule returns
``-Delta W``, plus ``l1 sign(W)`` (the gradient of ``l1 ||W||_1``, the paper's L1 term),
both multiplied by the mask so that masked entries never change.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..guards import RelaxStats, residual_norm
from ..network.directed import DirectedNetwork
from ..network.ops import matmul
from ..registry import ESTIMATORS
from ..relax import euler_step
from ..settings import NONNEGATIVE, POSITIVE, setting
from ..solvers import FixedPoint, FixedPointSolver
from .base import Estimate, Estimator, nudged_field, readout_grad

__all__ = ["DeepRule", "deep_rule_update"]


def deep_rule_update(model: DirectedNetwork, x: jax.Array, y: jax.Array, u0, beta: float,
                     dt: float, steps: int):
    """Run the nudged phase and accumulate the DEEP rule.

    **Arguments:** ``model``: a :class:`~eqprop.network.DirectedNetwork`; ``x``: inputs
    ``(B, n_in)``; ``y``: labels ``(B,)``; ``u0``: the free fixed point (state dict,
    leaves ``(B, ...)``); ``beta``: the nudge toward the target (``> 0``); ``dt``: the
    Euler step; ``steps``: ``T2``.

    **Returns:** ``(delta, u)``: the paper's ascent direction ``Delta W`` ``(n, n)``
    (zero in the clamped columns; not yet masked) and the final nudged state.
    """
    drive = model.prepare(x)
    field = nudged_field(model, drive, y, -beta)
    project = model.projector()
    clamped = model.clamped(x)

    def body(_, carry):
        u, acc = carry
        u1 = euler_step(u, field(u), dt, project)
        a0, a1 = model.flat(model.activity(u)), model.flat(model.activity(u1))
        pre = jnp.concatenate([clamped, a1], axis=-1)
        return u1, acc + matmul(pre.T, a1 - a0)

    n, c = model.W.shape[0], model.n_clamped
    acc0 = jnp.zeros((n, n - c), model.W.dtype)
    u, acc = jax.lax.fori_loop(0, steps, body, (u0, acc0))
    delta = jnp.zeros_like(model.W).at[:, c:].set(acc / (x.shape[0] * steps))
    return delta, u


@ESTIMATORS.register("deep-rule")
class DeepRule(Estimator):
    """The DEEP rule of directed networks (Farinha et al. 2020): ``-mask * Delta W + l1
    mask sign(W)`` along ``+dL/dW``, plus the readout's direct gradient at the free fixed
    point (``Delta W``: the module doc).

    **Settings:** ``beta``: the nudge toward the target (the paper's ``beta``, 10 in its
    XOR runs); ``l1``: strength of the L1 penalty ``l1 ||W||_1`` (in the gradient, so
    scaled by the learning rate); ``nudged``: the nudged phase's solver, of which ``dt``
    and ``steps`` (``T2``) are used: the rule integrates the trajectory, every step.

    Its :class:`~eqprop.estimate.Estimate` has ``error_vector`` ``(a(T2) - a(0)) /
    (-beta)`` (the one-sided estimate of ``da*/dbeta`` in eqprop's sign) and the nudged
    phase's stats (``residual`` ``(1, B)``).

    **Raises:** :meth:`check` raises ``ValueError`` for a model that is not a
    :class:`~eqprop.network.DirectedNetwork`, or (``dynamics.dt: ...``) a step that
    oscillates on its weights.
    """

    beta: float = setting(10.0, "Nudging strength toward the target.", bounds=POSITIVE)
    l1: float = setting(0.0, "L1 penalty l1 ||W||_1 added to the estimate (deep-rule).",
                        bounds=NONNEGATIVE)
    nudged: FixedPointSolver = eqx.field(static=True, default=FixedPoint(steps=20))

    def check(self, model):
        """As :meth:`Estimator.check` (which refuses, through the solvers' check, a
        ``nudged.dt`` whose Euler step oscillates:
        :meth:`~eqprop.network.DirectedNetwork.check_step`); ``ValueError`` unless
        ``model`` is a directed network, or when ``beta * dt >= 2`` (the nudge's own
        term ``-beta s_out`` then makes the nudged Euler step oscillate)."""
        if not isinstance(model, DirectedNetwork):
            raise ValueError(f"estimator 'deep-rule' needs a directed network (model.kind = "
                             f"'directed'), got {type(model).__name__}")
        super().check(model)  # the solvers' check runs model.check_step(dt)
        if self.beta * self.nudged.dt >= 2.0:  # the nudge alone multiplies s_out - y by 1 - dt beta
            raise ValueError(
                f"estimator.beta: beta * dynamics.dt = {self.beta * self.nudged.dt:g} >= 2: the nudged "
                f"Euler step oscillates on the outputs (each step multiplies s_out - y by 1 - dt beta); "
                f"use beta < {2.0 / self.nudged.dt:g} at dt = {self.nudged.dt:g}, or a smaller dt")

    def __call__(self, model, x, y, free, key):
        delta, u = deep_rule_update(model, x, y, free.u, self.beta, self.nudged.dt,
                                    self.nudged.steps)
        mask = model.mask.astype(model.W.dtype)
        g_w = mask * (self.l1 * jnp.sign(model.W) - delta)
        a0 = model.activity(free.u)
        grads = readout_grad(model, a0, y)
        grads = eqx.tree_at(lambda m: m.W, grads, g_w)
        field = nudged_field(model, free.drive, y, -self.beta)
        dt = self.nudged.dt  # the projected residual: zero at a fixed point of the clipped map
        step = euler_step(u, field(u), dt, model.projector())
        residual = residual_norm(jax.tree.map(lambda a, b: (a - b) / dt, step, u))
        finite = jnp.all(jnp.isfinite(residual))
        stats = RelaxStats(
            steps=jnp.asarray(self.nudged.steps), residual=residual[None],
            nonfinite_step=jnp.where(finite, -1, self.nudged.steps),
            nonfinite={p: ~jnp.all(jnp.isfinite(v)) for p, v in u.items()})
        v = jax.tree.map(lambda a, b: (a - b) / (-self.beta), model.activity(u), a0)
        return grads, Estimate(error_vector=v, phases=stats)
