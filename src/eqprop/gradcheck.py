"""Gradient check: every estimator against the exact (implicit-differentiation) gradient.

On one batch, for each estimator SPEC: cosine similarity and relative error of its
gradient against the implicit gradient, per parameter and in total; the cosine of each
population's error vector (its ``da/dbeta`` estimate) against the recurrent-backprop
``delta``; and the relaxation figures.

``eqprop gradcheck`` prints this beside the asymmetry diagnostics of
:mod:`eqprop.diagnostics` (``angle``, ``jacobian_symmetry``, ``alignment``,
``cos_finite_nudge``, ``cos_asymmetry``, ``homeo_loss``, ...) of the config's estimator:
the command composes the two (:func:`format_table` takes the diagnostics as its second
argument, the JSON holds them at the top level); this module does not import
:mod:`eqprop.diagnostics`, and both take their comparisons from :mod:`eqprop.metrics`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .estimate import Estimator, free_phase, make_estimator, parse_spec
from .metrics import compare, cosine
from .network.base import EquilibriumModel
from .relax import RelaxStats
from .solvers import PhaseSolvers

__all__ = ["gradcheck", "build_specs", "format_table", "to_json"]


def _stats(stats: RelaxStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {
        "steps": int(jnp.max(stats.steps)),
        "residual_max": float(jnp.max(stats.residual)),
        "residual_mean": float(jnp.mean(stats.residual)),
        "finite": bool(jnp.all(stats.nonfinite_step < 0)),
    }


def gradcheck(
    model: EquilibriumModel,
    x: jax.Array,
    y: jax.Array,
    estimators: Mapping[str, Estimator],
    solvers: PhaseSolvers,
    *,
    key: jax.Array | None = None,
) -> dict[str, Any]:
    """Compare each estimator with the implicit gradient on the batch ``(x, y)``.

    The batch is relaxed once (``solvers.free``); every estimator, and implicit
    differentiation (recurrent backprop, the exact gradient of the loss at the fixed
    point), start from that free state.

    **Arguments:**

    - ``model``: one network (not stacked over seeds);
    - ``x``: input batch ``(B, ...)``; ``y``: its integer labels ``(B,)``;
    - ``estimators``: ``{spec: estimator}``, e.g. from :func:`build_specs`;
    - ``solvers``: the free phase's solver, and the linear solver and ``converged_tol``
      of the reference (the estimators carry their own solvers);
    - ``key``: PRNG key passed to every estimator (default ``PRNGKey(0)``).

    **Returns:** ``{spec: {"total": {"cosine", "relative_error"}, "parameters": {name:
    {"cosine", "relative_error"}}, "error_vectors": {population: cosine}, "phases":
    {"steps", "residual_max", "residual_mean", "finite"} | None}, ..., "relaxation":
    {"free": {...}, "implicit_solve": {...}}, "reference": "implicit"}``, Python floats,
    ints and bools. ``error_vectors`` holds the batch cosine of each population's error
    vector with the recurrent-backprop ``delta`` (``{}`` for an estimator without one,
    e.g. ``bptt``).

    **Raises:** ``ValueError`` (from ``Estimator.check``) when an estimator cannot handle
    ``model``, before anything is computed, or when ``solvers.free`` cannot relax it.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    for est in estimators.values():
        est.check(model)
    free = eqx.filter_jit(free_phase)(model, x, solvers.free)
    reference = make_estimator("implicit", solvers)
    g_ref, info_ref = eqx.filter_jit(reference)(model, x, y, free, key)
    delta = info_ref.error_vector
    out: dict[str, Any] = {}
    for spec, est in estimators.items():
        g, info = eqx.filter_jit(est)(model, x, y, free, key)
        entry = compare(g, g_ref)
        entry["error_vectors"] = (
            {p: cosine(info.error_vector[p], delta[p]) for p in delta}
            if info.error_vector is not None else {}
        )
        entry["phases"] = _stats(info.phases)
        out[spec] = entry
    out["relaxation"] = {"free": _stats(free.stats), "implicit_solve": _stats(info_ref.phases)}
    out["reference"] = "implicit"
    return out


def build_specs(specs: Sequence[str], solvers: PhaseSolvers,
                defaults: Mapping[str, Any]) -> dict[str, Estimator]:
    """Estimators from SPEC strings (``"hep:points=6:beta=0.5"``).

    **Arguments:** ``specs``: SPEC strings; ``solvers``: the solvers they are wired to;
    ``defaults``: settings a SPEC does not give (e.g. the config's ``[estimator]``).

    **Returns:** ``{spec: estimator}`` in the order given.

    **Raises:** ``ValueError`` for an unknown estimator name or setting (one line).
    """
    return {s: parse_spec(s, solvers, defaults) for s in specs}


def format_table(result: Mapping[str, Any], diagnostics: Mapping[str, float] | None = None) -> str:
    """A human-readable table of a :func:`gradcheck` result.

    **Arguments:**

    - ``result``: what :func:`gradcheck` returns;
    - ``diagnostics``: the ``{key: float}`` of :func:`eqprop.diagnostics.diagnostics` on
      the same batch, listed after the table (default: none).

    **Returns:** the table as one string (no trailing newline).
    """
    specs = [k for k, v in result.items()
             if k not in ("relaxation", "reference") and isinstance(v, Mapping)]
    if not specs:
        return "(no estimators)"
    params = list(result[specs[0]]["parameters"])
    pops = sorted({p for s in specs for p in result[s]["error_vectors"]})
    width = max(12, *(len(s) for s in specs)) + 2
    lines = ["gradient check against implicit differentiation (exact gradient at the fixed point)", ""]
    head = f"{'estimator':<{width}}{'cosine':>10}{'rel.err':>10}" + "".join(f"{'cos a/' + p:>12}" for p in pops)
    lines += [head, "-" * len(head)]
    for s in specs:
        t = result[s]["total"]
        ev = result[s]["error_vectors"]
        lines.append(
            f"{s:<{width}}{t['cosine']:>10.6f}{t['relative_error']:>10.2e}"
            + "".join(f"{ev[p]:>12.6f}" if p in ev else f"{'-':>12}" for p in pops)
        )
    lines += ["", "per parameter (cosine / relative error):"]
    pw = max(len(p) for p in params) + 2
    lines.append(f"{'parameter':<{pw}}" + "".join(f"{s:>{max(len(s), 20) + 2}}" for s in specs))
    for p in params:
        row = f"{p:<{pw}}"
        for s in specs:
            q = result[s]["parameters"][p]
            row += f"{q['cosine']:>{max(len(s), 20) - 8}.5f} / {q['relative_error']:.1e}"
        lines.append(row)
    free = result["relaxation"]["free"]
    lines += ["", f"free phase: {free['steps']} steps, residual max {free['residual_max']:.2e} "
              f"mean {free['residual_mean']:.2e}, finite: {free['finite']}"]
    for s in specs:
        ph = result[s].get("phases")
        if ph:
            lines.append(f"{s}: {ph['steps']} steps (max over phases), residual max {ph['residual_max']:.2e}")
    diag = {k: v for k, v in (diagnostics or {}).items() if isinstance(v, float)}
    if diag:
        lines += ["", "asymmetry diagnostics (configured estimator; see eqprop.diagnostics):"]
        kw = max(len(k) for k in diag) + 2
        lines += [f"  {k:<{kw}}{v:.6g}" for k, v in diag.items()]
    return "\n".join(lines)


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a result (e.g. a :func:`gradcheck` result merged with the
    diagnostics): NumPy floats become plain floats; other leaves are kept."""
    return jax.tree.map(lambda v: float(v) if isinstance(v, (np.floating, float)) else v, dict(result))
