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

Probes, one place for the loss and the symmetry figure
------------------------------------------------------
:func:`probe_vectors` draws the probes, :func:`jacobian_matvec` and
:func:`jacobian_rmatvec` apply ``J`` and ``J^T``, :func:`jacobian_probes` gives ``(J eps,
J^T eps)`` for the same probes. :func:`probe_symmetry` turns those into the Hutchinson
estimate of the Jacobian's symmetry ``||J_sym||_F / (||J_sym||_F + ||J_anti||_F)``, and
:func:`probe_figures` returns it beside :func:`probe_loss`: the two Jacobian figures of
:mod:`eqprop.diagnostics` for networks too large for the explicit Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.flatten_util import ravel_pytree

from .network.base import EquilibriumModel, InteractionModel

PyTree = Any

__all__ = ["Homeostasis", "jacobian_matvec", "jacobian_rmatvec", "probe_vectors",
           "jacobian_probes", "probe_loss", "probe_symmetry", "probe_figures",
           "homeostasis_grad", "explicit_jacobian", "exact_loss", "neuron_count"]


@dataclass(frozen=True)
class Homeostasis:
    """Static settings of Jacobian homeostasis (hashable, a jit-static argument).

    ``coef``: weight of the homeostatic gradient added to the task gradient (the
    authors used 0.1 to 15 depending on the architecture); ``probes``: Gaussian probes
    per estimate; ``every``: apply on one batch in ``every`` (batch index ``i`` with
    ``i % every == 0``).

    **Raises:** ``ValueError`` at construction when ``coef < 0``, ``probes < 1`` or
    ``every < 1``.
    """

    coef: float = 1.0
    probes: int = 5
    every: int = 1

    def __post_init__(self):
        if self.coef < 0 or self.probes < 1 or self.every < 1:
            raise ValueError(f"bad homeostasis settings {self}: need coef >= 0, probes >= 1, every >= 1")

    def check(self, model: EquilibriumModel) -> None:
        """Raise ``ValueError`` unless ``model`` exposes its interaction ``h(a)``."""
        if not isinstance(model, InteractionModel):
            raise ValueError(f"homeostasis.coef: Jacobian homeostasis needs a model with an interaction "
                             f"h(a) (an InteractionModel); {type(model).__name__} is not one")


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
    """The map ``eps -> J eps`` with ``J = dh/da - I`` at activity ``a`` (one JVP).

    **Arguments:**

    - ``model``: a network with ``interaction(a, drive)`` (the ``h`` of the module doc);
    - ``a``: the batched activity at which ``J`` is taken (leaves ``(B, ...)``, usually
      ``model.activity(u*)`` at the free fixed point);
    - ``drive``: ``model.prepare(x)`` of the same batch.

    **Returns:** a linear function from pytrees shaped like ``a`` to pytrees shaped like
    ``a``, applying each example's own ``J`` (``J`` is block diagonal over the batch).
    """

    def h(act):
        return model.interaction(act, drive)

    def matvec(eps):
        _, jh = jax.jvp(h, (a,), (eps,))
        return jax.tree.map(jnp.subtract, jh, eps)

    return matvec


def jacobian_rmatvec(model: EquilibriumModel, a: PyTree, drive: PyTree):
    """The map ``eps -> J^T eps`` with ``J = dh/da - I`` at activity ``a`` (one VJP).

    Arguments as :func:`jacobian_matvec`. The forward pass of ``h`` is traced once, when
    this is called; the returned function only runs the transposed linear map.

    **Returns:** a linear function from pytrees shaped like ``a`` to pytrees shaped like
    ``a``, applying each example's own ``J^T``.
    """
    _, vjp = jax.vjp(lambda act: model.interaction(act, drive), a)

    def rmatvec(eps):
        (jh,) = vjp(eps)
        return jax.tree.map(jnp.subtract, jh, eps)

    return rmatvec


def _sum_products(x: PyTree, y: PyTree) -> Array:
    """Per-example ``<x, y>`` over all leaves: ``(B,)``."""
    return sum(jnp.sum((xi * yi).reshape(xi.shape[0], -1), axis=-1)
               for xi, yi in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def probe_vectors(key: Array, a: PyTree, probes: int) -> PyTree:
    """Standard Gaussian probes ``eps`` shaped like the activity, ``probes`` of them.

    **Arguments:**

    - ``key``: PRNG key (split over the leaves of ``a``);
    - ``a``: batched activity pytree (leaves ``(B, ...)``);
    - ``probes``: number of probes ``P``.

    **Returns:** a pytree like ``a`` whose leaves are ``(P, B, ...)`` (dtype of ``a``),
    entries i.i.d. ``N(0, 1)``: ``E[eps eps^T] = I`` per example.
    """
    leaves, treedef = jax.tree.flatten(a)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, (probes,) + l.shape, l.dtype)
                                        for k, l in zip(keys, leaves)])


def jacobian_probes(model: EquilibriumModel, a: PyTree, drive: PyTree,
                    eps: PyTree) -> tuple[PyTree, PyTree]:
    """``(J eps, J^T eps)`` for the same probes, ``J = dh/da - I`` at activity ``a``.

    **Arguments:** ``model``, ``a``, ``drive`` as :func:`jacobian_matvec`; ``eps``: probes
    with a leading probe axis (leaves ``(P, B, ...)``, e.g. from :func:`probe_vectors`).

    **Returns:** two pytrees shaped like ``eps``: ``J eps`` (a JVP per probe) and
    ``J^T eps`` (a VJP per probe, through one linearisation of ``h``).
    """
    matvec = jacobian_matvec(model, a, drive)
    rmatvec = jacobian_rmatvec(model, a, drive)
    return jax.vmap(lambda e: (matvec(e), rmatvec(e)))(eps)


def probe_loss(model: EquilibriumModel, a: PyTree, drive: PyTree, key: Array, probes: int) -> Array:
    """The homeostatic loss ``||J - J^T||_F^2 / (2 N)`` per example, estimated with probes.

    ``mean over probes and batch of (||J eps||^2 - eps^T J J eps) / N`` (two JVPs per
    probe, no transpose; Laborieux and Zenke, arXiv 2309.02214), unbiased for
    ``||J - J^T||_F^2 / (2 N)`` per example, ``N = neuron_count(a)``. Differentiable in
    the model's parameters (see :func:`homeostasis_grad`).

    **Arguments:** ``model``, ``a``, ``drive`` as :func:`jacobian_matvec`; ``key``: PRNG
    key of the probes (:func:`probe_vectors`); ``probes``: their number (static).

    **Returns:** a scalar (dimensionless: activity units cancel).
    """
    matvec = jacobian_matvec(model, a, drive)
    eps = probe_vectors(key, a, probes)

    def one(e):
        je = matvec(e)
        jje = matvec(je)
        return jnp.mean(_sum_products(je, je) - _sum_products(e, jje))

    return jnp.mean(jax.vmap(one)(eps)) / neuron_count(a)


def probe_symmetry(model: EquilibriumModel, a: PyTree, drive: PyTree, key: Array,
                   probes: int) -> Array:
    """The Jacobian's symmetry ``s = ||J_sym||_F / (||J_sym||_F + ||J_anti||_F)``, by probes.

    Hutchinson: ``||J_sym||_F^2 = E||J_sym eps||^2`` with ``J_sym eps = (J eps + J^T eps)
    / 2`` and ``J_anti eps = (J eps - J^T eps) / 2`` from :func:`jacobian_probes`, averaged
    over the probes and summed over the batch (Laborieux and Zenke, arXiv 2309.02214). The
    ratio of the square roots is a consistent (not unbiased) estimate of ``s``; ``s = 1``
    exactly when ``J`` is symmetric, about ``1/2`` for a large ``J`` with independent
    Gaussian entries.

    **Arguments:** ``model``, ``a``, ``drive`` as :func:`jacobian_matvec`; ``key``: PRNG
    key of the probes (:func:`probe_vectors`); ``probes``: their number (static).

    **Returns:** a scalar in ``[0, 1]`` (NaN if ``J = 0``).
    """
    je, jte = jacobian_probes(model, a, drive, probe_vectors(key, a, probes))

    def norms(x, y):
        pairs = list(zip(jax.tree.leaves(x), jax.tree.leaves(y)))
        sym = sum(jnp.sum((xi + yi) ** 2) for xi, yi in pairs) / 4
        anti = sum(jnp.sum((xi - yi) ** 2) for xi, yi in pairs) / 4
        return sym, anti

    sym, anti = jax.vmap(norms)(je, jte)
    ns, na = jnp.sqrt(jnp.mean(sym)), jnp.sqrt(jnp.mean(anti))
    return ns / (ns + na)


def probe_figures(model: EquilibriumModel, a: PyTree, drive: PyTree, key: Array,
                  probes: int) -> tuple[Array, Array]:
    """Both Jacobian figures of :mod:`eqprop.diagnostics` by probes: ``(symmetry, loss)``.

    ``symmetry`` is :func:`probe_symmetry` with ``key``; ``loss`` is :func:`probe_loss`
    (the quantity homeostasis minimises) with ``jax.random.fold_in(key, 1)``, so the two
    use independent probes.

    **Arguments:** as :func:`probe_symmetry`.

    **Returns:** two scalars, ``s`` in ``[0, 1]`` and ``||J - J^T||_F^2 / (2 N)`` (an
    unbiased estimate, so it may be slightly negative when ``J`` is nearly symmetric).
    """
    return (probe_symmetry(model, a, drive, key, probes),
            probe_loss(model, a, drive, jax.random.fold_in(key, 1), probes))


def homeostasis_grad(model: EquilibriumModel, x: Array, u: PyTree, key: Array,
                     probes: int) -> tuple[Array, PyTree]:
    """``(probe_loss, d probe_loss / d theta)`` at the (fixed-point) state ``u``.

    The state is held fixed (``stop_gradient``; no gradient through the relaxation); the
    drive is recomputed from the parameters so that networks whose Jacobian depends on
    it are differentiated right.

    **Arguments:** ``model``: an :class:`~eqprop.network.InteractionModel`; ``x``: its
    input batch ``(B, ...)``; ``u``: the free fixed point, leaves ``(B, ...)``; ``key``:
    PRNG key of the probes; ``probes``: their number (static).

    **Returns:** the scalar loss and its gradient, a model-shaped pytree (``None`` where
    a leaf is not trainable; zeros for the readout).
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

    **Arguments:** ``model``: an :class:`~eqprop.network.InteractionModel`; ``x``: the
    input batch ``(B, ...)``; ``a``: the batch's activity, leaves ``(B, ...)``;
    ``index``: the example.

    **Returns:** ``(N, N)`` with ``N = neuron_count(a)``, rows and columns in the order
    of ``ravel_pytree`` over ``a``'s leaves; ``J[i, j] = dh_i/da_j - delta_ij``.
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
    ``examples`` examples (what :func:`probe_loss` estimates). Arguments as
    :func:`explicit_jacobian`; returns a scalar."""
    b = jax.tree.leaves(a)[0].shape[0]
    vals = []
    for i in range(min(examples, b)):
        j = explicit_jacobian(model, x, a, i)
        vals.append(0.5 * jnp.sum((j - j.T) ** 2) / j.shape[0])
    return jnp.mean(jnp.stack(vals))
