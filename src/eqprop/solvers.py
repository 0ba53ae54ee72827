"""Equilibrium solvers beyond the plain relaxation: Anderson acceleration.

:func:`anderson` has the contract of :func:`eqprop.relax.relax`: it finds ``u`` with
``field(u) = 0``, i.e. the fixed point of ``g(u) = u + dt * field(u)``, and returns
``(u, RelaxStats)`` with the same fields (``steps``: field evaluations; ``residual``:
``||field(u)||`` per example, ``(B,)`` or ``(P, B)``; ``nonfinite_step``; ``nonfinite``
per population).

Conventions. Every leaf of the state has ``batch_ndim`` leading batch axes (``(B, ...)``
or ``(P, B, ...)`` for phases stacked on a leading axis); each example is an
independent problem with its own history and mixing coefficients. Internally an
example's state is flattened across populations to a vector of length ``D``; the
history holds the last ``memory`` accepted iterates ``x_i`` and their fixed-point
residuals ``f_i = g(x_i) - x_i = dt * field(x_i)`` as arrays ``(..., m, D)``.
States may be real or complex (complex: Hermitian normal equations, ``conj`` on the left).

The step (type-II Anderson in difference form, damping ``beta``)::

    gamma = argmin_c || f_k - sum_i c_i (f_k - f_i) ||       (+ Tikhonov 1e-8 * trace)
    x_{k+1} = x_k + beta f_k - sum_i gamma_i ((x_k - x_i) + beta (f_k - f_i))

i.e. the mixing ``(1 - beta) x + beta g`` of the extrapolated iterates. With an empty
history and ``beta = 1`` this is the plain step ``x + dt * field(x)``.

Safeguard (``safeguard=True``), per example and at no extra field evaluation: an
Anderson candidate is accepted only if it is finite and its residual, evaluated at the
next iteration, is not larger than the residual of the point it came from. Otherwise
the example goes back to its last accepted point, drops its history and takes the plain
step ``x + dt * field(x)`` (accepted unconditionally, as the plain iteration would). A
non-finite Anderson candidate falls back to the plain step at once.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import Array

from .relax import RelaxStats, nonfinite_populations

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


def _finite(v: Array) -> Array:
    """Per example: whether the vector is finite (``(..., D) -> (...)``)."""
    return jnp.isfinite(jnp.sum(v, axis=-1))


def _solve_hpd(a: Array, b: Array) -> Array:
    """Solve ``a x = b`` for small Hermitian positive-definite ``a`` ``(..., m, m)``, batched:
    Cholesky unrolled over ``m`` (elementwise on the batch), much cheaper on CPU than a
    batched ``jnp.linalg.solve`` (one LAPACK call per example)."""
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


def anderson_step(x: Array, f: Array, xs: Array, fs: Array, valid: Array, damping: float) -> Array:
    """One type-II Anderson step per example.

    ``x, f``: ``(..., D)`` current iterate and its residual ``g(x) - x``; ``xs, fs``:
    ``(..., m, D)`` history; ``valid``: ``(..., m)`` which history slots are filled.
    Returns the next iterate ``(..., D)``.
    """
    m = xs.shape[-2]
    dx = jnp.where(valid[..., None], x[..., None, :] - xs, 0)
    df = jnp.where(valid[..., None], f[..., None, :] - fs, 0)
    a = jnp.einsum("...id,...jd->...ij", jnp.conj(df), df)
    b = jnp.einsum("...id,...d->...i", jnp.conj(df), f)
    trace = jnp.real(jnp.trace(a, axis1=-2, axis2=-1))
    rtype = trace.dtype
    floor = jnp.asarray(1e-30 if jnp.finfo(rtype).bits > 16 else 1e-6, rtype)
    reg = REGULARISATION * trace + floor
    eye = jnp.eye(m, dtype=rtype)
    a = a + (reg[..., None, None] * eye + jnp.where(valid[..., None, :], 0, 1).astype(rtype) * eye).astype(a.dtype)
    gamma = _solve_hpd(a, b)
    gamma = jnp.where(valid, gamma, 0)
    return x + damping * f - jnp.einsum("...i,...id->...d", gamma, dx + damping * df)


def anderson(
    field: Callable[[PyTree], PyTree],
    u0: PyTree,
    *,
    steps: int,
    tol: float | Array = 0.0,
    memory: int = 5,
    damping: float = 1.0,
    dt: float = 1.0,
    batch_ndim: int = 1,
    safeguard: bool = True,
) -> tuple[PyTree, RelaxStats]:
    """Anderson-accelerated relaxation to ``field(u) = 0`` (contract of ``relax``).

    ``steps``: budget of field evaluations. ``tol``: stop once every example's
    ``||field(u)||`` is below it (float or traced scalar; ``0`` runs all ``steps``).
    ``memory``: history length ``m`` (0: plain damped iteration). ``damping``: mixing
    ``beta`` in ``(0, 1]``. ``batch_ndim``: 1 for leaves ``(B, ...)``, 2 for stacked phases
    ``(P, B, ...)``. Stops early at the first non-finite state (``nonfinite_step``).
    Returns the last accepted iterate (whose residual is known without an extra
    evaluation) and its :class:`RelaxStats`. Jit-able; one ``lax.while_loop``.
    """
    if memory < 0:
        raise ValueError(f"memory must be >= 0, got {memory}")
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    check_residual = not (isinstance(tol, (int, float)) and tol <= 0)
    x0, unflatten = _flatten(u0, batch_ndim)
    batch = x0.shape[:-1]
    rtype = jnp.finfo(x0.dtype).dtype  # real dtype of the state
    m = max(memory, 1)

    def evaluate(x):
        fx, _ = _flatten(field(unflatten(x)), batch_ndim)
        fx = fx.astype(x.dtype)
        return dt * fx, _norm(fx).astype(rtype)

    def cond(c):
        ok = c["ok"]
        go = (c["i"] < steps) & ok
        if check_residual:
            go = go & (jnp.max(c["r"]) > tol)
        return go

    def body(c):
        i, pos = c["i"], c["pos"]
        f_c, r_c = evaluate(c["cand"])
        if safeguard:
            accept = c["plain"] | (jnp.isfinite(r_c) & (r_c <= c["r"]))
        else:
            accept = jnp.ones(batch, bool)
        # push the previous accepted point into the history of accepting examples
        onehot = jnp.arange(m) == pos
        push = accept & c["have"]
        slot = onehot & push[..., None]
        xs = jnp.where(slot[..., None], c["x"][..., None, :], c["xs"])
        fs = jnp.where(slot[..., None], c["f"][..., None, :], c["fs"])
        valid = jnp.where(accept[..., None], c["valid"] | slot, False)
        if memory == 0:
            valid = jnp.zeros_like(valid)
        a = accept[..., None]
        x = jnp.where(a, c["cand"], c["x"])
        f = jnp.where(a, f_c, c["f"])
        r = jnp.where(accept, r_c, c["r"])
        plain_step = x + f
        if memory > 0:
            nxt = anderson_step(x, f, xs, fs, valid, damping)
        else:
            nxt = x + damping * f
        use_plain = ~accept
        if safeguard:
            use_plain = use_plain | ~_finite(nxt)
        cand = jnp.where(use_plain[..., None], plain_step, nxt)
        return {
            "i": i + 1, "pos": (pos + 1) % m, "cand": cand, "x": x, "f": f, "r": r,
            "xs": xs, "fs": fs, "valid": valid, "have": c["have"] | accept,
            "plain": use_plain if safeguard else jnp.zeros(batch, bool),
            "ok": jnp.all(_finite(cand)),
        }

    zeros_h = jnp.zeros(batch + (m, x0.shape[-1]), x0.dtype)
    init = {
        "i": jnp.asarray(0), "pos": jnp.asarray(0), "cand": x0,
        "x": x0, "f": jnp.zeros_like(x0), "r": jnp.full(batch, jnp.inf, rtype),
        "xs": zeros_h, "fs": zeros_h, "valid": jnp.zeros(batch + (m,), bool),
        "have": jnp.zeros(batch, bool), "plain": jnp.ones(batch, bool),
        "ok": jnp.all(_finite(x0)),
    }
    c = jax.lax.while_loop(cond, body, init)
    ok = c["ok"]
    # on a non-finite state return it (as relax does), else the last accepted iterate
    xout = jnp.where(ok, c["x"], c["cand"])
    u = unflatten(xout)
    residual = jnp.where(_finite(xout), c["r"], jnp.nan)
    stats = RelaxStats(
        steps=c["i"],
        residual=residual,
        nonfinite_step=jnp.where(ok, -1, c["i"]),
        nonfinite=nonfinite_populations(u),
    )
    return u, stats
