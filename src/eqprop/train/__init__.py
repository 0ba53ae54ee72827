"""Training around the core library: the loop, run directories, checkpoints, reports.

``train(config, out_dir)`` is the Python entry point; ``eqprop train`` the CLI one.
"""

from .checkpoint import CheckpointError, atomic_write
from .loop import (Program, TrainingDiverged, TrainingInterrupted, build_program, evaluate,
                   format_summary, load_run, train, unstack, with_epochs)
from .rundir import RunDir, default_run_dir

__all__ = ["CheckpointError", "Program", "RunDir", "TrainingDiverged", "TrainingInterrupted",
           "atomic_write", "build_program", "default_run_dir", "evaluate", "format_summary",
           "load_run", "train", "unstack", "with_epochs"]
