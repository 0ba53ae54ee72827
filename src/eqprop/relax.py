"""Relaxation loops: iterate the step map ``u <- P(u + dt * F(u))`` to a fixed point.

The loop engines behind the solver objects of :mod:`eqprop.solvers`. The step map is
written once (:func:`euler_step`, :func:`sweep_map`); ``P`` is the model's projection
hook (:meth:`eqprop.network.EquilibriumModel.project`, the identity unless the model's
states live in a bounded set). Every leaf of the state has the batch on axis 0 (or
``(P, B)`` for phases stacked on a leading axis, ``batch_ndim = 2``). States may be real
or complex. All loops are ``lax.while_loop`` / ``lax.fori_loop``. Their guards (bound,
non-finite states, tolerance) and their :class:`RelaxStats` come from
:mod:`eqprop.guards`, which every solver shares (``RelaxStats``, ``residual_norm``,
``nonfinite_populations``, ``stop_test`` and ``NONCONVERGED_TOL`` are re-exported here).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array

from .guards import (NONCONVERGED_TOL, Guards, RelaxStats, nonfinite_populations, residual_norm,
                     stop_test)

PyTree = Any
Projection = Callable[[PyTree], PyTree] | None

__all__ = ["RelaxStats", "relax", "residual_norm", "nonfinite_populations", "sweep_map",
           "euler_step", "projected_field", "stop_test", "NONCONVERGED_TOL"]


def relax(
    field: Callable[[PyTree], PyTree],
    u0: PyTree,
    *,
    dt: float,
    steps: int,
    tol: float | Array = 0.0,
    tol_fraction: float = 0.0,
    batch_ndim: int = 1,
    bound: float = jnp.inf,
    groups: tuple[tuple[str, ...], ...] | None = None,
    field_on: Callable[[PyTree, tuple[str, ...]], PyTree] | None = None,
    check_every: int = 1,
    project: Projection = None,
    unroll: int = 0,
) -> tuple[PyTree, RelaxStats]:
    """Iterate ``u <- project(u + dt * field(u))`` from ``u0``.

    Stops after ``steps`` steps, when every example's residual is below ``tol``
    (a positive float or a traced scalar; ``0`` disables the check), or at the first
    non-finite state. The tolerance is tested on the residual of the state a step was
    taken from, so the returned state is one step past it.
    ``tol_fraction = q > 0`` stops instead once at most a fraction ``q`` of the examples
    is above ``tol``: a few slowly converging examples (stragglers) then no longer keep
    the whole batch iterating; they leave with their state at that step.
    ``batch_ndim = 2`` relaxes phases stacked on a leading axis in one loop (leaves
    ``(P, B, ...)``; ``field`` handles the stack): the loop condition stays a scalar,
    which is cheaper than ``vmap`` over the loop. A state beyond ``bound`` in absolute
    value counts as diverged, like a NaN.

    Alternating updates: with ``groups`` (populations with no coupling inside a group)
    and ``field_on(u, group)`` (the field on one group), each step updates one group
    from the latest state of the others (Gauss-Seidel). For a bipartite network and
    ``dt = 1`` this follows one of the two decoupled copies that the synchronous
    iteration runs side by side, at half the work per step; the fixed points are the
    same. ``steps`` then counts group updates (rounded up to whole sweeps).

    ``check_every = k`` (with ``tol > 0``) tests the tolerance and divergence once every
    ``k`` sweeps instead of after each: the loop body is ``k`` sweeps (unrolled) followed
    by one residual and one finiteness reduction, which saves their cost per step (and
    the loop's) at up to ``k - 1`` extra sweeps past convergence; ``nonfinite_step``
    is then the step at which divergence was detected (at most ``k`` sweeps late).
    ``k = 1`` is the exact per-step test.

    **Arguments:**

    - ``field``: ``u -> F(u)``, a pytree like ``u``;
    - ``u0``: the initial state, leaves ``(B, ...)`` or ``(P, B, ...)``, real or complex;
    - ``dt``: step size, in units of the relaxation time (``dt = 1``: ``u <- h(a)``);
    - ``steps``: budget of updates;
    - ``tol``, ``tol_fraction``, ``batch_ndim``, ``bound``, ``groups``, ``field_on``,
      ``check_every``: as above;
    - ``project``: the model's projection after each update (``None``: none);
    - ``unroll``: sweeps per iteration of the fixed-budget loop (``tol = 0``; ``0``: 4,
      3 or 2, whichever divides the budget). The result does not depend on it; a GPU
      pays a host round trip per loop iteration, which it divides.

    **Returns:** the final state (like ``u0``) and its :class:`RelaxStats`, whose
    ``residual`` (``(B,)`` or ``(P, B)``) costs one more ``field`` evaluation at it.

    **Raises:** ``ValueError`` when ``check_every < 1`` or ``groups`` is given without
    ``field_on``.
    """
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    guards = Guards(tol=tol, tol_fraction=tol_fraction, bound=bound, batch_ndim=batch_ndim)
    step, per_sweep = sweep_map(field, dt, groups, field_on, project)
    sweeps = -(-steps // per_sweep)

    if guards.checks_residual:
        chunks, rest = divmod(sweeps, check_every)

        def run(n):  # n sweeps (static), then the tests
            def body(carry):
                i, u, _, _ = carry
                for _ in range(n):
                    f, u = step(u)
                busy = guards.keep_going(residual_norm(f, batch_ndim))
                return i + n * per_sweep, u, busy, guards.within(u)
            return body

        def cond(carry):
            i, _, busy, ok = carry
            return (i < chunks * check_every * per_sweep) & ok & busy

        carry = (jnp.asarray(0), u0, jnp.asarray(True), guards.within(u0))
        carry = jax.lax.while_loop(cond, run(check_every), carry)
        if rest:  # the budget's last, shorter chunk
            carry = jax.lax.cond(carry[2] & carry[3], run(rest), lambda c: c, carry)
        i, u, _, ok = carry
        nonfinite_step = jnp.where(ok, -1, i)
    else:
        # fixed budget: a fori_loop (unrolled a little) that records the
        # first non-finite step; NaNs propagate, so nothing is lost by not stopping early.
        def fixed_body(t, carry):
            u, bad = carry
            _, u = step(u)
            bad = jnp.where((bad < 0) & ~guards.within(u), (t + 1) * per_sweep, bad)
            return u, bad

        u, nonfinite_step = jax.lax.fori_loop(
            0, sweeps, fixed_body, (u0, jnp.where(guards.within(u0), -1, 0)), unroll=unroll or _unroll(sweeps))
        i = jnp.where(nonfinite_step < 0, sweeps * per_sweep, nonfinite_step)
    return u, guards.report(projected_field(field, dt, project), u, i, nonfinite_step)


def euler_step(u: PyTree, f: PyTree, dt: float, project: Projection = None) -> PyTree:
    """The step map ``project(u + dt * f)`` (forward Euler of ``du/dt = F(u)``).

    ``f`` may hold a subset of ``u``'s populations (one group of an alternating sweep):
    then only those are updated (and projected); the others are returned unchanged.
    ``project`` acts population-wise (it is called on the updated populations only).

    **Arguments:** ``u``: a state, leaves ``(B, ...)`` or ``(P, B, ...)``; ``f``: the
    field, like ``u`` or a dict over a subset of its populations; ``dt``: step size in
    units of the relaxation time; ``project``: the model's projection, or ``None``.

    **Returns:** the next state, like ``u``.
    """
    if isinstance(u, dict) and isinstance(f, dict) and f.keys() != u.keys():
        new = {p: u[p] + dt * f[p] for p in f}
        return {**u, **(project(new) if project is not None else new)}
    new = jax.tree.map(lambda v, g: v + dt * g, u, f)
    return project(new) if project is not None else new


def sweep_map(
    field: Callable[[PyTree], PyTree],
    dt: float,
    groups: tuple[tuple[str, ...], ...] | None = None,
    field_on: Callable[[PyTree, tuple[str, ...]], PyTree] | None = None,
    project: Projection = None,
) -> tuple[Callable[[PyTree], tuple[PyTree, PyTree]], int]:
    """One step of the iteration: ``u -> (f, u')`` and the group updates it counts.

    Synchronous (``groups=None``): ``f = field(u)``, ``u' = euler_step(u, f)``, one update.
    Alternating: one sweep over ``groups``, each updated from the latest state of the
    others; ``f`` collects each group's field at the moment it was updated (zero at a
    fixed point, and ``||f||`` is the residual the tolerance tests), ``len(groups)``
    updates.

    **Arguments:** ``field``: ``u -> F(u)``; ``dt``: step size in units of the
    relaxation time; ``groups``: tuples of population names, or ``None``; ``field_on``:
    ``(u, group) -> {p: F_p(u) for p in group}``; ``project``: the model's projection.

    **Returns:** ``(step, per_sweep)``: the function ``u -> (f, u')`` and the number of
    updates one call counts (1, or ``len(groups)``).

    **Raises:** ``ValueError`` when ``groups`` is given without ``field_on``.
    """
    if groups is None:
        def step(u):
            f = field(u)
            nxt = euler_step(u, f, dt, project)
            return (f if project is None else _step_rate(nxt, u, dt)), nxt
        return step, 1
    if field_on is None:
        raise ValueError("alternating updates need field_on (the field on one group)")

    def sweep(u):
        f = {}
        for group in groups:
            fg = field_on(u, group)
            nxt = euler_step(u, {p: fg[p] for p in group}, dt, project)
            f.update(fg if project is None else {p: (nxt[p] - u[p]) / dt for p in group})
            u = nxt
        return f, u
    return sweep, len(groups)


def _step_rate(nxt: PyTree, u: PyTree, dt: float) -> PyTree:
    return jax.tree.map(lambda a, b: (a - b) / dt, nxt, u)


def projected_field(field: Callable[[PyTree], PyTree], dt: float, project: Projection = None
                    ) -> Callable[[PyTree], PyTree]:
    """The field whose zeros are the fixed points of the projected step, and whose norm
    is the residual every solver reports: ``G(u) = (P(u + dt F(u)) - u) / dt`` (the natural
    residual of a projected dynamical system; Nagurney and Zhang 1996). At a state on the
    boundary of the model's state set where ``F`` points outward, ``F != 0`` but ``G = 0``.
    Without a projection, ``field`` itself (``G = F``).

    **Arguments:** ``field``: ``u -> F(u)``; ``dt``: the step; ``project``: the model's
    projection or ``None``.

    **Returns:** ``u -> G(u)``, like ``u``.
    """
    if project is None:
        return field
    return lambda u: _step_rate(euler_step(u, field(u), dt, project), u, dt)


def _unroll(steps: int) -> int:
    for k in (4, 3, 2):
        if steps % k == 0:
            return k
    return 1
