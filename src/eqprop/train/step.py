"""The training state and the one jitted step that advances it.

A run is a sequence of ``state, metrics = step(state, x, y[, u0, warm])`` calls on a
:class:`TrainState`; everything the step needs that changes from batch to batch is in
the state, so nothing is read from a mutable object inside ``jit``.

Randomness (a pure function of seed, epoch and batch, so a resumed run draws exactly
the keys of an uninterrupted one)::

    init_key, root = split(PRNGKey(train.seed))       # root is TrainState.key
    key of batch b of epoch e (1-based) = fold_in(fold_in(root, e - 1), b)
                                        = batch_key(root, (e - 1) * n_batches + b, n_batches)

split into ``K`` keys, one per network, when ``K = train.seeds > 1``. With
``[data] augment`` the training batch is augmented inside the step, before the model
sees it, with ``fold_in(batch key, AUGMENT_TAG)`` (:func:`eqprop.data.augment.flip_crop`;
one augmentation shared by the ``K`` networks, as the data are).

Seeds: with ``K > 1`` networks the state's ``model`` and ``opt_state`` carry a leading
axis of size ``K`` (:func:`stack`) and the step is vmapped over it, the data and the
state's ``step`` and ``key`` being shared (one batch index, one root key, split per seed
inside the step). :func:`unstack` takes one network out.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..data.augment import AUGMENT_TAG
from ..jitting import jit
from ..network.base import parameters
from ..parallel import DATA, Layout

__all__ = ["TrainState", "init_state", "make_step", "batch_key", "step_keys", "stack", "unstack",
           "all_finite"]

PyTree = Any


class TrainState(eqx.Module):
    """Everything a training step reads and writes.

    **Fields:**

    - ``model``: the network (leaves with a leading axis ``K`` when ``K > 1`` seeds are
      stacked).
    - ``opt_state``: the optax state of the model's parameters (stacked like ``model``).
    - ``step``: ``()`` int32, the global batch index of the *next* batch,
      ``(epoch - 1) * n_batches + batch`` (0-based ``batch``); homeostasis' ``every``
      and the batch keys read it. Shared by the ``K`` seeds.
    - ``key``: ``(2,)`` uint32, the root from which every batch key is derived
      (:func:`batch_key`). Shared by the ``K`` seeds.
    """

    model: PyTree
    opt_state: PyTree
    step: jax.Array
    key: jax.Array


def init_state(model: PyTree, opt_state: PyTree, *, seed: int, step: int = 0) -> TrainState:
    """The state of a run seeded by ``seed`` before global batch ``step``.

    **Arguments:** ``model``, ``opt_state`` (stacked or not); ``seed``: ``[train] seed``;
    ``step``: batches already trained (``epoch * n_batches + batch`` on resume).

    **Returns:** a :class:`TrainState` whose ``key`` is the root of the batch keys.
    """
    _, root = jax.random.split(jax.random.PRNGKey(seed))
    return TrainState(model, opt_state, jnp.asarray(step, jnp.int32), root)


def batch_key(root: jax.Array, step: jax.Array | int, n_batches: int) -> jax.Array:
    """The key of global batch ``step``: ``fold_in(fold_in(root, step // n), step % n)``.

    **Arguments:** ``root``: ``(2,)`` the state's key; ``step``: ``()`` int, the global
    batch index; ``n_batches``: batches per epoch.

    **Returns:** a ``(2,)`` key, equal to ``step_keys(seed, epoch, n)[batch]``.
    """
    step = jnp.asarray(step)
    return jax.random.fold_in(jax.random.fold_in(root, step // n_batches), step % n_batches)


def step_keys(seed: int, epoch: int, n_batches: int, seeds: int = 1) -> np.ndarray:
    """Keys of every batch of ``epoch`` (1-based), computed on the host.

    The reference of the scheme :func:`batch_key` implements inside the step.

    **Returns:** ``(n_batches, 2)``, or ``(n_batches, K, 2)`` when ``seeds = K > 1``.
    """
    _, root = jax.random.split(jax.random.PRNGKey(seed))
    ek = jax.random.fold_in(root, epoch - 1)
    keys = jax.vmap(lambda b: jax.random.fold_in(ek, b))(jnp.arange(n_batches))
    if seeds > 1:
        keys = jax.vmap(lambda kk: jax.random.split(kk, seeds))(keys)
    return np.asarray(keys)


def all_finite(tree: PyTree) -> jax.Array:
    """``()`` bool: every trainable parameter of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(parameters(tree))]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_step(base_step: Callable, *, n_batches: int, seeds: int = 1,
              layout: Layout | None = None, augment: Callable | None = None) -> Callable:
    """The jitted ``step(state, x, y, u0=None, warm=None) -> (state, metrics)``.

    **Arguments:**

    - ``base_step``: ``(model, opt_state, x, y, key, index, u0, warm) -> (model,
      opt_state, metrics)`` for one network (:func:`eqprop.update.make_train_step`).
    - ``n_batches``: batches per epoch (the batch keys are a function of epoch and batch).
    - ``seeds``: ``K``; when ``K > 1`` the state is stacked and ``base_step`` vmapped.
    - ``layout``: the run's :class:`~eqprop.parallel.Layout`; the new model and optimizer
      state keep its placement (split along the seed axis, or replicated).
    - ``augment``: ``None``, or ``augment(key, x) -> x`` applied to the training batch
      before ``base_step`` (:func:`eqprop.data.augment.flip_crop`), with ``key =
      fold_in(batch key, AUGMENT_TAG)``.

    **Returns:** ``step``, taking ``x`` ``(B, ...)``, ``y`` ``(B,)`` and for warm starts
    ``u0`` (leaves ``(B, ...)``, ``(K, B, ...)`` stacked) and ``warm`` ``(B,)`` bool. It
    returns the state after the update (``step`` advanced by one, same ``key``) and the
    metrics of ``base_step`` (one value per seed when ``K > 1``) plus ``params_finite``.
    """

    def one(model, opt_state, x, y, key, index, u0, warm):
        model, opt_state, metrics = base_step(model, opt_state, x, y, key, index, u0, warm)
        return model, opt_state, {**metrics, "params_finite": all_finite(model)}

    per_seed = one if seeds == 1 else eqx.filter_vmap(
        one, in_axes=(0, 0, None, None, 0, None, 0, None))

    @jit
    def step(state: TrainState, x, y, u0=None, warm=None):
        key = batch_key(state.key, state.step, n_batches)
        if augment is not None:
            x = augment(jax.random.fold_in(key, AUGMENT_TAG), x)
            if layout is not None:  # the examples stay split over the data axis
                x = layout.constrain(x, (DATA,))
        if seeds > 1:
            key = jax.random.split(key, seeds)
        model, opt_state, metrics = per_seed(state.model, state.opt_state, x, y, key,
                                             state.step, u0, warm)
        if layout is not None:  # the placement of the state is kept; metrics readable by all
            model, opt_state = layout.constrain_stacked((model, opt_state))
            metrics = {k: (v if k == "state" else layout.constrain(v, ())) for k, v in metrics.items()}
        return TrainState(model, opt_state, state.step + 1, state.key), metrics

    return step


def stack(trees: list[PyTree]) -> PyTree:
    """``K`` pytrees of one structure as one whose array leaves have a leading ``K`` axis."""
    arrays = [eqx.filter(t, eqx.is_array) for t in trees]
    static = eqx.filter(trees[0], eqx.is_array, inverse=True)
    return eqx.combine(jax.tree.map(lambda *xs: jnp.stack(xs), *arrays), static)


def unstack(tree: PyTree, i: int) -> PyTree:
    """Seed ``i`` of a stacked (K > 1) model, optimizer state or :class:`TrainState`.

    A ``TrainState`` keeps its shared ``step`` and ``key``.
    """
    if isinstance(tree, TrainState):
        return TrainState(unstack(tree.model, i), unstack(tree.opt_state, i), tree.step, tree.key)
    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, tree)
