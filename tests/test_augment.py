"""Tests for eqprop.data.augment: the flip + pad-4 crop run inside the training step.

The resumability of an augmented run (Ctrl-C mid-epoch, then resume) is in
tests/test_train.py with the other resume tests.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqprop.config import ConfigError, parse_config
from eqprop.data import flip_crop, load
from eqprop.data.augment import AUGMENT_TAG, CROP_PAD, flip_crop_draws
from eqprop.train import build_program, evaluate
from eqprop.train.program import augmentation
from eqprop.train.step import batch_key, init_state, make_step

jit_flip_crop = jax.jit(flip_crop, static_argnames="pad")
jit_draws = jax.jit(flip_crop_draws, static_argnames=("batch", "pad"))


def images(b: int = 16, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


def reference(x: np.ndarray, flip: np.ndarray, offsets: np.ndarray, pad: int) -> np.ndarray:
    """Flip where drawn, zero-pad, cut the (H, W) window at each offset, in NumPy."""
    _, h, w, _ = x.shape
    out = []
    for img, f, (oy, ox) in zip(x, flip, offsets, strict=True):
        img = img[:, ::-1] if f else img
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        out.append(padded[oy:oy + h, ox:ox + w])
    return np.stack(out)


@pytest.mark.parametrize("pad", [0, 1, CROP_PAD])
@pytest.mark.parametrize("shape", [(16, 8, 8, 3), (5, 6, 9, 1)])
def test_flip_crop_is_a_shifted_window_of_the_flipped_zero_padded_image(shape, pad):
    x = images(*shape)
    key = jax.random.PRNGKey(11)
    flip, offsets = (np.asarray(a) for a in jit_draws(key, batch=shape[0], pad=pad))
    assert flip.shape == (shape[0],) and flip.dtype == bool
    assert offsets.shape == (shape[0], 2) and offsets.min() >= 0 and offsets.max() <= 2 * pad
    got = np.asarray(jit_flip_crop(key, x, pad=pad))
    np.testing.assert_array_equal(got, reference(x, flip, offsets, pad))


def test_the_flip_is_a_left_right_flip():
    """With no padding, each image is itself or ``x[:, ::-1]`` (the W axis), as drawn."""
    x = images(64)
    key = jax.random.PRNGKey(3)
    flip, _ = jit_draws(key, batch=64, pad=0)
    got = np.asarray(jit_flip_crop(key, x, pad=0))
    flip = np.asarray(flip)
    assert 0 < flip.sum() < 64
    np.testing.assert_array_equal(got[flip], x[flip][:, :, ::-1])
    np.testing.assert_array_equal(got[~flip], x[~flip])


def test_shape_dtype_contract():
    key = jax.random.PRNGKey(0)
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jnp.asarray(images(4, 8, 8, 2), dtype)
        y = jit_flip_crop(key, x)
        assert y.shape == x.shape and y.dtype == dtype
    # vmappable over keys (one batch augmented several ways)
    ys = jax.vmap(flip_crop, in_axes=(0, None))(jax.random.split(key, 3), images(4))
    assert ys.shape == (3, 4, 8, 8, 3)
    with pytest.raises(ValueError, match="NHWC"):
        flip_crop(key, jnp.zeros((4, 64)))
    with pytest.raises(ValueError, match="pad >= 0"):
        flip_crop(key, jnp.zeros((4, 8, 8, 1)), pad=-1)


def test_same_key_same_batch_and_different_batch_keys_differ():
    x = images(32)
    root = init_state(None, None, seed=5).key
    keys = [jax.random.fold_in(batch_key(root, s, 4), AUGMENT_TAG) for s in range(6)]
    outs = [np.asarray(jit_flip_crop(k, x)) for k in keys]
    np.testing.assert_array_equal(outs[0], np.asarray(jit_flip_crop(keys[0], x)))
    for i in range(len(outs)):
        for j in range(i):
            assert not np.array_equal(outs[i], outs[j]), (i, j)


def test_draw_statistics_over_many_keys():
    """Flip fraction near 1/2; both offsets uniform on [0, 2 pad] (chi-square-sized
    tolerance: 5 sigma on every count)."""
    n_keys, b = 64, 256
    keys = jax.random.split(jax.random.PRNGKey(0), n_keys)
    flip, offsets = jax.vmap(lambda k: flip_crop_draws(k, b))(keys)
    flip, offsets = np.asarray(flip).ravel(), np.asarray(offsets).reshape(-1, 2)
    n = flip.size
    assert abs(flip.mean() - 0.5) < 5 * np.sqrt(0.25 / n)
    values = 2 * CROP_PAD + 1
    for axis in (0, 1):
        counts = np.bincount(offsets[:, axis], minlength=values)
        assert counts.size == values  # nothing outside [0, 2 pad]
        p = 1 / values
        assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p))), counts
    # rows and columns are drawn independently of each other and of the flip
    assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 5 / np.sqrt(n)
    assert abs(np.corrcoef(offsets[:, 0], flip)[0, 1]) < 5 / np.sqrt(n)


def test_the_step_augments_the_batch_the_model_sees_with_the_tagged_batch_key():
    """``make_step(augment=flip_crop)`` hands ``base_step`` ``flip_crop(fold_in(batch key,
    AUGMENT_TAG), x)``; without ``augment`` the batch as given."""
    x, y = images(8, 8, 8, 1), np.zeros(8, np.int32)

    def base_step(model, opt_state, x, y, key, index, u0, warm):
        return model, opt_state, {"x": x, "key": key}

    state = init_state({"w": jnp.zeros(())}, (), seed=2, step=5)
    plain = make_step(base_step, n_batches=4)
    aug = make_step(base_step, n_batches=4, augment=flip_crop)
    _, m0 = plain(state, x, y)
    new, m1 = aug(state, x, y)
    np.testing.assert_array_equal(np.asarray(m0["x"]), x)
    key = batch_key(state.key, 5, 4)
    np.testing.assert_array_equal(np.asarray(m1["key"]), np.asarray(key))  # estimator's key kept
    expect = flip_crop(jax.random.fold_in(key, AUGMENT_TAG), x)
    np.testing.assert_array_equal(np.asarray(m1["x"]), np.asarray(expect))
    _, m2 = aug(new, x, y)  # the next batch draws anew
    assert not np.array_equal(np.asarray(m2["x"]), np.asarray(m1["x"]))


def test_augment_on_non_image_data_is_a_one_line_config_error():
    cfg = parse_config({"data": {"name": "synthetic", "augment": True},
                        "model": {"sizes": [16, 8, 4]}})
    with pytest.raises(ConfigError) as info:
        build_program(cfg)
    msg = str(info.value)
    assert msg.startswith("data.augment:") and "\n" not in msg and "synthetic" in msg


def test_augmentation_of_the_config_and_evaluation_never_augments():
    """``augment = true`` on images gives flip_crop, false gives None; a program's
    evaluation is the same with and without augmentation."""
    base = {"data": {"name": "digits", "batch_size": 32}, "model": {"sizes": [64, 16, 10]},
            "dynamics": {"free_steps": 10, "nudged_steps": 4}, "train": {"max_batches": 2}}
    ds = load("digits")
    off = parse_config(base)
    on = parse_config({**base, "data": {**base["data"], "augment": True}})
    assert augmentation(off, ds) is None and augmentation(on, ds) is flip_crop
    p_off, p_on = build_program(off, ds), build_program(on, ds)
    x, y = ds.x_test[:64], ds.y_test[:64]
    a = evaluate(p_off, p_off.model, x, y)
    b = evaluate(p_on, p_off.model, x, y)
    assert eqx.tree_equal(jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))


def test_small_images_warn_that_the_crop_is_meant_for_larger_ones():
    """8x8 digits lose up to half of each image to the pad-4 crop (a fresh user's run
    stopped learning): augmentation there says so, once, naming the data and its size."""
    cfg = parse_config({"data": {"name": "digits", "augment": True},
                        "model": {"sizes": [64, 16, 10]}})
    with pytest.warns(UserWarning, match=r"^data\.augment: .*'digits' images of 8x8 pixels"):
        assert augmentation(cfg, load("digits")) is flip_crop
