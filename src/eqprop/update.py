"""The training step: relax, estimate, update, in one jitted function.

``step(model, opt_state, x, y, key[, index]) -> (model, opt_state, metrics)`` where
``metrics`` holds the batch's loss and accuracy at the free fixed point of the model
the step was given (before its update) and the relaxation stats (:func:`batch_metrics`). With Jacobian homeostasis (:class:`eqprop.homeostasis.Homeostasis`)
the step adds ``coef * d L_homeo / d theta`` to the estimator's gradient on the batches
with ``index % every == 0`` (``index`` defaults to 0: always applied) and reports
``homeo_loss`` (0 on skipped batches) and ``homeo_applied``.

Warm starts: ``step(..., index, u0, warm)`` starts the free phase of example ``i`` from
``u0`` (leaves ``(B, ...)``) where ``warm[i]`` (see :func:`eqprop.estimate.free_phase`)
and returns the free fixed point as ``metrics["state"]``, to be stored for next time.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import Array

from .estimate import Estimator, estimate_metrics
from .estimate.base import add_grads
from .homeostasis import Homeostasis, homeostasis_grad
from .jitting import jit
from .network.base import EquilibriumModel, parameters
from .guards import NONCONVERGED_TOL
from .solvers import FixedPoint, FixedPointSolver

PyTree = Any

#: the free phase when none is given: 150 plain synchronous steps, states beyond 1e6 diverged
DEFAULT_FREE_SOLVER = FixedPoint(steps=150, bound=1e6)


def init_optimizer(optimizer: optax.GradientTransformation, model: EquilibriumModel) -> PyTree:
    """``optimizer.init`` on the model's trainable parameters
    (:func:`~eqprop.network.parameters`)."""
    return optimizer.init(parameters(model))


def batch_metrics(model: EquilibriumModel, free, y: Array) -> dict[str, Array]:
    """Loss, accuracy and relaxation figures of a free phase.

    **Arguments:** ``model``: reads out the activity; ``free``: a
    :class:`~eqprop.estimate.FreePhase` of a batch; ``y``: its labels ``(B,)``.

    **Returns:** scalars ``loss`` (batch mean), ``acc`` (fraction correct),
    ``free_steps``, ``residual`` (batch mean of ``||F(u)||``), ``nonconverged``
    (fraction of examples with residual above ``NONCONVERGED_TOL = 1e-3``),
    ``nonfinite_step`` (``-1`` if none), and ``nonfinite``: ``{population: bool}``.
    """
    a = model.activity(free.u)
    return {
        "loss": jnp.mean(model.loss(a, y)),
        "acc": jnp.mean(model.predict(a) == y),
        "free_steps": free.stats.steps,
        "residual": free.stats.residual_mean(),
        "nonconverged": free.stats.nonconverged_fraction(NONCONVERGED_TOL),
        "nonfinite_step": free.stats.nonfinite_step,
        "nonfinite": free.stats.nonfinite,
    }


def make_train_step(
    estimator: Estimator,
    optimizer: optax.GradientTransformation,
    homeostasis: Homeostasis | None = None,
    solver: FixedPointSolver | None = None,
) -> Callable[..., tuple[EquilibriumModel, PyTree, dict[str, Array]]]:
    """A jitted ``step(model, opt_state, x, y, key, index=0, u0=None, warm=None)``: free phase, estimate,
    (homeostasis,) optax update.

    **Arguments:** ``estimator``: an :class:`~eqprop.estimate.Estimator`; ``optimizer``:
    an optax transformation; ``homeostasis``: ``None`` or ``coef == 0`` for the task
    gradient only, else ``coef * d L_homeo / d theta`` is added (Laborieux and Zenke
    2024, arXiv 2309.02214); ``solver``: the free phase's solver (default
    :data:`DEFAULT_FREE_SOLVER`: 150 plain steps).

    **Returns:** ``step``, taking ``model``; ``opt_state`` (:func:`init_optimizer`);
    ``x``: inputs ``(B, ...)``; ``y``: labels ``(B,)``; ``key``: PRNG key of the
    estimator (and, folded, of the homeostasis probes); ``index``: the batch index
    (homeostasis ``every``); ``u0``, ``warm``: warm start as in
    :func:`~eqprop.estimate.free_phase`. It returns ``(model, opt_state, metrics)``:
    the updated model and state, and :func:`batch_metrics` of the free phase with the
    weights the step used (the model before the update: its fixed point read out by its
    own readout, so the logged loss is the loss whose gradient the step estimated), plus
    the estimator's figures (:func:`~eqprop.estimate.estimate_metrics`: ``nudged_residual``
    and ``nudged_nonconverged`` for nudged phases, ``linear_residual`` for a linear
    solve, ``hep_decay``, ``hep_error`` and ``hep_beta_suggested`` for hEP's circle),
    ``homeo_loss`` and ``homeo_applied`` with homeostasis and ``state`` (the free fixed
    point, leaves ``(B, ...)``) when ``u0`` is given.

    **Raises:** (when ``step`` is traced) ``ValueError`` when homeostasis is on and the
    model is not an :class:`~eqprop.network.InteractionModel`, or ``solver`` cannot
    relax the model; the estimator's own errors pass through.
    """
    if homeostasis is not None and homeostasis.coef == 0:
        homeostasis = None
    solver = DEFAULT_FREE_SOLVER if solver is None else solver

    @jit
    def step(model, opt_state, x, y, key, index=0, u0=None, warm=None):
        if homeostasis is not None:
            homeostasis.check(model)  # at trace time: a one-line error, not an AttributeError
        free = estimator.inference(model, x, solver, u0, warm)  # the free phase (bp: forward pass)
        grads, info = estimator(model, x, y, free, key)
        extra = estimate_metrics(info)
        if homeostasis is not None:
            h = homeostasis

            def apply(_):
                homeo_key = jax.random.fold_in(key, 0x4E0)  # the estimator keeps `key` itself
                loss, g = homeostasis_grad(model, x, free.u, homeo_key, h.probes)
                return loss, jax.tree.map(lambda t: h.coef * t, g)

            def skip(_):
                params = parameters(model)
                loss = jnp.zeros((), jax.tree.leaves(free.u)[0].real.dtype)
                return loss, jax.tree.map(jnp.zeros_like, params)

            if h.every == 1:
                applied = jnp.asarray(True)
                loss, hgrad = apply(None)
            else:
                applied = jnp.asarray(index) % h.every == 0
                loss, hgrad = jax.lax.cond(applied, apply, skip, None)
            grads = add_grads(grads, hgrad)
            extra.update(homeo_loss=loss, homeo_applied=applied)
        metrics = batch_metrics(model, free, y)  # the weights this step used, not the updated ones
        params = parameters(model)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        if u0 is not None:
            extra["state"] = free.u
        return model, opt_state, {**metrics, **extra}

    return step
