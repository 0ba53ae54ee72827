"""Where arrays live: the one function that puts data and models on devices.

Every batch the trainer feeds to the step or to the evaluation, and every initial or
restored :class:`~eqprop.train.step.TrainState`, goes through :func:`place`. On one
device it is ``jax.device_put`` onto the default device; a multi-device run replaces
its body (a ``Mesh`` whose data axis splits ``batch_axis`` and replicates the rest)
without any change to the callers.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

__all__ = ["place", "place_batch"]

PyTree = Any


def place(tree: PyTree, *, batch_axis: int | None = None) -> PyTree:
    """``tree`` with its array leaves (NumPy or JAX) on the compute devices.

    **Arguments:**

    - ``tree``: any pytree; non-array leaves (functions, static fields, ``None``) pass
      through unchanged.
    - ``batch_axis``: the axis of every array leaf that indexes examples (data, labels,
      warm-start states), or ``None`` for trees that every device holds whole (models,
      optimizer states, keys). Unused on one device.

    **Returns:** a pytree of the same structure with JAX arrays placed on the device(s).
    """
    del batch_axis  # one device: everything on the default device
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.device_put(arrays), static)


def place_batch(x: Any, y: Any, u0: PyTree = None, warm: Any = None, *,
                seeds: int = 1) -> tuple[Any, Any, PyTree, Any]:
    """One training or evaluation batch through :func:`place`.

    **Arguments:** ``x`` ``(B, ...)``, ``y`` ``(B,)``; warm starts: ``u0`` with leaves
    ``(B, ...)`` (``(K, B, ...)`` when ``seeds = K > 1``) and ``warm`` ``(B,)`` bool, or
    ``None``.

    **Returns:** ``(x, y, u0, warm)`` placed.
    """
    x, y, warm = place((x, y, warm), batch_axis=0)
    u0 = place(u0, batch_axis=0 if seeds == 1 else 1)
    return x, y, u0, warm
