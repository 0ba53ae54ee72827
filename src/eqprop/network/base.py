"""The abstract equilibrium network: what the solvers and estimators need of a model.

A model owns its parameters (inexact arrays, trained) and its structure (static).
Its *state* ``u`` is a pytree whose leaves have the batch on axis 0; the solver
iterates ``u <- project(u + dt * F(u))``. Its *activity* ``a = activity(u)`` is the pytree (same
structure) in which the learning rule is written: the nudge adds ``beta * dl/da`` to
the output's component of ``F``, and every estimate of ``da*/dbeta`` lives there.

Convention (documented, pinned by tests): with the nudge ``+beta * dl/da_out``,
``da*/dbeta = -J^{-1} dl/da`` and the EP estimate points along ``+dL/dtheta``, so the
optimiser does plain gradient descent on it. Scellier and Bengio's physical
convention is the same with ``beta -> -beta``.

Any vector field (dense, convolutional, complete directed networks) plugs in by
implementing this interface; nothing in ``relax`` or ``estimate`` depends on more.
"""


import abc
import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .readout import Readout

PyTree = Any


class EquilibriumModel(eqx.Module):
    """Abstract equilibrium network ``F(u; theta, x)`` with a readout.

    The contract every solver and estimator relies on (and nothing more):

    - ``prepare(x)`` hoists what depends on the clamped input only out of the loop;
    - ``init_state(drive)`` is the state the free phase starts from;
    - ``field(u, drive)`` is the vector field ``F`` (fixed points: ``F = 0``);
    - ``activity(u)`` maps states to activities, where the learning rule and the nudge
      are written (elementwise, holomorphic where the activation is);
    - ``project(u)`` is applied after every step of every solver: the step map is
      ``u <- project(u + dt F(u))``. The default is the identity; a model whose states
      live in a bounded set (e.g. clipped to ``[0, 1]``) overrides it;
    - ``holomorphic``: whether complex states are accepted (complex nudges need it);
    - ``readout`` and ``output`` (the nudged population's name).

    Capabilities beyond the contract are the abstract subclasses
    :class:`InteractionModel`, :class:`EnergyModel` and :class:`BipartiteModel`;
    components that need one test ``isinstance``.
    """

    readout: eqx.AbstractVar[Readout]
    output: eqx.AbstractVar[str]

    @abc.abstractmethod
    def prepare(self, x: Array) -> PyTree:
        """Everything that depends on the clamped input only (e.g. ``x W + b``), hoisted
        out of the relaxation loop.

        **Arguments:** ``x``: the input batch ``(B, ...)``.

        **Returns:** the model's *drive*, an opaque pytree passed back to
        :meth:`init_state` and :meth:`field` (leaves with the batch on axis 0 where they
        depend on ``x``).
        """

    @abc.abstractmethod
    def init_state(self, drive: PyTree) -> PyTree:
        """The state the free phase starts from.

        **Arguments:** ``drive``: :meth:`prepare` of the batch.

        **Returns:** the state ``u``, a pytree (one leaf per population) with leaves
        ``(B, ...)``.
        """

    @abc.abstractmethod
    def activity(self, u: PyTree) -> PyTree:
        """Activity ``a = act(u)``, elementwise, holomorphic where the activation is.

        **Arguments:** ``u``: a state, leaves ``(B, ...)`` (or ``(P, B, ...)``), real or
        complex.

        **Returns:** a pytree like ``u``.
        """

    @abc.abstractmethod
    def field(self, u: PyTree, drive: PyTree) -> PyTree:
        """The free vector field ``F(u)``; fixed points are ``F = 0``.

        **Arguments:** ``u``: a state, leaves ``(B, ...)``; ``drive``: :meth:`prepare`
        of the same batch.

        **Returns:** a pytree like ``u`` (in units of state per relaxation time: the
        solvers step ``u + dt F(u)``).
        """

    @property
    @abc.abstractmethod
    def holomorphic(self) -> bool:
        """Whether the field accepts complex states (needed by complex nudges)."""

    def check_step(self, dt: float) -> None:
        """Refuse a step size with which the solvers' Euler step ``u + dt F(u)`` cannot
        settle on this model (called by :meth:`eqprop.solvers.FixedPointSolver.check`
        for every solver of a run, before any relaxation).

        **Arguments:** ``dt``: the step, in units of the relaxation time.

        **Raises:** ``ValueError`` (one line starting ``dynamics.dt:``). Default: every
        step is accepted.
        """

    def project(self, u: PyTree) -> PyTree:
        """The projection applied after each step of every solver.

        **Arguments:** ``u``: a state, or a dict holding a subset of its populations
        (one group of an alternating sweep); it must act population by population.

        **Returns:** a pytree like ``u``. Default: ``u`` itself (the identity).
        """
        return u

    def projector(self):
        """``project`` as a callable for the solvers, or ``None`` when it is the identity
        (so that unprojected models pay nothing)."""
        if type(self).project is EquilibriumModel.project:
            return None
        return self.project

    @property
    def symmetric(self) -> bool:
        """True when ``dF/da`` is symmetric at every state (an energy-based network)."""
        return False

    # -- output and nudge -------------------------------------------------------------

    def output_activity(self, a: PyTree) -> Array:
        """The output population's activity ``a[output]``, ``(B, n_out)``."""
        return a[self.output]

    def nudge(self, a: PyTree, y: Array) -> PyTree:
        """``dl/da``, the direction of the nudge (a phase nudged by ``beta`` has the field
        ``F + beta dl/da``; this sign makes the EP estimate point along ``+dL/dtheta``).

        **Arguments:** ``a``: a dict of activities, leaves ``(B, ...)``, real or complex;
        ``y``: integer labels ``(B,)``.

        **Returns:** a dict like ``a``: the readout's ``loss_grad`` ``(B, n_out)`` on the
        output population, zeros elsewhere.
        """
        g = self.readout.loss_grad(self.output_activity(a), y)
        return {k: (g if k == self.output else jnp.zeros_like(v)) for k, v in a.items()}

    def loss(self, a: PyTree, y: Array) -> Array:
        """Per-example loss ``(B,)`` of the readout at activity ``a`` (leaves ``(B, ...)``)
        for integer labels ``y`` ``(B,)``."""
        return self.readout.loss(self.output_activity(a), y)

    def predict(self, a: PyTree) -> Array:
        """Predicted classes ``(B,)``: argmax of the real part of the readout's logits."""
        return jnp.argmax(self.readout.logits(self.output_activity(a)).real, axis=-1)



class InteractionModel(EquilibriumModel):
    """A model whose field is ``F = h(a) - u``: it exposes the interaction ``h(a)``.

    ``dh/da`` has the same antisymmetric part as the activity-coordinate Jacobian of the
    dynamics, so Jacobian homeostasis and the symmetry diagnostics use it (Laborieux and
    Zenke 2024, arXiv 2309.02214).
    """

    @abc.abstractmethod
    def interaction(self, a: PyTree, drive: PyTree) -> PyTree:
        """``h(a)``: the activity-driven part of ``F = h(a) - u``.

        **Arguments:** ``a``: activities, leaves ``(B, ...)``, real or complex;
        ``drive``: :meth:`prepare` of the batch.

        **Returns:** a pytree like ``a``.
        """


class EnergyModel(EquilibriumModel):
    """A model that may derive from a primitive (energy) ``Phi`` with ``dPhi/da = h(a)``.

    It is energy-based when ``symmetric`` is true (e.g. tied weights); the classic EP
    contrast estimator (Scellier and Bengio 2017) needs that.
    """

    @abc.abstractmethod
    def primitive(self, a: PyTree, x: Array) -> Array:
        """The primitive (negative energy) ``Phi(a)`` per example.

        **Arguments:** ``a``: activities, leaves ``(B, ...)``; ``x``: the input batch
        ``(B, ...)``.

        **Returns:** ``(B,)``.

        **Raises:** ``ValueError`` when ``symmetric`` is false (no primitive exists).
        """


class BipartiteModel(EquilibriumModel):
    """A model whose coupling graph may be bipartite: alternating updates apply.

    Then the synchronous iteration is two decoupled copies, and updating the two groups
    in turn does half the work per step with the same fixed points.
    """

    @abc.abstractmethod
    def partition(self) -> tuple[tuple[str, ...], ...] | None:
        """Groups of population names with no coupling between two populations of a
        group, or ``None`` when the coupling graph is not bipartite. One group when no
        population is coupled to another (one hidden population): the alternating sweep
        is then the synchronous step. A population may depend on its own activity (the
        conv network's softmax pooling); the sweep then takes that dependence at its state
        before its update."""

    def field_on(self, u: PyTree, drive: PyTree, group: tuple[str, ...]) -> PyTree:
        """``F`` restricted to the populations in ``group``.

        **Arguments:** ``u``: a state (dict, leaves ``(B, ...)``); ``drive``:
        :meth:`prepare` of the batch; ``group``: population names.

        **Returns:** ``{p: F_p(u) for p in group}``. The default computes the full field
        and slices it; subclasses compute the group only.
        """
        f = self.field(u, drive)
        return {p: f[p] for p in group}


class FeedbackModel(EquilibriumModel):
    """A model with explicit pairs of forward and feedback weights (the weight angles of
    the asymmetry diagnostics; Laborieux and Zenke 2024, arXiv 2309.02214)."""

    @abc.abstractmethod
    def feedback_pairs(self) -> dict[str, tuple[Array, Array | None]]:
        """``{"<src>-<dst>": (W, B)}`` for every pair of populations coupled both ways:
        the forward matrix ``W_{src->dst}`` and the feedback ``B_{dst->src}``, or
        ``None`` for a tied coupling (feedback ``W^T`` by construction)."""


class FeedForwardModel(EquilibriumModel):
    """Capability: the feed-forward counterpart of the network (forward projections only,
    one pass, no feedback), which the backpropagation baseline (``[estimator] name =
    "bp"``) trains by autodiff on the same architecture (Laborieux and Zenke 2022,
    arXiv 2209.00530, compare EP with it)."""

    @abc.abstractmethod
    def feedforward(self, drive: PyTree) -> PyTree:
        """The state of one forward pass: population by population in the order of the
        forward graph, ``u_p`` is the sum of the *forward* projections into ``p`` of the
        activities already computed (and of the input), with no feedback, so that
        ``activity(u)``, ``loss`` and ``predict`` apply to it unchanged.

        **Arguments:** ``drive``: :meth:`prepare` of the batch.

        **Returns:** a state like :meth:`init_state`'s (leaves ``(B, ...)``), real.
        """

    def check_feedforward(self) -> None:
        """Refuse a network that has no feed-forward counterpart (e.g. a graph whose
        forward projections form a cycle); called by the ``bp`` estimator's ``check``
        before any computation.

        **Raises:** ``ValueError`` (one line). Default: every network is accepted.
        """


class MixedPrecisionModel(EquilibriumModel):
    """Capability: the products of the relaxation (matmuls, convolutions) computed in
    ``compute_dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``) with the states, the
    accumulation, the parameters and the gradients in the parameters' dtype
    (``"float32"``: no cast). :func:`eqprop.gradcheck.gradcheck` compares such a model's
    estimates with the reference of :meth:`with_compute_dtype` ``("float32")``."""

    compute_dtype: eqx.AbstractVar[str]

    def with_compute_dtype(self, compute_dtype: str) -> "MixedPrecisionModel":
        """The same network (same parameters) computing in ``compute_dtype``."""
        return dataclasses.replace(self, compute_dtype=compute_dtype)


class ConnectedModel(EquilibriumModel):
    """Capability: weight matrices with a fixed connectivity, whose absent entries are
    not connections (a directed network's mask). Pruning (:mod:`eqprop.pruning`) removes
    and counts only the connections that exist."""

    @abc.abstractmethod
    def connections(self) -> dict[str, Array]:
        """``{parameter name: bool array}``: for each matrix with a fixed connectivity
        (named as :func:`named_parameters` names it), ``True`` where a connection exists
        (shape of the parameter; stacked like the model when seeds are stacked)."""


class BoxProjectedModel(EquilibriumModel):
    """A model whose states live in a box ``lo <= u <= hi`` and whose projection is the
    clip to it (e.g. the DEEP dynamics of Farinha et al. 2020, arXiv 2006.08798: states in
    ``[0, 1]``).

    The projected stability certificate (:func:`eqprop.stability.projected_certificate`)
    reads the box: a fixed point of the projected step ``u <- clip(u + dt F(u))`` is
    locally stable when every neuron on a bound has its field pointing out of the box and
    the Jacobian restricted to the neurons inside is stable. The state must hold the
    free neurons only (clamped ones, inputs and a bias, belong to the drive). Implement
    :meth:`state_bounds`; :meth:`project` (the clip) and :meth:`raw_field` have defaults.
    """

    @abc.abstractmethod
    def state_bounds(self) -> dict[str, tuple[Any, Any]]:
        """The box, population by population.

        **Returns:** ``{p: (lo, hi)}`` for every population of the state, each bound a
        float or an array broadcastable to one example's state of ``p`` (e.g. ``(n_p,)``),
        with ``lo < hi``.
        """

    def raw_field(self, u: PyTree, drive: PyTree) -> PyTree:
        """The field before the projection: the direction the step ``u + dt F(u)`` takes
        before the clip. Default: :meth:`field`; a model whose ``field`` is already
        restricted to the box (zero on a bound where it points out) overrides it, so that
        the certificate can see the saturated neurons' outward field.

        **Arguments:** as :meth:`field`. **Returns:** a pytree like ``u``.
        """
        return self.field(u, drive)

    def project(self, u: PyTree) -> PyTree:
        """The clip of each population present in ``u`` to its box (any subset of the
        populations, as an alternating sweep passes). **Arguments:** ``u``: a dict of
        states, leaves ``(B, ...)``. **Returns:** a dict like ``u``."""
        box = self.state_bounds()
        return {p: jnp.clip(v, *box[p]) for p, v in u.items()}


def parameters(model: eqx.Module) -> PyTree:
    """The trainable part of a model: the model with its inexact (floating or complex)
    arrays kept and every other leaf replaced by ``None`` (``eqx.filter``)."""
    return eqx.filter(model, eqx.is_inexact_array)


def named_parameters(tree: PyTree) -> dict[str, Array]:
    """Flatten a model-shaped pytree (a model, its parameters or a gradient) to
    ``{"weights.input->h1": array, "readout.weight": array, ...}``: attribute names and
    dict keys joined by dots, inexact-array leaves only, in leaf order."""
    return {parameter_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if eqx.is_inexact_array(leaf)}


def parameter_name(path: tuple) -> str:
    """The name :func:`named_parameters` gives the leaf at a ``jax.tree_util`` key path:
    attribute names and dict keys joined by dots (``"weights.input->h1"``)."""
    parts = []
    for p in path:
        name = getattr(p, "name", None) or getattr(p, "key", None)
        parts.append(str(name if name is not None else getattr(p, "idx", p)))
    return ".".join(parts)
