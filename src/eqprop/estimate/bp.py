"""The backpropagation baseline: the feed-forward counterpart of the network, trained by
autodiff (``[estimator] name = "bp"``).

Laborieux and Zenke 2022 (arXiv 2209.00530) compare hEP with the same architecture
trained by backpropagation (88.3% against hEP's 88.5% on CIFAR-10, 8 s against 230 s an
epoch). The counterpart is the model's :meth:`~eqprop.network.FeedForwardModel.feedforward`:
the forward projections only, one pass, no feedback and no relaxation. ``bp`` is the
exact gradient of that network's mean loss

    g = d/dtheta mean_b l(readout(act(feedforward(prepare(x_b)))), y_b)

(feedback weights do not appear in it: their gradient is zero). It is *not* an estimate
of the recurrent network's gradient at its fixed point, so a model it trains predicts by
its forward pass too: its :meth:`BackProp.inference` is that pass, which the train step
reads loss and accuracy at and ``eqprop train``/``eval`` evaluate; ``eqprop gradcheck``
refuses it (a cosine with implicit differentiation would compare two different
networks' gradients).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ..guards import RelaxStats
from ..network.base import EquilibriumModel, FeedForwardModel
from ..registry import ESTIMATORS
from ..solvers import FixedPointSolver
from .base import Estimate, Estimator, FreePhase

__all__ = ["BackProp", "feedforward_loss", "forward_phase"]

PyTree = Any


def feedforward_loss(model: FeedForwardModel, x: Array, y: Array) -> Array:
    """Mean loss of the feed-forward pass ``model.loss(activity(feedforward(prepare(x))),
    y)`` (differentiable).

    **Arguments:** ``model``: a :class:`~eqprop.network.FeedForwardModel`; ``x``: inputs
    ``(B, ...)``; ``y``: labels ``(B,)``.

    **Returns:** a scalar.
    """
    u = model.feedforward(model.prepare(x))
    return jnp.mean(model.loss(model.activity(u), y))


def forward_phase(model: FeedForwardModel, x: Array) -> FreePhase:
    """The forward pass as a :class:`~eqprop.estimate.FreePhase`, so that everything that
    reads a free phase (loss, accuracy, top-5, divergence checks) reads it unchanged.

    **Arguments:** ``model``; ``x``: inputs ``(B, ...)``.

    **Returns:** ``FreePhase(u=feedforward(drive), drive, stats)`` with ``stats.steps = 1``
    (one pass), ``residual`` zeros ``(B,)`` (nothing is relaxed) and the non-finite
    flags of the state (``nonfinite_step`` 0 when some entry is not finite, else -1).
    """
    drive = model.prepare(x)
    u = model.feedforward(drive)
    bad = {p: jnp.logical_not(jnp.all(jnp.isfinite(v))) for p, v in u.items()}
    any_bad = jnp.any(jnp.stack(list(bad.values())))
    batch = jax.tree.leaves(u)[0].shape[0]
    stats = RelaxStats(steps=jnp.asarray(1, jnp.int32),
                       residual=jnp.zeros((batch,), jax.tree.leaves(u)[0].dtype),
                       nonfinite_step=jnp.where(any_bad, 0, -1).astype(jnp.int32), nonfinite=bad)
    return FreePhase(u=u, drive=drive, stats=stats)


@ESTIMATORS.register("bp")
class BackProp(Estimator):
    """Backpropagation through the feed-forward counterpart of the network (the baseline
    of Laborieux and Zenke 2022, arXiv 2209.00530): ``jax.grad`` of
    :func:`feedforward_loss`. No settings; no relaxation (the ``[dynamics]`` free phase is
    not used by training or evaluation).

    Its :class:`~eqprop.estimate.Estimate` is empty (no error vector, no phases).

    **Raises:** :meth:`check` raises ``ValueError`` for a model without a feed-forward
    counterpart (not a :class:`~eqprop.network.FeedForwardModel`, or a graph whose
    forward projections form a cycle).
    """

    def check(self, model: EquilibriumModel) -> None:
        """``ValueError`` (one line; the configuration prefixes ``estimator.name:``)
        unless ``model`` is a :class:`~eqprop.network.FeedForwardModel` whose forward
        graph is acyclic."""
        if not isinstance(model, FeedForwardModel):
            raise ValueError(
                "'bp' needs a model with a feed-forward counterpart (a network.FeedForwardModel: "
                "model.kind = 'layered', 'graph' or 'conv'); this model has none")
        try:
            model.check_feedforward()
        except ValueError as err:
            raise ValueError(f"'bp' needs a feed-forward counterpart, but {err}") from None

    def inference(self, model: EquilibriumModel, x: Array, solver: FixedPointSolver,
                  u0: PyTree | None = None, warm: Array | None = None) -> FreePhase:
        """The forward pass (:func:`forward_phase`): a model trained by ``bp`` is trained,
        evaluated and predicts by it. ``solver``, ``u0`` and ``warm`` are not used."""
        return forward_phase(model, x)

    def __call__(self, model, x, y, free, key):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        g = jax.grad(lambda p: feedforward_loss(eqx.combine(p, static), x, y))(params)
        return g, Estimate(error_vector=None, phases=None)
