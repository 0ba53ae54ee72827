"""Persistent per-example states for warm starts (``[train] warm_start = true``).

The free phase of a training example starts from its fixed point at the previous
epoch: the parameters moved a little since, so the old fixed point is close to the new
one and a tolerance-stopped relaxation needs fewer steps. The states live on the host
(``N x sum(population sizes)`` floats: 123 MB for Fashion-MNIST's 784-256-256-10 in
float32) and are a payload of the ``latest`` checkpoint (``states-<hash>.eqx``, named by
its manifest, :mod:`eqprop.train.checkpoint`), so a resumed run warm-starts exactly as
the uninterrupted one would.

Layout: every leaf of the model's state pytree is stored as ``(N, ...)`` (``(K, N, ...)``
for ``K`` stacked seeds); ``seen`` ``(N,)`` marks the examples that have a state
(the others start cold, from the model's ``init_state``).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .checkpoint import CheckpointError, decode, serialise

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
    def template(self) -> list[np.ndarray]:
        """The arrays a states payload holds, in order: ``[seen, leaf0, leaf1, ...]``."""
        return [self.seen, *self.leaves]

    def payload(self) -> bytes:
        """The states as a checkpoint payload (``states-<hash>.eqx``, the leaf format of
        :func:`eqprop.train.checkpoint.serialise` over :meth:`template`)."""
        return serialise(self.template())

    def restore(self, data: bytes, source: str | Path) -> None:
        """Replace the contents by a payload's (same shapes and dtypes).

        **Arguments:** ``data``: the bytes of ``source``, a ``states-<hash>.eqx`` payload
        or (runs written before) a ``states-E-B.npz`` archive of ``seen`` and
        ``leaf0``, ``leaf1``, ...; the caller checked their hash.

        **Raises:** :class:`~eqprop.train.checkpoint.CheckpointError` (one line, naming
        ``source``) for a truncated, hostile or mismatched file; nothing is unpickled
        and nothing larger than the run's states (or the file) is allocated.
        """
        source = Path(source)
        if source.suffix == ".npz":
            arrays = _read_npz(data, self.template(), source)
        else:
            arrays = decode(data, self.template(), source)
        self.seen, self.leaves = arrays[0].astype(bool), list(arrays[1:])

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.leaves) + self.seen.nbytes)


def _read_npz(data: bytes, template: list[np.ndarray], source: Path) -> list[np.ndarray]:
    """``seen``, ``leaf0``, ... of a ``states-E-B.npz`` (written by ``np.savez``).

    Only stored (uncompressed) members no larger than the file are read, each decoded
    by :func:`~eqprop.train.checkpoint.decode` against its template array.
    """
    names = ["seen"] + [f"leaf{i}" for i in range(len(template) - 1)]
    out = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name, like in zip(names, template):
                try:
                    info = z.getinfo(f"{name}.npy")
                except KeyError:
                    raise CheckpointError(f"{source}: no {name}.npy in the warm-start states "
                                          "archive") from None
                if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                    raise CheckpointError(f"{source}: {name}.npy is compressed or larger than "
                                          "the archive (not written by eqprop)")
                out.append(decode(z.read(info), like, f"{source}:{name}.npy"))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile raises many kinds on a broken archive
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{source}: unreadable warm-start states ({type(e).__name__}: "
                              f"{msg})") from None
    return out
