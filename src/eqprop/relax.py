"""Relaxation: iterate ``u <- u + dt * F(u)`` to a fixed point, inside ``lax`` loops.

Every leaf of the state has the batch on axis 0; run several phases together by
``jax.vmap``-ing over a leading axis outside. States may be real or complex.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

PyTree = Any


@dataclass(frozen=True)
class Dynamics:
    """Settings of the relaxations (static, hashable).

    ``tol = 0`` runs the full step budget; ``tol > 0`` stops once every example's
    residual ``||F(u)||`` is below it. ``linear_*`` budget the exact linear solves.
    """

    dt: float = 1.0
    free_steps: int = 150
    nudged_steps: int = 20
    tol: float = 0.0
    linear_steps: int = 1000
    linear_tol: float = 1e-7


class RelaxStats(eqx.Module):
    """What a relaxation reports.

    ``steps``: steps taken (scalar int). ``residual``: ``||F(u)||`` per example at the end,
    ``(B,)``. ``nonfinite_step``: first step after which a state was NaN or infinite,
    ``-1`` if none. ``nonfinite``: per population, whether its final state is non-finite.
    """

    steps: Array
    residual: Array
    nonfinite_step: Array
    nonfinite: dict[str, Array]

    @property
    def finite(self) -> Array:
        return self.nonfinite_step < 0


def residual_norm(f: PyTree) -> Array:
    """Per-example norm of a batched pytree: ``sqrt(sum |f|^2)`` over all but axis 0."""
    sq = [jnp.sum(jnp.abs(v) ** 2, axis=tuple(range(1, v.ndim))) for v in jax.tree.leaves(f)]
    return jnp.sqrt(sum(sq))


def _all_finite(u: PyTree) -> Array:
    # a single sum per leaf: NaN and inf propagate through it.
    return jnp.all(jnp.stack([jnp.isfinite(jnp.sum(v)) for v in jax.tree.leaves(u)]))


def relax(
    field: Callable[[PyTree], PyTree],
    u0: PyTree,
    *,
    dt: float,
    steps: int,
    tol: float | Array = 0.0,
) -> tuple[PyTree, RelaxStats]:
    """Iterate ``u <- u + dt * field(u)`` from ``u0``.

    Stops after ``steps`` steps, when every example's residual is below ``tol``
    (a positive float or a traced scalar; ``0`` disables the check), or at the first
    non-finite state. Returns the final state and its :class:`RelaxStats`.
    """
    check_residual = not (isinstance(tol, (int, float)) and tol <= 0)

    def cond(carry):
        i, _, r, ok = carry
        go = (i < steps) & ok
        return go & (r > tol) if check_residual else go

    def body(carry):
        i, u, _, _ = carry
        f = field(u)
        r = jnp.max(residual_norm(f)) if check_residual else jnp.inf
        u = jax.tree.map(lambda v, g: v + dt * g, u, f)
        return i + 1, u, jnp.asarray(r, jnp.result_type(float)), _all_finite(u)

    init = (jnp.asarray(0), u0, jnp.asarray(jnp.inf, jnp.result_type(float)), _all_finite(u0))
    i, u, _, ok = jax.lax.while_loop(cond, body, init)
    stats = RelaxStats(
        steps=i,
        residual=residual_norm(field(u)),
        nonfinite_step=jnp.where(ok, -1, i),
        nonfinite={k: ~jnp.all(jnp.isfinite(v)) for k, v in _as_dict(u).items()},
    )
    return u, stats


def _as_dict(u: PyTree) -> dict[str, Array]:
    if isinstance(u, dict):
        return u
    return {str(i): v for i, v in enumerate(jax.tree.leaves(u))}
