"""The trainer's epoch loop: batches through the step, epoch ends, Ctrl-C, divergence.

Conventions
-----------
* Epochs are numbered from 1 in files and messages; batch ``b`` counts from 0; the data
  order is :meth:`~eqprop.train.program.Program.epoch_batches`.
* The state: ``state, metrics = program.step(state, x, y[, u0, warm])``
  (:mod:`eqprop.train.step`: the global batch index and the batch keys live in the
  state, so a resumed run reproduces an uninterrupted one exactly).
* ``K = train.seeds > 1``: the state holds ``K`` stacked networks sharing the data;
  metrics carry one value per seed.
* Jacobian homeostasis (``[homeostasis] coef > 0``): applied when ``state.step`` is a
  multiple of ``every``; the epoch record gains ``train_homeo_loss``.
* End of epoch (:mod:`eqprop.train.schedule`): evaluation, diagnostics, the record to
  every logger (:mod:`eqprop.train.loggers`), the ``best`` and ``latest`` checkpoints
  (:mod:`eqprop.train.resume`).
* Pruning (:mod:`eqprop.pruning`, ``[pruning] method``): after each epoch where the
  method is due, before the evaluation, new masks (in the optimizer state, so in every
  checkpoint) and the pruned weights set to zero; the record gains ``sparsity`` and
  ``sparsity/<matrix>`` (fractions of connections removed). The pruning key is derived
  from the run's root key and the epoch (:data:`PRUNE_TAG`): resume prunes identically.
* Stability (:mod:`eqprop.stability`): with ``[stability] enforce = "contraction"`` every
  optimizer step (and the initial network of a fresh run) is followed by the rescaling
  of the coupling that keeps the contraction bound at most ``target``; with
  ``[stability] every = N`` the record of every N-th (and the last) epoch gains
  ``spectral_radius``, ``contraction_bound`` (where it applies) and ``stability_seconds``
  (a clipped model: the projected certificate's figures, :func:`eqprop.stability.epoch_figures`).
* Warm starts (``[train] warm_start``): every training example's free phase starts
  from its fixed point at its previous visit (:class:`eqprop.train.states.PersistentStates`;
  cold at the first), stored with the ``latest`` checkpoint so resume is exact.
* Estimates whose assumptions fail: the estimator's figures (nudged and linear-solve
  residuals, hEP's coefficient decay) are in every record, on the progress bar and in
  the epoch line; at the end of an epoch where one is beyond its limit
  (:func:`eqprop.guards.estimate_problems`) the trainer issues one Python warning of
  category :class:`eqprop.guards.EstimateWarning` naming the epoch and every figure at
  fault (``eqprop train`` prints it as one ``warning:`` line on stderr); each kind is
  shown at the 1st, 2nd, 4th, ... epoch it fires in (:class:`eqprop.guards.Thinning`),
  and the summary counts them all (``warned_epochs``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from ..config import Config, ConfigError
from ..guards import (NONCONVERGED_TOL, EqpropWarning, EstimateWarning, Thinning, circle_brief,
                      estimate_problems, share, warn_at_caller, warned_epochs)
from ..jitting import release_near_map_limit, warn_near_map_limit
from ..pruning import NoPruning, connections, masks_of, prune, shortfall, sparsity, undeclared_zeros
from ..solvers import can_alternate
from ..stability import StabilityError, program_enforcer, program_figures
from ..parallel import configure, is_writer
from .divergence import TrainingDiverged, check_finite
from .evaluate import evaluate
from .loggers import Logger, make_loggers
from .placement import place_batch
from .program import Program, build_program
from .records import accumulate, epoch_record, zero_sums
from .resume import Position, RunCompleted, checkpoint_meta, restore, save_position, start
from .rundir import RunDir
from .schedule import Schedule, run_diagnostics
from .step import TrainState
from .summary import format_summary, summarize

__all__ = ["TrainingInterrupted", "train"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint of the last completed batch was written (resume is exact).

    **Attributes:** ``message``; ``epoch`` (1-based) in which the run stopped and
    ``batch``, the batches of it completed.
    """

    def __init__(self, message: str, *, epoch: int, batch: int) -> None:
        super().__init__(message)
        self.message, self.epoch, self.batch = message, epoch, batch

    def __str__(self) -> str:
        return self.message


def _call_step(program: Program, state: TrainState, x, y, u0=None, warm=None
               ) -> tuple[TrainState, dict[str, Any]]:
    """One training step (a seam for tests): ``program.step`` on placed data."""
    return program.step(state, x, y, u0, warm)


class _Trainer:
    """The state of one ``train`` call (kept on an object so Ctrl-C can checkpoint it)."""

    def __init__(self, run: RunDir, program: Program, loggers: list[Logger], progress: bool) -> None:
        self.writer = is_writer()  # process 0 writes every file and line; the others none
        self.config, self.run, self.p = program.config, run, program
        self.progress = progress and self.writer
        self.loggers = loggers
        self.schedule = Schedule.from_config(program.config)
        self.best_acc: float | None = None
        self.best_epoch: int | None = None
        self.elapsed = 0.0  # wall seconds of the completed epochs
        self.partial_before = 0.0  # of the epoch a resume continues, spent before it
        self.epoch_t0: float | None = None  # perf_counter() at which the current epoch began
        self.compiled = False
        self.compile_seconds: float | None = None
        self.t_flush = 0.0
        self.pos: Position | None = None
        self.unprinted: str | None = None  # a completed epoch's line, until it is printed
        self.thinning = Thinning()  # a resumed run's counts: from its records (train)
        try:
            self.enforce = program_enforcer(program)
        except StabilityError as e:
            raise ConfigError(str(e)) from None

    def save(self, which: str, pos: Position) -> None:
        """Checkpoint ``which`` of ``pos``: the state gathered from every process (a
        collective), written by process 0 only."""
        layout = self.p.layout
        st = pos.state
        model, opt_state = layout.gather((st.model, st.opt_state))
        if not self.writer:
            return
        pos = dataclasses.replace(pos, state=TrainState(model, opt_state, st.step, st.key))
        # a partial epoch (Ctrl-C, SIGTERM) keeps the time it has run, for its epoch record
        partial = (time.perf_counter() - self.epoch_t0) if pos.batch and self.epoch_t0 is not None else 0.0
        meta = checkpoint_meta(self.config, pos, best_acc=self.best_acc, best_epoch=self.best_epoch,
                               elapsed=self.elapsed + partial, partial_seconds=partial)
        save_position(self.run, which, pos, meta)

    def summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        return summarize(self.run, self.config, status=status, layout=self.p.layout.describe(),
                         best_acc=self.best_acc,
                         best_epoch=self.best_epoch, train_seconds=self.elapsed, message=message)

    def echo(self, text: str) -> None:
        if self.progress:
            tqdm.write(text, file=sys.stdout)

    def run_epoch(self, epoch: int) -> None:
        """Train the batches of ``epoch`` not done yet, then :meth:`end_epoch`.

        Steps are dispatched without waiting for them: the host prepares and places the
        next batches while the devices compute, and reads the metrics of up to
        :data:`SYNC_EVERY` steps at once (:meth:`_flush`), where it checks them for
        divergence and advances ``self.pos``, the position a checkpoint or Ctrl-C saves.
        The first step of a run (the compiling one) is read on its own, so that its time
        is ``compile_seconds``.
        """
        p = self.p
        pos = self.pos
        assert pos is not None and pos.epoch == epoch - 1
        t0 = self.epoch_t0 = time.perf_counter() - self.partial_before
        self.partial_before = 0.0
        bar = progress_bar(p.n_batches, pos.batch, f"epoch {epoch}/{self.config.train.epochs}",
                           enabled=self.progress and sys.stderr.isatty())
        self.compile_seconds = None
        state, pending = pos.state, []
        self.t_flush = time.perf_counter()
        try:
            for b, (xb, yb, idx) in enumerate(p.epoch_batches(epoch)):
                if b < pos.batch:
                    continue  # done before an interruption
                u0, warm = (None, None) if pos.states is None else pos.states.gather(idx)
                x, y, u0, warm = place_batch(xb, yb, u0, warm, seeds=p.seeds, layout=p.layout)
                state, m = _call_step(p, state, x, y, u0, warm)
                if self.enforce is not None:
                    state = TrainState(self.enforce(state.model), state.opt_state, state.step, state.key)
                pending.append((b, m, len(yb), idx, state))
                if _STOP_REQUESTS:  # a signal whose KeyboardInterrupt did not arrive
                    raise KeyboardInterrupt(_STOP_REQUESTS[-1])
                if len(pending) >= SYNC_EVERY or not self.compiled:
                    self._flush(epoch, pending, bar)
                    pending = []
            self._flush(epoch, pending, bar)
        except KeyboardInterrupt:  # the dispatched steps count: Ctrl-C saves after them
            self._flush(epoch, pending, bar)
            raise
        finally:
            bar.close()
        self.end_epoch(epoch, self.pos, t0, self.compile_seconds)

    def _flush(self, epoch: int, pending: list, bar: tqdm) -> None:
        """Read the metrics of the ``pending`` steps (waiting for them), check each for
        divergence (a diverged state never becomes the position), add them to the
        epoch's sums, scatter warm-start states, and advance ``self.pos``."""
        p, pos = self.p, self.pos
        pending = [entry for entry in pending if entry[0] >= pos.batch]  # not counted yet
        if not pending:
            return
        metrics = jax.device_get([m for _, m, _, _, _ in pending])
        now = time.perf_counter()
        dt = (now - self.t_flush) / len(pending)
        self.t_flush = now
        for (b, _, n, idx, state), m in zip(pending, metrics):
            check_finite(m, epoch, b, p.seeds)  # a diverged state is never stored
            if pos.states is not None:
                pos.states.scatter(idx, m.pop("state"))
            first = not self.compiled
            self.compiled = True
            if first:
                self.compile_seconds = dt
            sums = accumulate(pos.sums, m, n, None if first else dt)
            pos = self.pos = Position(state, epoch - 1, b + 1, sums, pos.states)
        if not bar.disable:
            ms = 1000 * sums["step_seconds"] / max(sums["timed_batches"], 1)
            bar.set_postfix(loss=f"{np.mean(m['loss']):.4f}", acc=f"{np.mean(m['acc']):.3f}",
                            ms_batch=f"{ms:.1f}", **_estimate_postfix(m))
            bar.update(len(pending))

    def end_epoch(self, epoch: int, pos: Position, t0: float, compile_seconds: float | None) -> None:
        p, schedule = self.p, self.schedule
        pruned = None
        if p.pruner.due(epoch):  # before the evaluation: the epoch's figures are the pruned net's
            pos, pruned = prune_position(p, pos, epoch, self.config.train.epochs)
        test = None
        model = p.layout.gather(pos.state.model)  # readable by every process
        t_eval = time.perf_counter()
        if schedule.evaluates(epoch):
            test = evaluate(p, model, p.dataset.x_test, p.dataset.y_test)
        t_end = time.perf_counter()
        seconds = t_end - t0
        self.elapsed += seconds
        rec = epoch_record(epoch, pos.sums, test, seconds, p.seeds, compile_seconds)
        if test is not None:
            rec["eval_seconds"] = t_end - t_eval
        if pruned is not None:
            existing = connections(pos.state.model)
            _merge(rec, sparsity(pruned, p.seeds, existing), p.seeds)
            short = shortfall(p.pruner, pruned, existing, epoch, self.config.train.epochs, p.seeds)
            # a review saw 0.87 and 0.885 targeted, 0.844 reached, nothing said
            short = self.thinning.shown([f"pruning left {'; '.join(short)}: a neuron about to lose "
                                         "its last incoming connection keeps it"] if short else [],
                                        kind="pruning left")
            if short:
                warn_at_caller(f"epoch {epoch}: {short[0]}", EqpropWarning)
        if schedule.diagnoses(epoch):
            _timed_figures(rec, "diagnostics_seconds", run_diagnostics, p, model, epoch)
        every = self.config.stability.every
        if every and (epoch % every == 0 or epoch == self.config.train.epochs):
            _timed_figures(rec, "stability_seconds", program_figures, p, model, epoch)
        for logger in self.loggers:
            logger.log(rec)
        split = "val" if self.config.data.validation > 0 else "test"  # held out of train
        test_txt = "" if test is None else (f" | {split} loss {rec['test_loss']:.4f} "
                                            f"acc {rec['test_acc']:.4f}")
        ms = rec["ms_per_batch"]
        line = (f"epoch {epoch}/{self.config.train.epochs}  train loss {rec['train_loss']:.4f} "
                f"acc {rec['train_acc']:.4f}{test_txt}{_estimate_text(rec, p.estimator.at_fixed_point())}"
                + (f" | sparsity {rec['sparsity']:.3f}" if "sparsity" in rec else "")
                + f" | {seconds:.1f} s"
                + (f", {ms:.1f} ms/batch" if ms is not None else ""))
        boundary = Position(pos.state, epoch, 0, zero_sums(p.seeds), pos.states)
        if test is not None and (self.best_acc is None or rec["test_acc"] > self.best_acc):
            self.best_acc, self.best_epoch = rec["test_acc"], epoch
            self.save("best", boundary)
        # from here the epoch is done: Ctrl-C before its line is printed prints it (a review
        # saw epoch 4 saved and its line missing)
        self.pos, self.unprinted = boundary, line
        if schedule.checkpoints(epoch):
            self.save("latest", boundary)
        self.echo(line)
        self.unprinted = None
        problems = estimate_problems(rec, beta=getattr(p.estimator, "beta", None),
                                     update=p.solvers.free.update,
                                     linear_solver=self.config.dynamics.linear_solver,
                                     compute_dtype=getattr(self.config.model, "compute_dtype", None),
                                     alternates=can_alternate(p.model))
        problems = self.thinning.shown(problems)  # each kind at its 1st, 2nd, 4th, ... epoch
        if problems:  # one message per epoch, every figure at fault shown in it
            warn_at_caller(f"epoch {epoch}: " + "; ".join(problems), EstimateWarning)


#: steps dispatched before the host reads their metrics (and checks them for divergence)
SYNC_EVERY = 16


#: the pruning key of epoch E: fold_in(fold_in(root, PRUNE_TAG), E) (root: the run's
#: TrainState.key), so a resumed run prunes exactly as an uninterrupted one
PRUNE_TAG = 0x5052


def prune_position(p: Program, pos: Position, epoch: int, epochs: int) -> tuple[Position, dict]:
    """``pos`` with ``p.pruner`` applied after ``epoch`` (:func:`eqprop.pruning.prune`:
    new masks in the optimizer state, pruned weights zeroed), and the new masks."""
    st = pos.state
    key = jax.random.fold_in(jax.random.fold_in(st.key, PRUNE_TAG), epoch)
    model, opt_state = prune(p.pruner, st.model, st.opt_state, key, epoch, epochs, p.seeds)
    state = TrainState(model, opt_state, st.step, st.key)
    return dataclasses.replace(pos, state=state), masks_of(opt_state)


def _timed_figures(rec: dict[str, Any], seconds_key: str, figures, p: Program, model, epoch: int) -> None:
    """``figures(p, model, epoch) -> (means, per_seed)`` into an epoch record, with the
    seconds it took under ``seconds_key``."""
    t = time.perf_counter()
    means, per = figures(p, model, epoch)
    rec.update(means)
    if p.seeds > 1:
        rec["per_seed"].update(per)
    rec[seconds_key] = time.perf_counter() - t


def _merge(rec: dict[str, Any], figures: dict[str, Any], seeds: int) -> None:
    """Figures (lists over seeds when ``seeds > 1``) into an epoch record: their means, and
    the per-seed lists under ``per_seed``."""
    for k, v in figures.items():
        if seeds > 1:
            rec[k] = float(np.mean(v))
            rec["per_seed"][k] = list(v)
        else:
            rec[k] = v


#: the progress bar's width when the terminal reports none (``script`` gives a width of 0)
FALLBACK_COLUMNS = 100


def bar_columns(stream: Any = None) -> int | None:
    """The progress bar's width: ``None`` (follow the terminal, as ``tqdm`` does) when the
    terminal of ``stream`` (default ``sys.stderr``) reports a width of at least 20
    columns, else :data:`FALLBACK_COLUMNS` (a width of 0, as under ``script``, or no
    terminal at all, would draw nothing)."""
    stream = sys.stderr if stream is None else stream
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return FALLBACK_COLUMNS
    return None if columns >= 20 else FALLBACK_COLUMNS


def progress_bar(total: int, initial: int, desc: str, *, enabled: bool, file: Any = None) -> tqdm:
    """The batch progress bar of an epoch, written to ``file`` (default ``sys.stderr``),
    disabled unless ``enabled``; its width follows the terminal, or is fixed by
    :func:`bar_columns` when the terminal reports none."""
    file = sys.stderr if file is None else file
    columns = bar_columns(file)
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False,
                file=file, ncols=columns, dynamic_ncols=columns is None)


#: the stops a signal handler requested (the CLI's, :func:`request_stop`); the loop stops at
#: its next batch, also when the ``KeyboardInterrupt`` the handler raised was swallowed:
#: raised inside a garbage-collection callback of JAX, Python prints "Exception ignored
#: in" and goes on (a review: 3 of 13 Ctrl-C in compilation ran the run to its end, exit 0)
_STOP_REQUESTS: list[str] = []


def request_stop(how: str = "interrupted") -> None:
    """Ask the training loop to stop at its next batch as on Ctrl-C (checkpoint, then
    :class:`TrainingInterrupted` with ``how``); for signal handlers, which should also
    raise ``KeyboardInterrupt`` to stop at once where they can."""
    _STOP_REQUESTS.append(how)


def _estimate_postfix(m: dict[str, Any]) -> dict[str, str]:
    """The estimator's figures of one step for the progress bar (those it reports)."""
    out = {}
    if "nudged_residual" in m:
        out["nudged_res"] = f"{np.mean(m['nudged_residual']):.1e}"
    if "linear_residual" in m:
        out["linear_res"] = f"{np.mean(m['linear_residual']):.1e}"
    if "hep_error" in m:
        out["hep_err"] = f"{np.mean(m['hep_error']):.2f}"
    return out


def _estimate_text(rec: dict[str, Any], relaxes: bool = True) -> str:
    """The relaxation's and the estimator's figures of an epoch record for the epoch line
    ("" if none): the free phase's residual first (every estimate is taken there), unless
    the estimator does not relax (``relaxes=False``: ``bp``'s forward pass)."""
    parts = []
    if relaxes and rec.get("residual_mean") is not None:
        frac = rec.get("nonconverged_fraction")
        parts.append(f"free res {rec['residual_mean']:.1e}"
                     + (f" ({share(frac)} > {NONCONVERGED_TOL:g})" if frac is not None else ""))
    if rec.get("nudged_residual_mean") is not None:
        parts.append(f"nudged res {rec['nudged_residual_mean']:.1e} "
                     f"({share(rec['nudged_nonconverged_fraction'])} > {NONCONVERGED_TOL:g})")
    if rec.get("linear_residual_mean") is not None:
        parts.append(f"linear res {rec['linear_residual_mean']:.1e}")
    if (circle := circle_brief(rec)) is not None:
        parts.append(circle)
    return (" | " + ", ".join(parts)) if parts else ""


def _warn_many_axes(program: Program) -> None:
    """Pruning reads a parameter's last axis as the receiving neuron (a kernel's output
    channel, eqprop's convolutions store it last); a plugin's parameter with more than two
    axes may hold something else there (a review's ``(C, C, K)`` ring kernel: its offsets
    read as neurons, the keep-one-input rule then meaningless): said before training."""
    if isinstance(program.pruner, NoPruning) or type(program.model).__module__.startswith("eqprop."):
        return
    from ..network import named_parameters, parameters
    from ..pruning import prunable

    many = {n: tuple(w.shape[program.seeds > 1:]) for n, w in named_parameters(parameters(program.model)).items()
            if prunable(n, w) and w.ndim - (program.seeds > 1) > 2}
    if many:
        listed = ", ".join(f"{n} {s}" for n, s in many.items())
        warn_at_caller(f"pruning: {listed}: more than two axes; the last is taken as the receiving "
                       "neuron (a convolution's output channel), whose last incoming connection is "
                       "kept: store such a parameter with its receiving axis last (docs/extending.md)",
                       EqpropWarning)


def _warn_undeclared_zeros(program: Program) -> None:
    """Pruning a model whose matrices hold zeros it does not declare as absent (a plugin's
    fixed structure without :class:`~eqprop.network.ConnectedModel`) would count those
    entries as connections it removes: said before training (a review's plugin reported
    sparsity 0.45 with none of its real edges pruned)."""
    if isinstance(program.pruner, NoPruning):
        return
    zeros = undeclared_zeros(program.model)
    if zeros:
        listed = ", ".join(f"{n} {z} of {size}" for n, (z, size) in zeros.items())
        warn_at_caller(f"pruning: exact zeros at initialisation in matrices whose connectivity the "
                       f"model does not declare ({listed}); pruning counts them as connections it "
                       "removes: declare the structure with eqprop.network.ConnectedModel."
                       "connections() (docs/extending.md)", EqpropWarning)


def refuse_a_run(run: RunDir, *, cli: bool = False) -> None:
    """Raise ``ValueError`` when ``run`` already holds a run (a checkpoint or metrics): a
    fresh :func:`train` must not write into it; or when it, or the nearest of its parents
    that exists, is not a directory. The message's advice is the command
    line's (``cli``) or the Python API's."""
    for path in (run.path, *run.path.parents):  # the nearest that exists must be a directory
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"{run.path}: {'' if path == run.path else str(path) + ' '}exists and is not "
                                 f"a directory; choose another {'--out' if cli else 'out_dir'}")
            break
    if run.has_checkpoint() or run.metrics.exists():
        how = (f"resume it with `eqprop resume {run.path}` or choose another --out" if cli else
               "continue it with train(config, out_dir, resume=True) or choose another out_dir")
        raise ValueError(f"{run.path}: already holds a run; {how}")


def train(config: Config, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train per ``config`` into run directory ``out_dir``; return the summary dict.

    **Arguments:** ``config``: a validated configuration; ``out_dir``: the run
    directory (created; must not hold a run unless ``resume``); ``resume``: continue
    from ``out_dir/checkpoints/latest.json`` (its manifest) to ``config.train.epochs`` in total, giving
    exactly the parameters of an uninterrupted run; ``progress``: a progress bar (on a
    terminal), a line per epoch and the summary on stdout; ``False`` prints nothing (a
    sweep reads the returned summary; warnings still go to ``warnings``).

    **Returns:** the summary (:func:`~eqprop.train.summary.summarize`), also written
    to ``summary.json``.

    A process that has many runs behind it (a notebook's sweep) and maps half of
    ``vm.max_map_count`` memory regions first drops the programs JAX and Equinox keep
    compiled (:func:`~eqprop.jitting.release_near_map_limit`): only a recompile, where
    the limit's alternative is a segfault.

    **Raises:** :class:`~eqprop.train.divergence.TrainingDiverged` on a non-finite
    state (the last good checkpoint is kept); :class:`TrainingInterrupted` on Ctrl-C
    (after saving a checkpoint of the last completed batch); ``ValueError`` for an
    unusable directory; :class:`~eqprop.train.loggers.LoggerUnavailable` (before any
    training) when a logger of ``[logging] loggers`` lacks its package.
    """
    configure(config.parallel.devices)  # before anything initialises JAX's backends
    _STOP_REQUESTS.clear()
    release_near_map_limit()  # programs earlier runs of this process left cached
    warn_near_map_limit("train")
    writer = is_writer()
    loggers = make_loggers(config.logging.loggers) if writer else []
    run = RunDir(out_dir)
    if resume and not (run.has_checkpoint() or run.is_run()):  # no checkpoint yet: restart
        raise ValueError(f"{run.path}: no checkpoint to resume from "
                         f"({run.checkpoint('latest')} not found)")
    if writer and not resume:
        refuse_a_run(run)
    # config.toml first, so that a run killed at any instant after this line, even while
    # its data loads or its step compiles, is a run directory that `eqprop resume` restarts
    fresh = writer and not resume and not run.is_run()
    if fresh:
        existed = run.path.exists()
        run.write_config(config)
    try:
        program = build_program(config)
        _warn_undeclared_zeros(program)
        _warn_many_axes(program)
        tr = _Trainer(run, program, loggers, progress)  # its enforcer can refuse the model
    except KeyboardInterrupt as interrupt:
        if not run.is_run():
            raise
        how = str(interrupt) or "interrupted"
        raise TrainingInterrupted(f"{how} while the run was being built (data, model), before its "
                                  f"first step; continue with `eqprop resume {run.path}`",
                                  epoch=1, batch=0) from None
    except Exception:  # not an interrupt: a run killed here must stay resumable
        if fresh:  # nothing ran: leave no run directory behind a config that cannot build
            run.config.unlink(missing_ok=True)
            if not existed:
                shutil.rmtree(run.path, ignore_errors=True)
        raise
    if resume:
        try:
            tr.pos, meta = restore(run, program)
        except RunCompleted as done:  # killed after its last checkpoint, or resumed twice
            if not writer:
                return {"status": "completed", "process": jax.process_index()}
            run.remove_stale_temps()  # a kill while the summary was written leaves one
            summary, note = done.summary, ""
            if summary is None:  # killed before writing it, or edited: from the records
                tr.best_acc, tr.best_epoch = done.meta.get("best_test_acc"), done.meta.get("best_epoch")
                tr.elapsed = float(done.meta.get("elapsed_seconds", 0.0))
                summary = tr.summary("completed")
                run.write_summary(summary)
                note = f" ({run.summary.name} was missing or not this run's: written anew)"
            if progress:
                print(f"{done}{note}")
                print(format_summary(summary))
            return summary
        tr.best_acc, tr.best_epoch = meta.get("best_test_acc"), meta.get("best_epoch")
        tr.thinning = Thinning(warned_epochs(r for r in run.read_metrics()
                                             if r.get("epoch", 0) <= tr.pos.epoch))
        tr.partial_before = float(meta.get("partial_seconds", 0.0)) if tr.pos.batch else 0.0
        tr.elapsed = float(meta.get("elapsed_seconds", 0.0)) - tr.partial_before
        tr.echo(f"resuming {run.path} at epoch {tr.pos.epoch + 1}"
                + (f", batch {tr.pos.batch}" if tr.pos.batch else ""))
    else:
        tr.pos = start(program)
        if tr.enforce is not None:  # the initial network obeys the bound too
            st = tr.pos.state
            tr.pos = Position(TrainState(tr.enforce(st.model), st.opt_state, st.step, st.key),
                              tr.pos.epoch, tr.pos.batch, tr.pos.sums, tr.pos.states)
    if writer:
        run.write_config(config)
    opened: list[Logger] = []
    try:
        for logger in loggers:
            logger.open(run.path, config, resume_from=tr.pos.epoch if resume else None)
            opened.append(logger)
        for epoch in range(tr.pos.epoch + 1, config.train.epochs + 1):
            tr.run_epoch(epoch)
    except TrainingDiverged as e:
        if writer:
            run.write_summary(tr.summary("diverged", str(e)))
        raise
    except KeyboardInterrupt as interrupt:
        pos = tr.pos
        if tr.unprinted:  # the epoch completed, its line not yet printed
            tr.echo(tr.unprinted)
        how = str(interrupt) or "interrupted"  # "terminated (SIGTERM)" from the CLI's handler
        if jax.process_count() > 1:  # the others may be elsewhere: no collective save
            raise TrainingInterrupted(
                f"{how} in epoch {pos.epoch + 1}; continue from the last epoch's "
                f"checkpoint with `eqprop resume {run.path}`", epoch=pos.epoch + 1,
                batch=pos.batch) from None
        tr.save("latest", pos)
        msg = (f"{how} in epoch {pos.epoch + 1} after {pos.batch} batch(es); checkpoint "
               f"saved to {run.checkpoint('latest')}; continue with `eqprop resume {run.path}`")
        raise TrainingInterrupted(msg, epoch=pos.epoch + 1, batch=pos.batch) from None
    finally:
        for logger in reversed(opened):
            logger.close()
    if not writer:
        return {"status": "completed", "process": jax.process_index()}
    summary = tr.summary("completed")
    run.write_summary(summary)
    if progress:
        print(format_summary(summary))
    return summary
