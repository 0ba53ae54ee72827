"""Plots and a markdown summary of one or more run directories (matplotlib, Agg backend).

Writes into the output directory: ``accuracy.png`` (train/test accuracy per epoch),
``loss.png``, ``relaxation.png`` (free_steps_mean, residual_mean, and where the runs
have them the estimator's nudged_residual_mean, nudged_nonconverged_fraction,
linear_residual_mean, and hEP's hep_decay_mean and hep_error_mean), ``diagnostics.png``
(any other numeric per-epoch keys, e.g. ``angle``, ``alignment``, ``homeo_loss``; only
when present; keys sharing a prefix before ``/`` such as ``angle`` and ``angle/h1-h2``, and
the bias cosines ``cos_*``, share a panel) and ``report.md`` (a table of the runs with
the last epoch's estimate figures and sparsity (pruned runs), a list of the epochs whose estimate figures are beyond
their limit (:func:`eqprop.guards.estimate_problems`), and links to the plots). Several
runs are overlaid, labelled by their directory name.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from ..guards import NONCONVERGED_TOL, EqpropWarning, circle_brief, estimate_problems, share
from .records import ESTIMATE_KEYS
from .rundir import RunDir, line_numbers
from .summary import setting_fields

__all__ = ["report", "KNOWN_KEYS"]

KNOWN_KEYS = {
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_acc_std", "epoch_seconds",
    "ms_per_batch", "free_steps_mean", "residual_mean", "nonconverged_fraction", "batches",
    "compile_seconds", "diagnostics_seconds", "eval_seconds", *ESTIMATE_KEYS.values(),
}

#: the free phase's unsettled fraction in relaxation.png, drawn (as the estimator's panels)
#: when a run has it
_FREE_FRACTION_PANEL = (f"free phases above {NONCONVERGED_TOL:g} (fraction)",
                        [("nonconverged_fraction", "-")], False)

#: panels of the estimator's figures in relaxation.png, each drawn when a run has it
_ESTIMATE_PANELS = (
    ("nudged residual (mean)", [("nudged_residual_mean", "-")], True),
    (f"nudged phases above {NONCONVERGED_TOL:g} (fraction)", [("nudged_nonconverged_fraction", "-")], False),
    ("linear-solve residual (mean)", [("linear_residual_mean", "-")], True),
    # short enough for its panel (a review read "...estimated erro"); on a log scale, so
    # one epoch's outlier mean (6.5) does not flatten the others
    ("hEP circle: decay rate, est. error", [("hep_decay_mean", "-"), ("hep_decay_median", ":"),
                                            ("hep_error_mean", "--")], True),
)

_STYLES = ("-", "--", ":", "-.")


def _group(keys: list[str]) -> list[tuple[str, list[tuple[str, str]], bool]]:
    """Panels for extra keys: ``x`` with ``x/*``; every ``cos_*`` together; the homeostatic
    losses (``homeo_loss``, ``train_homeo_loss``) together on a log scale."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        if k.startswith("cos_"):
            g = "bias cosines"
        elif k in ("homeo_loss", "train_homeo_loss"):
            g = "homeostatic loss"
        else:
            g = k.split("/", 1)[0]
        groups.setdefault(g, []).append(k)
    return [(g, [(k, _STYLES[i % len(_STYLES)]) for i, k in enumerate(ks)],
             g == "homeostatic loss") for g, ks in groups.items()]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(r["epoch"])
            ys.append(float(v))
    return xs, ys


def _extra_keys(runs: list[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    keys: list[str] = []
    for _, records in runs:
        for r in records:
            for k, v in r.items():
                if (k not in KNOWN_KEYS and k not in keys and isinstance(v, (int, float))
                        and not isinstance(v, bool)):
                    keys.append(k)
    return keys


def _seeds_tag(records: list[dict[str, Any]]) -> str:
    """`` (mean of K seeds)`` for a run of ``K > 1`` seeds, whose record keys are means over
    the seeds (a review could not tell the mean from seed 0), else ``""``."""
    per = (records[-1].get("per_seed") or {}) if records else {}
    k = max((len(v) for v in per.values() if isinstance(v, list)), default=0)
    return f" (mean of {k} seeds)" if k > 1 else ""


def _plot(path: Path, runs, panels: list[tuple[str, list[tuple[str, str]], bool]]) -> None:
    """One figure, one panel per ``(title, [(key, style)], log_y)``; one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys, log_y) in zip(axes.ravel(), panels):
        epochs = set()
        for i, (name, records) in enumerate(runs):
            for j, (key, style) in enumerate(keys):
                xs, ys = _series(records, key)
                if xs:
                    epochs.update(xs)
                    label = (f"{name} {key}" if len(keys) > 1 else name) + _seeds_tag(records)
                    # a marker per series too: at one epoch the line styles do not show
                    ax.plot(xs, ys, style, color=colours[i % len(colours)], label=label,
                            marker="os^vD"[j % 5], markersize=3 if len(xs) > 1 else 5)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
        if len(epochs) == 1:  # one epoch: its own tick, not 0.95 .. 1.05
            (e,) = epochs
            ax.set_xlim(e - 1, e + 1)
            ax.set_xticks([e])
        if log_y and any(_series(r, k)[1] and min(_series(r, k)[1]) > 0
                         for _, r in runs for k, _ in keys):
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: the summary.json fields the report shows, and the types it accepts for each
_SUMMARY_TYPES = {"status": str, "data": str, "estimator": str, "evaluated_on": str,
                  "seeds": int, "epochs": int, "train_seconds": float, "ms_per_batch": float}


def _checked_summary(run: RunDir) -> dict[str, Any]:
    """The fields of ``run``'s ``summary.json`` the report shows, each of its type (a
    finite number for the floats), the others warned about and left out; ``{}`` with a
    warning when the file exists but is not a JSON object (a review's list, 100 MB of
    junk: silently "running or stopped")."""
    import math

    summary = run.read_summary()
    if summary is None:
        if run.summary.exists():
            warnings.warn(f"report: {run.summary}: not a readable JSON object (or over 1 MiB); "
                          "left out", EqpropWarning, stacklevel=3)
        return {}
    out, bad = {}, []
    for key, v in summary.items():
        kind = _SUMMARY_TYPES.get(key)
        if kind is None or v is None:
            out[key] = v
        elif kind is float and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
        elif kind is not float and isinstance(v, kind) and not isinstance(v, bool):
            out[key] = v
        else:
            bad.append(key)
    if bad:
        warnings.warn(f"report: {run.summary}: {', '.join(bad)} not of the type the trainer writes; "
                      "left out", EqpropWarning, stacklevel=3)
    return out


def _cell(v: Any) -> str:
    """``v`` as one markdown table cell: ``|`` escaped, line breaks as spaces."""
    return " ".join(str(v).replace("|", "\\|").split())


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.2f}%"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _estimate_cell(rec: dict[str, Any]) -> str:
    """The estimator's figures of a record, for the table ("-" when it has none)."""
    parts = []
    if rec.get("nudged_residual_mean") is not None:
        parts.append(f"nudged residual {rec['nudged_residual_mean']:.1e} "
                     f"({share(rec.get('nudged_nonconverged_fraction') or 0)} > {NONCONVERGED_TOL:g})")
    if rec.get("linear_residual_mean") is not None:
        parts.append(f"linear residual {rec['linear_residual_mean']:.1e}")
    if (circle := circle_brief(rec)) is not None:
        parts.append(circle)
    return "; ".join(parts) or "-"


def _from_config(run: RunDir) -> dict[str, Any]:
    """What a run's summary says of its setting, read from its config.toml (a run stopped
    before its summary was written, or still running, has none)."""
    from ..config import ConfigError, load_run_config

    try:
        c = load_run_config(run.config)
    except (ConfigError, ValueError, OSError):  # a config from another version: the summary's or '-'
        return {}
    return setting_fields(c)


def report(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write the plots and ``report.md`` for ``run_dirs`` into ``out_dir``; return report.md."""
    runs = []
    summaries = []
    empty = []
    for d in run_dirs:
        run = RunDir(d).require()
        records = run.read_metrics()
        if not records:  # killed before its first epoch ended: left out, said below
            empty.append(run)
            continue
        runs.append((run.name, records))
        summary = _checked_summary(run)
        summaries.append((run, records, {**_from_config(run), **summary}))
        # a line read_metrics skips is left out of the report: said, never silent
        bad = run.unreadable_metric_lines()
        if bad:
            warnings.warn(f"report: {run.metrics}: {line_numbers(bad)} not a record the trainer "
                          "wrote (torn by a kill, edited: a figure that is not a finite number, an "
                          "epoch out of order); left out",
                          EqpropWarning, stacklevel=2)
        if isinstance(summary.get("epochs"), int) and summary["epochs"] > records[-1]["epoch"]:
            warnings.warn(f"report: {run.path}: summary.json says {summary['epochs']} epochs, "
                          f"metrics.jsonl holds records up to epoch {records[-1]['epoch']}; the "
                          "report shows those", EqpropWarning, stacklevel=2)
    if not runs:
        raise ValueError(f"{empty[0].path}: no metrics.jsonl records yet" if len(empty) == 1 else
                         f"no run has metrics.jsonl records yet ({', '.join(str(r.path) for r in empty)})")
    for run in empty:
        warnings.warn(f"report: {run.path} has no metrics.jsonl records yet; left out",
                      EqpropWarning, stacklevel=2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "accuracy.png": [("accuracy", [("train_acc", "--"), ("test_acc", "-")], False)],
        "loss.png": [("loss", [("train_loss", "--"), ("test_loss", "-")], True)],
        "relaxation.png": [("free steps (mean)", [("free_steps_mean", "-")], False),
                           ("residual (mean)", [("residual_mean", "-")], True)]
        + [panel for panel in (_FREE_FRACTION_PANEL, *_ESTIMATE_PANELS)
           if any(_series(records, key)[0] for _, records in runs for key, _ in panel[1])],
    }
    extra = _extra_keys(runs)
    if extra:
        plots["diagnostics.png"] = _group(extra)
    for name, panels in plots.items():
        _plot(out / name, runs, panels)

    lines = ["# eqprop report", "",
             "| run | data | estimator | seeds | epochs | final test acc | best test acc "
             "| final train acc | estimate (last epoch) | sparsity | time (s) | ms/batch | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    warned: list[str] = []
    for run, records, s in summaries:
        last = records[-1]
        evald = [r for r in records if r.get("test_acc") is not None]
        final = evald[-1]["test_acc"] if evald else None
        best = max((r["test_acc"] for r in evald), default=None)
        std = evald[-1].get("test_acc_std") if evald else None
        final_txt = _fmt(final, True) + (f" ± {_fmt(std, True)}" if std is not None else "")
        time_s = s.get("train_seconds") or sum(r.get("epoch_seconds") or 0 for r in records)
        lines.append(
            f"| {_cell(run.name)} | {_cell(s.get('data', '-'))}"
            + (" (validation split)" if s.get("evaluated_on") == "validation" else "")
            + f" | {_cell(s.get('estimator', '-'))} "
            f"| {s.get('seeds', '-')} | {last['epoch']} | {final_txt} | {_fmt(best, True)} "
            f"| {_fmt(last.get('train_acc'), True)} | {_estimate_cell(last)} "
            f"| {_fmt(last.get('sparsity'), True) if last.get('sparsity') is not None else '-'} "
            f"| {_fmt(float(time_s))} "
            f"| {_fmt(s.get('ms_per_batch'))} | {_cell(s.get('status', 'running or stopped'))} |")
        for r in records:
            for problem in estimate_problems(r):
                warned.append(f"- {run.name}, epoch {r['epoch']}: {problem}")
    if empty:
        lines += ["", "Left out, no epoch recorded yet: " + ", ".join(r.name for r in empty) + "."]
    if warned:
        lines += ["", "## Estimates whose assumptions failed", "", *warned]
    lines += ["", *(f"![{n[:-4]}]({n})" for n in plots), ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return md
