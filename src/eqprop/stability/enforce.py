"""Stability during training: the projection of ``[stability] enforce = "contraction"``
(applied after each optimizer step) and the cheap per-epoch figures (``[stability]
every``), with the trainer's hooks that build them from a training program."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ..jitting import jit
from ..network.base import BoxProjectedModel, EquilibriumModel, InteractionModel
from .certificates import (StabilityError, StabilitySettings, _depends, _free_solver, _neurons,
                           _relax, _start_activity, activation_lipschitz, contraction_bound,
                           coupling_norm, linear_interaction, projected_certificate, solver_groups,
                           spectral_radius_power, state_jacobian)

PyTree = Any

__all__ = ["coupling_leaves", "coupling_scale", "make_enforcer", "epoch_figures",
           "program_enforcer", "program_figures"]


def coupling_leaves(model: InteractionModel, x1: Array) -> list[bool]:
    """Which inexact leaves of ``model`` (in ``jax.tree.leaves`` order of
    ``eqx.filter(model, eqx.is_inexact_array)``) the coupling ``C = dh/da`` depends on,
    read from the jaxpr of ``C v`` (for the dense networks: the internal weights)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tdef = jax.tree.flatten(params)

    def cv(leaves, v):
        m = eqx.combine(jax.tree.unflatten(tdef, leaves), static)
        drive, a0 = _start_activity(m, x1)
        return jax.linearize(lambda b: m.interaction(b, drive), a0)[1](v)

    _, a0 = _start_activity(model, x1)
    jaxpr = jax.make_jaxpr(cv)(leaves, a0)
    nv = len(jax.tree.leaves(a0))
    flags = []
    for i in range(len(leaves)):
        mask = [k == i for k in range(len(leaves))] + [False] * nv
        flags.append(any(_depends(jaxpr, mask)))
    return flags


def coupling_scale(bound: Array, target: float) -> Array:
    """The factor ``min(1, target / bound)`` applied to the coupling's leaves."""
    return jnp.minimum(1.0, target / jnp.maximum(bound, 1e-300))


def make_enforcer(model: EquilibriumModel, x1: Array, *, settings: StabilitySettings = StabilitySettings(),
                  seeds: int = 1) -> Callable[[PyTree], PyTree]:
    """``enforce(model) -> model`` (jitted): the projection of ``[stability] enforce =
    "contraction"``, applied after each optimizer step. It rescales every leaf the coupling
    ``C`` depends on (:func:`coupling_leaves`) by ``min(1, target / (L ||C||_2))``: ``C``
    is linear in them for the dense networks, so the contraction bound becomes at most
    ``target``; other leaves (biases, input weights, readout) are untouched.

    **Arguments:** ``model``: one network (for the structure); ``x1``: one input
    ``(1, ...)``; ``settings``: ``target``, ``exact_max``, ``power_iters``; ``seeds``:
    ``K``, the model given to ``enforce`` is stacked (vmapped) when ``K > 1``.

    **Raises:** :class:`StabilityError` when the model has no linear interaction (the
    contraction bound does not exist for it).
    """
    if not linear_interaction(model, x1):
        raise StabilityError(
            f"stability.enforce: 'contraction' needs a model whose interaction h(a) is linear in "
            f"the activity (rate dynamics, e.g. the dense networks); {type(model).__name__} has "
            + ("a nonlinear one" if isinstance(model, InteractionModel) else "no interaction h(a)"))
    flags = coupling_leaves(model, x1)
    lip = activation_lipschitz(model, model.init_state(model.prepare(x1)))
    s = settings

    def one(m):
        bound = lip * coupling_norm(m, x1, exact_max=s.exact_max, iters=s.power_iters)
        k = coupling_scale(bound, s.target)
        params, static = eqx.partition(m, eqx.is_inexact_array)
        leaves, tdef = jax.tree.flatten(params)
        leaves = [t * k.astype(t.dtype) if f else t for t, f in zip(leaves, flags)]
        return eqx.combine(jax.tree.unflatten(tdef, leaves), static)

    return jit(one if seeds == 1 else eqx.filter_vmap(one))


def epoch_figures(model: EquilibriumModel, x: Array, solver: Any, *, settings: StabilitySettings
                  = StabilitySettings(), seed: int = 0) -> dict[str, float]:
    """The cheap per-epoch figures of one network on the batch ``x``: ``spectral_radius``
    (max over the examples, power iteration, of the map the solver iterates: ``I + dt J``,
    or the alternating sweep's ``dS/du``) and, where it applies, ``contraction_bound``.
    ``solver``: the free phase's solver (its ``dt`` and ``update``).

    A projected (clipped) model (:class:`~eqprop.network.base.BoxProjectedModel`: the
    DEEP dynamics) gets its own certificate's figures instead, since ``rho(I + dt J)``
    of the whole ``J`` is at least 1 there whatever the weights (a review read it as
    instability): ``projected_radius`` (``rho(I + dt J_ff)`` over the neurons off the
    bounds, max over the examples), ``projected_certified`` (the fraction of examples
    whose certificate holds) and ``saturated_fraction``; none when the state has more
    than ``settings.exact_max`` variables (the certificate needs the dense Jacobian)."""
    free = _free_solver(solver)
    u = _relax(model, x, free)
    if isinstance(model, BoxProjectedModel):
        if _neurons(u) > settings.exact_max:
            return {}
        j, f, flat = state_jacobian(model, x, u)
        pc = projected_certificate(model, u, j, f, flat, dt=free.dt)
        return {"projected_radius": float(np.max(pc["radius"])),
                "projected_certified": float(np.mean(pc["certified"])),
                "saturated_fraction": float(np.mean(pc["saturated_fraction"]))}
    rho = spectral_radius_power(model, x, u, dt=free.dt, iters=settings.power_iters, seed=seed,
                                groups=solver_groups(model, free))
    out = {"spectral_radius": float(np.max(rho))}
    bound = contraction_bound(model, x, u, exact_max=settings.exact_max, iters=settings.power_iters)
    if bound is not None:
        out["contraction_bound"] = bound
    return out


# ---------------------------------------------------------------------------
# The trainer's hooks ([stability] every, enforce)
# ---------------------------------------------------------------------------


def _seed(tree: PyTree, i: int) -> PyTree:
    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, tree)


def program_enforcer(program: Any) -> Callable[[PyTree], PyTree] | None:
    """The trainer's ``enforce(model) -> model`` for ``[stability] enforce`` (``None`` when
    ``"none"``): :func:`make_enforcer` on the program's first training example, vmapped
    over the ``K`` seeds of a stacked model.

    **Raises:** :class:`StabilityError` as :func:`make_enforcer`.
    """
    section = program.config.stability
    if section.enforce == "none":
        return None
    one = program.model if program.seeds == 1 else _seed(program.model, 0)
    x1 = jnp.asarray(program.dataset.x_train[:1])
    return make_enforcer(one, x1, settings=StabilitySettings.of(section), seeds=program.seeds)


def program_figures(program: Any, model: PyTree, epoch: int) -> tuple[dict[str, float], dict[str, list]]:
    """The per-epoch figures (:func:`epoch_figures`) of ``model`` (stacked when ``K > 1``)
    on the first ``[stability] examples`` training examples, with the free solver of the
    run; the power iteration starts from NumPy's seed ``100_003 train.seed + epoch``.

    **Returns:** ``(means over seeds, {key: [value per seed]})``.
    """
    settings = StabilitySettings.of(program.config.stability)
    x = jnp.asarray(program.dataset.x_train[:settings.examples])
    seed = program.config.train.seed * 100_003 + epoch
    models = [model] if program.seeds == 1 else [_seed(model, i) for i in range(program.seeds)]
    rows = [epoch_figures(m, x, program.solvers.free, settings=settings, seed=seed) for m in models]
    per = {k: [r[k] for r in rows] for k in rows[0]}
    return {k: float(np.mean(v)) for k, v in per.items()}, per
