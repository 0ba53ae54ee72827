"""Where arrays live: the functions that put data and models on devices.

Every batch the trainer feeds to the step or to the evaluation, and every initial or
restored :class:`~eqprop.train.step.TrainState`, goes through :func:`place`,
:func:`place_batch` or :func:`place_state`, with the run's
:class:`~eqprop.parallel.Layout` (``Program.layout``): on one device everything goes to
the default device; on a ``(seed, data)`` mesh each batch is split over the data axis,
stacked networks over the seed axis, and the rest is replicated.
"""

from __future__ import annotations

from typing import Any

from ..parallel import Layout

__all__ = ["place", "place_batch", "place_state", "ONE_DEVICE"]

PyTree = Any

#: one device: the default device, nothing sharded
ONE_DEVICE = Layout()


def place(tree: PyTree, *, batch_axis: int | None = None, layout: Layout = ONE_DEVICE) -> PyTree:
    """``tree`` with its array leaves (NumPy or JAX) on the compute devices.

    **Arguments:**

    - ``tree``: any pytree; non-array leaves (functions, static fields, ``None``) pass
      through unchanged.
    - ``batch_axis``: the axis of every array leaf that indexes examples (data, labels,
      warm-start states), or ``None`` for trees that every device holds whole (one
      network, keys).
    - ``layout``: the run's layout (default: one device).

    **Returns:** a pytree of the same structure with JAX arrays placed on the device(s).

    **Raises:** ``ValueError`` when a batch does not split over the data axis.
    """
    if batch_axis is None:
        return layout.replicated(tree)
    return layout.batch(tree, axis=batch_axis)


def place_state(state: PyTree, layout: Layout = ONE_DEVICE) -> PyTree:
    """A :class:`~eqprop.train.step.TrainState` on the device(s): ``model`` and
    ``opt_state`` split along the seed axis when stacked (replicated otherwise), ``step``
    and ``key`` replicated."""
    from .step import TrainState

    return TrainState(layout.stacked(state.model), layout.stacked(state.opt_state),
                      layout.replicated(state.step), layout.replicated(state.key))


def place_batch(x: Any, y: Any, u0: PyTree = None, warm: Any = None, *,
                seeds: int = 1, layout: Layout = ONE_DEVICE) -> tuple[Any, Any, PyTree, Any]:
    """One training or evaluation batch through :func:`place`.

    **Arguments:** ``x`` ``(B, ...)``, ``y`` ``(B,)``; warm starts: ``u0`` with leaves
    ``(B, ...)`` (``(K, B, ...)`` when ``seeds = K > 1``) and ``warm`` ``(B,)`` bool, or
    ``None``; ``layout``: the run's.

    **Returns:** ``(x, y, u0, warm)`` placed.
    """
    x, y, warm = place((x, y, warm), batch_axis=0, layout=layout)
    u0 = place(u0, batch_axis=0 if seeds == 1 else 1, layout=layout)
    return x, y, u0, warm
