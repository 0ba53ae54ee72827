"""Deterministic mini-batch iteration, optional flip-crop augmentation, and helpers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["batches", "num_batches", "flatten", "flip_crop"]

AUGMENTS = (None, "flip-crop")
CROP_PAD = 4


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
            augment: str | None = None, with_index: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield ``(xb, yb)`` mini-batches of ``(x (N, ...), y (N,))``.

    ``with_index=True`` yields ``(xb, yb, idx)`` with ``idx`` the examples' positions in
    ``x`` (for per-example state such as warm starts).

    Deterministic: the order is ``np.random.default_rng([seed, epoch]).permutation(N)``
    (identity order if ``shuffle=False``). ``drop_last=True`` drops the final partial
    batch; otherwise it is yielded smaller. ``augment="flip-crop"`` (NHWC images only)
    applies a random horizontal flip and a zero-pad-4 random crop back to ``(H, W)``,
    drawn from the same generator after the permutation.
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_batch_size(batch_size)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; allowed: {AUGMENTS}")
    if augment is not None and x.ndim != 4:
        raise ValueError(f"augment={augment!r} needs NHWC images, got x of shape {x.shape}")
    return _iterate(x, y, batch_size, seed, epoch, shuffle, drop_last, augment, with_index)


def _iterate(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
             shuffle: bool, drop_last: bool, augment: str | None,
             with_index: bool) -> Iterator[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for i in range(num_batches(len(x), batch_size, drop_last)):
        idx = order[i * batch_size:(i + 1) * batch_size]
        xb = x[idx]
        if augment == "flip-crop":
            xb = flip_crop(xb, rng)
        yield (xb, y[idx], idx) if with_index else (xb, y[idx])


def flip_crop(xb: np.ndarray, rng: np.random.Generator, pad: int = CROP_PAD) -> np.ndarray:
    """Random horizontal flip (p=0.5) then zero-pad ``pad`` and random crop to ``(H, W)``.

    ``xb`` is NHWC ``(B, H, W, C)``; returns a new array of the same shape and dtype.
    """
    b, h, w, _ = xb.shape
    flip = rng.random(b) < 0.5
    xb = np.where(flip[:, None, None, None], xb[:, :, ::-1], xb)
    padded = np.pad(xb, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.integers(0, 2 * pad + 1, size=b)
    ox = rng.integers(0, 2 * pad + 1, size=b)
    rows = oy[:, None] + np.arange(h)
    cols = ox[:, None] + np.arange(w)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
