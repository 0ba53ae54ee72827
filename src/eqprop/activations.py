"""Activation functions of the populations.

Each activation maps a pre-activation state ``u`` to an activity ``a = act(u)``
elementwise. The holomorphic ones also accept complex ``u`` (holomorphic EP needs
complex states); the others raise a clear error when asked to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp
from jax import Array

from .registry import ACTIVATIONS


def _sigmoid(z: Array) -> Array:
    """Logistic function as ``(1 + tanh(z / 2)) / 2``: the same holomorphic function as
    ``1 / (1 + exp(-z))``, in the faster form (see benchmarks/README.md)."""
    return 0.5 + 0.5 * jnp.tanh(0.5 * z)


def sigmoid4(u: Array) -> Array:
    """``sigmoid(4u - 2)``: the MLP activation of Laborieux and Zenke (2022, 2024).

    Range ``(0, 1)`` on real ``u``; holomorphic, with poles at ``Im(u) = pi/4 (2k + 1)``
    (on ``Re(u) = 1/2``), which bound the radius of hEP's nudge circle. ``u``: any shape,
    real or complex; returns the same shape.
    """
    return _sigmoid(4.0 * u - 2.0)


def dsilu(u: Array) -> Array:
    """``0.5 u sigmoid(u) + (1 - 0.5 u) sigmoid(u - 2)``: the CNN activation of hEP
    (Laborieux and Zenke 2022, arXiv 2209.00530). Holomorphic; ``u``: any shape, real or
    complex; returns the same shape."""
    return 0.5 * u * _sigmoid(u) + (1.0 - 0.5 * u) * _sigmoid(u - 2.0)


def tanh(u: Array) -> Array:
    """Hyperbolic tangent (holomorphic away from its poles at i pi (k + 1/2))."""
    return jnp.tanh(u)


def hard_sigmoid(u: Array) -> Array:
    """``clip(u, 0, 1)`` (Scellier and Bengio 2017). Real states only.

    **Raises:** ``ValueError`` for complex ``u`` (it is not holomorphic).
    """
    if jnp.iscomplexobj(u):
        raise ValueError("hard-sigmoid is not holomorphic: it cannot take complex states")
    return jnp.clip(u, 0.0, 1.0)


@dataclass(frozen=True)
class Activation:
    """A named activation and whether it is holomorphic (accepts complex states).

    **Fields:** ``name``: the ``[model] activation`` value; ``fn``: ``u -> a``,
    elementwise; ``holomorphic``: whether ``fn`` takes complex ``u`` (complex nudges
    need it). Calling it applies ``fn``.
    """

    name: str
    fn: Callable[[Array], Array]
    holomorphic: bool

    def __call__(self, u: Array) -> Array:
        return self.fn(u)


def register(activation: Activation, *, replace: bool = False) -> Activation:
    """Register ``activation`` in :data:`~eqprop.registry.ACTIVATIONS` under its name
    (the ``[model] activation`` values) and return it.

    **Raises:** ``ValueError`` when the name is taken and ``replace`` is false.
    """
    return ACTIVATIONS.register(activation.name, activation, replace=replace)


for _activation in (
    Activation("sigmoid4", sigmoid4, True),
    Activation("dsilu", dsilu, True),
    Activation("tanh", tanh, True),
    Activation("hard-sigmoid", hard_sigmoid, False),
):
    register(_activation)
del _activation


def get_activation(name: str) -> Activation:
    """The registered activation ``name``.

    **Raises:** ``ValueError`` for an unknown name (one line listing the allowed ones).
    """
    return ACTIVATIONS.get(name)
