"""Checkpoints of a run's position, and resuming from them.

A checkpoint (:mod:`eqprop.train.checkpoint`: one manifest ``checkpoints/<which>.json``
naming content-addressed payloads, replaced as one atomic unit) holds ``(model,
opt_state)`` of the :class:`~eqprop.train.step.TrainState`, with warm starts
(``[train] warm_start``) the ``latest`` checkpoint's persistent states, and as its meta
the position:

* ``epoch`` = completed epochs, ``batch`` = batches already done in the next epoch
  (non-zero only after Ctrl-C), ``partial`` = that epoch's running sums,
  ``partial_seconds`` = the wall time it has run (its epoch record counts it on resume);
* ``best_test_acc``, ``best_epoch``, ``elapsed_seconds``, ``seed``, ``seeds``, the RNG
  scheme in words, ``saved_at``, and ``config_sha256``, the SHA-256 of the
  configuration (``dumps_toml``) it was written under (recorded, not enforced: ``--epochs``
  and ``--set`` legitimately change it).

The state's ``step`` and ``key`` are not stored: both are functions of the position
and the seed (``step = epoch * n_batches + batch``, ``key`` from ``train.seed``), so a
resumed run continues exactly as an uninterrupted one. A run killed before its first
checkpoint resumes from the start (its ``config.toml`` is all it needs).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, dumps_toml
from . import checkpoint
from .checkpoint import CheckpointError
from .placement import place_state
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
                    best_epoch: int | None, elapsed: float,
                    partial_seconds: float = 0.0) -> dict[str, Any]:
    """The meta of a checkpoint of ``pos`` (see the module docstring); ``elapsed``
    includes ``partial_seconds``, the wall time already spent in a partial epoch."""
    t = config.train
    return {
        "epoch": pos.epoch, "batch": pos.batch,
        "partial": sums_to_json(pos.sums) if pos.batch else None,
        "best_test_acc": best_acc, "best_epoch": best_epoch,
        "seed": t.seed, "seeds": t.seeds, "elapsed_seconds": elapsed,
        "partial_seconds": partial_seconds if pos.batch else 0.0,
        "rng": RNG_SCHEME,
        "config_sha256": hashlib.sha256(dumps_toml(config).encode("utf-8")).hexdigest(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def save_position(run: RunDir, which: str, pos: Position, meta: dict[str, Any]) -> None:
    """Write checkpoint ``which`` (``latest`` or ``best``) of ``pos`` with meta ``meta``.

    A ``latest`` checkpoint of a warm-started run carries the states as payload
    ``states``; the checkpoint is one atomic unit (:func:`eqprop.train.checkpoint.save`).
    """
    payloads = {}
    if which == "latest" and pos.states is not None:
        payloads["states"] = pos.states.payload()
    checkpoint.save(run.checkpoint(which), (pos.state.model, pos.state.opt_state), meta,
                    payloads=payloads)


def _read(run: RunDir, which: str, program: Program
          ) -> tuple[PyTree, PyTree, dict[str, Any], checkpoint.Snapshot]:
    snap = checkpoint.read(run.checkpoint(which))
    model, opt_state = checkpoint.decode(snap.blobs["tree"], (program.model, program.opt_state),
                                         snap.files["tree"])
    meta = _checked_meta(snap.meta, snap.manifest)
    return model, opt_state, meta, snap


def _checked_meta(meta: dict[str, Any], source: Path) -> dict[str, Any]:
    """``meta`` with the fields the trainer reads checked (one-line errors naming ``source``)."""
    def count(key: str, default: int | None, *, optional: bool = False) -> int | None:
        v = meta.get(key, default)
        if v is None and optional:
            return None
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise CheckpointError(f"{source}: {key} must be a non-negative integer, not "
                                  f"{str(v)[:40]!r}")
        return v

    def number(key: str, default: float | None, *, optional: bool = False) -> float | None:
        v = meta.get(key, default)
        if v is None and optional:
            return None
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise CheckpointError(f"{source}: {key} must be a finite number, not {str(v)[:40]!r}")
        return float(v)

    out = dict(meta)
    out["epoch"] = count("epoch", None)
    out["batch"] = count("batch", 0)
    out["best_epoch"] = count("best_epoch", None, optional=True)
    out["best_test_acc"] = number("best_test_acc", None, optional=True)
    out["elapsed_seconds"] = number("elapsed_seconds", 0.0)
    out["partial_seconds"] = number("partial_seconds", 0.0)
    if out["partial_seconds"] > out["elapsed_seconds"]:
        raise CheckpointError(f"{source}: partial_seconds exceeds elapsed_seconds")
    partial = meta.get("partial")
    if partial is not None and not isinstance(partial, dict):
        raise CheckpointError(f"{source}: partial must be a JSON object or null")
    return out


def _checked_sums(partial: dict | None, seeds: int, source: Path) -> dict[str, Any]:
    """The running sums of ``partial``, each of the shape :func:`zero_sums` gives it."""
    zero = zero_sums(seeds)
    try:
        sums = sums_from_json(partial, seeds)
        bad = [k for k in zero if np.shape(sums[k]) != np.shape(zero[k])]
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: partial holds no running sums "
                              f"({' '.join(str(e).split())[:120]})") from None
    if bad:
        raise CheckpointError(f"{source}: partial: {', '.join(bad)} must have the shape of "
                              f"the running sums of {seeds} seed(s)")
    return sums


def load_checkpoint(run: RunDir, which: str, program: Program) -> tuple[PyTree, PyTree, dict]:
    """``(model, opt_state, meta)`` of checkpoint ``which``, placed on the device(s).

    **Raises:** :class:`~eqprop.train.checkpoint.CheckpointError` when the files are
    missing, corrupt (and no previous entry is intact) or do not fit ``program``'s model.
    """
    model, opt_state, meta, _ = _read(run, which, program)
    model, opt_state = program.layout.stacked((model, opt_state))
    return model, opt_state, meta


def _readable(summary: dict[str, Any]) -> bool:
    """Whether :func:`~eqprop.train.summary.format_summary` can print ``summary`` (a file
    from disk: a damaged one is not trusted to stand for the run)."""
    from .summary import format_summary

    try:
        format_summary(summary)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return True


class RunCompleted(ValueError):
    """Resuming a run whose checkpoint holds all its ``[train] epochs``: nothing to train.

    ``summary``: the run's ``summary.json`` where it is intact (``"completed"`` at that
    epoch, readable), else ``None`` (absent: killed before writing it; edited): the trainer
    then writes it anew from the records and ``meta``, the checkpoint's meta.
    """

    def __init__(self, message: str, summary: dict[str, Any] | None, meta: dict[str, Any]):
        super().__init__(message)
        self.summary = summary
        self.meta = meta


def restore(run: RunDir, program: Program) -> tuple[Position, dict[str, Any]]:
    """The position of ``run``'s ``latest`` checkpoint, to continue training.

    **Returns:** ``(position, meta)``: the state (``step`` from the position, ``key``
    from the seed), the running sums of a partial epoch, the warm-start states. A run
    without a checkpoint (killed before its first) restarts: :func:`start`, ``{}``, with a
    warning where ``metrics.jsonl`` holds records it will replace.

    **Raises:** :class:`RunCompleted` when the checkpoint holds all ``[train] epochs``
    (whatever ``summary.json`` says); ``ValueError`` when it has more epochs than that,
    or reached them by its checkpoint's previous entry (the newest is broken), or when it
    has no checkpoint but ``summary.json`` says it completed (checkpoints deleted);
    :class:`~eqprop.train.checkpoint.CheckpointError` for missing or broken files.
    """
    if not run.has_checkpoint():
        summary, records = run.read_summary(), run.read_metrics()
        if isinstance(summary, dict) and summary.get("status") == "completed":  # checkpoints deleted
            raise ValueError(f"{run.path}: summary.json says the run completed, but it has no checkpoint "
                             f"({run.checkpoint('latest')}): nothing to resume from; train anew in "
                             "another directory")
        if records:  # killed between an epoch's record and its checkpoint, or checkpoints deleted
            import warnings

            from ..guards import EqpropWarning

            warnings.warn(f"{run.path}: no checkpoint ({run.checkpoint('latest')}) but metrics.jsonl "
                          f"records {len(records)} epoch(s): the run starts over from epoch 1 and "
                          "replaces them", EqpropWarning, stacklevel=3)
        return start(program), {}
    config = program.config
    model, opt_state, meta, snap = _read(run, "latest", program)
    checkpoint.collect_garbage(run.checkpoints)  # what a killed save left behind
    done, batch = meta["epoch"], meta["batch"]
    if done == config.train.epochs and not batch and not snap.fallback:
        # every epoch trained and checkpointed: the checkpoint decides, whatever summary.json
        # says (killed after writing it or before, or resumed twice: not an error)
        summary = run.read_summary()
        intact = (summary is not None and summary.get("status") == "completed"
                  and summary.get("epochs") == done and _readable(summary))
        raise RunCompleted(f"{run.path}: nothing to resume: the run completed its {done} "
                           "epochs; pass a larger total with --epochs to train further",
                           summary if intact else None, meta)
    if done > config.train.epochs or (done == config.train.epochs and (batch or snap.fallback)):
        # from the previous entry when the newest was broken: say so, or "already trained
        # 19 epochs" contradicts metrics.jsonl's 20 (the fallback's warning is the line above)
        where = " by its checkpoint's previous entry (the newest is broken)" if snap.fallback else ""
        raise ValueError(f"{run.path}: already trained {done} epochs{where}; pass a larger "
                         "total with --epochs")
    states = warm_states(config, model, program.dataset.x_train, program.seeds)
    if states is not None and "states" in snap.blobs:
        states.restore(snap.blobs["states"], snap.files["states"])
    # batch == n_batches: every batch of the epoch trained, interrupted in its end (the
    # evaluation, the diagnostics, the saves): resume runs that end again
    if batch > program.n_batches:
        raise CheckpointError(f"{snap.manifest}: batch {batch} of an epoch of "
                              f"{program.n_batches} batches")
    sums = _checked_sums(meta.get("partial"), program.seeds, snap.manifest)
    state = place_state(init_state(model, opt_state, seed=config.train.seed,
                                   step=done * program.n_batches + batch), program.layout)
    return Position(state, done, batch, sums, states), meta


def load_run(run_dir: str | Path, which: str = "latest", overrides: tuple[str, ...] | list[str] = (),
             *, readers: tuple[str, ...] = ()) -> tuple[Config, Program, PyTree, dict]:
    """A run directory's configuration, program and checkpointed model.

    **Arguments:** ``run_dir``; ``which``: ``"latest"`` or ``"best"``; ``overrides``:
    ``--set``-style ``"section.key=value"`` changes to the stored configuration;
    ``readers``: further sections the caller reads for itself and that change nothing of
    the network (``eqprop stability``: ``"stability"``; ``gradcheck``: ``"diagnostics"``).

    **Returns:** ``(config, program, model, meta)``: ``model`` stacked when K > 1,
    ``meta`` the checkpoint's meta. A run trained with ``--plugin`` needs its components:
    where the config names one not registered, the plugins recorded in ``run_dir``
    (:func:`eqprop.plugins.load_recorded`) are loaded first.

    **Raises:** ``ValueError`` when ``run_dir`` is not a run or lacks the checkpoint
    (:class:`~eqprop.train.checkpoint.CheckpointError` when it is broken);
    :class:`~eqprop.config.ConfigError` for an override outside
    :data:`~eqprop.config.RUN_OVERRIDABLE` and ``readers``.
    """
    from ..config import RUN_OVERRIDABLE, ConfigError, load_run_config

    allowed = RUN_OVERRIDABLE + tuple(readers)
    bad = [o for o in overrides if o.strip().split(".", 1)[0].strip() not in allowed]
    if bad:
        raise ConfigError(f"--set on a run: only [{'], ['.join(allowed)}] keys change how a "
                          f"trained network is relaxed, estimated, fed or examined (the others "
                          f"define the network and its training), got {bad[0]!r}")
    run = RunDir(run_dir).require()
    if not run.checkpoint(which).is_file():
        raise ValueError(f"{run.path}: no {which} checkpoint ({run.checkpoint(which)} not found)")
    try:
        config = load_run_config(run.config, overrides)
    except ConfigError:
        from ..plugins import load_recorded, recorded_plugins

        if not recorded_plugins(run.path):
            raise
        # a component of the run's plugins (a review's `load_run` of a --plugin run in a fresh
        # process): load the copies the run recorded, as the command line does
        load_recorded(run.path)
        config = load_run_config(run.config, overrides)
    try:
        program = build_program(config)
    except (ConfigError, ValueError) as err:
        said = _other_data(run, config, err)
        if said is None:
            raise
        raise type(err)(said) from None
    try:
        model, _, meta = load_checkpoint(run, which, program)
    except checkpoint.CheckpointError as err:  # say what else the run holds
        said = _other_data(run, config, err)
        if said is not None:  # the shapes differ: not a broken file
            raise checkpoint.CheckpointError(said) from None
        other = "best" if which == "latest" else "latest"
        if run.checkpoint(other).is_file():
            raise checkpoint.CheckpointError(f"{err} (the run also holds {run.checkpoint(other).name}: "
                                  f"--checkpoint {other} reads it)") from None
        raise
    return config, program, model, meta


def _other_data(run: RunDir, config: Config, err: BaseException) -> str | None:
    """The error of a run read with ``--set data.name`` of another data set: that first
    (a review was told of data.batch_size, then of model.sizes, a key it may not change);
    ``None`` when ``config`` has the data set the run trained on (read only on an error)."""
    from ..config import load_run_config

    trained_on = load_run_config(run.config).data.name
    if config.data.name == trained_on:
        return None
    return (f"data.name = {config.data.name!r}: the run's network was trained on {trained_on!r} and "
            f"takes its input shape and classes; evaluate it on a data set of the same shape "
            f"({' '.join(str(err).split())})")


def spans_the_run(config: Config) -> list[str]:
    """The settings of ``config`` whose schedule is laid out over ``train.epochs`` (so that
    changing the epochs of a run part-way changes what the remaining epochs do): a cosine
    learning rate, magnitude pruning that ends at the last epoch."""
    out = []
    if config.optim.schedule == "cosine":
        out.append("optim.schedule = 'cosine' (the learning rate decays to 0 at the last epoch)")
    if config.pruning.method == "magnitude" and not config.pruning.end:
        out.append("pruning.end = 0 (the target sparsity is reached at the last epoch)")
    return out


def with_epochs(config: Config, epochs: int | None) -> Config:
    """``config`` with ``train.epochs`` replaced (validated) when ``epochs`` is given."""
    if epochs is None:
        return config
    from ..config import with_updates

    return with_updates(config, train={"epochs": epochs})
