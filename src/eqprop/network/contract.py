"""The shapes of the model contract, checked before anything relaxes.

A model whose ``field`` returns a state of another shape, or whose readout has another
number of classes than the data, otherwise fails deep inside a solver or an estimator with
an error of JAX's that names neither the model nor the method (a review's plugin with a
readout built for the wrong size, and a ``field`` missing a population). :func:`check_shapes`
traces each method of :class:`~eqprop.network.EquilibriumModel`'s contract on abstract
arrays (``jax.eval_shape``: nothing is computed) and names the first that breaks it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .base import EquilibriumModel, named_parameters


class ContractError(ValueError):
    """A model's methods do not return the shapes the contract asks (one line)."""


def _describe(tree: Any) -> str:
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in tree.items()) + "}"
    leaves = jax.tree.leaves(tree)
    if len(leaves) == 1 and not isinstance(tree, (list, tuple)):
        return "(" + ", ".join(map(str, leaves[0].shape)) + ")"
    return f"{type(tree).__name__} of {len(leaves)} arrays"


def _like(got: Any, want: Any) -> str | None:
    """What differs between two pytrees of shapes (structure, then each leaf's shape), or
    ``None`` when they match."""
    if isinstance(want, dict) and isinstance(got, dict):
        missing, extra = [k for k in want if k not in got], [k for k in got if k not in want]
        if missing or extra:
            return ("missing " + ", ".join(map(repr, missing)) if missing else "") + (
                ("; " if missing and extra else "") + "extra " + ", ".join(map(repr, extra)) if extra else "")
        for k in want:
            d = _like(got[k], want[k])
            if d is not None:
                return f"{k!r}: {d}"
        return None
    if jax.tree.structure(got) != jax.tree.structure(want):
        return f"{_describe(got)} where the state is {_describe(want)}"
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        if g.shape != w.shape:
            return f"shape {tuple(g.shape)} where the state has {tuple(w.shape)}"
        if g.dtype != w.dtype:
            return f"dtype {g.dtype} where the state has {w.dtype}"
    return None


def _traced(name: str, what: str, fn, *args):
    """``jax.eval_shape(fn, *args)``; a shape or key error from it is a ContractError
    naming ``what`` (an error raised in a plugin's own file propagates: the CLI names its
    line)."""
    try:
        return jax.eval_shape(fn, *args)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        from ..plugins import plugin_culprit

        if plugin_culprit(e) is not None:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ContractError(f"{name}: {what}: {type(e).__name__}: {first}") from None


def check_shapes(model: EquilibriumModel, input_shape: tuple[int, ...], n_classes: int,
                 dtype: Any = jnp.float32, batch: int = 2, built_by: str = "the model kind's build") -> None:
    """Trace the model's contract on a batch of ``batch`` abstract examples and check what
    each method returns: ``init_state`` a state whose leaves have the batch first;
    ``field`` and ``activity`` a pytree like the state; ``nudge`` one like the activity;
    the readout's logits ``(B, n_classes)``; ``loss`` ``(B,)``. Parameters in float16 or
    bfloat16 are warned about (``EqpropWarning``).

    **Arguments:** ``model``; ``input_shape``: one example's shape; ``n_classes``: the
    data's; ``dtype``: of the inputs; ``batch``: examples in the abstract batch;
    ``built_by``: what made ``model``, for the message when it is not a model.

    **Raises:** :class:`ContractError` naming the model's class, the method and what
    differs. An error raised by the model's own code while it is traced propagates.
    """
    name = type(model).__name__
    if not isinstance(model, EquilibriumModel):
        raise ContractError(f"{built_by} returned {name}, not an eqprop.network.EquilibriumModel "
                            "(a build without `return`?)")
    x = jax.ShapeDtypeStruct((batch, *input_shape), dtype)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    drive = _traced(name, "prepare(x)", model.prepare, x)
    u = _traced(name, "init_state(drive)", model.init_state, drive)
    wrong = [leaf.shape for leaf in jax.tree.leaves(u) if not leaf.shape or leaf.shape[0] != batch]
    if wrong or not jax.tree.leaves(u):
        raise ContractError(f"{name}.init_state: a state of {_describe(u)} for a batch of {batch}; every "
                            "population's leaf has the batch on axis 0 (docs/extending.md)")
    for method, out in (("field(u, drive)", lambda: _traced(name, "field(u, drive)", model.field, u, drive)),
                        ("activity(u)", lambda: _traced(name, "activity(u)", model.activity, u))):
        d = _like(out(), u)
        if d is not None:
            raise ContractError(f"{name}.{method} returns a pytree unlike the state u ({d}); it must "
                                "have one leaf per population, shaped as in init_state (docs/extending.md)")
    a = jax.eval_shape(model.activity, u)
    if isinstance(a, dict) and model.output not in a:
        raise ContractError(f"{name}: the output population {model.output!r} is not one of the state's "
                            f"({', '.join(map(repr, a))}): `output` names the population the readout reads")
    logits = _traced(name, f"the readout of output population {model.output!r}",
                     lambda a: model.readout.logits(model.output_activity(a)), a)
    if logits.shape != (batch, n_classes):
        raise ContractError(f"{name}: the readout of output population {model.output!r} gives "
                            f"logits of shape {tuple(logits.shape)} for a batch of {batch}; the data has "
                            f"{n_classes} classes, so ({batch}, {n_classes}): build the readout for n_classes")
    d = _like(_traced(name, "nudge(a, y)", model.nudge, a, y), a)
    if d is not None:
        raise ContractError(f"{name}.nudge(a, y) returns a pytree unlike the activity ({d})")
    loss = _traced(name, "loss(a, y)", model.loss, a, y)
    low = {k: v.dtype for k, v in named_parameters(model).items()
           if v.dtype in (jnp.float16, jnp.bfloat16)}
    if low:  # a review's float16 W read as "diverged" after its first update
        import warnings

        from ..guards import EqpropWarning

        dtypes = sorted({str(d) for d in low.values()})
        warnings.warn(f"{name}: the parameters {', '.join(low)} are {' and '.join(dtypes)}: the optimizer's "
                      "steps and state underflow there; keep parameters float32 and choose lower-precision "
                      "products with [model] compute_dtype", EqpropWarning, stacklevel=4)
    if loss.shape != (batch,):
        raise ContractError(f"{name}.loss(a, y) has shape {tuple(loss.shape)}; one loss per example, "
                            f"({batch},)")
