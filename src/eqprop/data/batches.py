"""Deterministic mini-batch iteration and helpers.

Augmentation is not done here: :func:`eqprop.data.augment.flip_crop` runs on the device,
inside the jitted training step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["batches", "num_batches", "flatten"]


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Number of batches :func:`batches` yields for ``n`` examples."""
    _check_batch_size(batch_size)
    return n // batch_size if drop_last else -(-n // batch_size)


def flatten(x: np.ndarray) -> np.ndarray:
    """Reshape ``(N, ...)`` to ``(N, D)``."""
    x = np.asarray(x)
    return x.reshape(len(x), -1)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, epoch: int,
            shuffle: bool = True, drop_last: bool = True,
            with_index: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield ``(xb, yb)`` mini-batches of ``(x (N, ...), y (N,))``.

    ``with_index=True`` yields ``(xb, yb, idx)`` with ``idx`` the examples' positions in
    ``x`` (for per-example state such as warm starts).

    Deterministic: the order is ``np.random.default_rng([seed, epoch]).permutation(N)``
    (identity order if ``shuffle=False``). ``drop_last=True`` drops the final partial
    batch; otherwise it is yielded smaller.
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_batch_size(batch_size)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    return _iterate(x, y, batch_size, seed, epoch, shuffle, drop_last, with_index)


def _iterate(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
             shuffle: bool, drop_last: bool,
             with_index: bool) -> Iterator[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for i in range(num_batches(len(x), batch_size, drop_last)):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield (x[idx], y[idx], idx) if with_index else (x[idx], y[idx])


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
