"""The run summary: ``summary.json`` and the one-screen text printed at the end."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..guards import warned_epochs
from ..config import Config
from .rundir import RunDir

__all__ = ["summarize", "format_summary", "setting_fields"]


def setting_fields(config: Config) -> dict[str, Any]:
    """What a summary says of a run's setting: ``seeds``, ``data``, ``estimator``, and
    ``evaluated_on``: ``"validation"`` when ``data.validation > 0`` (the "test" figures are
    then of the part held out of the training set), else ``"test"``."""
    return {"seeds": config.train.seeds, "data": config.data.name,
            "estimator": config.estimator.name,
            "evaluated_on": "validation" if config.data.validation > 0 else "test"}


#: the parts of a run's wall time the summary names beside the batches (record key: words)
PARTS = {"eval_seconds": "evaluation", "compile_seconds": "compiling"}

#: wall time spent after each epoch's clock stopped, outside ``train_seconds`` (a review
#: read "6.1 s (of which ... diagnostics 6.1 s, compiling 4.7 s)")
BESIDES = {"diagnostics_seconds": "diagnostics", "stability_seconds": "stability figures"}


def summarize(run: RunDir, config: Config, *, status: str, best_acc: float | None,
              best_epoch: int | None, train_seconds: float,
              message: str | None = None, layout: str | None = None) -> dict[str, Any]:
    """The summary of ``run`` from its ``metrics.jsonl``.

    **Arguments:** ``status``: ``"completed"`` or ``"diverged"``; ``best_acc``,
    ``best_epoch``: the best test accuracy so far and its epoch; ``train_seconds``:
    wall time of all epochs (resumed parts included); ``message``: a note (the
    divergence message); ``layout``: where the run's last part ran
    (:meth:`eqprop.parallel.Layout.describe`).

    **Returns:** ``run_dir``, ``status``, ``epochs``, ``epochs_planned``, ``seeds``,
    ``data``, ``estimator``, ``final_test_acc``, ``final_test_loss``,
    ``final_train_acc``, ``best_test_acc``, ``best_epoch``, ``train_seconds``,
    ``ms_per_batch`` (median over epochs), ``eval_seconds`` and ``compile_seconds``
    (summed over the epochs: parts of ``train_seconds`` that are not the batches' steps),
    ``diagnostics_seconds`` and ``stability_seconds`` (summed: after each epoch's clock
    stopped, outside ``train_seconds``), ``layout`` (when given), when evaluated
    ``final_test_acc_per_seed``, ``final_test_acc_mean``, ``final_test_acc_std``, and
    when pruned ``sparsity`` (mean over seeds), ``connections`` and
    ``connections_removed`` (of the last pruning; lists over seeds when ``seeds > 1``),
    and where estimates failed their checks ``warned_epochs``: the epochs each kind of
    warning fired in (:func:`eqprop.guards.warned_epochs`; shown or thinned out).
    """
    records = run.read_metrics()
    evald = [r for r in records if r.get("test_acc") is not None]
    final = evald[-1] if evald else None
    ms = [r["ms_per_batch"] for r in records if r.get("ms_per_batch") is not None]
    out: dict[str, Any] = {
        "run_dir": str(run.path), "status": status,
        "epochs": records[-1]["epoch"] if records else 0,
        "epochs_planned": config.train.epochs, **setting_fields(config),
        "final_test_acc": final["test_acc"] if final else None,
        "final_test_loss": final["test_loss"] if final else None,
        "final_train_acc": records[-1]["train_acc"] if records else None,
        "best_test_acc": best_acc, "best_epoch": best_epoch,
        "train_seconds": train_seconds,
        "ms_per_batch": float(np.median(ms)) if ms else None,
        # where the wall time went besides the batches (a review read the total as training)
        **{key: float(sum(r.get(key) or 0.0 for r in records)) for key in (*PARTS, *BESIDES)},
    }
    if layout is not None:
        out["layout"] = layout
    if final is not None:
        per = (final.get("per_seed") or {}).get("test_acc") or [final["test_acc"]]
        out["final_test_acc_per_seed"] = per
        out["final_test_acc_mean"] = float(np.mean(per))
        out["final_test_acc_std"] = float(np.std(per))
    if records and (records[-1].get("per_seed") or {}).get("train_acc"):
        out["final_train_acc_std"] = float(np.std(records[-1]["per_seed"]["train_acc"]))
    pruned = [r for r in records if r.get("connections_removed") is not None]
    if pruned:  # the last pruning's count (a review found it only as a fraction per epoch)
        last = pruned[-1]
        per = last.get("per_seed") or {}
        out["sparsity"] = last["sparsity"]
        for key in ("connections", "connections_removed"):
            out[key] = per.get(key) or last[key]
    warned = warned_epochs(records)
    if warned:  # every epoch counted, the warnings shown or thinned out (guards.Thinning)
        out["warned_epochs"] = warned
    if message:
        out["message"] = message
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of training (``s`` from :func:`summarize`)."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    lines = [f"run        {s['run_dir']}  ({s['status']})",
             f"data       {s['data']}, estimator {s['estimator']}, seeds {s['seeds']}",
             f"epochs     {s['epochs']}/{s['epochs_planned']}",
             ("val acc    final " if s.get("evaluated_on") == "validation" else "test acc   final ")
             + pct(s['final_test_acc'])
             + (f" ± {pct(s.get('final_test_acc_std'))} over {s['seeds']} seeds"
                if s["seeds"] > 1 and s.get("final_test_acc_std") is not None else "")
             + f", best {pct(s['best_test_acc'])}"
             + (f" (epoch {s['best_epoch']})" if s["best_epoch"] else ""),
             f"train acc  final {pct(s['final_train_acc'])}"
             + (f" ± {pct(s['final_train_acc_std'])} over {s['seeds']} seeds"
                if s["seeds"] > 1 and s.get("final_train_acc_std") is not None else ""),
             f"time       {s['train_seconds']:.1f} s"
             + (f" (of which {', '.join(f'{PARTS[k]} {s[k]:.1f} s' for k in PARTS if s.get(k))})"
                if any(s.get(k) for k in PARTS) else "")
             + (f", {s['ms_per_batch']:.1f} ms/batch" if s["ms_per_batch"] else "")
             + (f" on {s['layout']}" if s.get("layout") else "")
             + (f"; besides: {', '.join(f'{BESIDES[k]} {s[k]:.1f} s' for k in BESIDES if s.get(k))}"
                if any(s.get(k) for k in BESIDES) else "")]
    if s.get("connections_removed") is not None:
        removed, total = s["connections_removed"], s["connections"]
        if isinstance(removed, list):
            def span(v):
                return f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}"
            lines.append(f"pruning    sparsity {s['sparsity']:.3f} (mean over {len(removed)} seeds): "
                         f"{span(removed)} of {span(total)} connections removed per seed")
        else:
            lines.append(f"pruning    {removed} of {total} connections removed (sparsity "
                         f"{s['sparsity']:.3f})")
    warned = s.get("warned_epochs")
    if isinstance(warned, dict) and warned:
        lines.append("warnings   " + "; ".join(f"{kind}: {n} of {s['epochs']} epochs"
                                              for kind, n in warned.items())
                     + " (each epoch's figures: metrics.jsonl; eqprop report lists them)")
    if s.get("message"):
        lines.append(f"note       {s['message']}")
    return "\n".join(lines)
