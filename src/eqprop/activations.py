"""Activation functions of the populations.

Each activation maps a pre-activation state ``u`` to an activity ``a = act(u)``
elementwise. The holomorphic ones also accept complex ``u`` (holomorphic EP needs
complex states); the others raise a clear error when asked to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp
from jax import Array, lax

from . import complexmath
from .complexmath import sincos
from .registry import ACTIVATIONS


def _sigmoid(z: Array) -> Array:
    """Logistic function as ``(1 + tanh(z / 2)) / 2``: the same holomorphic function as
    ``1 / (1 + exp(-z))``, in the faster form (see benchmarks/README.md)."""
    return 0.5 + 0.5 * complexmath.tanh(0.5 * z)  # complex64: 2.6x faster than jnp.tanh


def sigmoid4(u: Array) -> Array:
    """``sigmoid(4u - 2)``: the MLP activation of Laborieux and Zenke (2022, 2024).

    Range ``(0, 1)`` on real ``u``; holomorphic, with poles at ``Im(u) = pi/4 (2k + 1)``
    (on ``Re(u) = 1/2``), which bound the radius of hEP's nudge circle. ``u``: any shape,
    real or complex; returns the same shape.
    """
    return _sigmoid(4.0 * u - 2.0)


_E2 = math.exp(2.0)
#: ``Re(u)`` below which :func:`dsilu`'s complex form clamps ``exp(-u)`` (its square and its
#: derivative stay finite in float32; there |dsilu| < 2e-16)
_DSILU_FLOOR = -40.0


def dsilu(u: Array) -> Array:
    """``0.5 u sigmoid(u) + (1 - 0.5 u) sigmoid(u - 2)``: the CNN activation of hEP
    (Laborieux and Zenke 2022, arXiv 2209.00530). Holomorphic; ``u``: any shape, real or
    complex; returns the same shape.

    Real ``u``: two sigmoids in the ``tanh`` form. Complex ``u = x + iy``: in real
    arithmetic from one shared ``exp(-u) = exp(-x) (cos y - i sin y)`` (``sigmoid(u - 2)
    = 1 / (1 + e^2 exp(-u))``), 2.6x faster on this CPU than two complex ``tanh`` and the
    same holomorphic function (its JAX derivative is multiplication by ``dsilu'(u)``);
    ``exp(-x)`` is clamped at ``x = -40`` (there ``|dsilu(u)| < 2e-16``), so that neither
    the value nor its derivative overflows in float32.
    """
    if not jnp.iscomplexobj(u):
        return 0.5 * u * _sigmoid(u) + (1.0 - 0.5 * u) * _sigmoid(u - 2.0)
    x, y = jnp.real(u), jnp.imag(u)
    m = jnp.exp(-jnp.maximum(x, _DSILU_FLOOR))
    sin, cos = sincos(y)  # float32: polynomials, 9x faster than jnp.sin + jnp.cos here
    er, ei = m * cos, -m * sin  # exp(-u)

    def inverse_one_plus(k):  # 1 / (1 + k exp(-u)), real and imaginary parts
        dr, di = 1.0 + k * er, k * ei
        q = 1.0 / (dr * dr + di * di)
        return dr * q, -di * q

    s1r, s1i = inverse_one_plus(1.0)
    s2r, s2i = inverse_one_plus(_E2)
    hr, hi = 0.5 * x, 0.5 * y  # 0.5 u; then 0.5 u s1 + (1 - 0.5 u) s2
    re = hr * s1r - hi * s1i + (1.0 - hr) * s2r + hi * s2i
    im = hr * s1i + hi * s1r + (1.0 - hr) * s2i - hi * s2r
    return lax.complex(re, im)


def tanh(u: Array) -> Array:
    """Hyperbolic tangent (holomorphic away from its poles at i pi (k + 1/2));
    :func:`eqprop.complexmath.tanh`."""
    return complexmath.tanh(u)


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
