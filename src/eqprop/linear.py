"""Linear solvers of the exact estimators, as Lineax ``AbstractLinearSolver`` objects.

The exact nudge and implicit differentiation solve ``J w = b`` at the free fixed point,
with ``J = dF/du`` (or ``J^T``) given matrix-free by JVPs or VJPs, one independent
system per example (leaves ``(B, ...)``). :func:`solve_linear` runs any Lineax solver on
such a system and reports :class:`~eqprop.relax.RelaxStats` like a relaxation.

- :class:`DampedIteration`: the linearised relaxation ``w <- w + dt (J w - b)``. It
  converges exactly when the relaxation contracts and costs one JVP per step; it stops
  once every example's residual is below ``rtol * max_examples ||b||``. With ``update =
  "alternating"`` it sweeps the model's groups in turn (block Gauss-Seidel), as the
  alternating relaxation does: it then converges where that sweep contracts, also where
  the synchronous iteration cannot (a trained conv net: docs/conv.md).
- :class:`DampedThenGMRES` (``"auto"``): the damped iteration, falling back (only when
  needed, also under ``vmap``: see :func:`only_if`) to Lineax's restarted GMRES, which needs only a nonsingular ``J``,
  where it did not converge. Training drives networks toward the edge of contraction,
  where the damped iteration alone returned exploding gradients.
- ``"gmres"``: :class:`GMRES`, Lineax's restarted GMRES on the whole batch.

Each registers in :data:`eqprop.registry.LINEAR_SOLVERS` and is built from
``[dynamics] linear_solver``, ``linear_steps``, ``linear_tol`` and ``dt``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .registry import LINEAR_SOLVERS
from .guards import Guards, RelaxStats, residual_norm
from .relax import relax

PyTree = Any

__all__ = ["DampedIteration", "DampedThenGMRES", "GMRES", "solve_linear", "make_linear_solver",
           "linear_solver_name"]


class _Solver(lx.AbstractLinearSolver):
    """Shared plumbing: the state is the operator; transposes and conjugates with it."""

    def init(self, operator, options):
        return operator

    def transpose(self, state, options):
        return state.transpose(), options

    def conj(self, state, options):
        return lx.conj(state), options

    def assume_full_rank(self):
        return True

    # lineax < 0.1 names
    def allow_dependent_columns(self, operator):  # pragma: no cover - version shim
        return False

    def allow_dependent_rows(self, operator):  # pragma: no cover - version shim
        return False


@LINEAR_SOLVERS.register("fixed-point")
class DampedIteration(_Solver):
    """The damped linearised relaxation ``w <- w + dt (A w - b)`` from ``w = 0``.

    For ``A = J = dF/du`` at a fixed point this is the relaxation's own linearisation: it
    converges exactly when ``I + dt J`` contracts, at one matrix-vector product per step.

    **Fields:** ``dt``: the relaxation's step size, in units of the relaxation time;
    ``rtol``: stop once every example's ``||A w - b||`` is below ``rtol * max_i ||b_i||``
    (``0``: run all ``max_steps``; the result then counts as converged only if its
    residual is below ``1e-30``);
    ``max_steps``: budget of steps (group updates when alternating, as the relaxation's);
    ``update``: ``"synchronous"`` (every population at once) or ``"alternating"``: one
    group of the model's :meth:`~eqprop.network.EquilibriumModel.partition` at a time,
    each from the latest iterate of the others (block Gauss-Seidel; the groups come
    from :func:`solve_linear`'s ``groups``, and without them the iteration is
    synchronous). Its iteration matrix is the Jacobian of the relaxation's alternating
    sweep at the fixed point (``dS/du``, :func:`eqprop.stability.iteration_map`), so
    it converges where ``rho(dS/du) < 1``; on a trained conv net the synchronous one
    has ``rho(I + dt J) > 1`` and cannot.

    Reports ``lx.RESULTS.max_steps_reached`` (no error: ``throw=False`` upstream) when the
    tolerance is not met or the iterate is not finite.
    """

    dt: float = eqx.field(static=True, default=1.0)
    rtol: float = eqx.field(static=True, default=1e-5)
    max_steps: int = eqx.field(static=True, default=1000)
    update: str = eqx.field(static=True, default="synchronous")

    def __check_init__(self):
        _check_update(self.update)

    def compute(self, state, vector, options):
        """Lineax's ``compute``: ``(w, result, {"num_steps": int32})`` for ``state w = vector``
        (``options["groups"]``: the model's groups, used when alternating)."""
        scale = jnp.max(residual_norm(vector))
        tol = self.rtol * scale if self.rtol > 0 else 0.0

        def field(w):
            return jax.tree.map(jnp.subtract, state.mv(w), vector)

        groups = (options or {}).get("groups") if self.update == "alternating" else None
        if groups is not None and not isinstance(vector, dict):
            groups = None
        w, stats = relax(field, jax.tree.map(jnp.zeros_like, vector), dt=self.dt, steps=self.max_steps,
                         tol=tol, groups=groups,
                         field_on=None if groups is None else lambda w, g: _select(field(w), g))
        converged = (jnp.max(stats.residual) <= jnp.maximum(tol, 1e-30) * 1.0001) & (stats.nonfinite_step < 0)
        result = lx.RESULTS.where(converged, lx.RESULTS.successful, lx.RESULTS.max_steps_reached)
        return w, result, {"num_steps": jnp.asarray(stats.steps, jnp.int32)}


@LINEAR_SOLVERS.register("gmres")
class GMRES(_Solver):
    """Lineax's restarted GMRES on the whole batch (one block-diagonal system); needs
    only a nonsingular operator.

    **Fields:** ``rtol``: relative tolerance of ``lx.GMRES`` (over the whole batch's
    residual, ``atol = 0``); ``max_steps``: its budget; ``restart``: Krylov dimension
    before a restart.
    """

    rtol: float = eqx.field(static=True, default=1e-5)
    max_steps: int = eqx.field(static=True, default=1000)
    restart: int = eqx.field(static=True, default=20)

    def _inner(self) -> lx.GMRES:
        return lx.GMRES(rtol=self.rtol, atol=0.0, max_steps=self.max_steps, restart=self.restart)

    def compute(self, state, vector, options):
        """Lineax's ``compute``: ``(w, result, {"num_steps": int32})`` for ``state w = vector``."""
        inner = self._inner()
        w, result, stats = inner.compute(inner.init(state, options), vector, options)
        return w, result, {"num_steps": jnp.asarray(stats["num_steps"], jnp.int32)}


@LINEAR_SOLVERS.register("auto")
class DampedThenGMRES(_Solver):
    """The damped iteration, with a GMRES fallback where it did not converge (the
    ``"auto"`` linear solver).

    **Fields:** ``dt``, ``rtol``, ``max_steps`` as :class:`DampedIteration` (also used by
    the fallback :class:`GMRES`, with ``restart``). GMRES runs on the whole batch when
    any example missed the damped iteration's tolerance.
    """

    dt: float = eqx.field(static=True, default=1.0)
    rtol: float = eqx.field(static=True, default=1e-5)
    max_steps: int = eqx.field(static=True, default=1000)
    restart: int = eqx.field(static=True, default=20)
    update: str = eqx.field(static=True, default="synchronous")

    def __check_init__(self):
        _check_update(self.update)

    def compute(self, state, vector, options):
        """Lineax's ``compute``: the damped iteration's answer if it converged, else GMRES's."""
        damped = DampedIteration(dt=self.dt, rtol=self.rtol, max_steps=self.max_steps, update=self.update)
        w, result, stats = damped.compute(state, vector, options)
        gmres = GMRES(rtol=self.rtol, max_steps=self.max_steps, restart=self.restart)
        return only_if(result != lx.RESULTS.successful,
                       lambda _, state, vector: gmres.compute(state, vector, options),
                       (w, result, stats), state, vector)


def _check_update(update: str) -> None:
    if update not in ("synchronous", "alternating"):
        raise ValueError(f"update must be 'synchronous' or 'alternating', got {update!r}")


def _select(tree: dict, group: tuple[str, ...]) -> dict:
    return {p: tree[p] for p in group}


def only_if(pred, fn: Callable[..., PyTree], operand: PyTree, *args: PyTree) -> PyTree:
    """``fn(operand, *args)`` where ``pred`` holds, else ``operand``; ``fn`` runs only
    when ``pred`` holds for some lane.

    ``lax.cond(pred, fn, ...)`` says the same but is not lazy in two ways, both measured
    on the ``"auto"`` linear solver (which ran GMRES on every call: 440 ms against 7 ms
    for the damped iteration alone, one 50 x 512 system): under ``vmap`` (several seeds
    in one program) a batched ``pred`` turns the cond into a ``select`` that runs both
    branches; and XLA hoists a branch's work that depends only on loop invariants out of
    the enclosing loops. Here the branch is the body of a ``while_loop`` of at most one
    iteration (vmap runs it while any lane's ``pred`` holds and selects per lane), and
    ``args`` reach ``fn`` through a ``select`` on the loop's flag, so nothing of ``fn`` is
    loop-invariant (an ``optimization_barrier`` does not stop XLA's CPU pipeline).

    **Arguments:** ``pred``: scalar bool (batched under vmap); ``fn``:
    ``(operand, *args) -> operand`` (same structure, shapes and dtypes); ``operand``: a
    pytree; ``args``: pytrees ``fn`` reads (its inputs other than ``operand``: pass them
    here rather than closing over them).

    **Returns:** a pytree like ``operand``.
    """
    dynamic, static = eqx.partition(args, eqx.is_array)

    def cond(carry):
        done, _ = carry
        return pred & ~done

    def body(carry):
        done, value = carry  # done is False whenever the body runs
        live = jax.tree.map(lambda t: jnp.where(done, jnp.zeros_like(t), t), dynamic)
        return jnp.asarray(True), fn(value, *eqx.combine(live, static))

    return jax.lax.while_loop(cond, body, (jnp.asarray(False), operand))[1]


def make_linear_solver(name: str, *, dt: float = 1.0, rtol: float = 1e-5,
                       max_steps: int = 1000, update: str = "synchronous") -> lx.AbstractLinearSolver:
    """The registered linear solver ``name`` with the ``[dynamics]`` settings it takes.

    **Arguments:** ``name``: a name of :data:`~eqprop.registry.LINEAR_SOLVERS`
    (``"fixed-point"``, ``"gmres"``, ``"auto"``); ``dt``: step size of the damped
    iteration (relaxation-time units); ``rtol``: relative tolerance; ``max_steps``:
    budget; ``update``: the damped iteration's order (``[dynamics] update``, as the
    relaxation's). Each is passed only when the class has a field of that name.

    **Returns:** the Lineax solver object.

    **Raises:** ``ValueError`` for an unknown name (listing the registered ones).
    """
    cls = LINEAR_SOLVERS.get(name)
    fields = {f.name for f in dataclasses.fields(cls)} if isinstance(cls, type) else set()
    given = {"dt": dt, "rtol": rtol, "max_steps": max_steps, "update": update}
    return cls(**{k: v for k, v in given.items() if k in fields})


def solve_linear(matvec: Callable[[PyTree], PyTree], rhs: PyTree,
                 solver: lx.AbstractLinearSolver,
                 groups: tuple[tuple[str, ...], ...] | None = None) -> tuple[PyTree, RelaxStats]:
    """Solve ``matvec(w) + rhs = 0`` with a Lineax solver, matrix-free.

    **Arguments:** ``matvec``: a linear map on pytrees like ``rhs`` (e.g. a JVP or VJP of
    the field at the free fixed point), block diagonal over the batch; ``rhs``: pytree
    with leaves ``(B, ...)``; ``solver``: a Lineax ``AbstractLinearSolver``; ``groups``:
    the model's :meth:`~eqprop.network.EquilibriumModel.partition` (population names of
    ``rhs``), which an alternating :class:`DampedIteration` sweeps (others ignore it).

    Never raises on non-convergence (``throw=False``): read the stats.

    **Returns:** ``w`` and :class:`RelaxStats` (``steps``: the solver's steps;
    ``residual``: ``||matvec(w) + rhs||`` per example; ``nonfinite_step``: ``steps``
    when ``w`` is not finite, else ``-1``).
    """
    operator = lx.FunctionLinearOperator(matvec, jax.eval_shape(lambda: rhs))
    sol = lx.linear_solve(operator, jax.tree.map(jnp.negative, rhs), solver, throw=False,
                          options={"groups": groups})
    w = sol.value
    steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
    guards = Guards()
    nonfinite_step = jnp.where(guards.within(w), jnp.asarray(-1, jnp.int32), steps)
    return w, guards.report(lambda w: jax.tree.map(jnp.add, matvec(w), rhs), w, steps, nonfinite_step)


def linear_solver_name(solver: Any) -> str | None:
    """The name under which ``solver``'s class is registered in
    :data:`~eqprop.registry.LINEAR_SOLVERS` (``"fixed-point"``, ``"gmres"``, ``"auto"``), so
    that advice can name the setting in force; ``"auto"`` for ``None`` (an estimator's
    default, :class:`DampedThenGMRES`); ``None`` for an unregistered solver."""
    if solver is None:
        return "auto"
    return next((name for name, cls in LINEAR_SOLVERS.items() if type(solver) is cls), None)
