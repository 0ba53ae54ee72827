"""The training step: relax, estimate, update, in one jitted function.

``step(model, opt_state, x, y, key) -> (model, opt_state, metrics)`` where ``metrics``
holds the batch's loss and accuracy at the free fixed point and the relaxation stats.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import Array

from .estimate import Estimator, free_phase
from .network.base import EquilibriumModel, parameters

PyTree = Any


def init_optimizer(optimizer: optax.GradientTransformation, model: EquilibriumModel) -> PyTree:
    """Optimizer state for the model's trainable parameters."""
    return optimizer.init(parameters(model))


def batch_metrics(model: EquilibriumModel, free, y: Array) -> dict[str, Array]:
    """Loss, accuracy and relaxation figures of a free phase."""
    a = model.activity(free.u)
    return {
        "loss": jnp.mean(model.loss(a, y)),
        "acc": jnp.mean(model.predict(a) == y),
        "free_steps": free.stats.steps,
        "residual": jnp.mean(free.stats.residual),
        "nonconverged": jnp.mean(free.stats.residual > 1e-3),
        "nonfinite_step": free.stats.nonfinite_step,
        "nonfinite": free.stats.nonfinite,
    }


def make_train_step(
    estimator: Estimator, optimizer: optax.GradientTransformation
) -> Callable[..., tuple[EquilibriumModel, PyTree, dict[str, Array]]]:
    """A jitted ``step(model, opt_state, x, y, key)``: free phase, estimate, optax update."""

    @eqx.filter_jit
    def step(model, opt_state, x, y, key):
        free = free_phase(model, x, estimator.dynamics)
        grads, _ = estimator(model, x, y, free, key)
        params = parameters(model)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        return model, opt_state, batch_metrics(model, free, y)

    return step


def make_eval_step(estimator: Estimator):
    """A jitted ``evaluate(model, x, y) -> metrics`` (free phase only)."""

    @eqx.filter_jit
    def evaluate(model, x, y):
        return batch_metrics(model, free_phase(model, x, estimator.dynamics), y)

    return evaluate
