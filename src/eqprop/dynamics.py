"""The relaxation settings, shared by the library and the configuration (no JAX here).

:class:`Dynamics` is at once the ``[dynamics]`` section of a configuration
(``eqprop.config.DynamicsConfig`` is this class) and the static argument of the solvers
and estimators, so the two can never disagree on a key or a default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dynamics:
    """Settings of the relaxations (static, hashable).

    ``tol = 0`` runs the full step budget; ``tol > 0`` stops once every example's
    residual ``||F(u)||`` is below it (with ``tol_fraction = q > 0``: once all but a
    fraction ``q`` of the batch is; free phase only). ``linear_*`` configure the linear
    solves of the exact estimators: ``"auto"`` (the damped linearised relaxation, cheap, falling back
    to Lineax's restarted GMRES when it does not converge), ``"gmres"`` or
    ``"fixed-point"`` alone. ``solver`` finds the free fixed
    point: ``"fixed-point"`` (the plain iteration) or ``"anderson"`` (Anderson
    acceleration, :mod:`eqprop.solvers`, of the synchronous step or of the alternating
    sweep, after ``anderson_delay`` plain steps; ``free_steps`` counts as for the plain
    iteration).
    ``state_bound``: a state with ``|u| > state_bound`` counts as diverged (exploding),
    like a NaN. ``converged_tol > 0``: the exact estimators (exact nudge, implicit), whose
    formulas hold only at a fixed point, leave out examples whose free-phase residual
    exceeds it. ``update = "alternating"``: the iteration updates the two halves of a
    bipartite network in turn (see :func:`relax`), half the work per step.
    ``warm_start``: the trainer starts each training example's free phase from its
    fixed point at the previous epoch (persistent states; the solvers ignore it).
    ``check_every = k``: with ``tol > 0`` the plain iteration (free phase, Anderson's
    delay, nudged phases) tests the tolerance and divergence every ``k`` sweeps instead
    of after each (see :func:`eqprop.relax.relax`).
    """

    dt: float = 1.0
    free_steps: int = 150
    nudged_steps: int = 20
    tol: float = 0.0
    tol_fraction: float = 0.0
    solver: str = "fixed-point"
    linear_steps: int = 1000
    linear_tol: float = 1e-5
    linear_solver: str = "auto"
    state_bound: float = 1e6
    converged_tol: float = 0.0
    update: str = "synchronous"
    anderson_memory: int = 5
    anderson_damping: float = 1.0
    anderson_delay: int = 0
    warm_start: bool = False
    check_every: int = 1
