"""The Anderson-accelerated relaxation loop (the engine of :class:`eqprop.solvers.Anderson`).

:func:`anderson` has the contract of :func:`eqprop.relax.relax`: it finds ``u`` with
``field(u) = 0``, as the fixed point of the iteration map ``g`` (``g(u) = u + dt *
field(u)``, or one alternating sweep over ``groups``), and returns ``(u, RelaxStats)``
with the same fields (``steps``: field evaluations, counted as ``relax`` counts them;
``residual``: ``||field(u)||`` per example, ``(B,)`` or ``(P, B)``; ``nonfinite_step``;
``nonfinite`` per population).

Conventions. Every leaf of the state has ``batch_ndim`` leading batch axes (``(B, ...)``
or ``(P, B, ...)`` for phases stacked on a leading axis); each example is an
independent problem with its own history and mixing coefficients. Internally an
example's state is flattened across populations to a vector of length ``D``. The
history holds the last ``memory`` differences of consecutive accepted iterates
``dX_j = x_{j+1} - x_j`` and of their fixed-point residuals ``dF_j = f_{j+1} - f_j``
(``f = g(x) - x``) in a ring buffer ``(m, *batch, D)``, and their Gram matrix
``G = dF^H dF`` ``(*batch, m, m)``, updated by one row per step. States may be real or
complex (complex: Hermitian normal equations, ``conj`` on the left).

The step (type-II Anderson, Walker and Ni 2011, damping ``beta``)::

    gamma = argmin_c || f_k - dF c ||           (normal equations, + Tikhonov 1e-8 * trace)
    x_{k+1} = x_k + beta f_k - (dX + beta dF) gamma

i.e. the mixing ``(1 - beta) x + beta g`` of the extrapolated iterates. With an empty
history and ``beta = 1`` this is the plain step ``g(x)``. Per step it costs one map
evaluation plus three passes over the history (the Gram row, the projection of
``f_k`` and the combination), all elementwise-and-reduce, no batched small matmuls
(see benchmarks/README.md for why).

Safeguard (``safeguard=True``), per example and at no extra field evaluation: an
Anderson candidate is accepted only if it is finite and its residual, evaluated at the
next iteration, is not larger than the residual of the point it came from. Otherwise
the example goes back to its last accepted point, drops its history and takes the plain
step ``g(x)`` (accepted unconditionally, as the plain iteration would). A non-finite
Anderson candidate falls back to the plain step at once.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array

from .guards import Guards, RelaxStats, residual_norm
from .relax import projected_field, relax, sweep_map

PyTree = Any

#: relative Tikhonov regularisation of the ``m x m`` normal equations (times their trace)
REGULARISATION = 1e-8


def _flatten(u: PyTree, batch_ndim: int):
    """Leaves ``batch + rest`` -> one array ``batch + (D,)`` and the way back."""
    leaves, treedef = jax.tree.flatten(u)
    batch = leaves[0].shape[:batch_ndim]
    dtype = jnp.result_type(*[l.dtype for l in leaves])
    shapes = [l.shape for l in leaves]
    dtypes = [l.dtype for l in leaves]
    sizes = [math.prod(s[batch_ndim:]) for s in shapes]
    x = jnp.concatenate([l.reshape(batch + (-1,)).astype(dtype) for l in leaves], axis=-1)

    def unflatten(v: Array) -> PyTree:
        parts, start = [], 0
        for shape, dt, n in zip(shapes, dtypes, sizes):
            parts.append(v[..., start:start + n].reshape(v.shape[:-1] + shape[batch_ndim:]).astype(dt))
            start += n
        return jax.tree.unflatten(treedef, parts)

    return x, unflatten


def _norm(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.abs(v) ** 2, axis=-1))


def _solve_hpd(a: Array, b: Array) -> Array:
    """Solve ``a x = b`` for small Hermitian positive-definite ``a`` ``(..., m, m)``, batched:
    Cholesky unrolled over ``m`` (elementwise on the batch) instead of a batched
    ``jnp.linalg.solve`` (one LAPACK call per example)."""
    m = a.shape[-1]
    L = [[None] * m for _ in range(m)]
    for j in range(m):
        d = a[..., j, j] - sum((L[j][k] * jnp.conj(L[j][k]) for k in range(j)), jnp.zeros_like(a[..., j, j]))
        ljj = jnp.sqrt(jnp.real(d)).astype(a.dtype)
        L[j][j] = ljj
        for i in range(j + 1, m):
            s = a[..., i, j] - sum((L[i][k] * jnp.conj(L[j][k]) for k in range(j)), jnp.zeros_like(a[..., i, j]))
            L[i][j] = s / ljj
    z = []
    for i in range(m):  # L z = b
        z.append((b[..., i] - sum((L[i][k] * z[k] for k in range(i)), jnp.zeros_like(b[..., i]))) / L[i][i])
    xs = [None] * m
    for i in reversed(range(m)):  # L^H x = z
        xs[i] = (z[i] - sum((jnp.conj(L[k][i]) * xs[k] for k in range(i + 1, m)), jnp.zeros_like(z[i]))) / jnp.conj(L[i][i])
    return jnp.stack(xs, axis=-1)


def _masked_gram(gram: Array, valid: Array) -> Array:
    """The normal matrix of the valid history slots: invalid rows and columns replaced by
    the identity (so they solve to 0), plus the Tikhonov term. ``(..., m, m)``."""
    m = gram.shape[-1]
    both = valid[..., :, None] & valid[..., None, :]
    a = jnp.where(both, gram, 0)
    trace = jnp.real(jnp.trace(a, axis1=-2, axis2=-1))
    rtype = trace.dtype
    floor = jnp.asarray(1e-30 if jnp.finfo(rtype).bits > 16 else 1e-6, rtype)
    reg = REGULARISATION * trace + floor
    eye = jnp.eye(m, dtype=rtype)
    diag = reg[..., None, None] * eye + jnp.where(valid[..., None, :], 0, 1).astype(rtype) * eye
    return a + diag.astype(a.dtype)


def _inner(h: Array, v: Array) -> Array:
    """``<h_j, v>`` for each history slot: ``(m, ..., D), (..., D) -> (..., m)``.

    One reduction per slot rather than one over a broadcast ``(m, ..., D)`` product."""
    return jnp.stack([jnp.sum(jnp.conj(h[j]) * v, axis=-1) for j in range(h.shape[0])], axis=-1)


def anderson_step(x: Array, f: Array, dxs: Array, dfs: Array, gram: Array, valid: Array,
                  damping: float) -> Array:
    """One type-II Anderson step per example (Walker and Ni 2011), the formula of the
    module doc: ``x + beta f - (dX + beta dF) gamma``.

    **Arguments:**

    - ``x``, ``f``: ``(..., D)``, the current iterate and its residual ``g(x) - x``
      (``...`` the batch axes, ``(B,)`` or ``(P, B)``);
    - ``dxs``, ``dfs``: ``(m, ..., D)``, differences of consecutive iterates and of
      their residuals;
    - ``gram``: ``(..., m, m)``, their Gram matrix ``dF^H dF``;
    - ``valid``: ``(..., m)`` booleans, which slots hold a difference (the others are
      left out of the least-squares problem);
    - ``damping``: the mixing ``beta`` in ``(0, 1]``.

    **Returns:** the next iterate ``(..., D)``.
    """
    gamma = _solve_hpd(_masked_gram(gram, valid), _inner(dfs, f))
    gamma = jnp.where(valid, gamma, 0)[..., None]  # (..., m, 1)
    # an explicit sum over the slots: elementwise, where a reduction over axis 0 was slow
    return x + damping * f - sum(gamma[..., j, :] * (dxs[j] + damping * dfs[j]) for j in range(dxs.shape[0]))


def anderson(
    field: Callable[[PyTree], PyTree],
    u0: PyTree,
    *,
    steps: int,
    tol: float | Array = 0.0,
    tol_fraction: float = 0.0,
    memory: int = 5,
    damping: float = 1.0,
    dt: float = 1.0,
    batch_ndim: int = 1,
    safeguard: bool = True,
    delay: int = 0,
    groups: tuple[tuple[str, ...], ...] | None = None,
    field_on: Callable[[PyTree, tuple[str, ...]], PyTree] | None = None,
    check_every: int = 1,
    project=None,
    bound: float = float("inf"),
) -> tuple[PyTree, RelaxStats]:
    """Anderson-accelerated relaxation to ``field(u) = 0`` (the contract of
    :func:`eqprop.relax.relax`; type-II Anderson acceleration, Walker and Ni 2011).

    Jit-able; one ``lax.while_loop`` (two with ``delay``). Stops after ``steps``, once
    the tolerance is met, or at the first state that is not finite or beyond ``bound``
    (the guards of :class:`eqprop.guards.Guards`, shared with ``relax``).

    **Arguments:**

    - ``field``: ``u -> F(u)``, a pytree like ``u``;
    - ``u0``: the initial state, leaves ``(B, ...)`` (``batch_ndim = 1``) or
      ``(P, B, ...)`` for stacked phases (``batch_ndim = 2``), real or complex;
    - ``steps``: budget of field evaluations (with ``groups``: of group updates, a sweep
      counting ``len(groups)``, as in ``relax``);
    - ``tol``: stop once every example's residual ``||F||`` is below it (float or traced
      scalar; ``0`` runs all ``steps``); ``tol_fraction = q > 0``: once at most a
      fraction ``q`` is above it (stragglers leave with their last accepted iterate);
    - ``memory``: history length ``m`` (``0``: the plain damped iteration);
    - ``damping``: mixing ``beta`` in ``(0, 1]``;
    - ``dt``: step size of the map ``g(u) = u + dt F(u)``, in units of the relaxation
      time;
    - ``safeguard``: the per-example safeguard of the module doc;
    - ``delay``: the first ``delay`` steps (counted like ``steps``) run the plain
      iteration (:func:`eqprop.relax.relax`, at its lower cost per step, stopping early
      like it); Anderson starts from there, after the initial transient, where the
      residual of the plain iteration is often not monotone and extrapolation misleads;
    - ``groups``, ``field_on``: accelerate the alternating sweep of ``relax`` instead of
      the synchronous step (same fixed points, half the work per evaluation);
    - ``check_every``: the tolerance test of the ``delay`` iteration (see ``relax``);
    - ``project``: the model's projection, applied to every candidate (``None``: none);
    - ``bound``: a state with ``|u| > bound`` counts as diverged, like a NaN; with the
      safeguard, an extrapolated candidate beyond it falls back to the plain step (only
      a plain step beyond it stops the solve).

    **Returns:** the last accepted iterate (on divergence the non-finite or exploding
    state) and its :class:`~eqprop.relax.RelaxStats`, with the meaning every solver
    gives them: ``residual`` ``||F(u)||`` at the returned state, ``(B,)`` or ``(P, B)``
    (known without an extra evaluation for synchronous steps; one evaluation after the
    loop for alternating sweeps, whose loop residual is the sweep's, and on divergence);
    ``steps`` counts evaluations, the ``delay`` steps included.

    **Raises:** ``ValueError`` when ``memory < 0``, ``damping`` is not in ``(0, 1]``, or
    ``groups`` is given without ``field_on``.
    """
    if memory < 0:
        raise ValueError(f"memory must be >= 0, got {memory}")
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    guards = Guards(tol=tol, tol_fraction=tol_fraction, bound=bound, batch_ndim=batch_ndim)
    step_map, per_eval = sweep_map(field, dt, groups, field_on, project)
    start = jnp.asarray(0)
    known = None  # the residual ||F(u0)|| of the starting point, when the delay computed it
    if delay > 0:  # the plain iteration first, without the history's overhead
        plain_run = lambda u: relax(field, u, dt=dt, steps=min(delay, steps), tol=tol,  # noqa: E731
                                    tol_fraction=tol_fraction, batch_ndim=batch_ndim, bound=bound,
                                    groups=groups, field_on=field_on, check_every=check_every,
                                    project=project)
        if delay >= steps:  # the whole budget is the plain iteration: its result and stats
            return plain_run(u0)
        u0, plain = plain_run(u0)
        start, known = plain.steps, plain.residual
    x0, unflatten = _flatten(u0, batch_ndim)
    batch = x0.shape[:-1]
    rtype = jnp.finfo(x0.dtype).dtype  # real dtype of the state
    m = max(memory, 1)

    def evaluate(x):
        fu, nxt = step_map(unflatten(x))
        fx, _ = _flatten(fu, batch_ndim)
        g, _ = _flatten(nxt, batch_ndim)
        return g.astype(x.dtype) - x, _norm(fx).astype(rtype)

    def cond(c):
        go = (c["i"] < steps) & c["ok"]
        if guards.checks_residual:
            go = go & guards.keep_going(c["r"])
        return go

    def body(c):
        f_c, r_c = evaluate(c["cand"])
        if safeguard:
            accept = c["plain"] | (jnp.isfinite(r_c) & (r_c <= c["r"]))
        else:
            accept = jnp.ones(batch, bool)
        # accepting examples that had an accepted point push the differences into slot pos
        pos = c["pos"]
        push = accept & c["have"]
        pcol = push[..., None]
        dx = jnp.where(pcol, c["cand"] - c["x"], 0)
        df = jnp.where(pcol, f_c - c["f"], 0)
        dxs = jax.lax.dynamic_update_index_in_dim(c["dxs"], dx, pos, 0)
        dfs = jax.lax.dynamic_update_index_in_dim(c["dfs"], df, pos, 0)
        row = _inner(dfs, df)  # (..., m): <dF_j, df>, column pos of the Gram matrix
        onehot = jnp.arange(m) == pos
        gram = jnp.where(onehot[:, None], jnp.conj(row)[..., None, :], c["gram"])
        gram = jnp.where(onehot, row[..., :, None], gram)
        slot = onehot & pcol
        valid = jnp.where(accept[..., None], c["valid"] | slot, False)
        if memory == 0:
            valid = jnp.zeros_like(valid)
        a = accept[..., None]
        x = jnp.where(a, c["cand"], c["x"])
        f = jnp.where(a, f_c, c["f"])
        r = jnp.where(accept, r_c, c["r"])
        if memory > 0:
            nxt = anderson_step(x, f, dxs, dfs, gram, valid, damping)
        else:
            nxt = x + damping * f
        if project is not None:  # an extrapolated candidate stays in the model's state set
            nxt = _flatten(project(unflatten(nxt)), batch_ndim)[0].astype(nxt.dtype)
        use_plain = ~accept
        if safeguard:  # an extrapolation that is not finite or leaves the bound: the plain step
            use_plain = use_plain | ~guards.within_each(nxt)
        cand = jnp.where(use_plain[..., None], x + f, nxt)
        return {
            "i": c["i"] + per_eval, "pos": (pos + 1) % m, "cand": cand, "x": x, "f": f, "r": r,
            "dxs": dxs, "dfs": dfs, "gram": gram, "valid": valid, "have": c["have"] | accept,
            "plain": use_plain if safeguard else jnp.zeros(batch, bool),
            "ok": jnp.all(guards.within_each(cand)),
        }

    zeros_h = jnp.zeros((m,) + x0.shape, x0.dtype)
    init = {
        "i": start, "pos": jnp.asarray(0), "cand": x0,
        "x": x0, "f": jnp.zeros_like(x0),
        "r": jnp.full(batch, jnp.inf, rtype) if known is None else known.astype(rtype),
        "dxs": zeros_h, "dfs": zeros_h, "gram": jnp.zeros(batch + (m, m), x0.dtype),
        "valid": jnp.zeros(batch + (m,), bool),
        "have": jnp.zeros(batch, bool), "plain": jnp.ones(batch, bool),
        "ok": jnp.all(guards.within_each(x0)),
    }
    c = jax.lax.while_loop(cond, body, init)
    ok = c["ok"]
    # on a non-finite state return it (as relax does), else the last accepted iterate
    xout = jnp.where(ok, c["x"], c["cand"])
    u = unflatten(xout)
    natural = projected_field(field, dt, project)  # F, or the projected step's rate
    full = lambda: residual_norm(natural(u), batch_ndim).astype(rtype)  # noqa: E731
    if groups is None:  # c["r"] is ||F(x)|| at the accepted iterate (or at u0, from the delay)
        residual = jax.lax.cond(ok, lambda: c["r"], full)
    else:  # the loop's residual is the sweep's: report ||F(u)|| as relax does
        residual = full()
    return u, guards.report(natural, u, c["i"], jnp.where(ok, -1, c["i"]), residual=residual)
