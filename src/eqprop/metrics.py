"""Comparisons of gradients and error vectors: the ground floor that :mod:`eqprop.gradcheck`
and :mod:`eqprop.diagnostics` share.

Pure functions of arrays (or of model-shaped pytrees, for :func:`compare`); nothing here
relaxes a network or calls an estimator, and this module imports nothing of the package
but the parameter naming of :func:`eqprop.network.base.named_parameters`.

- :func:`cosine`: cosine similarity of two arrays, flattened (one number for a whole
  batch or a whole gradient);
- :func:`example_cosines`: one cosine per example of a batch (the leading axis), as the
  ``alignment`` of Laborieux and Zenke (arXiv 2309.02214, the authors' ``mean_cos_delta``);
- :func:`relative_error`: ``||a - b|| / ||b||``;
- :func:`compare`: both figures per parameter and over all parameters of a gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from .network.base import named_parameters

PyTree = Any

__all__ = ["cosine", "example_cosines", "relative_error", "compare"]


def cosine(a: Array, b: Array) -> float:
    """Cosine similarity ``<a, b> / (||a|| ||b||)`` of two arrays, flattened.

    **Arguments:**

    - ``a``, ``b``: real arrays of the same size (any shapes; both are flattened), e.g.
      two gradients of one parameter, or two error vectors ``(B, n)`` of a whole batch.

    **Returns:** a Python float in ``[-1, 1]``; ``0.0`` when either array is zero; NaN when
    either has a NaN or infinite entry (a diverged gradient has no direction, and 0.0
    would read as orthogonal; records and JSON write it as ``null``).

    **Raises:** ``TypeError`` when either array is complex (the complex ``jnp.vdot``
    does not convert to a float): take the real part first.
    """
    a, b = jnp.ravel(a), jnp.ravel(b)
    den = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    dot = jnp.vdot(a, b, precision=jax.lax.Precision.HIGHEST)  # float32 on a GPU too
    c = jnp.where(den > 0, dot / jnp.where(den > 0, den, 1.0), 0.0)
    c = jnp.clip(c, -1.0, 1.0)  # rounding can give 1.0000002 (a review read it as a bug)
    return float(jnp.where(jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b)), c, jnp.nan))


def example_cosines(a: Array, b: Array) -> Array:
    """Cosine of ``a[i]`` with ``b[i]`` for every example ``i`` of a batch.

    Averaging these (Laborieux and Zenke, arXiv 2309.02214, ``mean_cos_delta`` in the
    authors' code) weighs every example alike: one example whose vector is huge moves the
    mean by ``1/B`` at most, where it can swamp the batch :func:`cosine`.

    **Arguments:**

    - ``a``, ``b``: real arrays of the same shape ``(B, ...)``; axis 0 is the batch, the
      other axes are flattened per example.

    **Returns:** ``(B,)`` array of cosines, ``0`` for an example where either vector is
    zero.
    """
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    den = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return jnp.clip(jnp.where(den > 0, jnp.sum(a * b, axis=1) / jnp.where(den > 0, den, 1.0), 0.0), -1.0, 1.0)


def relative_error(a: Array, b: Array) -> float:
    """Relative error ``||a - b|| / ||b||`` of ``a`` against the reference ``b`` (flattened).

    **Arguments:**

    - ``a``: the estimate; ``b``: the reference, of the same size.

    **Returns:** a Python float ``>= 0``; the denominator is floored at ``1e-30``, so a
    zero reference gives ``||a|| * 1e30`` rather than a division by zero.
    """
    return float(jnp.linalg.norm(jnp.ravel(a) - jnp.ravel(b))
                 / jnp.maximum(jnp.linalg.norm(jnp.ravel(b)), 1e-30))


def compare(grad: PyTree, reference: PyTree) -> dict[str, Any]:
    """Cosine and relative error of a gradient against a reference gradient.

    **Arguments:**

    - ``grad``, ``reference``: model-shaped pytrees (e.g. two estimators' gradients of one
      model); their inexact-array leaves are matched by the names of
      :func:`~eqprop.network.base.named_parameters` (``"weights.input->h1"``, ...), and
      every parameter of ``reference`` must be in ``grad`` with the same size.

    **Returns:** ``{"total": {"cosine", "relative_error"}, "parameters": {name: {"cosine",
    "relative_error"}}}`` (Python floats); ``total`` is over all of ``reference``'s
    parameters concatenated, in its order.

    **Raises:** ``KeyError`` if a parameter of ``reference`` is missing from ``grad``.
    """
    g, r = named_parameters(grad), named_parameters(reference)
    params = {k: {"cosine": cosine(g[k], r[k]), "relative_error": relative_error(g[k], r[k])}
              for k in r}
    flat_g = jnp.concatenate([jnp.ravel(g[k]) for k in r])
    flat_r = jnp.concatenate([jnp.ravel(r[k]) for k in r])
    return {
        "total": {"cosine": cosine(flat_g, flat_r), "relative_error": relative_error(flat_g, flat_r)},
        "parameters": params,
    }
