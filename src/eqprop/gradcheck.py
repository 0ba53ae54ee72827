"""Gradient check: every estimator against the exact (implicit-differentiation) gradient.

On one batch, for each estimator SPEC: cosine similarity and relative error of its
gradient against the implicit gradient, per parameter and in total; the cosine of each
population's error vector (its ``da/dbeta`` estimate) against the recurrent-backprop
``delta``; and the relaxation figures. With ``diagnostics_estimator``, the asymmetry
diagnostics of :mod:`eqprop.diagnostics` (``angle``, ``jacobian_symmetry``, ``alignment``,
``cos_finite_nudge``, ``cos_asymmetry``, ``homeo_loss``, ...) are added at the top level.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .estimate import Estimator, free_phase, make_estimator, parse_spec
from .network.base import EquilibriumModel, named_parameters
from .relax import Dynamics, RelaxStats


def cosine(a: jax.Array, b: jax.Array) -> float:
    """Cosine similarity of two arrays (flattened); 0 when either is zero."""
    a, b = jnp.ravel(a), jnp.ravel(b)
    den = jnp.linalg.norm(a) * jnp.linalg.norm(b)
    return float(jnp.where(den > 0, jnp.vdot(a, b) / jnp.where(den > 0, den, 1.0), 0.0))


def relative_error(a: jax.Array, b: jax.Array) -> float:
    """``||a - b|| / ||b||`` (flattened)."""
    return float(jnp.linalg.norm(jnp.ravel(a) - jnp.ravel(b)) / jnp.maximum(jnp.linalg.norm(jnp.ravel(b)), 1e-30))


def compare(grad: Any, reference: Any) -> dict[str, Any]:
    """Per-parameter and total cosine / relative error of ``grad`` against ``reference``."""
    g, r = named_parameters(grad), named_parameters(reference)
    params = {k: {"cosine": cosine(g[k], r[k]), "relative_error": relative_error(g[k], r[k])} for k in r}
    flat_g = jnp.concatenate([jnp.ravel(g[k]) for k in r])
    flat_r = jnp.concatenate([jnp.ravel(r[k]) for k in r])
    return {
        "total": {"cosine": cosine(flat_g, flat_r), "relative_error": relative_error(flat_g, flat_r)},
        "parameters": params,
    }


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
    dynamics: Dynamics,
    *,
    key: jax.Array | None = None,
    diagnostics_estimator: Estimator | None = None,
    diagnostics_free_steps: int | None = None,
) -> dict[str, Any]:
    """Compare each estimator (keyed by its SPEC) with the implicit gradient on ``(x, y)``.

    Returns ``{spec: {"total", "parameters", "error_vectors", "phases"}, "relaxation": {...},
    "reference": "implicit"}``, plus the diagnostics of ``diagnostics_estimator`` at the top
    level when given (``diagnostics_free_steps``: their free-phase budget, see
    :func:`eqprop.diagnostics.diagnostics`).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    for est in estimators.values():
        est.check(model)
    free = eqx.filter_jit(free_phase)(model, x, dynamics)
    reference = make_estimator("implicit", dynamics)
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
    if diagnostics_estimator is not None:
        from .diagnostics import diagnostics

        out.update(diagnostics(model, x, y, diagnostics_estimator, dynamics, key,
                               free_steps=diagnostics_free_steps))
    return out


def build_specs(specs: Sequence[str], dynamics: Dynamics, defaults: Mapping[str, Any]) -> dict[str, Estimator]:
    """``{spec: estimator}`` for SPEC strings (settings not given come from ``defaults``)."""
    return {s: parse_spec(s, dynamics, defaults) for s in specs}


def format_table(result: Mapping[str, Any]) -> str:
    """A human-readable table of a :func:`gradcheck` result."""
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
    diag = {k: v for k, v in result.items() if isinstance(v, float)}
    if diag:
        lines += ["", "asymmetry diagnostics (configured estimator; see eqprop.diagnostics):"]
        kw = max(len(k) for k in diag) + 2
        lines += [f"  {k:<{kw}}{v:.6g}" for k, v in diag.items()]
    return "\n".join(lines)


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form: plain floats and bools only."""
    return jax.tree.map(lambda v: float(v) if isinstance(v, (np.floating, float)) else v, dict(result))
