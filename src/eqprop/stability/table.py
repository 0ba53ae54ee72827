"""The table ``eqprop stability`` prints from :func:`~eqprop.stability.certify`'s dicts."""

from __future__ import annotations

import re
from typing import Any

from ..guards import share

__all__ = ["format_table"]


def _cell(v: float | None, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def _seed_list(seeds: list[int]) -> str:
    """``[0, 1, 2, 3, 5]`` as ``"0-3, 5"``."""
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def _grouped(notes: list[tuple[int, str]]) -> list[str]:
    """One line per kind of note: seeds whose notes differ only in their figures share
    one, each figure that differs given as its range over them (a 10-seed DEEP table
    repeated one long sentence per seed; a review found it hard to read)."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for seed, text in notes:
        groups.setdefault(_NUMBER.sub("#", text), []).append((seed, text))
    out = []
    for template, members in groups.items():
        if len(members) == 1:
            out.append(f"seed {members[0][0]}: {members[0][1]}")
            continue
        figures = [_NUMBER.findall(text) for _, text in members]
        slots = iter(zip(*figures))

        def fill(_match: re.Match) -> str:
            values = next(slots)
            if len(set(values)) == 1:
                return values[0]
            low, high = min(values, key=float), max(values, key=float)
            return f"{low} to {high}"

        out.append(f"seeds {_seed_list([seed for seed, _ in members])}: "
                   + re.sub("#", fill, template))
    return out


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
            notes.append((r["seed"], r["reason"]))
        g = r.get("gershgorin")
        if pr is not None and g is not None:
            papers.append(f"{r['seed']:<6}{share(pr['saturated_fraction_mean']):>10}"
                          f"{'yes' if g['holds'] else 'no':>7}{g['row_margin_min']:>12.3g}"
                          f"{g['column_margin_min']:>15.3g}{g['column_sum_max']:>20.3g}")
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
    lines += _grouped(notes)
    if papers:
        lines.append("the paper's Gershgorin test on the whole J, for comparison (on the DEEP "
                     "dynamics it cannot hold: J has a zero eigenvalue; on a bound: the mean "
                     "fraction of the neurons):")
        lines.append(f"{'seed':<6}{'on a bound':>10}{'holds':>7}{'row margin':>12}"
                     f"{'column margin':>15}{'largest column sum':>20}")
        lines += papers
    return "\n".join(lines)
