"""Diagnostics of learning without weight symmetry (Laborieux and Zenke, ICLR 2024,
arXiv 2309.02214), on one batch.

:func:`diagnostics` returns a flat ``{key: float}``:

- ``angle`` (degrees, mean over pairs) and ``angle/<src>-<dst>``: for every pair of
  populations coupled both ways, the angle between the forward matrix ``W_{src->dst}``
  and the transposed feedback ``B_{dst->src}^T`` (``src->dst`` is the projection listed
  first). Tied couplings count as pairs with angle 0 by construction. Absent when the
  network has no such pair (or is not a :class:`~eqprop.network.FeedbackModel`).
- ``jacobian_symmetry``: ``s = ||J_sym||_F / (||J_sym||_F + ||J_anti||_F)`` with
  ``J = dh/da - I`` at the free fixed point (see :mod:`eqprop.homeostasis` for why this
  Jacobian). Exact from the explicit Jacobian (``jax.jacfwd`` over one example's
  flattened activity, mean over the first ``exact_examples`` examples) when the network
  has at most ``exact_max`` neurons; otherwise Hutchinson estimates
  ``||J_sym||_F^2 = E||J_sym eps||^2`` with ``J_sym eps = (J eps + J^T eps)/2`` (a JVP and
  a VJP) over the batch and ``probes`` probes
  (:func:`eqprop.homeostasis.probe_symmetry`). Absent, as ``homeo_loss``, for a model
  that is not an :class:`~eqprop.network.InteractionModel`.
- ``homeo_loss``: ``||J - J^T||_F^2 / (2 N)`` per example (``N`` neurons), exact or the
  probe estimate under the same rule; the quantity homeostasis minimises (by probes:
  :func:`eqprop.homeostasis.probe_loss`, the function training differentiates).
- ``alignment`` (mean over populations) and ``alignment/<population>``: cosine between
  the configured estimator's error vector (its ``da/dbeta`` estimate) and the
  recurrent-backprop ``delta`` (the error vector of the implicit estimator, which builds
  the exact gradient from it), per example, averaged over the batch (as the authors'
  ``mean_cos_delta``, :func:`eqprop.metrics.example_cosines`: one example whose nudged
  phases misbehave moves it by ``1/B`` at most). Absent for estimators without an error
  vector (``bptt``).
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
  are taken at the fixed point they are defined at. Without it, a probe batch that the
  training budget leaves unsettled relaxes on from there (:func:`~eqprop.solvers.settle`)
  and ``probe_settled_on`` is 1.

In training (``[diagnostics] enabled = true``) they are computed at the end of every
``every``-th epoch on a fixed probe batch (the first ``batch_size`` training examples),
for **every seed** of a multi-seed run: the top-level keys of the metrics record are the
means over seeds, ``per_seed`` holds the values of each seed. ``eqprop gradcheck`` prints
them beside the table of :func:`eqprop.gradcheck.gradcheck`: the command composes the
two, neither module imports the other, and both take their cosines from
:mod:`eqprop.metrics`.
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
from .homeostasis import explicit_jacobian, neuron_count, probe_figures
from .jitting import jit
from .metrics import cosine, example_cosines
from .network.base import EquilibriumModel, FeedbackModel, InteractionModel, named_parameters
from .relax import NONCONVERGED_TOL
from .solvers import PhaseSolvers, settle

PyTree = Any

__all__ = ["diagnostics", "weight_angles", "jacobian_figures", "DIAGNOSTIC_KEYS", "DIAGNOSTIC_HELP",
           "DIAGNOSTIC_NOTES", "EXACT_BASED", "describe"]

#: the top-level keys :func:`diagnostics` may return (besides the per-pair and
#: per-population ``angle/...`` and ``alignment/...``)
DIAGNOSTIC_KEYS = ("angle", "jacobian_symmetry", "homeo_loss", "alignment", "cos_finite_nudge",
                   "cos_asymmetry", "cos_implicit", "probe_nonconverged", "probe_settled_on")

#: what each key of :func:`diagnostics` measures and what its ends mean, one line each, for
#: printed tables (``eqprop gradcheck``); a per-pair ``angle/<src>-<dst>`` or per-population
#: ``alignment/<p>`` key is described by its base key (:func:`describe`)
DIAGNOSTIC_HELP = {
    "angle": "degrees between W and the transposed feedback B^T, mean over pairs (0: tied)",
    "jacobian_symmetry": "||J_sym|| / (||J_sym|| + ||J_anti||) at the free state (1: symmetric)",
    "homeo_loss": "||J - J^T||_F^2 / (2 neurons), what homeostasis lowers (0: symmetric)",
    "alignment": "cosine of the error vector with recurrent backprop's delta (1: aligned)",
    "cos_finite_nudge": "cosine of the estimate with exact-nudge's: finite-nudge bias (1: none)*",
    "cos_asymmetry": "cosine of exact-nudge's gradient with implicit's: asymmetry bias (1: none)*",
    "cos_implicit": "cosine of the estimate with the implicit gradient: both biases (1: none)*",
    "probe_nonconverged": f"fraction of the batch whose free phase ended above residual {NONCONVERGED_TOL:g}",
    "probe_settled_on": "1: the batch was relaxed on past the training budget to settle; 0: not needed",
}

#: the keys (and ``alignment/<population>``) that compare with implicit differentiation or
#: exact-nudge: void where that reference cannot be trusted (``eqprop gradcheck`` withholds them)
EXACT_BASED = ("alignment", "cos_finite_nudge", "cos_asymmetry", "cos_implicit")

#: the notes a table prints under the lines of :data:`DIAGNOSTIC_HELP` that end in a marker
DIAGNOSTIC_NOTES = {
    "*": "over the recurrent parameters: the readout, whose gradient every estimator has "
         "exactly, is left out, so these differ from the table's totals",
}


def describe(key: str) -> str:
    """The line of :data:`DIAGNOSTIC_HELP` for ``key`` (``angle/h1-h2`` -> ``angle``'s,
    for that pair; ``alignment/h1`` -> ``alignment``'s, for that population); ``""`` for
    an unknown key."""
    base, _, part = key.partition("/")
    text = DIAGNOSTIC_HELP.get(base, "")
    if part and text:
        text = text.replace(", mean over pairs", "").split(" (")[0] + f", {'pair' if base == 'angle' else 'population'} {part}"
    return text


def weight_angles(model: EquilibriumModel) -> dict[str, float]:
    """Angle between each forward matrix and the transposed feedback (arXiv 2309.02214).

    **Arguments:**

    - ``model``: one network (not stacked over seeds); only a
      :class:`~eqprop.network.FeedbackModel` (e.g. a
      :class:`~eqprop.network.DenseNetwork`) has angles, from its ``feedback_pairs()``.

    **Returns:** ``{"angle/<src>-<dst>": degrees}`` (in ``[0, 180]``) for every pair of
    populations coupled both ways, ``src->dst`` being the projection listed first: the
    angle between ``W_{src->dst}`` and ``B_{dst->src}^T`` (a tied coupling counts as 0);
    with their mean ``"angle"`` as the first key. ``{}`` when there is no such pair (a
    feedforward network) or the model is not a ``FeedbackModel``.
    """
    if not isinstance(model, FeedbackModel):
        return {}
    out: dict[str, float] = {}
    for pair, (w, b) in model.feedback_pairs().items():
        if b is None:  # tied: the feedback is W^T by construction
            out[f"angle/{pair}"] = 0.0
        else:
            c = float(np.clip(cosine(w, b.T), -1.0, 1.0))
            out[f"angle/{pair}"] = math.degrees(math.acos(c))
    if out:
        out = {"angle": float(np.mean(list(out.values()))), **out}
    return out


def _exact_figures(model, x, a, examples: int):
    syms, losses = [], []
    b = jax.tree.leaves(a)[0].shape[0]
    for i in range(min(examples, b)):
        j = explicit_jacobian(model, x, a, i)
        sym, anti = 0.5 * (j + j.T), 0.5 * (j - j.T)
        ns, na = jnp.linalg.norm(sym), jnp.linalg.norm(anti)
        syms.append(ns / (ns + na))
        losses.append(0.5 * jnp.sum((j - j.T) ** 2) / j.shape[0])
    return jnp.mean(jnp.stack(syms)), jnp.mean(jnp.stack(losses))


def jacobian_figures(model: EquilibriumModel, x: Array, a: PyTree, drive: PyTree, key: Array, *,
                     exact_max: int = 2048, exact_examples: int = 4,
                     probes: int = 10) -> tuple[Array, Array, bool]:
    """The Jacobian figures ``jacobian_symmetry`` and ``homeo_loss`` (arXiv 2309.02214).

    ``J = dh/da - I`` at activity ``a`` (see :mod:`eqprop.homeostasis`): exact from the
    explicit Jacobian when the network is small, else by Gaussian probes with the
    estimators homeostasis trains with (:func:`eqprop.homeostasis.probe_figures`).

    **Arguments:**

    - ``model``: one :class:`~eqprop.network.InteractionModel`; ``x``: its input batch
      ``(B, ...)``;
    - ``a``: the batched activity (leaves ``(B, ...)``, the free fixed point's);
    - ``drive``: ``model.prepare(x)``; ``key``: PRNG key of the probes;
    - ``exact_max``: the explicit ``(N, N)`` Jacobian is formed when ``a`` has at most
      this many units per example (``N``); ``exact_examples``: over how many examples
      (the first ones) the exact figures are averaged; ``probes``: number of probes
      otherwise.

    **Returns:** ``(symmetry, homeo_loss, exact)``: ``||J_sym||_F / (||J_sym||_F +
    ||J_anti||_F)`` in ``[0, 1]``; ``||J - J^T||_F^2 / (2 N)`` per example; whether they
    are exact (a Python bool, static under ``jit``).
    """
    if neuron_count(a) <= exact_max:
        s, l = _exact_figures(model, x, a, exact_examples)
        return s, l, True
    s, l = probe_figures(model, a, drive, key, probes)
    return s, l, False


def _figures(model, x, y, estimator, solvers, key, exact_max, exact_examples, probes, free_steps):
    free = free_phase(model, x, solvers.free if free_steps is None
                      else dataclasses.replace(solvers.free, steps=free_steps))
    settled_on = jnp.asarray(False)
    if free_steps is None:  # the training budget: relax on where it leaves the batch unsettled
        settled_on = jnp.max(free.stats.residual) > NONCONVERGED_TOL
        free = jax.lax.cond(settled_on, lambda f: free_phase(model, x, settle(solvers.free), f.u),
                            lambda f: f, free)
    g_est, info = estimator(model, x, y, free, key)
    g_exact, _ = make_estimator("exact-nudge", solvers)(model, x, y, free, key)
    # implicit differentiation's error vector is the recurrent-backprop adjoint delta
    g_imp, implicit = make_estimator("implicit", solvers)(model, x, y, free, key)
    sym = loss = None
    if isinstance(model, InteractionModel):
        sym, loss, _ = jacobian_figures(model, x, model.activity(free.u), free.drive,
                                        jax.random.fold_in(key, 7), exact_max=exact_max,
                                        exact_examples=exact_examples, probes=probes)
    unsettled = jnp.mean(free.stats.residual > NONCONVERGED_TOL)
    return g_est, g_exact, g_imp, info.error_vector, implicit.error_vector, sym, loss, unsettled, settled_on


# the compiled figures, cached process-wide (one program per estimator, solver, model
# structure): for calls by hand; a training run compiles its own (`compiled_figures`)
_raw = eqx.filter_jit(_figures)


def compiled_figures() -> Any:
    """A compiled core of :func:`diagnostics` of the caller's own, to pass as its
    ``compiled``: its programs go when the caller drops it (a training program's
    per-epoch diagnostics), where the default keeps a program for every estimator and
    solver ever passed (a sweep of ``beta`` in one process added ~450 memory maps a
    run)."""
    return jit(_figures)


def _flat_network(grad: PyTree) -> Array:
    named = named_parameters(grad)
    keep = [k for k in named if not k.startswith("readout")] or list(named)
    return jnp.concatenate([jnp.ravel(named[k]) for k in keep])


def diagnostics(model: EquilibriumModel, x: Array, y: Array, estimator: Estimator,
                solvers: PhaseSolvers | None = None, key: Array | None = None, *,
                exact_max: int = 2048, exact_examples: int = 4,
                probes: int = 10, free_steps: int | None = None,
                compiled: Any = None) -> dict[str, float]:
    """All diagnostics of learning without weight symmetry on one batch (arXiv 2309.02214).

    Relaxes the batch once (the free phase), runs ``estimator``, generalized EP with the
    exact ``da/dbeta`` (``exact-nudge``) and implicit differentiation (``implicit``, whose
    error vector is the recurrent-backprop ``delta``) from that one free state, and takes
    the Jacobian figures there; the keys are those of the module doc.

    **Arguments:**

    - ``model``: one network (not stacked over seeds);
    - ``x``: input batch ``(B, ...)``; ``y``: its integer labels ``(B,)``;
    - ``estimator``: the gradient estimator under study (e.g. the config's);
    - ``solvers``: the free phase's solver (``solvers.free``), and the linear solver and
      ``converged_tol`` of the two exact estimators (default: the solvers ``estimator``
      carries, the rest :class:`~eqprop.solvers.PhaseSolvers`'s defaults);
    - ``key``: PRNG key of the estimators and the probes (default ``PRNGKey(0)``);
    - ``exact_max``, ``exact_examples``, ``probes``: see :func:`jacobian_figures`;
    - ``free_steps``: free-phase budget for this batch, so that the figures are taken at
      the fixed point they are defined at (the estimators' nudged phases and linear
      solves are unchanged). Default: ``solvers.free``, and where it leaves an example
      above :data:`~eqprop.guards.NONCONVERGED_TOL` the batch relaxes on from there
      (:func:`~eqprop.solvers.settle`, as :func:`eqprop.gradcheck.gradcheck`'s reference:
      the exact solves linearised at an unsettled state are not the gradient, and their
      linear solves may not converge at all);
    - ``compiled``: the compiled core to run, from :func:`compiled_figures` (default:
      one cached for the whole process).

    **Returns:** a flat ``{key: float}``: ``angle`` and ``angle/<src>-<dst>`` (degrees,
    when the network has pairs), ``jacobian_symmetry`` (in ``[0, 1]``) and ``homeo_loss``
    (for an :class:`~eqprop.network.InteractionModel`),
    ``alignment`` and ``alignment/<population>`` (cosines, when the estimator has an
    error vector), ``cos_finite_nudge``, ``cos_asymmetry``, ``cos_implicit`` (cosines
    over the recurrent parameters), ``probe_nonconverged`` (a fraction of the batch) and
    ``probe_settled_on`` (1.0 where the batch relaxed on past ``solvers.free``, else 0.0).

    **Raises:** ``ValueError`` when a solver cannot relax ``model`` (e.g. alternating
    updates of a network that is not bipartite); the estimators' own errors pass through.
    """
    if solvers is None:
        carried = {k: getattr(estimator, k) for k in ("free", "nudged", "linear", "converged_tol")
                   if getattr(estimator, k, None) is not None}
        solvers = PhaseSolvers(**carried)
    key = jax.random.PRNGKey(0) if key is None else key
    g_est, g_exact, g_imp, v, delta, sym, loss, unsettled, settled_on = (compiled or _raw)(
        model, x, y, estimator, solvers, key, exact_max, exact_examples, probes, free_steps)
    out: dict[str, float] = dict(weight_angles(model))
    if sym is not None:
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
    out["probe_settled_on"] = float(settled_on)
    return out
