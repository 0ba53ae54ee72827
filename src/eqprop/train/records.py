"""Epoch records: running sums over an epoch's batches, and the record they become.

The record of epoch ``e`` (one line of ``metrics.jsonl``, and what every logger
receives) holds ``epoch``, ``train_loss``, ``train_acc`` (example-weighted means),
``test_loss``, ``test_acc`` (``None`` when not evaluated), ``free_steps_mean``,
``residual_mean``, ``nonconverged_fraction`` (means over batches), ``epoch_seconds``,
``ms_per_batch`` (the compiling first batch excluded), ``batches``, ``eval_seconds``
(the test-set evaluation's share of ``epoch_seconds``, when evaluated); the estimator's
figures where they apply (:data:`ESTIMATE_KEYS`, means over batches):
``nudged_residual_mean`` and ``nudged_nonconverged_fraction`` (nudged phases: the mean
residual over every (phase, example), and the fraction above
:data:`~eqprop.guards.NONCONVERGED_TOL`), ``linear_residual_mean`` (exact estimators),
``hep_decay_mean``, ``hep_decay_median`` (the mean over batches of each batch's
median rate), ``hep_error_mean`` and ``hep_beta_suggested`` (hEP's circle, ``N >= 2``);
with homeostasis ``train_homeo_loss`` (mean over the batches where it was applied); the
first epoch after a start ``compile_seconds``; with ``K > 1`` seeds the
means over seeds, ``test_acc_std`` and ``per_seed`` (each key's ``K`` values).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SUM_KEYS", "ESTIMATE_KEYS", "TIMING_KEYS", "zero_sums", "sums_to_json", "sums_from_json", "accumulate",
           "epoch_record"]

#: the record keys that are wall-clock times: they differ between two runs that are
#: otherwise identical (a resumed run and an uninterrupted one, two layouts)
TIMING_KEYS = ("epoch_seconds", "ms_per_batch", "compile_seconds", "eval_seconds",
               "diagnostics_seconds", "stability_seconds")

#: the running sums of an epoch (checkpointed mid-epoch as ``partial``)
SUM_KEYS = ("examples", "batches", "loss", "acc", "free_steps", "residual", "nonconverged",
            "step_seconds", "timed_batches", "homeo_loss", "homeo_batches")
_PER_SEED_SUMS = ("loss", "acc", "free_steps", "residual", "nonconverged", "homeo_loss")

#: the estimator's step metrics (:func:`eqprop.estimate.estimate_metrics`) and their record
#: keys; summed over the batches (per seed) when the step reports them
ESTIMATE_KEYS = {
    "nudged_residual": "nudged_residual_mean",
    "nudged_nonconverged": "nudged_nonconverged_fraction",
    "linear_residual": "linear_residual_mean",
    "hep_decay": "hep_decay_mean",
    "hep_decay_median": "hep_decay_median",
    "hep_error": "hep_error_mean",
    "hep_beta_suggested": "hep_beta_suggested",
    "hep_floor": "hep_floor_fraction",
}


def zero_sums(k: int) -> dict[str, Any]:
    """Empty sums for ``k`` seeds (per-seed sums are ``(k,)`` arrays)."""
    return {key: np.zeros(k) if key in _PER_SEED_SUMS else 0.0 for key in SUM_KEYS}


def sums_to_json(sums: dict[str, Any]) -> dict[str, Any]:
    """The sums as JSON values (arrays as lists)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in sums.items()}


def sums_from_json(d: dict | None, k: int) -> dict[str, Any]:
    """Sums read back from :func:`sums_to_json` (missing keys are zero)."""
    out = zero_sums(k)
    for key, v in (d or {}).items():
        out[key] = np.asarray(v, np.float64) if isinstance(v, list) else float(v)
    return out


def accumulate(sums: dict[str, Any], m: dict[str, Any], bs: int, seconds: float | None) -> dict:
    """``sums`` plus the metrics ``m`` of one batch of ``bs`` examples.

    ``seconds``: the step's wall time, ``None`` for a batch not to time (the compiling one).
    """
    out = dict(sums)
    out["examples"] = sums["examples"] + bs
    out["batches"] = sums["batches"] + 1
    for key in ("loss", "acc"):
        out[key] = sums[key] + np.atleast_1d(np.asarray(m[key], np.float64)) * bs
    for key in ("free_steps", "residual", "nonconverged"):
        out[key] = sums[key] + np.atleast_1d(np.asarray(m[key], np.float64))
    for key in ESTIMATE_KEYS:
        if key in m:
            out[key] = sums.get(key, 0.0) + np.atleast_1d(np.asarray(m[key], np.float64))
    if "homeo_loss" in m:
        applied = bool(np.any(np.asarray(m["homeo_applied"])))
        if applied:
            out["homeo_loss"] = sums["homeo_loss"] + np.atleast_1d(np.asarray(m["homeo_loss"], np.float64))
            out["homeo_batches"] = sums["homeo_batches"] + 1
    if seconds is not None:
        out["step_seconds"] = sums["step_seconds"] + seconds
        out["timed_batches"] = sums["timed_batches"] + 1
    return out


def epoch_record(epoch: int, sums: dict[str, Any], test: dict[str, np.ndarray] | None,
                 seconds: float, seeds: int, compile_seconds: float | None) -> dict[str, Any]:
    """The record of ``epoch`` from its sums and its evaluation ``test`` (or ``None``)."""
    n_ex, n_b = max(sums["examples"], 1), max(sums["batches"], 1)
    per = {
        "train_loss": sums["loss"] / n_ex,
        "train_acc": sums["acc"] / n_ex,
        "test_loss": None if test is None else test["loss"],
        "test_acc": None if test is None else test["acc"],
        "free_steps_mean": sums["free_steps"] / n_b,
        "residual_mean": sums["residual"] / n_b,
        "nonconverged_fraction": sums["nonconverged"] / n_b,
    }
    per.update({name: sums[key] / n_b for key, name in ESTIMATE_KEYS.items() if key in sums})
    timed = sums["timed_batches"]
    rec: dict[str, Any] = {"epoch": epoch}
    rec.update({k: None if v is None else float(np.mean(v)) for k, v in per.items()})
    rec["epoch_seconds"] = seconds
    rec["ms_per_batch"] = 1000.0 * sums["step_seconds"] / timed if timed else None
    rec["batches"] = int(sums["batches"])
    if sums.get("homeo_batches"):
        homeo = sums["homeo_loss"] / sums["homeo_batches"]
        rec["train_homeo_loss"] = float(np.mean(homeo))
    if compile_seconds is not None:
        rec["compile_seconds"] = compile_seconds
    if seeds > 1:
        rec["test_acc_std"] = None if test is None else float(np.std(test["acc"]))
        rec["per_seed"] = {k: None if v is None else [float(a) for a in v] for k, v in per.items()}
        if sums.get("homeo_batches"):
            rec["per_seed"]["train_homeo_loss"] = [float(a) for a in homeo]
    return rec
