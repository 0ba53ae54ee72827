"""The abstract equilibrium network: what the solvers and estimators need of a model.

A model owns its parameters (inexact arrays, trained) and its structure (static).
Its *state* ``u`` is a pytree whose leaves have the batch on axis 0; the solver
iterates ``u <- u + dt * F(u)``. Its *activity* ``a = activity(u)`` is the pytree (same
structure) in which the learning rule is written: the nudge adds ``beta * dl/da`` to
the output's component of ``F``, and every estimate of ``da*/dbeta`` lives there.

Convention (documented, pinned by tests): with the nudge ``+beta * dl/da_out``,
``da*/dbeta = -J^{-1} dl/da`` and the EP estimate points along ``+dL/dtheta``, so the
optimiser does plain gradient descent on it. Scellier and Bengio's physical
convention is the same with ``beta -> -beta``.

Any vector field (dense, convolutional, complete directed networks) plugs in by
implementing this interface; nothing in ``relax`` or ``estimate`` depends on more.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .readout import Readout

PyTree = Any


class EquilibriumModel(eqx.Module):
    """Abstract equilibrium network ``F(u; theta, x)`` with a readout."""

    readout: eqx.AbstractVar[Readout]
    output: eqx.AbstractVar[str]

    @abc.abstractmethod
    def prepare(self, x: Array) -> PyTree:
        """Everything that depends on the clamped input only (e.g. ``W x + b``), hoisted
        out of the relaxation loop. ``x``: ``(B, ...)``."""

    @abc.abstractmethod
    def init_state(self, drive: PyTree) -> PyTree:
        """Initial state for a batch (leaves ``(B, ...)``)."""

    @abc.abstractmethod
    def activity(self, u: PyTree) -> PyTree:
        """Activity ``a = act(u)``, elementwise, holomorphic where the activation is."""

    @abc.abstractmethod
    def field(self, u: PyTree, drive: PyTree) -> PyTree:
        """Free vector field ``F(u)`` (same structure as ``u``); fixed points: ``F = 0``."""

    def interaction(self, a: PyTree, drive: PyTree) -> PyTree:
        """``h(a)``: the part of ``F`` driven by the activities (``F = h(a) - u`` for dense and
        convolutional networks). Its Jacobian ``dh/da`` has the same antisymmetric part as
        the activity-coordinate Jacobian ``J``; homeostasis and symmetry diagnostics use it."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its interaction h(a)")

    @property
    @abc.abstractmethod
    def holomorphic(self) -> bool:
        """Whether the field accepts complex states (needed by complex nudges)."""

    def partition(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """Two groups of populations with no coupling inside either group (the coupling
        graph is bipartite), or ``None``. Then the synchronous iteration is two decoupled
        copies, and alternating updates of the groups do half the work per step."""
        return None

    def field_on(self, u: PyTree, drive: PyTree, group: tuple[str, ...]) -> PyTree:
        """``F`` restricted to the populations in ``group`` (default: the full field, sliced)."""
        f = self.field(u, drive)
        return {p: f[p] for p in group}

    @property
    def symmetric(self) -> bool:
        """True when ``dF/da`` is symmetric at every state (an energy-based network)."""
        return False

    def primitive(self, a: PyTree, x: Array) -> Array:
        """Per-example primitive ``Phi(a)`` with ``dPhi/da = F + u`` (tied networks only)."""
        raise NotImplementedError(f"{type(self).__name__} has no energy (primitive) function")

    # -- output and nudge -------------------------------------------------------------

    def output_activity(self, a: PyTree) -> Array:
        """The output population's activity ``(B, n_out)``."""
        return a[self.output]

    def nudge(self, a: PyTree, y: Array) -> PyTree:
        """``dl/da`` as a pytree like ``a``: the readout's gradient on the output, 0 elsewhere."""
        g = self.readout.loss_grad(self.output_activity(a), y)
        return {k: (g if k == self.output else jnp.zeros_like(v)) for k, v in a.items()}

    def loss(self, a: PyTree, y: Array) -> Array:
        """Per-example loss ``(B,)`` at activity ``a``."""
        return self.readout.loss(self.output_activity(a), y)

    def predict(self, a: PyTree) -> Array:
        """Predicted class ``(B,)``."""
        return jnp.argmax(self.readout.logits(self.output_activity(a)).real, axis=-1)


def parameters(model: eqx.Module) -> PyTree:
    """The trainable part of a model (its inexact arrays); everything else ``None``."""
    return eqx.filter(model, eqx.is_inexact_array)


def named_parameters(tree: PyTree) -> dict[str, Array]:
    """Flatten a model-shaped pytree to ``{"weights.input->h1": array, ...}``."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not eqx.is_inexact_array(leaf):
            continue
        parts = []
        for p in path:
            name = getattr(p, "name", None) or getattr(p, "key", None)
            parts.append(str(name if name is not None else getattr(p, "idx", p)))
        out[".".join(parts)] = leaf
    return out
