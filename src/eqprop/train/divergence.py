"""Divergence: a step whose state, loss or parameters are not finite stops the run."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TrainingDiverged", "check_finite"]


class TrainingDiverged(RuntimeError):
    """The state or loss became non-finite; the offending update was not checkpointed.

    **Attributes:** ``epoch`` (1-based), ``batch`` (0-based) of the offending step;
    ``populations``: the names of the populations whose state was not finite.
    """

    def __init__(self, message: str, *, epoch: int, batch: int, populations: list[str]) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.populations = epoch, batch, populations


def check_finite(m: dict[str, Any], epoch: int, batch: int, seeds: int) -> None:
    """Raise if the step's metrics ``m`` (host values) show a non-finite state.

    **Arguments:** ``m``: the step's metrics with ``nonfinite_step`` (``-1`` when the
    relaxation stayed finite), ``nonfinite`` (per population), ``loss`` and
    ``params_finite``, each with a leading ``K`` axis when ``seeds = K > 1``.

    **Raises:** :class:`TrainingDiverged` with a one-line message naming the epoch,
    batch, seeds, populations and the relaxation step.
    """
    step = np.atleast_1d(np.asarray(m["nonfinite_step"]))
    loss = np.atleast_1d(np.asarray(m["loss"], np.float64))
    params_ok = np.atleast_1d(np.asarray(m["params_finite"]))
    if np.all(step < 0) and np.all(np.isfinite(loss)) and np.all(params_ok):
        return
    pops = [p for p, v in m["nonfinite"].items() if np.any(v)]
    bad = np.flatnonzero((step >= 0) | ~np.isfinite(loss) | ~params_ok.astype(bool))
    parts = []
    if pops:
        at = int(step[step >= 0].min()) if np.any(step >= 0) else None
        parts.append("non-finite or exploding state in population(s) " + ", ".join(pops)
                     + (f" at relaxation step {at}" if at is not None else ""))
    if not np.all(np.isfinite(loss)):
        parts.append("loss is not finite")
    if not np.all(params_ok):
        parts.append("parameters became non-finite after the update")
    where = f" (seed(s) {', '.join(map(str, bad))})" if seeds > 1 else ""
    raise TrainingDiverged(
        f"training diverged at epoch {epoch}, batch {batch}{where}: {'; '.join(parts)}",
        epoch=epoch, batch=batch, populations=pops)
