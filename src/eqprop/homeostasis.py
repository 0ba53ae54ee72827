"""Jacobian homeostasis (Laborieux and Zenke, ICLR 2024, arXiv 2309.02214).

Which Jacobian
--------------
Generalized EP with independent feedback weights estimates ``da*/dbeta = -J^{-1} dl/da``
while the exact gradient needs the recurrent-backprop adjoint ``-J^{-T} dl/da``: the two
agree for every loss iff the Jacobian is symmetric, so its antisymmetric part is what
decides the *asymmetry bias*. Here ``J`` is

    J = dh/da - I        at the free fixed point,

with ``h = model.interaction(a, drive)`` the activity-driven part of the field
(``F = h(a) - u``), i.e. ``W_total - I`` for a dense network (state independent there).
The activity-coordinate Jacobian of the dynamics is ``dh/da - D^{-1}`` with
``D = diag(act'(u))``; the diagonal cancels in ``J - J^T``, so ``J - J^T`` *is* its
antisymmetric part. ``J`` is only ever touched through Jacobian-vector products of
``a -> model.interaction(a, drive)`` (``jax.jvp``), never formed, so this works unchanged
for graph, convolutional and other networks that implement ``interaction``.

The homeostatic loss
--------------------
``L = ||J - J^T||_F^2 / 2 = tr(J^T J) - tr(J^2)`` per example. With Gaussian probes
``eps`` (a pytree like the activity, leaves ``(B, n)``)

    L_hat = ||J eps||^2 - eps^T J (J eps)

(two JVPs, no transpose) is unbiased: ``E[L_hat] = L``. :func:`probe_loss` averages it
over ``probes`` probes and the batch and **divides by the number of neurons** ``N`` (units
per example, all populations), as the authors' code does; so ``E[probe_loss] = L / N``.
:func:`exact_loss` is the same normalised quantity from the explicit Jacobian (small
networks; tests and diagnostics). The training gradient is ``d probe_loss / d theta`` at
the free fixed point (``stop_gradient`` on the state, no gradient through the
relaxation), added as ``coef * grad`` to the task gradient (see
:func:`eqprop.update.make_train_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.flatten_util import ravel_pytree

from .network.base import EquilibriumModel

PyTree = Any

__all__ = ["Homeostasis", "jacobian_matvec", "probe_loss", "homeostasis_grad",
           "explicit_jacobian", "exact_loss", "neuron_count"]


@dataclass(frozen=True)
class Homeostasis:
    """Static settings of Jacobian homeostasis (hashable, a jit-static argument).

    ``coef``: weight of the homeostatic gradient added to the task gradient; ``probes``:
    Gaussian probes per estimate; ``every``: apply on one batch in ``every`` (batch index
    ``i`` with ``i % every == 0``).
    """

    coef: float = 1.0
    probes: int = 5
    every: int = 1

    def __post_init__(self):
        if self.coef < 0 or self.probes < 1 or self.every < 1:
            raise ValueError(f"bad homeostasis settings {self}: need coef >= 0, probes >= 1, every >= 1")


def neuron_count(a: PyTree) -> int:
    """Units per example of a batched activity pytree (all leaves, axis 0 is the batch)."""
    n = 0
    for leaf in jax.tree.leaves(a):
        size = 1
        for s in leaf.shape[1:]:
            size *= s
        n += size
    return n


def jacobian_matvec(model: EquilibriumModel, a: PyTree, drive: PyTree):
    """``eps -> J eps`` with ``J = dh/da - I`` at activity ``a`` (batched, per example)."""

    def h(act):
        return model.interaction(act, drive)

    def matvec(eps):
        _, jh = jax.jvp(h, (a,), (eps,))
        return jax.tree.map(jnp.subtract, jh, eps)

    return matvec


def _sum_products(x: PyTree, y: PyTree) -> Array:
    """Per-example ``<x, y>`` over all leaves: ``(B,)``."""
    return sum(jnp.sum((xi * yi).reshape(xi.shape[0], -1), axis=-1)
               for xi, yi in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def _probes(key: Array, a: PyTree, probes: int) -> PyTree:
    leaves, treedef = jax.tree.flatten(a)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, (probes,) + l.shape, l.dtype)
                                        for k, l in zip(keys, leaves)])


def probe_loss(model: EquilibriumModel, a: PyTree, drive: PyTree, key: Array, probes: int) -> Array:
    """``mean over probes and batch of (||J eps||^2 - eps^T J J eps) / N`` (a scalar).

    Unbiased for ``||J - J^T||_F^2 / (2 N)`` per example, ``N = neuron_count(a)``.
    """
    matvec = jacobian_matvec(model, a, drive)
    eps = _probes(key, a, probes)

    def one(e):
        je = matvec(e)
        jje = matvec(je)
        return jnp.mean(_sum_products(je, je) - _sum_products(e, jje))

    return jnp.mean(jax.vmap(one)(eps)) / neuron_count(a)


def homeostasis_grad(model: EquilibriumModel, x: Array, u: PyTree, key: Array,
                     probes: int) -> tuple[Array, PyTree]:
    """``(probe_loss, d probe_loss / d theta)`` at the (fixed-point) state ``u``.

    The state is held fixed (``stop_gradient``); the drive is recomputed from the
    parameters so that networks whose Jacobian depends on it are differentiated right.
    """
    a = jax.lax.stop_gradient(model.activity(u))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        m = eqx.combine(p, static)
        return probe_loss(m, a, m.prepare(x), key, probes)

    return jax.value_and_grad(loss)(params)


def explicit_jacobian(model: EquilibriumModel, x: Array, a: PyTree, index: int = 0) -> Array:
    """The ``(N, N)`` matrix ``J = dh/da - I`` of example ``index`` (flattened activity).

    Forward mode over one example (``N`` JVPs), with that example's own drive
    ``model.prepare(x[index:index + 1])`` (the drive is opaque to this module): for small
    networks, tests and diagnostics.
    """
    a1 = jax.tree.map(lambda t: t[index:index + 1], a)
    d1 = model.prepare(x[index:index + 1])
    flat, unravel = ravel_pytree(a1)

    def f(v):
        out, _ = ravel_pytree(model.interaction(unravel(v), d1))
        return out

    jh = jax.jacfwd(f)(flat)
    return jh - jnp.eye(flat.shape[0], dtype=jh.dtype)


def exact_loss(model: EquilibriumModel, x: Array, a: PyTree, examples: int = 1) -> Array:
    """``||J - J^T||_F^2 / (2 N)`` from the explicit Jacobian, mean over the first
    ``examples`` examples (what :func:`probe_loss` estimates)."""
    b = jax.tree.leaves(a)[0].shape[0]
    vals = []
    for i in range(min(examples, b)):
        j = explicit_jacobian(model, x, a, i)
        vals.append(0.5 * jnp.sum((j - j.T) ** 2) / j.shape[0])
    return jnp.mean(jnp.stack(vals))
