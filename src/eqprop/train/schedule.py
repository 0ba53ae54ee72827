"""What happens at the end of which epoch: evaluation, diagnostics, checkpoints.

Evaluation on the test split every ``[train] eval_every`` epochs, the ``latest``
checkpoint every ``[train] checkpoint_every`` epochs, and (``[diagnostics] enabled``)
:func:`eqprop.diagnostics.diagnostics` every ``[diagnostics] every`` epochs, each also
at the last epoch. Diagnostics run on a fixed probe batch (the first
``[diagnostics] batch_size`` training examples) for every seed; the record's top-level
keys (``angle``, ``jacobian_symmetry``, ``alignment``, ...) are means over seeds and
``per_seed`` holds each seed's values. Their key for epoch ``e`` is
``fold_in(PRNGKey(train.seed), 100_000 + e)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from ..config import Config
from .placement import place
from .step import unstack

if TYPE_CHECKING:
    from .program import Program

__all__ = ["Schedule", "probe_batch", "run_diagnostics"]

PyTree = Any


@dataclass(frozen=True)
class Schedule:
    """The epochs (1-based) at whose end each periodic task runs.

    **Fields:** ``epochs``: the last epoch; ``eval_every``, ``checkpoint_every``;
    ``diagnostics_every``: ``None`` when diagnostics are off.
    """

    epochs: int
    eval_every: int = 1
    checkpoint_every: int = 1
    diagnostics_every: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> "Schedule":
        """The schedule of ``[train]`` and ``[diagnostics]``."""
        t, d = config.train, config.diagnostics
        return cls(t.epochs, t.eval_every, t.checkpoint_every, d.every if d.enabled else None)

    def _due(self, epoch: int, every: int | None) -> bool:
        return every is not None and (epoch % every == 0 or epoch == self.epochs)

    def evaluates(self, epoch: int) -> bool:
        """Evaluate on the test split at the end of ``epoch``."""
        return self._due(epoch, self.eval_every)

    def diagnoses(self, epoch: int) -> bool:
        """Record the diagnostics at the end of ``epoch``."""
        return self._due(epoch, self.diagnostics_every)

    def checkpoints(self, epoch: int) -> bool:
        """Write the ``latest`` checkpoint at the end of ``epoch``."""
        return self._due(epoch, self.checkpoint_every)


def probe_batch(program: "Program") -> tuple[np.ndarray, np.ndarray]:
    """The fixed diagnostics batch: ``x`` ``(P, ...)``, ``y`` ``(P,)``, the first
    ``P = [diagnostics] batch_size`` training examples."""
    n = program.config.diagnostics.batch_size
    return program.dataset.x_train[:n], program.dataset.y_train[:n]


def run_diagnostics(program: "Program", model: PyTree, epoch: int
                    ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The diagnostics of ``model`` (stacked when K > 1) at the end of ``epoch``.

    **Returns:** ``(means over seeds, {key: [value per seed]})``, over the keys that
    every seed reported.
    """
    x, y = place(probe_batch(program))  # whole on every device: the diagnostics are per network
    key = jax.random.fold_in(jax.random.PRNGKey(program.config.train.seed), 100_000 + epoch)
    models = [model] if program.seeds == 1 else [unstack(model, i) for i in range(program.seeds)]
    rows = [program.diagnose(m, x, y, key) for m in models]
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    per = {k: [r[k] for r in rows] for k in keys}
    return {k: float(np.mean(v)) for k, v in per.items()}, per
