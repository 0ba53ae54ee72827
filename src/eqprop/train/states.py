"""Persistent per-example states for warm starts (``[train] warm_start = true``).

The free phase of a training example starts from its fixed point at the previous
epoch: the parameters moved a little since, so the old fixed point is close to the new
one and a tolerance-stopped relaxation needs fewer steps. The states live on the host
(``N x sum(population sizes)`` floats: 123 MB for Fashion-MNIST's 784-256-256-10 in
float32) and are saved next to the ``latest`` checkpoint, so a resumed run warm-starts
exactly as the uninterrupted one would.

Layout: every leaf of the model's state pytree is stored as ``(N, ...)`` (``(K, N, ...)``
for ``K`` stacked seeds); ``seen`` ``(N,)`` marks the examples that have a state
(the others start cold, from the model's ``init_state``).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .checkpoint import CheckpointError, atomic_write

PyTree = Any

__all__ = ["PersistentStates", "warm_states"]


def warm_states(config: Any, model: PyTree, x_train: np.ndarray, seeds: int
                ) -> "PersistentStates | None":
    """Empty persistent states when warm starts are on, else ``None``.

    **Arguments:** ``config`` (its ``[train] warm_start``); ``model``: the (stacked when ``seeds > 1``) model;
    ``x_train`` ``(N, ...)``: the training inputs; ``seeds``: ``K``.
    """
    if not config.train.warm_start:
        return None
    return PersistentStates.empty(model, x_train, seeds)


class PersistentStates:
    """Host copies of every training example's last free fixed point."""

    def __init__(self, leaves: list[np.ndarray], treedef: Any, seen: np.ndarray, seeds: int):
        self.leaves, self.treedef, self.seen, self.seeds = leaves, treedef, seen, seeds

    @classmethod
    def empty(cls, model: PyTree, x_train: np.ndarray, seeds: int) -> "PersistentStates":
        """No example seen yet; shapes from ``model.init_state`` of one example."""
        one = model if seeds == 1 else jax.tree.map(
            lambda a: a[0] if eqx.is_array(a) else a, model)
        shape = eqx.filter_eval_shape(lambda m, x: m.init_state(m.prepare(x)), one, x_train[:1])
        flat, treedef = jax.tree.flatten(shape)
        n = len(x_train)
        prefix = (n,) if seeds == 1 else (seeds, n)
        leaves = [np.zeros(prefix + tuple(s.shape[1:]), s.dtype) for s in flat]
        return cls(leaves, treedef, np.zeros(n, bool), seeds)

    # -- per batch ---------------------------------------------------------
    def _at(self, leaf: np.ndarray, idx: np.ndarray):
        return leaf[idx] if self.seeds == 1 else leaf[:, idx]

    def gather(self, idx: np.ndarray) -> tuple[PyTree, np.ndarray]:
        """``(u0, warm)`` for the examples ``idx``: stored states and which exist."""
        u0 = jax.tree.unflatten(self.treedef, [self._at(a, idx) for a in self.leaves])
        return u0, self.seen[idx]

    def scatter(self, idx: np.ndarray, state: PyTree) -> None:
        """Store the free fixed points ``state`` (leaves ``(B, ...)`` or ``(K, B, ...)``)."""
        for leaf, new in zip(self.leaves, jax.tree.leaves(state)):
            if self.seeds == 1:
                leaf[idx] = np.asarray(new)
            else:
                leaf[:, idx] = np.asarray(new)
        self.seen[idx] = True

    # -- files -------------------------------------------------------------
    def save(self, path: str | Path) -> str:
        """Atomically write an ``.npz``; returns its sha256 (recorded in the checkpoint)."""
        buf = io.BytesIO()
        np.savez(buf, seen=self.seen, **{f"leaf{i}": a for i, a in enumerate(self.leaves)})
        data = buf.getvalue()
        atomic_write(path, lambda fh: fh.write(data))
        return hashlib.sha256(data).hexdigest()

    def load(self, path: str | Path, sha256: str | None) -> None:
        """Replace the contents with ``path``'s (same shapes), checking its checksum."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{path}: warm-start states of the checkpoint not found") from None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise CheckpointError(f"{path}: does not match the checkpoint's states_sha256 "
                                  "(interrupted write?)")
        try:
            with np.load(io.BytesIO(data)) as z:
                seen = z["seen"]
                leaves = [z[f"leaf{i}"] for i in range(len(self.leaves))]
        except Exception as e:  # noqa: BLE001 - any unreadable or incomplete file
            raise CheckpointError(f"{path}: unreadable warm-start states ({e})") from None
        for a, b in zip(leaves, self.leaves):
            if a.shape != b.shape:
                raise CheckpointError(f"{path}: states of shape {a.shape}, the run needs {b.shape}")
        if seen.shape != self.seen.shape:
            raise CheckpointError(f"{path}: states for {seen.shape[0]} examples, the run has "
                                  f"{self.seen.shape[0]}")
        self.leaves, self.seen = leaves, seen.astype(bool)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.leaves) + self.seen.nbytes)
