"""Small array operations shared by the networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def matmul(a: Array, w: Array) -> Array:
    """``a @ w``; for real ``w`` and complex ``a`` as two real matmuls (``a.real @ w``,
    ``a.imag @ w``) rather than the four of a complex product.

    **Arguments:** ``a``: activities ``(B, n_in)`` (or any ``(..., n_in)``), real or
    complex; ``w``: weights ``(n_in, n_out)``.

    **Returns:** ``(B, n_out)``, complex when ``a`` or ``w`` is.
    """
    if jnp.iscomplexobj(a) and not jnp.iscomplexobj(w):
        return jax.lax.complex(a.real @ w, a.imag @ w)
    return a @ w
