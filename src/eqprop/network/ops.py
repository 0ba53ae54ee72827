"""Small array operations shared by the networks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

#: the precision of every product of float32 (or float64) operands in the networks: the
#: operands' own. JAX's default lets a GPU or TPU round float32 operands to TensorFloat-32
#: or bfloat16 (10 or 7 mantissa bits): an EP estimate is a difference of nudged states
#: divided by beta, which amplifies that rounding by 1/beta, and gradcheck's 1e-5
#: agreements could not hold. Lower precision is chosen only
#: through ``[model] compute_dtype``, whose products take bfloat16/float16 operands
#: explicitly (on an H200 float32 products made the Fashion-MNIST CNN's step 2.6x slower
#: than TensorFloat-32's: docs/results.md).
PRECISION = jax.lax.Precision.HIGHEST


def matmul(a: Array, w: Array) -> Array:
    """``a @ w`` at the operands' own precision (:data:`PRECISION`); for real ``w`` and
    complex ``a`` as two real matmuls (``a.real @ w``, ``a.imag @ w``) rather than the four
    of a complex product.

    **Arguments:** ``a``: activities ``(B, n_in)`` (or any ``(..., n_in)``), real or
    complex; ``w``: weights ``(n_in, n_out)``.

    **Returns:** ``(B, n_out)``, complex when ``a`` or ``w`` is.
    """
    def dot(u):
        return jnp.matmul(u, w, precision=PRECISION)

    if jnp.iscomplexobj(a) and not jnp.iscomplexobj(w):
        return jax.lax.complex(dot(a.real), dot(a.imag))
    return dot(a)


def input_batch(x: Array, shape: tuple[int, ...], model: str, *, any_layout: bool = False) -> Array:
    """The input batch ``x`` as ``(B, *shape)``, checked: a wrong size, or an image batch in
    another layout, is a one-line ``ValueError`` naming both shapes (not an error from deep
    inside a matmul, nor, for a permuted layout such as channels-first ``(B, C, H, W)``, a
    silent reshape that scrambles pixels and channels).

    **Arguments:** ``x``: ``(B, ...)``; ``shape``: one example's input shape;
    ``model``: the model's name, for the message; ``any_layout``: accept any trailing shape
    with ``prod(shape)`` entries (a dense network flattens whatever it is given), else
    exactly ``shape``, flattened ``(prod(shape),)``, or, for one-channel images ``(H, W,
    1)``, ``(H, W)`` without the channel axis.

    **Returns:** ``x`` reshaped to ``(B, *shape)``.

    **Raises:** ``ValueError`` as above.
    """
    n = math.prod(shape)
    got = tuple(x.shape[1:])
    # exactly the shape, flattened, or (an image of one channel) without its channel axis
    bare = (tuple(shape[:-1]),) if len(shape) == 3 and shape[-1] == 1 else ()
    ok = (math.prod(got) == n) if any_layout else got in (tuple(shape), (n,), *bare)
    if x.ndim < 1 or not ok:
        hint = ""
        if len(got) == len(shape) == 3 and sorted(got) == sorted(shape):
            hint = ("; the images are NHWC (B, H, W, C): a channels-first batch needs "
                    "x.transpose(0, 2, 3, 1)")
        want = f"(B, {', '.join(map(str, shape))})" + ("" if len(shape) == 1 else f" or (B, {n})") + "".join(
            f" or (B, {', '.join(map(str, b))})" for b in bare)
        raise ValueError(f"{model}: input batch of shape {tuple(x.shape)}, expected {want}{hint}")
    return x.reshape(x.shape[0], *shape)
