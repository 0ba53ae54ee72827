"""Small array operations shared by the networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def matmul(a: Array, w: Array) -> Array:
    """``a @ w`` for real weights ``w``; a complex ``a`` costs two real matmuls
    (``a.real @ w``, ``a.imag @ w``), not the four of a complex product."""
    if jnp.iscomplexobj(a) and not jnp.iscomplexobj(w):
        return jax.lax.complex(a.real @ w, a.imag @ w)
    return a @ w
