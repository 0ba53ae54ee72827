"""Readouts: how the output population's activity becomes a prediction and a loss.

Conventions: ``a_out`` has shape ``(B, n_out)`` (real or complex), labels ``y`` are
integer classes of shape ``(B,)``. ``loss`` returns the per-example loss ``(B,)``;
``loss_grad`` returns the per-example ``dl/da_out`` (same shape as ``a_out``) written
with holomorphic operations only, so that complex nudges can use it.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ..registry import READOUTS
from .ops import matmul


class Readout(eqx.Module):
    """Abstract readout: logits, per-example loss and its gradient in ``a_out``.

    A readout class is made as ``cls(n_out, n_classes, key=key, dtype=dtype)`` and
    registered with ``@READOUTS.register(name)`` (the ``[model] readout`` values).
    """

    n_classes: int = eqx.field(static=True)

    @classmethod
    def output_units(cls, n_classes: int) -> int:
        """Units the output population has for ``n_classes`` classes (the model kinds that
        size their output from the data, e.g. ``directed``, ask this): ``n_classes`` unless
        a readout says otherwise.

        **Raises:** ``ValueError`` when the readout cannot read ``n_classes`` classes."""
        return n_classes

    @abc.abstractmethod
    def logits(self, a_out: Array) -> Array:
        """Scores ``(B, n_classes)`` from ``a_out`` ``(B, n_out)``, used for the
        prediction (argmax)."""

    @abc.abstractmethod
    def loss(self, a_out: Array, y: Array) -> Array:
        """Per-example loss ``(B,)`` from real ``a_out`` ``(B, n_out)`` and integer labels
        ``y`` ``(B,)``."""

    @abc.abstractmethod
    def loss_grad(self, a_out: Array, y: Array) -> Array:
        """Per-example ``dl/da_out`` ``(B, n_out)``, written with holomorphic operations
        so that it also takes complex ``a_out`` (complex nudges); ``y``: labels ``(B,)``."""


def _softmax(z: Array) -> Array:
    """Softmax along the last axis; shifting by the (real) max keeps it holomorphic."""
    shift = jax.lax.stop_gradient(jnp.max(z.real, axis=-1, keepdims=True))
    e = jnp.exp(z - shift)
    return e / jnp.sum(e, axis=-1, keepdims=True)


@READOUTS.register("softmax")
class SoftmaxReadout(Readout):
    """Trainable linear readout ``r = a_out V + c`` with softmax cross-entropy
    ``l = -log softmax(r)_y`` (Laborieux et al. 2021).

    ``dl/da_out = (softmax(r) - onehot(y)) V^T``. Fields: ``weight`` ``V``
    ``(n_out, n_classes)``, ``bias`` ``c`` ``(n_classes,)``, both initialised uniformly
    in ``+-1 / sqrt(n_out)``.

    **Arguments:** ``n_out``: units of the output population; ``n_classes``: number of
    classes; ``key``: PRNG key of the initialisation; ``dtype``: of the parameters.
    """

    weight: Array  # (n_out, n_classes)
    bias: Array  # (n_classes,)

    def __init__(self, n_out: int, n_classes: int, *, key: Array, dtype=jnp.float32):
        k = 1.0 / jnp.sqrt(n_out)
        kw, kb = jax.random.split(key)
        self.weight = jax.random.uniform(kw, (n_out, n_classes), dtype, -k, k)
        self.bias = jax.random.uniform(kb, (n_classes,), dtype, -k, k)
        self.n_classes = n_classes

    def logits(self, a_out: Array) -> Array:
        """``r = a_out V + c``, ``(B, n_classes)``."""
        return matmul(a_out, self.weight) + self.bias

    def loss(self, a_out: Array, y: Array) -> Array:
        """Cross-entropy ``-log softmax(r)_y`` per example, ``(B,)``."""
        r = self.logits(a_out)
        return -jnp.take_along_axis(jax.nn.log_softmax(r, axis=-1), y[:, None], axis=-1)[:, 0]

    def loss_grad(self, a_out: Array, y: Array) -> Array:
        """``(softmax(r) - onehot(y)) V^T``, ``(B, n_out)``, holomorphic in ``a_out``."""
        err = _softmax(self.logits(a_out)) - jax.nn.one_hot(y, self.n_classes, dtype=self.weight.dtype)
        return matmul(err, self.weight.T)


@READOUTS.register("mse")
class MSEReadout(Readout):
    """Mean squared error on the output activity: ``l = 0.5 ||a_out - onehot(y)||^2``.

    ``dl/da_out = a_out - onehot(y)``. The prediction is ``argmax a_out``; there are no
    parameters (``key`` and ``dtype`` are not used).

    **Raises:** ``ValueError`` when ``n_out != n_classes``.
    """

    def __init__(self, n_out: int, n_classes: int, *, key: Array | None = None, dtype=None):
        if n_out != n_classes:
            raise ValueError(
                f"readout 'mse' needs as many output units as classes ({n_out} != {n_classes})"
            )
        self.n_classes = n_classes

    def logits(self, a_out: Array) -> Array:
        """``a_out`` itself, ``(B, n_classes)``."""
        return a_out

    def _target(self, a_out: Array, y: Array) -> Array:
        return jax.nn.one_hot(y, self.n_classes, dtype=a_out.real.dtype)

    def loss(self, a_out: Array, y: Array) -> Array:
        """``0.5 ||a_out - onehot(y)||^2`` per example, ``(B,)``."""
        return 0.5 * jnp.sum((a_out - self._target(a_out, y)) ** 2, axis=-1)

    def loss_grad(self, a_out: Array, y: Array) -> Array:
        """``a_out - onehot(y)``, ``(B, n_out)``."""
        return a_out - self._target(a_out, y)


@READOUTS.register("binary")
class BinaryReadout(MSEReadout):
    """One output unit read as a binary target: the mean squared error of
    :class:`MSEReadout` against ``y`` in {0, 1} itself, ``l = 0.5 (a_out - y)^2``,
    ``dl/da_out = a_out - y``, predicted class 1 where ``a_out > 0.5`` (Farinha et al. 2020,
    the XOR notebook's single output neuron thresholded at 0.5). No parameters.

    **Raises:** ``ValueError`` unless ``n_out == 1`` and ``n_classes == 2``.
    """

    def __init__(self, n_out: int, n_classes: int, *, key: Array | None = None, dtype=None):
        self.output_units(n_classes)
        if n_out != 1:
            raise ValueError(f"readout 'binary' needs one output unit, got {n_out}")
        self.n_classes = n_classes

    @classmethod
    def output_units(cls, n_classes: int) -> int:
        """1; two classes only."""
        if n_classes != 2:
            raise ValueError(f"readout 'binary' reads two classes, the data has {n_classes}")
        return 1

    def logits(self, a_out: Array) -> Array:
        """``[1 - a_out, a_out]``, ``(B, 2)``: class 1 where ``a_out > 0.5``."""
        return jnp.concatenate([1 - a_out, a_out], axis=-1)

    def _target(self, a_out: Array, y: Array) -> Array:
        return y[:, None].astype(a_out.real.dtype)


def make_readout(name: str, n_out: int, n_classes: int, *, key: Array, dtype=jnp.float32) -> Readout:
    """The registered readout ``name`` for an output population of ``n_out`` units.

    **Arguments:** ``name``: a name of :data:`~eqprop.registry.READOUTS`; ``n_out``:
    units of the output population; ``n_classes``: number of classes; ``key``: PRNG key
    of its parameters; ``dtype``: their dtype.

    **Returns:** the :class:`Readout`.

    **Raises:** ``ValueError`` for an unknown name (listing the registered ones) or a
    readout that does not fit (``"mse"`` needs ``n_out == n_classes``, ``"binary"`` one unit
    and two classes).
    """
    return READOUTS.get(name)(n_out, n_classes, key=key, dtype=dtype)
