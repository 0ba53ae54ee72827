"""Training around the core library: the loop, run directories, checkpoints, reports.

``train(config, out_dir)`` is the Python entry point; ``eqprop train`` the CLI one.

One concern per module:

=================  ============================================================
``step``           :class:`TrainState` and the one jitted ``step(state, x, y)``
``program``        building from a config: data, K networks, step, evaluation
``placement``      :func:`place`: data and models onto the device(s)
``evaluate``       metrics of a model over a data split
``schedule``       which epoch ends evaluate, diagnose, checkpoint
``records``        running sums of an epoch and its record
``loggers``        where records go: metrics.jsonl, TensorBoard, W&B
``divergence``     non-finite states stop the run
``resume``         checkpoints of a position, resuming, ``load_run``
``summary``        ``summary.json`` and the printed summary
``loop``           the epoch loop and :func:`train`
``checkpoint``     atomic files; ``rundir`` the run directory; ``states`` warm starts
``report``         plots and a markdown table of runs
=================  ============================================================
"""

from .checkpoint import CheckpointError, atomic_write
from .divergence import TrainingDiverged
from .evaluate import evaluate
from .loggers import Logger, LoggerUnavailable
from .loop import TrainingInterrupted, train
from .placement import place, place_batch
from .program import Program, build_program, load_dataset
from .resume import load_run, with_epochs
from .rundir import RunDir, default_run_dir
from .schedule import probe_batch, run_diagnostics
from .step import TrainState, step_keys, unstack
from .summary import format_summary

__all__ = ["CheckpointError", "Logger", "LoggerUnavailable", "Program", "RunDir", "TrainState",
           "TrainingDiverged", "TrainingInterrupted", "atomic_write", "build_program",
           "default_run_dir", "evaluate", "format_summary", "load_dataset", "load_run", "place",
           "place_batch", "probe_batch", "run_diagnostics", "step_keys", "train", "unstack",
           "with_epochs"]
