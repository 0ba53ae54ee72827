"""The table ``eqprop stability`` prints from :func:`~eqprop.stability.certify`'s dicts."""

from __future__ import annotations

from typing import Any

from ..guards import share

__all__ = ["format_table"]


def _cell(v: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(result: dict[str, Any]) -> str:
    """The table ``eqprop stability`` prints: one row per seed (certified, method, the
    margin of that method, the largest spectral radius of the map the solver iterates
    (``I + dt J``, or the alternating sweep's ``dS/du`` when ``result["update"]`` is
    ``"alternating"``), the contraction bound, the Lyapunov and
    projected figures, the perturbation test), then why a seed is not certified.

    **Arguments:** ``result``: ``{"target", "model", "dt", "update", "examples", "per_seed": [...]}``
    with one :func:`certify` dict (plus ``seed``) per seed.
    """
    lines = [f"{result['target']}: {result['model']}, dt {result['dt']:g}, "
             f"{result['examples']} examples per seed"]
    alternating = result.get("update") == "alternating"
    rho = "rho(sweep)" if alternating else "rho(I+dtJ)"
    head = (f"{'seed':<6}{'certified':<11}{'method':<16}{'margin':>9}{rho:>12}"
            f"{'contraction':>13}{'lyapunov P>0':>14}{'projected':>11}{'returned':>10}  why not")
    lines.append(head)
    notes, papers = [], []
    for r in result["per_seed"]:
        key = {"projected": "projected_radius", "contraction": "contraction"}.get(r["method"], "spectral")
        margin = r["margins"].get(key)
        if r["method"] == "projected" and r["margins"].get("outward") is not None:
            margin = min(margin, r["margins"]["outward"])
        ly = r.get("lyapunov")
        pr = r.get("projected")
        pt = r.get("perturbation")
        pct = lambda d, k: "-" if d is None else share(d[k])  # noqa: E731
        lines.append(
            f"{r['seed']:<6}{'yes' if r['certified'] else 'NO':<11}{r['method']:<16}"
            f"{_cell(margin):>9}{_cell(r['spectral_radius']['max']):>12}"
            f"{_cell(r['contraction_bound']):>13}{pct(ly, 'certified_fraction'):>14}"
            f"{pct(pr, 'certified_fraction'):>11}{pct(pt, 'returned_fraction_min'):>10}"
            f"  {r.get('why') or ('-' if r['certified'] else 'see below')}".rstrip())
        if r["reason"]:
            notes.append(f"seed {r['seed']}: {r['reason']}")
        g = r.get("gershgorin")
        if pr is not None and g is not None:
            papers.append(f"seed {r['seed']}: {share(pr['saturated_fraction_mean'])} of the neurons on "
                         f"a bound; {'holds' if g['holds'] else 'fails'}: row margin "
                         f"{g['row_margin_min']:.3g}, column margin {g['column_margin_min']:.3g}, "
                         f"largest column sum {g['column_sum_max']:.3g}")
    lines.append("margin: of the method's certificate (> 0: it holds); " + (
                 "rho(sweep): of the alternating sweep the solver runs, the largest over the "
                 "examples (dynamics.update = 'alternating'; the contraction bound, of the "
                 "synchronous map, certifies nothing here)" if alternating else
                 "rho(I+dtJ): over every neuron, the largest over the examples")
                 + "; lyapunov P>0: the examples whose P solving J^T P + P J = -I is positive definite, "
                 "projected: the examples whose certificate holds at their state; returned: "
                 "perturbations that came back")
    if any(r["method"] == "projected" for r in result["per_seed"]):
        lines.append("a projected (clipped) model is certified by the projected certificate alone: "
                     "rho(I+dtJ) >= 1 over every neuron is expected there (docs/stability.md)")
    lines += notes
    if papers:
        lines.append("the paper's Gershgorin test on the whole J, for comparison (on the DEEP "
                     "dynamics it cannot hold: J has a zero eigenvalue):")
        lines += papers
    return "\n".join(lines)
