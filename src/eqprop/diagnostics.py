"""Diagnostics of learning without weight symmetry (arXiv 2309.02214), on one batch.

:func:`diagnostics` returns a flat ``{key: float}``:

- ``angle`` (degrees, mean over pairs) and ``angle/<src>-<dst>``: for every pair of
  populations coupled both ways, the angle between the forward matrix ``W_{src->dst}``
  and the transposed feedback ``B_{dst->src}^T`` (``src->dst`` is the projection listed
  first). Tied couplings count as pairs with angle 0 by construction. Absent when the
  network has no such pair (or is not a :class:`~eqprop.network.DenseNetwork`).
- ``jacobian_symmetry``: ``s = ||J_sym||_F / (||J_sym||_F + ||J_anti||_F)`` with
  ``J = dh/da - I`` at the free fixed point (see :mod:`eqprop.homeostasis` for why this
  Jacobian). Exact from the explicit Jacobian (``jax.jacfwd`` over one example's
  flattened activity, mean over the first ``exact_examples`` examples) when the network
  has at most ``exact_max`` neurons; otherwise Hutchinson estimates
  ``||J_sym||_F^2 = E||J_sym eps||^2`` with ``J_sym eps = (J eps + J^T eps)/2`` (a JVP and
  a VJP) over the batch and ``probes`` probes.
- ``homeo_loss``: ``||J - J^T||_F^2 / (2 N)`` per example (``N`` neurons), exact or the
  probe estimate under the same rule; the quantity homeostasis minimises.
- ``alignment`` (mean over populations) and ``alignment/<population>``: cosine between
  the configured estimator's error vector (its ``da/dbeta`` estimate) and the
  recurrent-backprop ``delta``, per example, averaged over the batch (as the authors'
  ``mean_cos_delta``: one example whose nudged phases misbehave moves it by ``1/B`` at
  most). Absent for estimators without an error vector (``bptt``).
- ``cos_finite_nudge = cos(g_estimator, g_exact_nudge)``: the finite-nudge bias (the
  estimate against generalized EP with the exact ``da/dbeta``);
  ``cos_asymmetry = cos(g_exact_nudge, g_implicit)``: the asymmetry bias (exact
  ``da/dbeta`` against the true gradient); ``cos_implicit = cos(g_estimator,
  g_implicit)``: both together. The cosines are over the recurrent network's parameters
  (``weights``, ``biases``; the readout is left out because its gradient is the same
  direct gradient for every estimator and would inflate every cosine).

- ``probe_nonconverged``: fraction of the batch whose free phase ends with a residual
  ``||F(u)||`` above 1e-3 (the training metrics' threshold). The estimators all start
  from that free state, and the batch cosines above are sums over examples, so one
  example that has not settled (its nudged phases keep drifting) can dominate them:
  ``free_steps`` relaxes the probe batch longer than training does, so that the figures
  are taken at the fixed point they are defined at.

In training (``[diagnostics] enabled = true``) they are computed at the end of every
``every``-th epoch on a fixed probe batch (the first ``batch_size`` training examples),
for **every seed** of a multi-seed run: the top-level keys of the metrics record are the
means over seeds, ``per_seed`` holds the values of each seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .estimate import Estimator, free_phase, make_estimator
from .estimate.exact import rbp_delta
from .gradcheck import cosine
from .homeostasis import explicit_jacobian, jacobian_matvec, neuron_count, probe_loss
from .network.base import EquilibriumModel, named_parameters
from .relax import NONCONVERGED_TOL, Dynamics

PyTree = Any

__all__ = ["diagnostics", "weight_angles", "jacobian_figures", "DIAGNOSTIC_KEYS"]

DIAGNOSTIC_KEYS = ("angle", "jacobian_symmetry", "homeo_loss", "alignment", "cos_finite_nudge",
                   "cos_asymmetry", "cos_implicit", "probe_nonconverged")


def weight_angles(model: EquilibriumModel) -> dict[str, float]:
    """``{"angle/<src>-<dst>": degrees}`` per coupled pair, plus their mean ``"angle"``."""
    projections = getattr(model, "projections", None)
    weights = getattr(model, "weights", None)
    if projections is None or weights is None:
        return {}
    out: dict[str, float] = {}
    names = {p.name for p in projections}
    done: set[frozenset[str]] = set()
    for e in projections:
        if e.src == "input" or e.dst == "input":
            continue
        pair = frozenset((e.src, e.dst))
        if pair in done:
            continue
        if e.tied:
            out[f"angle/{e.src}-{e.dst}"] = 0.0
            done.add(pair)
        elif f"{e.dst}->{e.src}" in names:
            w, b = weights[e.name], weights[f"{e.dst}->{e.src}"]
            c = float(np.clip(cosine(w, b.T), -1.0, 1.0))
            out[f"angle/{e.src}-{e.dst}"] = math.degrees(math.acos(c))
            done.add(pair)
    if out:
        out = {"angle": float(np.mean(list(out.values()))), **out}
    return out


def _exact_figures(model, x, a, examples: int):
    syms, antis, losses = [], [], []
    b = jax.tree.leaves(a)[0].shape[0]
    for i in range(min(examples, b)):
        j = explicit_jacobian(model, x, a, i)
        sym, anti = 0.5 * (j + j.T), 0.5 * (j - j.T)
        ns, na = jnp.linalg.norm(sym), jnp.linalg.norm(anti)
        syms.append(ns / (ns + na))
        losses.append(0.5 * jnp.sum((j - j.T) ** 2) / j.shape[0])
    return jnp.mean(jnp.stack(syms)), jnp.mean(jnp.stack(losses))


def _probe_figures(model, a, drive, key, probes: int):
    matvec = jacobian_matvec(model, a, drive)
    _, vjp = jax.vjp(lambda act: model.interaction(act, drive), a)
    leaves, treedef = jax.tree.flatten(a)
    keys = jax.random.split(key, len(leaves))
    eps = jax.tree.unflatten(treedef, [jax.random.normal(k, (probes,) + l.shape, l.dtype)
                                       for k, l in zip(keys, leaves)])

    def one(e):
        je = matvec(e)
        (jhte,) = vjp(e)
        jte = jax.tree.map(jnp.subtract, jhte, e)
        sym = sum(jnp.sum((x + y) ** 2) for x, y in zip(jax.tree.leaves(je), jax.tree.leaves(jte))) / 4
        anti = sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(je), jax.tree.leaves(jte))) / 4
        return sym, anti

    sym, anti = jax.vmap(one)(eps)
    ns, na = jnp.sqrt(jnp.mean(sym)), jnp.sqrt(jnp.mean(anti))
    loss = probe_loss(model, a, drive, jax.random.fold_in(key, 1), probes)
    return ns / (ns + na), loss


def jacobian_figures(model: EquilibriumModel, x: Array, a: PyTree, drive: PyTree, key: Array, *,
                     exact_max: int = 2048, exact_examples: int = 4,
                     probes: int = 10) -> tuple[Array, Array, bool]:
    """``(jacobian_symmetry, homeo_loss, exact)`` at activity ``a`` of the batch ``x``
    (``drive = model.prepare(x)``; see the module doc)."""
    if neuron_count(a) <= exact_max:
        s, l = _exact_figures(model, x, a, exact_examples)
        return s, l, True
    s, l = _probe_figures(model, a, drive, key, probes)
    return s, l, False


@eqx.filter_jit
def _raw(model, x, y, estimator, dynamics, key, exact_max, exact_examples, probes, free_steps):
    free = free_phase(model, x, dynamics if free_steps is None
                      else dataclasses.replace(dynamics, free_steps=free_steps))
    g_est, info = estimator(model, x, y, free, key)
    g_exact, _ = make_estimator("exact-nudge", dynamics)(model, x, y, free, key)
    g_imp, _ = make_estimator("implicit", dynamics)(model, x, y, free, key)
    delta, _ = rbp_delta(model, free, y, dynamics)
    a = model.activity(free.u)
    sym, loss, _ = jacobian_figures(model, x, a, free.drive, jax.random.fold_in(key, 7),
                                    exact_max=exact_max, exact_examples=exact_examples,
                                    probes=probes)
    unsettled = jnp.mean(free.stats.residual > NONCONVERGED_TOL)
    return g_est, g_exact, g_imp, info.error_vector, delta, sym, loss, unsettled


def example_cosines(a: Array, b: Array) -> Array:
    """Cosine of ``a[i]`` with ``b[i]`` for every example ``i`` (leading axis), ``(B,)``;
    0 where either is zero."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    den = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return jnp.where(den > 0, jnp.sum(a * b, axis=1) / jnp.where(den > 0, den, 1.0), 0.0)


def _flat_network(grad: PyTree) -> Array:
    named = named_parameters(grad)
    keep = [k for k in named if not k.startswith("readout")] or list(named)
    return jnp.concatenate([jnp.ravel(named[k]) for k in keep])


def diagnostics(model: EquilibriumModel, x: Array, y: Array, estimator: Estimator,
                dynamics: Dynamics | None = None, key: Array | None = None, *,
                exact_max: int = 2048, exact_examples: int = 4,
                probes: int = 10, free_steps: int | None = None) -> dict[str, float]:
    """All diagnostics of ``model`` on the batch ``(x, y)`` (one network, not stacked).

    ``free_steps``: free-phase budget for this batch (default: ``dynamics.free_steps``);
    the estimators' nudged phases and linear solves keep ``dynamics``.
    """
    dynamics = estimator.dynamics if dynamics is None else dynamics
    key = jax.random.PRNGKey(0) if key is None else key
    g_est, g_exact, g_imp, v, delta, sym, loss, unsettled = _raw(
        model, x, y, estimator, dynamics, key, exact_max, exact_examples, probes, free_steps)
    out: dict[str, float] = dict(weight_angles(model))
    out["jacobian_symmetry"] = float(sym)
    out["homeo_loss"] = float(loss)
    if v is not None:
        per = {p: float(jnp.mean(example_cosines(jnp.real(v[p]), delta[p]))) for p in delta}
        out["alignment"] = float(np.mean(list(per.values())))
        out.update({f"alignment/{p}": c for p, c in per.items()})
    fe, fx, fi = _flat_network(g_est), _flat_network(g_exact), _flat_network(g_imp)
    out["cos_finite_nudge"] = cosine(fe, fx)
    out["cos_asymmetry"] = cosine(fx, fi)
    out["cos_implicit"] = cosine(fe, fi)
    out["probe_nonconverged"] = float(unsettled)
    return out
