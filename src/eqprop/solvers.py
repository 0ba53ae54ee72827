"""Fixed-point solvers: frozen modules whose fields are their settings.

A solver finds the fixed point of a model's step map ``u <- project(u + dt F(u))``
(:mod:`eqprop.relax`). The free phase, the nudged phases and BPTT's unrolled
relaxation all take a solver object; a new solver is one subclass of
:class:`FixedPointSolver` plus ``@SOLVERS.register(name)``, and its extra fields
declared with :func:`eqprop.settings.setting` become ``[dynamics]`` keys.

Shared settings (every solver):

- ``steps``: budget of updates (group updates for alternating sweeps);
- ``dt``: step size of the step map, in units of the relaxation time;
- ``tol``: stop once every example's residual ``||F(u)||`` is below it (``0``: run the
  whole budget); ``tol_fraction = q > 0``: once at most a fraction ``q`` is above it;
- ``check_every``: test the tolerance every ``k`` sweeps (plain iteration);
- ``bound``: a state with ``|u| > bound`` counts as diverged, like a NaN (every solver:
  the guards of :mod:`eqprop.guards`);
- ``update``: ``"synchronous"`` (every population at once) or ``"alternating"`` (the two
  groups of a bipartite model in turn: same fixed points, half the work per step).

References: Anderson acceleration, Walker and Ni, SIAM J. Numer. Anal. 49 (2011).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import equinox as eqx

from .anderson import anderson
from .network.base import BipartiteModel, EquilibriumModel
from .registry import SOLVERS
from .guards import RelaxStats
from .linear import DampedThenGMRES
from .relax import relax
from .settings import NONNEGATIVE, Bounds, setting

PyTree = Any
Field = Callable[[PyTree], PyTree]
FieldOn = Callable[[PyTree, tuple[str, ...]], PyTree]

__all__ = ["FixedPointSolver", "FixedPoint", "Anderson", "PhaseSolvers", "UPDATES", "anderson", "settle",
           "can_alternate",
           "SETTLE_FACTOR", "SETTLE_MIN_STEPS", "SETTLE_TOL"]

UPDATES = ("synchronous", "alternating")


class FixedPointSolver(eqx.Module):
    """Abstract fixed-point solver (static settings only: a valid jit argument).

    Subclasses implement :meth:`solve`; :meth:`relax` builds the step map of a model
    (its field, its projection, its groups for alternating updates) and calls it.
    The fields are the shared settings of the module doc (``steps``, ``dt`` in units of
    the relaxation time, ``tol``, ``tol_fraction``, ``check_every``, ``unroll`` (sweeps
    per iteration of the fixed-budget loop; 0: 2-4 chosen from the budget), ``bound``,
    ``update``).

    **Raises:** ``ValueError`` at construction when ``steps < 1``, ``check_every < 1``,
    ``unroll < 0`` or ``update`` is not ``"synchronous"`` or ``"alternating"``.
    """

    steps: int = eqx.field(static=True, default=150)
    dt: float = eqx.field(static=True, default=1.0)
    tol: float = eqx.field(static=True, default=0.0)
    tol_fraction: float = eqx.field(static=True, default=0.0)
    check_every: int = eqx.field(static=True, default=1)
    unroll: int = eqx.field(static=True, default=0)
    bound: float = eqx.field(static=True, default=float("inf"))
    update: str = eqx.field(static=True, default="synchronous")

    def __check_init__(self):
        if self.steps < 1:
            raise ValueError(f"solver steps must be >= 1, got {self.steps}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        if self.unroll < 0:
            raise ValueError(f"unroll must be >= 0, got {self.unroll}")
        if self.update not in UPDATES:
            raise ValueError(f"update must be 'synchronous' or 'alternating', got {self.update!r}")

    def check(self, model: EquilibriumModel) -> None:
        """Raise ``ValueError`` when this solver cannot relax ``model``: a step ``dt`` the
        model refuses (:meth:`~eqprop.network.EquilibriumModel.check_step`), or
        alternating updates of a model that is not a :class:`~eqprop.network.BipartiteModel`
        or whose ``partition()`` is ``None``."""
        model.check_step(self.dt)
        if self.update == "alternating" and (not isinstance(model, BipartiteModel)
                                             or model.partition() is None):
            own = type(model).__module__.startswith("eqprop.")  # else a plugin's: say what to add
            what = (f"{type(model).__name__} is not a BipartiteModel"
                    + ("" if own else " (implement partition(): docs/extending.md)")
                    if not isinstance(model, BipartiteModel) else
                    f"{type(model).__name__}.partition() is None for this network")
            raise ValueError("dynamics.update = 'alternating' needs a bipartite network (no coupling "
                             f"inside either half, e.g. a layered network without skips): {what}")

    @abc.abstractmethod
    def solve(self, field: Field, u0: PyTree, *, batch_ndim: int = 1,
              groups: tuple[tuple[str, ...], ...] | None = None, field_on: FieldOn | None = None,
              project: Callable[[PyTree], PyTree] | None = None) -> tuple[PyTree, RelaxStats]:
        """Find ``u`` with ``field(u) = 0`` from ``u0``.

        **Arguments:** ``field``: ``u -> F(u)``; ``u0``: initial state, leaves
        ``(B, ...)`` (``batch_ndim = 1``) or ``(P, B, ...)`` for ``P`` phases stacked on a
        leading axis (``batch_ndim = 2``); ``groups``, ``field_on``: the alternating
        sweep (``update = "alternating"``); ``project``: the model's projection.

        **Returns:** the final state and its :class:`~eqprop.relax.RelaxStats`
        (``residual`` per example, ``(B,)`` or ``(P, B)``).
        """

    def relax(self, model: EquilibriumModel, field: Field, u0: PyTree, *, batch_ndim: int = 1,
              field_on: FieldOn | None = None) -> tuple[PyTree, RelaxStats]:
        """Relax ``model``'s states under ``field`` (the free field, or a nudged one).

        **Arguments:** ``model``: supplies the projection and, for alternating updates,
        the groups (``model.partition()``); ``field``: ``u -> F(u)``; ``u0``: initial
        state, leaves ``(B, ...)`` or ``(P, B, ...)`` with ``batch_ndim = 2``;
        ``field_on``: ``(u, group) -> F`` on one group of populations, required with
        ``update = "alternating"`` (there is no default: ``model.field_on`` cannot know a
        nudge, so the caller passes the field it relaxes).

        **Returns:** as :meth:`solve`.

        **Raises:** ``ValueError`` as :meth:`check`, or for alternating updates without
        ``field_on``.
        """
        groups = None
        if self.update == "alternating":
            self.check(model)
            groups = model.partition()
            if field_on is None:
                raise ValueError("alternating updates need field_on")
        return self.solve(field, u0, batch_ndim=batch_ndim, groups=groups, field_on=field_on,
                          project=model.projector())


@SOLVERS.register("fixed-point")
class FixedPoint(FixedPointSolver):
    """The plain iteration of the step map (:func:`eqprop.relax.relax`).

    ``u <- project(u + dt F(u))``, with every shared setting.
    """

    def solve(self, field, u0, *, batch_ndim=1, groups=None, field_on=None, project=None):
        """:func:`eqprop.relax.relax` with these settings (contract of
        :meth:`FixedPointSolver.solve`)."""
        return relax(field, u0, dt=self.dt, steps=self.steps, tol=self.tol,
                     tol_fraction=self.tol_fraction, batch_ndim=batch_ndim, bound=self.bound,
                     groups=groups, field_on=field_on, check_every=self.check_every,
                     project=project, unroll=self.unroll)


@SOLVERS.register("anderson")
class Anderson(FixedPointSolver):
    """Anderson acceleration of the step map (type II, safeguarded; :mod:`eqprop.anderson`).

    ``steps`` counts map evaluations as the plain iteration counts its steps. The first
    ``delay`` steps run the plain iteration (the transient, where extrapolation
    misleads); then each step extrapolates from the last ``memory`` differences, mixed
    with ``damping`` (Walker and Ni 2011). ``safeguard``: fall back, per example, to the
    plain step when a candidate raises the residual or leaves ``bound``; a plain step
    beyond ``bound`` (or not finite) stops the solve as diverged, as in :class:`FixedPoint`.
    With ``delay >= steps`` the whole budget is the plain iteration, and its stats are
    reported as :class:`FixedPoint` reports them.

    **Raises:** ``ValueError`` from :func:`eqprop.anderson.anderson` (at the first
    solve) when ``memory < 0`` or ``damping`` is not in ``(0, 1]``.
    """

    memory: int = setting(5, "History length of Anderson acceleration (solver = 'anderson').",
                          bounds=NONNEGATIVE, key="anderson_memory")
    damping: float = setting(1.0, "Anderson mixing parameter in (0, 1].",
                             bounds=Bounds(lo=0, hi=1, lo_open=True), key="anderson_damping")
    delay: int = setting(0, "Plain steps before Anderson starts (counted like free_steps): skips "
                         "the initial transient.", bounds=NONNEGATIVE, key="anderson_delay")
    safeguard: bool = eqx.field(static=True, default=True)

    def solve(self, field, u0, *, batch_ndim=1, groups=None, field_on=None, project=None):
        """:func:`eqprop.anderson.anderson` with these settings (contract of
        :meth:`FixedPointSolver.solve`)."""
        return anderson(field, u0, steps=self.steps, tol=self.tol, tol_fraction=self.tol_fraction,
                        memory=self.memory, damping=self.damping, dt=self.dt,
                        batch_ndim=batch_ndim, safeguard=self.safeguard, delay=self.delay,
                        groups=groups, field_on=field_on, check_every=self.check_every,
                        project=project, bound=self.bound)


class PhaseSolvers(eqx.Module):
    """The solvers of every phase of one estimate, as the trainer and the CLI wire them.

    ``free``: the free phase; ``nudged``: the nudged phases; ``linear``: the exact
    estimators' linear solves (a Lineax solver; ``None``: the estimator's default,
    :class:`~eqprop.linear.DampedThenGMRES`, in the free solver's ``update`` order, so that
    it sweeps where the relaxation does); ``converged_tol``: the exact
    estimators leave out examples whose free-phase residual exceeds it (``0``: none).
    :func:`eqprop.build.phase_solvers` builds one from ``[dynamics]`` settings.
    """

    free: FixedPointSolver = eqx.field(static=True, default=FixedPoint())
    nudged: FixedPointSolver = eqx.field(static=True, default=FixedPoint(steps=20))
    linear: Any = eqx.field(static=True, default=None)
    converged_tol: float = eqx.field(static=True, default=0.0)

    def wiring(self, cls: type) -> dict[str, Any]:
        """The keyword arguments among ``free``, ``nudged``, ``linear``, ``converged_tol``
        that the estimator class ``cls`` declares as fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        linear = self.linear
        if linear is None and self.free.update != "synchronous":
            linear = DampedThenGMRES(update=self.free.update)
        given = {"free": self.free, "nudged": self.nudged, "linear": linear,
                 "converged_tol": self.converged_tol}
        return {k: v for k, v in given.items() if k in names and v is not None}


SETTLE_FACTOR = 10
"""The settled reference's budget, in free budgets (:func:`settle`), and at least
:data:`SETTLE_MIN_STEPS` updates."""

SETTLE_MIN_STEPS = 1000

SETTLE_TOL = 1e-6
"""The residual ``||F(u)||`` at which the settled reference stops (every example)."""


def can_alternate(model: EquilibriumModel) -> bool:
    """Whether ``model`` can be relaxed with ``update = "alternating"``: a
    :class:`~eqprop.network.BipartiteModel` with a partition."""
    return isinstance(model, BipartiteModel) and model.partition() is not None


def settle(solver: FixedPointSolver, steps: int | None = None) -> FixedPointSolver:
    """``solver`` with a budget of ``steps`` updates (default: :data:`SETTLE_FACTOR` times
    its own, at least :data:`SETTLE_MIN_STEPS`), stopping once every example's residual
    is below :data:`SETTLE_TOL` (its ``tol_fraction`` off: no straggler is left behind).
    Started from an unsettled free state, it takes the batch to the fixed point the
    exact references are defined at, by the same iteration (the same ``update``, the
    same Anderson settings)."""
    if steps is None:
        steps = max(SETTLE_FACTOR * solver.steps, SETTLE_MIN_STEPS)
    return dataclasses.replace(solver, steps=steps, tol=SETTLE_TOL, tol_fraction=0.0)
