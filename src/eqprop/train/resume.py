"""Checkpoints of a run's position, and resuming from them.

A checkpoint ``checkpoints/<which>.eqx`` holds ``(model, opt_state)`` of the
:class:`~eqprop.train.step.TrainState` (:mod:`eqprop.train.checkpoint` writes it
atomically); its sidecar ``<which>.json`` holds the position:

* ``epoch`` = completed epochs, ``batch`` = batches already done in the next epoch
  (non-zero only after Ctrl-C), ``partial`` = that epoch's running sums;
* ``best_test_acc``, ``best_epoch``, ``elapsed_seconds``, ``seed``, ``seeds``, the RNG
  scheme in words, ``saved_at``;
* with warm starts (``[train] warm_start``), ``latest`` checkpoints reference a
  ``states-E-B.npz`` file next to them (``states_file``, ``states_sha256``).

The state's ``step`` and ``key`` are not stored: both are functions of the position
and the seed (``step = epoch * n_batches + batch``, ``key`` from ``train.seed``), so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from . import checkpoint
from .placement import place
from .program import Program, build_program
from .records import sums_from_json, sums_to_json, zero_sums
from .rundir import RunDir
from .states import PersistentStates, warm_states
from .step import TrainState, init_state

__all__ = ["Position", "start", "restore", "checkpoint_meta", "save_position", "load_checkpoint",
           "load_run", "with_epochs"]

PyTree = Any

RNG_SCHEME = ("init, root = split(PRNGKey(seed)); batch key = "
              "fold_in(fold_in(root, epoch - 1), batch) (split into seeds if > 1)")


@dataclass(frozen=True)
class Position:
    """A consistent snapshot: the state after ``batch`` batches of epoch ``epoch + 1``.

    **Fields:** ``state``: the :class:`~eqprop.train.step.TrainState` (its ``step`` is
    ``epoch * n_batches + batch``); ``epoch``: completed epochs; ``batch``: batches done
    in the next epoch; ``sums``: that epoch's running sums
    (:mod:`eqprop.train.records`); ``states``: the warm-start states, or ``None``
    (updated in place, batch by batch).
    """

    state: TrainState
    epoch: int
    batch: int
    sums: dict[str, Any]
    states: PersistentStates | None = None


def start(program: Program) -> Position:
    """The position of a fresh run: ``program.state``, epoch 0, batch 0."""
    return Position(program.state, 0, 0, zero_sums(program.seeds),
                    warm_states(program.config, program.model, program.dataset.x_train,
                                program.seeds))


def checkpoint_meta(config: Config, pos: Position, *, best_acc: float | None,
                    best_epoch: int | None, elapsed: float) -> dict[str, Any]:
    """The sidecar of a checkpoint of ``pos`` (see the module docstring)."""
    t = config.train
    return {
        "epoch": pos.epoch, "batch": pos.batch,
        "partial": sums_to_json(pos.sums) if pos.batch else None,
        "best_test_acc": best_acc, "best_epoch": best_epoch,
        "seed": t.seed, "seeds": t.seeds, "elapsed_seconds": elapsed,
        "rng": RNG_SCHEME,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def save_position(run: RunDir, which: str, pos: Position, meta: dict[str, Any]) -> None:
    """Write checkpoint ``which`` (``latest`` or ``best``) of ``pos`` with sidecar ``meta``.

    A ``latest`` checkpoint of a warm-started run also writes ``states-E-B.npz`` and
    removes the older states files once the checkpoint points at the new one.
    """
    keep = None
    if which == "latest" and pos.states is not None:
        keep = f"states-{pos.epoch}-{pos.batch}.npz"
        sha = pos.states.save(run.checkpoint(which).parent / keep)
        meta = {**meta, "states_file": keep, "states_sha256": sha}
    checkpoint.save(run.checkpoint(which), (pos.state.model, pos.state.opt_state), meta)
    if keep is not None:  # the checkpoint now points at `keep`: older states are garbage
        for old in run.checkpoint(which).parent.glob("states-*.npz"):
            if old.name != keep:
                old.unlink(missing_ok=True)


def load_checkpoint(run: RunDir, which: str, program: Program) -> tuple[PyTree, PyTree, dict]:
    """``(model, opt_state, meta)`` of ``checkpoints/<which>.eqx``, placed on the device(s).

    **Raises:** :class:`~eqprop.train.checkpoint.CheckpointError` when the files are
    missing, inconsistent or do not fit ``program``'s model.
    """
    (model, opt_state), meta = checkpoint.load(run.checkpoint(which),
                                               (program.model, program.opt_state))
    model, opt_state = place((model, opt_state))
    return model, opt_state, meta


def restore(run: RunDir, program: Program) -> tuple[Position, dict[str, Any]]:
    """The position of ``run``'s ``latest`` checkpoint, to continue training.

    **Returns:** ``(position, meta)``: the state (``step`` from the position, ``key``
    from the seed), the running sums of a partial epoch, the warm-start states.

    **Raises:** ``ValueError`` when the run already has ``[train] epochs`` epochs;
    :class:`~eqprop.train.checkpoint.CheckpointError` for missing or broken files.
    """
    config = program.config
    model, opt_state, meta = load_checkpoint(run, "latest", program)
    done, batch = int(meta["epoch"]), int(meta.get("batch", 0))
    if done > config.train.epochs or (done == config.train.epochs and batch):
        raise ValueError(f"{run.path}: already trained {done} epochs; pass a larger "
                         "total with --epochs")
    states = warm_states(config, model, program.dataset.x_train, program.seeds)
    if states is not None and meta.get("states_file"):
        states.load(run.checkpoint("latest").parent / meta["states_file"], meta.get("states_sha256"))
    state = place(init_state(model, opt_state, seed=config.train.seed,
                             step=done * program.n_batches + batch))
    pos = Position(state, done, batch, sums_from_json(meta.get("partial"), program.seeds), states)
    return pos, meta


def load_run(run_dir: str | Path, which: str = "latest", overrides: tuple[str, ...] | list[str] = ()
             ) -> tuple[Config, Program, PyTree, dict]:
    """A run directory's configuration, program and checkpointed model.

    **Arguments:** ``run_dir``; ``which``: ``"latest"`` or ``"best"``; ``overrides``:
    ``--set``-style ``"section.key=value"`` changes to the stored configuration.

    **Returns:** ``(config, program, model, meta)``: ``model`` stacked when K > 1,
    ``meta`` the checkpoint's sidecar.

    **Raises:** ``ValueError`` when ``run_dir`` is not a run or lacks the checkpoint.
    """
    from ..config import load_run_config

    run = RunDir(run_dir)
    if not run.is_run():
        raise ValueError(f"{run.path}: not a run directory (no config.toml)")
    if not run.checkpoint(which).is_file():
        raise ValueError(f"{run.path}: no {which} checkpoint ({run.checkpoint(which)} not found)")
    config = load_run_config(run.config, overrides)
    program = build_program(config)
    model, _, meta = load_checkpoint(run, which, program)
    return config, program, model, meta


def with_epochs(config: Config, epochs: int | None) -> Config:
    """``config`` with ``train.epochs`` replaced (validated) when ``epochs`` is given."""
    if epochs is None:
        return config
    from ..config import with_updates

    return with_updates(config, train={"epochs": epochs})
