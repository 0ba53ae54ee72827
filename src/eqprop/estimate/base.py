"""The estimator interface and the pieces every estimator shares.

An estimator maps ``(model, x, y, free, key)`` to a gradient pytree shaped like the
model (``None`` where a leaf is not trainable) and an :class:`Estimate` of
diagnostics. Generalized EP (Laborieux and Zenke 2024, arXiv 2309.02214) writes every
gradient as

    g = (dF/dtheta)^T v / B  +  d(mean loss)/d(readout)

at the free fixed point, where ``v`` (batched, activity space) is an estimate of
``da*/dbeta`` (EP, hEP, exact nudge) or the recurrent-backprop adjoint ``delta``
(implicit differentiation). For a dense projection this VJP is the local outer
product of presynaptic activity and ``v``.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ..network.base import BoxProjectedModel, EquilibriumModel
from ..guards import RelaxStats
from ..settings import SettingError, settings_of
from ..solvers import FixedPointSolver, PhaseSolvers

PyTree = Any


class FreePhase(eqx.Module):
    """The free relaxation of a batch.

    **Fields:** ``u``: the free fixed point (state, leaves ``(B, ...)``); ``drive``:
    ``model.prepare(x)``; ``stats``: its :class:`~eqprop.relax.RelaxStats` (``residual``
    ``(B,)``).
    """

    u: PyTree
    drive: PyTree
    stats: RelaxStats


class Estimate(eqx.Module):
    """Diagnostics of one estimate.

    **Fields:**

    - ``error_vector``: the ``v`` used in the update, a pytree like the activity with
      leaves ``(B, ...)`` (an estimate of ``da*/dbeta``, or the RBP ``delta`` for
      ``implicit``), or ``None`` (BPTT);
    - ``phases``: the stats of the nudged phases (``residual`` ``(P, B)`` for stacked
      phases, ``(B,)`` for online hEP's one trajectory), or ``None``;
    - ``linear``: the stats of the exact estimators' linear solve (``residual`` ``(B,)``,
      ``||J w + b||``), or ``None``;
    - ``circle``: hEP's :class:`~eqprop.estimate.nudge.CircleDecay` (the Fourier
      coefficients of ``a*(beta_k)`` around the circle; ``N >= 2`` points), or ``None``.

    The trainer reads them through :func:`estimate_metrics`.
    """

    error_vector: PyTree | None
    phases: RelaxStats | None
    linear: RelaxStats | None = None
    circle: Any = None


def estimate_metrics(info: Estimate) -> dict[str, Array]:
    """The scalar figures of an :class:`Estimate` that apply to it (a key only when its
    part is there):

    - ``nudged_residual``, ``nudged_nonconverged``: the mean residual of the nudged phases
      over every (phase, example), and the fraction of them above
      :data:`~eqprop.guards.NONCONVERGED_TOL`;
    - ``linear_residual``: the mean residual of the linear solve over the batch;
    - ``hep_decay``, ``hep_decay_median``, ``hep_error``, ``hep_beta_suggested``: the mean
      and the median over the batch of the fitted rate per order of hEP's Fourier
      coefficients around the circle, the mean estimated relative
      error of the Cauchy estimate (``min(rate^N, 1)``), and a smaller radius to try
      (:class:`~eqprop.estimate.nudge.CircleDecay`); ``hep_floor``: the fraction of the
      batch whose rate is only an upper bound, its second order at the rounding floor.
    """
    out = {}
    if info.phases is not None:
        out["nudged_residual"] = info.phases.residual_mean()
        out["nudged_nonconverged"] = info.phases.nonconverged_fraction()
    if info.linear is not None:
        out["linear_residual"] = info.linear.residual_mean()
    if info.circle is not None:
        out["hep_decay"] = info.circle.rate_mean()
        out["hep_decay_median"] = info.circle.rate_median()
        out["hep_error"] = info.circle.error_mean()
        out["hep_beta_suggested"] = info.circle.beta_suggested()
        out["hep_floor"] = info.circle.floor_fraction()
    return out


class Estimator(eqx.Module):
    """Abstract gradient estimator: a frozen module whose fields are its settings.

    Settings that are configuration keys are declared with
    :func:`eqprop.settings.setting` (they become ``[estimator]`` keys). Fields that hold
    the solvers an estimator needs are filled from ``[dynamics]`` by
    :func:`eqprop.build.build_estimator` through their names: ``nudged`` (a
    :class:`~eqprop.solvers.FixedPointSolver` for the nudged phases), ``free`` (the
    free phase's solver, for estimators that unroll it), ``linear`` (a Lineax solver)
    and ``converged_tol``.

    A subclass implements ``__call__`` and registers itself with
    ``@ESTIMATORS.register(name)``.

    Every ``setting()`` field is checked against its declared ``bounds`` and ``choices``
    when the estimator is made (:meth:`__check_init__`), so the configuration, a
    ``gradcheck`` SPEC and a direct construction refuse the same values with the same
    words.
    """

    def __check_init__(self):
        """Check every ``setting()`` field against its ``bounds`` and ``choices``.

        **Raises:** :class:`~eqprop.settings.SettingError` naming the key (e.g.
        ``beta``: ``must be > 0, got -0.1``), the message the configuration gives.
        """
        check_settings(self)

    @property
    def name(self) -> str:
        """The name under which this estimator's class is registered."""
        return getattr(type(self), "registered_name", type(self).__name__)

    def needs_complex(self) -> bool:
        """Whether this estimator relaxes complex states (needs a holomorphic model)."""
        return False

    @classmethod
    def at_fixed_point(cls) -> bool:
        """Whether this estimator estimates the recurrent network's gradient at its free
        fixed point, where a model it trains predicts (the default :meth:`inference`);
        ``False`` for one that differentiates another map of the same parameters (``bp``:
        the forward pass), which has no relaxation to report and nothing for
        :func:`eqprop.gradcheck.gradcheck` to compare with."""
        return cls.inference is Estimator.inference

    @abc.abstractmethod
    def __call__(
        self, model: EquilibriumModel, x: Array, y: Array, free: FreePhase, key: Array
    ) -> tuple[PyTree, Estimate]:
        """Gradient of the mean loss (or its estimate) and diagnostics.

        **Arguments:** ``model``; ``x``: inputs ``(B, ...)``; ``y``: labels ``(B,)``;
        ``free``: the free phase of ``(model, x)``; ``key``: a PRNG key.

        **Returns:** a gradient pytree shaped like ``model`` (``None`` where a leaf is
        not trainable) and an :class:`Estimate`.
        """

    def check(self, model: EquilibriumModel) -> None:
        """Raise ``ValueError`` if this estimator cannot run on ``model``: one of its
        solvers (``nudged``, ``free``) cannot relax it
        (:meth:`~eqprop.solvers.FixedPointSolver.check`), or it needs complex nudges and
        the model is not holomorphic. Subclasses add their own conditions."""
        for solver in (getattr(self, "nudged", None), getattr(self, "free", None)):
            if solver is not None:
                solver.check(model)
        if self.needs_complex() and not model.holomorphic:
            how = ("dynamics without the clip to a box (for a directed network, model.dynamics = "
                   "'rate')" if isinstance(model, BoxProjectedModel)
                   else "a holomorphic activation (sigmoid4, dsilu, tanh)")
            raise ValueError(
                f"estimator {self.name!r} needs complex nudges, but {type(model).__name__} is not "
                f"holomorphic (it rejects complex states); use {how} or real nudges (ep, points 1 "
                "or 2)"
            )

    def inference(self, model: EquilibriumModel, x: Array, solver: FixedPointSolver,
                  u0: PyTree | None = None, warm: Array | None = None) -> FreePhase:
        """The state this estimator's gradient is taken at, from which a model it trains
        predicts: the train step reads the batch's loss and accuracy there and hands it to
        :meth:`__call__`, and evaluation reads the model's predictions there. The free
        fixed point (:func:`free_phase`) for every estimate of the recurrent network's
        gradient; an estimator that trains another map of the same parameters (``bp``:
        the forward pass) overrides it, and :func:`eqprop.gradcheck.gradcheck` refuses it.

        **Arguments:** as :func:`free_phase`. **Returns:** a :class:`FreePhase`.
        """
        return free_phase(model, x, solver, u0, warm)


def check_settings(component: Any) -> None:
    """Check the ``setting()`` fields of ``component`` against their declared ``bounds``
    (numbers) and ``choices`` (strings): the one place where an estimator's values are
    validated, whether it comes from ``[estimator]``, a SPEC or Python.

    **Arguments:** ``component``: an instance of a class with ``setting()`` fields.

    **Raises:** :class:`~eqprop.settings.SettingError` with the key and the words of the
    configuration's messages (``must be > 0, got -0.5``; ``must be one of 'a', 'b', got
    'c'``).
    """
    for s in settings_of(type(component)):
        value, spec = getattr(component, s.name), s.spec
        if value is None and spec.optional:
            continue
        if spec.bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if value not in spec.bounds:
                raise SettingError(s.key, f"must be {spec.bounds}, got {value}")
        choices = spec.allowed_choices()
        if choices is not None and isinstance(value, str) and value not in choices:
            raise SettingError(s.key, "must be one of " + ", ".join(repr(c) for c in choices)
                               + f", got {value!r}")


def free_phase(
    model: EquilibriumModel, x: Array, solver: FixedPointSolver, u0: PyTree | None = None,
    warm: Array | None = None,
) -> FreePhase:
    """Relax the free phase (no nudge) with ``solver`` from ``u0`` (default: the model's
    initial state).

    **Arguments:** ``model``; ``x``: inputs ``(B, ...)``; ``solver``: the free phase's
    :class:`~eqprop.solvers.FixedPointSolver` (or a
    :class:`~eqprop.solvers.PhaseSolvers`, whose ``free`` is used); ``u0``: a state
    (leaves ``(B, ...)``); ``warm`` (``(B,)`` booleans, with ``u0``): example ``i``
    starts from ``u0`` where ``warm[i]`` and from the model's initial state otherwise
    (warm starts from persistent states, some of which do not exist yet).

    **Returns:** the :class:`FreePhase` (fixed point, hoisted drive, stats).

    **Raises:** ``ValueError`` when ``solver`` cannot relax ``model`` (alternating
    updates of a non-bipartite network).
    """
    if isinstance(solver, PhaseSolvers):
        solver = solver.free
    drive = model.prepare(x)
    if u0 is None:
        u0 = model.init_state(drive)
    elif warm is not None:
        cold = model.init_state(drive)
        u0 = jax.tree.map(lambda w, c: jnp.where(warm.reshape(warm.shape + (1,) * (c.ndim - 1)),
                                                 w.astype(c.dtype), c), u0, cold)
    field_on = None
    if solver.update == "alternating":
        field_on = lambda u, group: model.field_on(u, drive, group)  # noqa: E731
    u, stats = solver.relax(model, lambda u: model.field(u, drive), u0, field_on=field_on)
    return FreePhase(u=u, drive=drive, stats=stats)


def nudged_field_on(model: EquilibriumModel, drive: PyTree, y: Array, beta: Array):
    """The nudged field on one group of populations, for alternating updates of a
    nudged phase: ``(u, group) -> F|_group(u)``, plus ``beta * dl/da_out`` when the output
    population is in ``group``.

    **Arguments:** ``model``: a :class:`~eqprop.network.BipartiteModel`; ``drive``:
    ``model.prepare(x)``; ``y``: labels ``(B,)``; ``beta``: the nudge, a real or complex
    scalar.

    **Returns:** the function ``(u, group) -> {p: (B, ...)}`` over ``group``.
    """

    def field_on(u, group):
        f = model.field_on(u, drive, group)
        if model.output in group:
            n = model.readout.loss_grad(model.output_activity(model.activity(u)), y)
            f = {**f, model.output: f[model.output] + beta * n}
        return f

    return field_on


def _add_opt(s, t):
    if s is None:
        return t
    if t is None:
        return s
    return s + t


def add_grads(a: PyTree, b: PyTree) -> PyTree:
    """Sum two model-shaped gradient pytrees whose leaves may be ``None`` (``None + t = t``)."""
    return jax.tree.map(_add_opt, a, b, is_leaf=lambda z: z is None)


def field_vjp(model: EquilibriumModel, x: Array, u: PyTree, v: PyTree) -> PyTree:
    """The vector-Jacobian product ``(dF/dtheta)^T v`` at state ``u``, summed over the
    batch (the drive ``model.prepare(x)`` is differentiated too).

    For a dense projection it is the local outer product of presynaptic activity and
    ``v`` (arXiv 2309.02214).

    **Arguments:** ``model``; ``x``: inputs ``(B, ...)``; ``u``: a state, leaves
    ``(B, ...)``; ``v``: a pytree like ``u`` (same dtype as ``F``).

    **Returns:** a model-shaped pytree of the trainable leaves (``None`` elsewhere).
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def f(p):
        m = eqx.combine(p, static)
        return m.field(u, m.prepare(x))

    _, pullback = jax.vjp(f, params)
    (g,) = pullback(v)
    return g


def readout_grad(model: EquilibriumModel, a: PyTree, y: Array) -> PyTree:
    """Direct gradient of the batch-mean loss at fixed activity ``a`` (leaves
    ``(B, ...)``; labels ``y`` ``(B,)``): nonzero for the readout's parameters only.
    Returns a model-shaped pytree (zeros for the other trainable leaves, ``None`` for
    the non-trainable ones)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    return jax.grad(lambda p: jnp.mean(eqx.combine(p, static).loss(a, y)))(params)


def assemble(model: EquilibriumModel, x: Array, y: Array, u: PyTree, v: PyTree) -> PyTree:
    """The generalized-EP gradient ``(dF/dtheta)^T Re(v) / B + readout gradient`` at ``u``
    (Laborieux and Zenke 2024, arXiv 2309.02214).

    **Arguments:** ``model``; ``x``: inputs ``(B, ...)``; ``y``: labels ``(B,)``; ``u``:
    the state where it is taken (the free fixed point), leaves ``(B, ...)``; ``v``: the
    error vector in activity space, leaves ``(B, ...)`` (real or complex: its real part
    is used).

    **Returns:** a model-shaped gradient of the batch-mean loss (``None`` where a leaf is
    not trainable).
    """
    batch = x.shape[0]
    v = jax.tree.map(lambda t: jnp.real(t) / batch, v)
    return add_grads(field_vjp(model, x, u, v), readout_grad(model, model.activity(u), y))


def nudged_field(model: EquilibriumModel, drive: PyTree, y: Array, beta: Array):
    """The field of a phase nudged with ``beta``: ``u -> F(u) + beta * dl/da``, with
    ``dl/da`` from :meth:`~eqprop.network.EquilibriumModel.nudge` (nonzero on the output).

    **Arguments:** ``model``; ``drive``: ``model.prepare(x)``; ``y``: labels ``(B,)``;
    ``beta``: a real or complex scalar (complex needs complex states).

    **Returns:** the function ``u -> F`` on states with leaves ``(B, ...)``.
    """

    def field(u):
        f = model.field(u, drive)
        n = model.nudge(model.activity(u), y)
        return jax.tree.map(lambda fi, ni: fi + beta * ni, f, n)

    return field
