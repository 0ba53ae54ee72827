"""The papers' image augmentation as a pure JAX function, run inside the jitted step.

``[data] augment = true`` applies :func:`flip_crop` to every training batch inside the
training step (:func:`eqprop.train.step.make_step`), before the model sees it; evaluation
never augments. Its key is ``fold_in(batch key, AUGMENT_TAG)``: a function of seed, epoch
and batch only, so a resumed run draws exactly the augmentations of an uninterrupted one,
and a fixed tag, so it is independent of the estimator's use of the batch key.

Reference: the hEP papers' code (Laborieux and Zenke 2022, arXiv 2209.00530; 2024, arXiv
2309.02214) flips with p = 0.5, then pads and crops back to 32x32. Differences: their
crop pads to 36x36 (2 pixels a side, offsets in [0, 4]) where :data:`CROP_PAD` = 4 pads
4 a side (torchvision's ``RandomCrop(32, padding=4)``, offsets in [0, 8]); and they pad
the raw image (black borders) before normalising, where this pads the normalised image
with zeros (borders of the data set's mean colour).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["AUGMENT_TAG", "CROP_PAD", "flip_crop", "flip_crop_draws"]

#: ``fold_in`` tag of the augmentation key (the estimator keeps the batch key itself,
#: homeostasis folds in ``0x4E0``).
AUGMENT_TAG = 0x415547  # "AUG"
#: Zero padding on each side before the random crop back to ``(H, W)``.
CROP_PAD = 4


def flip_crop_draws(key: jax.Array, batch: int, pad: int = CROP_PAD) -> tuple[jax.Array, jax.Array]:
    """The random draws of :func:`flip_crop`: per-example flip flags and crop offsets.

    **Arguments:** ``key``: ``(2,)`` PRNG key; ``batch``: ``B``, the examples; ``pad``:
    padding on each side.

    **Returns:** ``(flip, offsets)``: ``flip`` ``(B,)`` bool, each true with probability
    1/2; ``offsets`` ``(B, 2)`` int32, the (row, column) of the crop's top-left corner in
    the padded image, each uniform on ``[0, 2 * pad]``.
    """
    k_flip, k_off = jax.random.split(key)
    flip = jax.random.bernoulli(k_flip, 0.5, (batch,))
    offsets = jax.random.randint(k_off, (batch, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    return flip, offsets


def flip_crop(key: jax.Array, x: jax.Array, pad: int = CROP_PAD) -> jax.Array:
    """Random horizontal flip (p = 1/2), then zero-pad ``pad`` and random crop to ``(H, W)``.

    Per example: ``x[i]`` is flipped left-right where ``flip[i]``, zero-padded by ``pad``
    on the four sides, and the ``(H, W)`` window at ``offsets[i]`` is kept
    (:func:`flip_crop_draws` gives both). Static shapes throughout: jittable, vmappable.

    **Arguments:** ``key``: ``(2,)`` PRNG key; ``x``: NHWC images ``(B, H, W, C)``;
    ``pad``: non-negative padding on each side (``0``: flip only).

    **Returns:** ``(B, H, W, C)``, of the dtype of ``x``.

    **Raises:** ``ValueError`` (at trace time) when ``x`` is not 4-dimensional or ``pad``
    is negative.
    """
    if x.ndim != 4:
        raise ValueError(f"flip_crop needs NHWC images (B, H, W, C), got shape {x.shape}")
    if pad < 0:
        raise ValueError(f"flip_crop needs pad >= 0, got {pad}")
    b, h, w, c = x.shape
    flip, offsets = flip_crop_draws(key, b, pad)
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(img: jax.Array, o: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (o[0], o[1], jnp.zeros((), o.dtype)), (h, w, c))

    return jax.vmap(crop)(padded, offsets)
