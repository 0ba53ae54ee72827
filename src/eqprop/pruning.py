"""Pruning: connections removed from a model's weight matrices, for every model type.

A **mask** is a bool array per prunable weight (``True``: the connection is kept). The
prunable weights of a model are its trainable arrays with two or more axes, the readout
excepted (:func:`prunable`): the projections of dense and graph networks, the neuron-level
``W`` of a directed network, a convolution's kernel. Their **last axis is the
postsynaptic one** (``W[i, j]`` from ``i`` to ``j``; a kernel's output channel), so a
column ``W[..., j]`` holds the incoming connections of neuron (or channel) ``j``.

The masks live in the optimizer's state (:func:`keep_pruned` wraps the optimizer), so
they are saved in every checkpoint with it, stacked over seeds like it, and resumed
exactly; the model's pruned weights are exactly zero, so evaluating or exporting a model
needs no mask. Gradients are masked before the optimizer and updates after it, so a
pruned weight stays exactly zero through momentum, Adam's moments and weight decay.

Methods (``[pruning] method``, registered in :data:`eqprop.registry.PRUNERS`; ``"none"``
by default):

- ``"stochastic"`` (Farinha et al. 2020, arXiv 2006.08798, section 3): weights with
  ``|w| < tol`` are removed at random; the probability of ``w_ij`` is the softmax of
  ``-|w_ij| / temperature`` over neuron ``j``'s live incoming weights of that matrix;
- ``"magnitude"``: the smallest weights of each matrix removed to a target sparsity on the
  gradual cubic schedule of Zhu and Gupta 2017 (arXiv 1710.01878, eq. 1);
- ``"l1"``: ``strength * sign(w)`` added to the gradient of the prunable weights (the
  paper's L1 term), and weights with ``|w| < tol`` removed.

Every method keeps at least one live incoming connection per neuron: pruning never
disconnects a neuron (the largest live incoming weight of a column is kept).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from .network.base import ConnectedModel, named_parameters, parameter_name, parameters
from .registry import PRUNERS
from .settings import NONNEGATIVE, POSITIVE, POSITIVE_INT, UNIT_HALF_OPEN, SettingError, setting

PyTree = Any

__all__ = ["Pruner", "NoPruning", "Scheduled", "Stochastic", "Magnitude", "L1", "prunable", "init_masks", "keep_pruned",
           "PrunedState", "prune", "sparsity", "masks_of", "connections", "zhu_gupta_sparsity",
           "most_removable", "undeclared_zeros", "shortfall"]


# ---------------------------------------------------------------------------
# Which weights, and their masks
# ---------------------------------------------------------------------------


def prunable(name: str, leaf: Array) -> bool:
    """Whether the parameter ``name`` (:func:`~eqprop.network.named_parameters` naming) is
    prunable: two or more axes, and not the readout's."""
    return leaf.ndim >= 2 and not name.startswith("readout")


def _map_named(fn, tree: PyTree, *rest: PyTree) -> PyTree:
    """``fn(name, leaf, *rest_leaves)`` over the inexact-array leaves of a model-shaped
    ``tree`` (other leaves kept), named as :func:`~eqprop.network.named_parameters`."""

    def f(path, leaf, *others):
        if not eqx.is_inexact_array(leaf):
            return leaf
        return fn(parameter_name(path), leaf, *others)

    return jax.tree_util.tree_map_with_path(f, tree, *rest, is_leaf=lambda v: v is None)


def init_masks(model: PyTree) -> dict[str, Array]:
    """Every prunable connection kept: ``{name: ones(bool)}`` over :func:`prunable`
    parameters (the model's exactly-zero entries included: a structural mask, such as a
    directed network's connectivity, is the model's own and stays so).

    **Arguments:** ``model``: a model or its parameters (one network, not stacked).
    """
    return {name: jnp.ones(leaf.shape, bool)
            for name, leaf in named_parameters(parameters(model)).items() if prunable(name, leaf)}


def _apply(masks: dict[str, Array], tree: PyTree) -> PyTree:
    """``tree`` (model-shaped) with its masked leaves multiplied by their masks."""
    return _map_named(lambda n, v: jnp.where(masks[n], v, jnp.zeros((), v.dtype)) if n in masks else v,
                      tree)


# ---------------------------------------------------------------------------
# The optimizer wrapper: masks in the optimizer state
# ---------------------------------------------------------------------------


class PrunedState(NamedTuple):
    """The state of :func:`keep_pruned`: the masks ``{name: bool array}`` and the wrapped
    optimizer's state."""

    masks: dict[str, Array]
    inner: PyTree


def keep_pruned(inner: optax.GradientTransformation, l1: float = 0.0) -> optax.GradientTransformation:
    """``inner`` with pruned connections held at exactly zero.

    The gradient is masked before ``inner`` (with ``l1 > 0``, ``l1 * sign(w)`` is added to
    the kept prunable weights' gradient first) and the update after it, so neither
    momentum nor weight decay can move a pruned weight. ``init`` keeps every connection
    (:func:`init_masks`); :func:`prune` changes the masks.

    **Arguments:** ``inner``: the optimizer; ``l1``: the L1 strength (per unit of
    gradient, before the learning rate).

    **Returns:** an ``optax.GradientTransformation`` whose state is a :class:`PrunedState`.
    """

    def init(params):
        return PrunedState(init_masks(params), inner.init(params))

    def update(updates, state, params=None):
        if l1:
            if params is None:
                raise ValueError("keep_pruned with l1 > 0 needs the parameters")
            updates = _map_named(lambda n, g, w: g + l1 * jnp.sign(w) if n in state.masks else g,
                                 updates, params)
        updates = _apply(state.masks, updates)
        updates, inner_state = inner.update(updates, state.inner, params)
        return _apply(state.masks, updates), PrunedState(state.masks, inner_state)

    return optax.GradientTransformation(init, update)


def masks_of(opt_state: PyTree) -> dict[str, Array] | None:
    """The masks in an optimizer state built with :func:`keep_pruned` (``None`` if none)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda v: isinstance(v, PrunedState))
             if isinstance(s, PrunedState)]
    return found[0].masks if found else None


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------


def most_removable(shape: tuple[int, ...], existing: Array | None = None) -> float:
    """The largest fraction of a matrix's connections pruning can remove, each neuron
    (column) keeping one incoming connection: ``1 - columns / connections``, counted over
    ``existing`` (a bool array of ``shape``; default: every entry; for stacked seeds,
    the least over them)."""
    if existing is None:
        rows = math.prod(shape[:-1])
        return 1.0 - 1.0 / rows if rows else 0.0
    e = np.asarray(existing, bool)
    e = e.reshape(-1, *shape) if e.ndim > len(shape) else e[None]
    per = e.reshape(e.shape[0], -1, shape[-1])
    n, cols = per.sum((1, 2)), (per.sum(1) > 0).sum(1)
    return float(np.min(np.where(n > 0, 1.0 - cols / np.maximum(n, 1), 0.0)))


def _keep_one_per_column(keep: Array, live: Array, w: Array) -> Array:
    """``keep`` with, in every column that had a live connection, the largest live one
    kept: no neuron loses its last incoming connection."""
    score = jnp.where(live, jnp.abs(w), -jnp.inf)
    flat = score.reshape(-1, score.shape[-1])
    best = jnp.argmax(flat, axis=0)
    strongest = jnp.zeros(flat.shape, bool).at[best, jnp.arange(flat.shape[-1])].set(True)
    strongest = strongest.reshape(w.shape) & live
    return keep | strongest


@dataclass(frozen=True)
class Pruner(abc.ABC):
    """A pruning method (``[pruning] method``): a frozen settings class registered in
    :data:`PRUNERS`.

    **Contract:** :meth:`select` returns the new mask of one weight matrix from its
    weights and current mask; it only removes (``new <= mask``) and is a pure JAX function
    (vmapped over seeds). :func:`prune` applies it to every prunable matrix after each
    epoch where :meth:`due` holds, and keeps one incoming connection per neuron.
    """

    @property
    def l1(self) -> float:
        """The L1 strength added to the gradient (0: none)."""
        return 0.0

    @abc.abstractmethod
    def due(self, epoch: int) -> bool:
        """Whether to prune after ``epoch`` (1-based)."""

    @abc.abstractmethod
    def select(self, w: Array, mask: Array, existing: Array, key: Array, epoch: int,
               epochs: int) -> Array:
        """The new mask of one weight matrix.

        **Arguments:** ``w``: weights ``(..., n_in, n_out)`` (the last axis postsynaptic);
        ``mask``: its live connections (bool, same shape; within ``existing``);
        ``existing``: the connections the model has (all ``True`` unless it is a
        :class:`~eqprop.network.ConnectedModel`); ``key``: PRNG key; ``epoch``: the epoch
        just trained (1-based); ``epochs``: the run's epochs.

        **Returns:** a bool array of ``w``'s shape, ``<= mask``.
        """

    def check(self, sizes: dict[str, tuple[int, ...]],
              existing: dict[str, Array] | None = None) -> None:
        """Refuse settings that cannot be met on these prunable matrices (their shapes;
        ``existing``: the connections of those with a fixed connectivity,
        :func:`connections`): raises :class:`~eqprop.settings.SettingError`. Default:
        nothing to check."""


@PRUNERS.register("none")
@dataclass(frozen=True)
class NoPruning(Pruner):
    """No pruning: every connection is kept (the default)."""

    def due(self, epoch):
        return False

    def select(self, w, mask, existing, key, epoch, epochs):
        return mask


@dataclass(frozen=True)
class Scheduled(Pruner):
    """A method applied after every ``every``-th epoch from epoch ``start``."""

    every: int = setting(1, "Prune after every this many epochs.", bounds=POSITIVE_INT)
    start: int = setting(1, "First epoch after which the method runs (magnitude: the schedule's "
                         "zero point, so the first removal comes one pruning step later).",
                         bounds=POSITIVE_INT)

    def due(self, epoch: int) -> bool:
        return epoch >= self.start and (epoch - self.start) % self.every == 0


@PRUNERS.register("stochastic")
@dataclass(frozen=True)
class Stochastic(Scheduled):
    """Farinha et al. 2020 (arXiv 2006.08798), section 3: ``w_ij`` with ``|w_ij| < tol``
    is removed with probability ``p_ij = exp(-|w_ij|/T) / sum_{i' live} exp(-|w_i'j|/T)``,
    the softmax over neuron ``j``'s live incoming weights of the matrix (the authors'
    notebooks normalise over the whole column, removed entries included)."""

    tol: float = setting(0.01, "Weights below this magnitude are candidates for removal.",
                         bounds=POSITIVE)
    temperature: float = setting(5.0, "Temperature of the softmax over a neuron's incoming weights.",
                                 bounds=POSITIVE)

    def probabilities(self, w: Array, mask: Array) -> Array:
        """``p_ij`` (0 for strong or removed connections), same shape as ``w``."""
        logits = jnp.where(mask, -jnp.abs(w) / self.temperature, -jnp.inf)
        p = jax.nn.softmax(logits.reshape(-1, w.shape[-1]), axis=0).reshape(w.shape)
        return jnp.where(mask & (jnp.abs(w) < self.tol), p, 0.0)

    def select(self, w, mask, existing, key, epoch, epochs):
        u = jax.random.uniform(key, w.shape, dtype=jnp.result_type(w.real.dtype, jnp.float32))
        return mask & ~(self.probabilities(w, mask) > u)


def zhu_gupta_sparsity(epoch: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu and Gupta 2017 (arXiv 1710.01878), eq. 1: the target sparsity after ``epoch``,
    ``s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3`` for ``t0 <= t <= t1``, ``s_i``
    before ``t0``, ``s_f`` after ``t1``."""
    if epoch < start:
        return initial
    if end <= start or epoch >= end:
        return final
    frac = (epoch - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


@PRUNERS.register("magnitude")
@dataclass(frozen=True)
class Magnitude(Scheduled):
    """Magnitude pruning on Zhu and Gupta's gradual schedule: after each pruning epoch
    ``t``, each prunable matrix keeps its ``1 - s_t`` largest connections (counted over
    its entries), ``s_t`` from :func:`zhu_gupta_sparsity` rising from 0 at ``start`` to
    ``sparsity`` at ``end`` (0: the last epoch)."""

    sparsity: float = setting(0.8, "Final fraction of each matrix's connections removed.",
                              bounds=UNIT_HALF_OPEN)
    end: int = setting(0, "Epoch at which the target sparsity is reached (0: the last epoch).",
                       bounds=NONNEGATIVE)

    def __post_init__(self) -> None:
        if self.end and self.end < self.start:
            raise SettingError("end", f"{self.end} is before start = {self.start}: the schedule "
                               "would jump to the target at once")

    def target(self, epoch: int, epochs: int) -> float:
        """The sparsity after ``epoch`` of a run of ``epochs``."""
        return zhu_gupta_sparsity(epoch, self.sparsity, self.start, self.end or epochs)

    def select(self, w, mask, existing, key, epoch, epochs):
        target = self.target(epoch, epochs)
        if target <= 0:
            return mask
        n = jnp.sum(existing)
        absent = w.size - n
        remove = absent + jnp.round(target * n).astype(n.dtype)  # the absent ones count first
        score = jnp.where(mask, jnp.abs(w), jnp.where(existing, -1.0, -2.0)).reshape(-1)
        rank = jnp.argsort(jnp.argsort(score))  # 0: the smallest
        return mask & (rank >= remove).reshape(w.shape)

    def check(self, sizes, existing=None):
        for name, shape in sizes.items():
            most = most_removable(shape, (existing or {}).get(name))
            if self.sparsity > most:
                raise SettingError(
                    "sparsity", f"{self.sparsity:g} would disconnect neurons of {name} (each keeps "
                    f"one of its incoming connections): at most {math.floor(most * 1e4) / 1e4:.4g}")


@PRUNERS.register("l1")
@dataclass(frozen=True)
class L1(Scheduled):
    """The paper's L1 term: ``strength * sign(w)`` added to the gradient of the prunable
    weights (pushing them toward zero), and weights with ``|w| < tol`` removed."""

    strength: float = setting(1.5e-4, "L1 coefficient added to the gradient (times sign(w)).",
                              bounds=POSITIVE)
    tol: float = setting(0.01, "Weights below this magnitude are removed.", bounds=POSITIVE)

    @property
    def l1(self) -> float:
        return self.strength

    def select(self, w, mask, existing, key, epoch, epochs):
        return mask & (jnp.abs(w) >= self.tol)


# ---------------------------------------------------------------------------
# Applying a method to a training state
# ---------------------------------------------------------------------------


def _replace_masks(opt_state: PyTree, masks: dict[str, Array]) -> PyTree:
    return jax.tree.map(lambda s: PrunedState(masks, s.inner) if isinstance(s, PrunedState) else s,
                        opt_state, is_leaf=lambda v: isinstance(v, PrunedState))


def connections(model: PyTree) -> dict[str, Array]:
    """The connections a model has: :meth:`~eqprop.network.ConnectedModel.connections`,
    or ``{}`` (every entry of every prunable matrix is a connection)."""
    return model.connections() if isinstance(model, ConnectedModel) else {}


def undeclared_zeros(model: PyTree) -> dict[str, tuple[int, int]]:
    """``{name: (zeros, entries)}`` of the prunable matrices of a model that declares no
    connectivity for them (:func:`connections`) yet holds exact zeros (a fixed structure
    of a plugin's own: pruning would count those entries as connections it removes)."""
    declared = connections(model)
    out = {}
    for name, w in named_parameters(parameters(model)).items():
        if prunable(name, w) and name not in declared:
            zeros = int(np.sum(np.asarray(w) == 0))
            if zeros:
                out[name] = (zeros, int(w.size))
    return out


def shortfall(pruner: Pruner, masks: dict[str, Array], existing: dict[str, Array], epoch: int,
              epochs: int, seeds: int = 1) -> list[str]:
    """What a pruning with a target (``magnitude``) left short of it, one phrase per matrix
    (``masks``, ``existing``, ``seeds``: as :func:`sparsity` takes them; several seeds:
    the one furthest from it): a neuron about to lose its last incoming connection keeps
    it, so even a target below :func:`most_removable` can be missed. ``[]`` for methods
    without a target, and before the schedule reaches its final target."""
    target = getattr(pruner, "target", None)
    want = target(epoch, epochs) if target is not None else 0.0
    if want <= 0 or want < getattr(pruner, "sparsity", want):  # judged at the final target
        return []
    out = []
    for name, m in sorted(masks.items()):
        m = np.asarray(m, bool).reshape(seeds, -1)
        e = np.asarray(existing[name], bool) if name in existing else np.ones(m.shape, bool)
        e = np.broadcast_to(e.reshape(-1, m.shape[1]), m.shape)
        n = e.sum(1)
        removed = n - (m & e).sum(1)
        if np.any(removed < np.round(want * n)):
            got = float(np.min(removed / np.maximum(n, 1)))
            out.append(f"{name} at sparsity {got:.3f} of the {want:.3f} targeted")
    return out


def prune(pruner: Pruner, model: PyTree, opt_state: PyTree, key: Array, epoch: int, epochs: int,
          seeds: int = 1) -> tuple[PyTree, PyTree]:
    """Prune after ``epoch``: new masks from the model's weights, written into the
    optimizer state, and the model's pruned weights set to exactly zero.

    **Arguments:** ``pruner``; ``model`` and ``opt_state`` (built with
    :func:`keep_pruned`; leaves with a leading seed axis when ``seeds > 1``); ``key``:
    PRNG key of this pruning (folded per matrix, split per seed); ``epoch``, ``epochs``:
    the epoch just trained (1-based) and the run's.

    **Returns:** ``(model, opt_state)``; the masks hold only existing connections
    (:func:`connections`).

    **Raises:** ``ValueError`` when ``opt_state`` was not built with :func:`keep_pruned`.
    """
    masks = masks_of(opt_state)
    if masks is None:
        raise ValueError("prune: the optimizer state holds no masks (build it with keep_pruned)")
    structure = connections(model)
    weights = {n: w for n, w in named_parameters(model).items() if n in masks}
    new = {}
    for i, (name, w) in enumerate(sorted(weights.items())):
        k = jax.random.fold_in(key, i)
        existing = structure.get(name, jnp.ones(w.shape, bool))

        def one(w, m, e, k):
            live = m & e
            return _keep_one_per_column(pruner.select(w, live, e, k, epoch, epochs), live, w)

        if seeds > 1:
            new[name] = jax.vmap(one)(w, masks[name], existing, jax.random.split(k, seeds))
        else:
            new[name] = one(w, masks[name], existing, k)
    return _apply(new, model), _replace_masks(opt_state, new)


def sparsity(masks: dict[str, Array], seeds: int = 1,
             existing: dict[str, Array] | None = None) -> dict[str, Any]:
    """The fraction of connections removed, as metrics: ``{"sparsity": total,
    "connections": how many there are, "connections_removed": how many are pruned,
    "sparsity/<name>": fraction of matrix <name>}`` (numbers; lists over seeds when
    ``seeds > 1``, the masks then stacked on a leading axis), counted over the
    ``existing`` connections (:func:`connections`; default: every entry)."""
    existing = existing or {}
    if seeds > 1:
        per = [sparsity({n: m[i] for n, m in masks.items()}, 1,
                        {n: e[i] for n, e in existing.items()}) for i in range(seeds)]
        return {k: [p[k] for p in per] for k in per[0]}
    count = {n: int(jnp.sum(existing[n])) if n in existing else m.size for n, m in masks.items()}
    removed = {n: count[n] - int(jnp.sum(m & existing[n] if n in existing else m))
               for n, m in masks.items()}
    total = sum(count.values())
    return {"sparsity": sum(removed.values()) / total if total else 0.0,
            "connections": total, "connections_removed": sum(removed.values()),
            **{f"sparsity/{n}": removed[n] / count[n] if count[n] else 0.0 for n in masks}}
