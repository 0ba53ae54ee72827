"""The trainer: epochs of jitted steps, evaluation, metrics, checkpoints, resume.

Conventions
-----------
* Epochs are numbered from 1 in files and messages; the data order of epoch ``e`` is
  ``batches(..., seed=train.seed, epoch=e - 1)`` and batch ``b`` counts from 0.
* Randomness: ``init_key, step_root = split(PRNGKey(train.seed))``. ``K = train.seeds``
  networks are initialised from ``split(init_key, K)`` (``init_key`` itself when K = 1).
  The key of batch ``b`` of epoch ``e`` is ``fold_in(fold_in(step_root, e - 1), b)``
  (split into K when K > 1): a pure function of (seed, epoch, batch), so a resumed run
  reproduces an uninterrupted one exactly.
* K > 1: models and optimizer states are stacked along a leading axis of size K and the
  step is ``filter_vmap``-ed (data shared). Metrics then carry one value per seed.
* Jacobian homeostasis (``[homeostasis] coef > 0``): the step is told the global batch
  index ``(epoch - 1) * n_batches + b`` and applies the homeostatic gradient when it is a
  multiple of ``every``; the epoch record gains ``train_homeo_loss`` (mean over the
  batches where it was applied).
* Diagnostics (``[diagnostics] enabled``): at the end of every ``every``-th epoch (and the
  last), :func:`eqprop.diagnostics.diagnostics` on a fixed probe batch (the first
  ``batch_size`` training examples), for every seed; the record's top-level keys
  (``angle``, ``jacobian_symmetry``, ``alignment``, ...) are means over seeds and
  ``per_seed`` holds each seed's values.
* Checkpoint position: ``epoch`` = completed epochs, ``batch`` = batches already done in
  the next epoch (non-zero only after Ctrl-C), ``partial`` = that epoch's running sums.
* Warm starts (``[dynamics] warm_start``): every training example's free phase starts
  from its fixed point at its previous visit (:class:`eqprop.train.states.PersistentStates`;
  cold at the first). ``latest`` checkpoints then reference a ``states-E-B.npz`` file
  next to them (``states_file``, ``states_sha256`` in the sidecar) so resume is exact.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import build
from ..config import Config, ConfigError
from ..data import Dataset, batches, load, num_batches
from ..estimate import free_phase
from ..network.base import parameters
from ..update import batch_metrics, init_optimizer, make_train_step
from . import checkpoint
from .rundir import RunDir
from .states import PersistentStates

__all__ = ["TrainingDiverged", "TrainingInterrupted", "Program", "train", "build_program",
           "load_dataset", "evaluate", "load_run", "unstack", "step_keys"]

PyTree = Any
SUM_KEYS = ("examples", "batches", "loss", "acc", "free_steps", "residual", "nonconverged",
            "step_seconds", "timed_batches", "homeo_loss", "homeo_batches")
_PER_SEED_SUMS = ("loss", "acc", "free_steps", "residual", "nonconverged", "homeo_loss")


class TrainingDiverged(RuntimeError):
    """The state or loss became non-finite; the offending update was not checkpointed."""

    def __init__(self, message: str, *, epoch: int, batch: int, populations: list[str]) -> None:
        super().__init__(message)
        self.epoch, self.batch, self.populations = epoch, batch, populations


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint of the last completed batch was written (resume is exact)."""

    def __init__(self, message: str, *, epoch: int, batch: int) -> None:
        super().__init__(message)
        self.message, self.epoch, self.batch = message, epoch, batch

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


@dataclass
class Program:
    """Everything rebuilt from a config: data, the (stacked) initial state, jitted functions.

    ``step(model, opt_state, x, y, key[, u0, warm]) -> (model, opt_state, metrics)`` and
    ``evaluate(model, x, y) -> metrics`` are vmapped over seeds when ``seeds > 1``
    (``u0``: warm-start states, see :func:`eqprop.update.make_train_step`).
    ``step`` passes ``batch_index`` (set by the trainer before each call: the global
    batch count) on to the jitted step, for homeostasis' ``every``.
    """

    config: Config
    dataset: Dataset
    seeds: int
    model: PyTree
    opt_state: PyTree
    n_batches: int
    step: Callable[..., tuple[PyTree, PyTree, dict[str, Any]]]
    eval_batch: Callable[..., dict[str, Any]]
    estimator: Any = None
    batch_index: int = 0


def load_dataset(config: Config) -> Dataset:
    """The ``[data]`` set (``validation`` split seeded by ``train.seed``)."""
    d = config.data
    return load(d.name, path=d.path, validation=d.validation, seed=config.train.seed)


def _augment(config: Config, ds: Dataset) -> str | None:
    if not config.data.augment:
        return None
    if ds.x_train.ndim != 4:
        raise ConfigError(f"data.augment: needs image data (NHWC), but '{ds.name}' has "
                          f"examples of shape {ds.input_shape}")
    return "flip-crop"


def n_train_batches(config: Config, ds: Dataset) -> int:
    """Batches per epoch: all of them, capped by ``train.max_batches``."""
    n = num_batches(len(ds.x_train), config.data.batch_size, config.data.drop_last)
    if config.train.max_batches is not None:
        n = min(n, config.train.max_batches)
    if n == 0:
        raise ConfigError(f"data.batch_size: {config.data.batch_size} is larger than the "
                          f"{len(ds.x_train)} training examples of '{ds.name}' with drop_last")
    return n


def _stack(trees: list[PyTree]) -> PyTree:
    arrays = [eqx.filter(t, eqx.is_array) for t in trees]
    static = eqx.filter(trees[0], eqx.is_array, inverse=True)
    return eqx.combine(jax.tree.map(lambda *xs: jnp.stack(xs), *arrays), static)


def unstack(tree: PyTree, i: int) -> PyTree:
    """Seed ``i`` of a stacked (K > 1) model or optimizer state."""
    return jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, tree)


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(parameters(tree))]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _make_eval(estimator) -> Callable:
    """``f(model, x, y)``: free-phase metrics plus top-5 accuracy."""

    def f(model, x, y):
        free = free_phase(model, x, estimator.dynamics)
        m = batch_metrics(model, free, y)
        logits = model.readout.logits(model.output_activity(model.activity(free.u))).real
        top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        m["top5"] = jnp.mean(jnp.any(top == y[:, None], axis=-1))
        return {k: m[k] for k in ("loss", "acc", "top5", "free_steps", "residual", "nonconverged")}

    return f


def build_program(config: Config, dataset: Dataset | None = None) -> Program:
    """Data, K freshly initialised models + optimizer states, jitted step and eval."""
    if config.model.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    ds = load_dataset(config) if dataset is None else dataset
    n_batches = n_train_batches(config, ds)
    k = config.train.seeds
    init_key, _ = jax.random.split(jax.random.PRNGKey(config.train.seed))
    keys = [init_key] if k == 1 else list(jax.random.split(init_key, k))
    models = [build.build_model(config, input_size=ds.input_size, n_classes=ds.n_classes, key=kk)
              for kk in keys]
    estimator = build.build_estimator(config)
    try:
        estimator.check(models[0])
    except ValueError as e:
        msg = str(e)  # messages that name their own key keep it; the rest are the estimator's
        raise ConfigError(msg if msg.startswith("dynamics.") else f"estimator.name: {msg}") from None
    optimizer = build.build_optimizer(config, models[0], config.train.epochs * n_batches)
    base_step = make_train_step(estimator, optimizer, build.build_homeostasis(config))

    def checked_step(model, opt_state, x, y, key, index, u0=None, warm=None):
        model, opt_state, metrics = base_step(model, opt_state, x, y, key, index, u0, warm)
        return model, opt_state, {**metrics, "params_finite": _all_finite(model)}

    eval_fn = _make_eval(estimator)
    if k == 1:
        model = models[0]
        opt_state = init_optimizer(optimizer, model)
        step, eval_batch = checked_step, eval_fn
    else:
        model = _stack(models)
        opt_state = eqx.filter_vmap(lambda m: init_optimizer(optimizer, m))(model)
        step = eqx.filter_vmap(checked_step, in_axes=(0, 0, None, None, 0, None, 0, None))
        eval_batch = eqx.filter_vmap(eval_fn, in_axes=(0, None, None))
    jitted = eqx.filter_jit(step)
    program = Program(config, ds, k, model, opt_state, n_batches, jitted,
                      eqx.filter_jit(eval_batch), estimator)

    def indexed_step(model, opt_state, x, y, key, u0=None, warm=None):
        return jitted(model, opt_state, x, y, key, jnp.asarray(program.batch_index, jnp.int32),
                      u0, warm)

    program.step = indexed_step
    return program


def step_keys(seed: int, epoch: int, n_batches: int, seeds: int = 1) -> np.ndarray:
    """Keys of every batch of ``epoch`` (1-based): ``(n_batches, 2)`` or ``(n_batches, K, 2)``."""
    _, root = jax.random.split(jax.random.PRNGKey(seed))
    ek = jax.random.fold_in(root, epoch - 1)
    keys = jax.vmap(lambda b: jax.random.fold_in(ek, b))(jnp.arange(n_batches))
    if seeds > 1:
        keys = jax.vmap(lambda kk: jax.random.split(kk, seeds))(keys)
    return np.asarray(keys)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def evaluate(program: Program, model: PyTree, x: np.ndarray, y: np.ndarray,
             batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Example-weighted ``loss``, ``acc``, ``top5`` (+ relaxation means), each ``(K,)``."""
    bs = batch_size or program.config.data.batch_size
    totals: dict[str, np.ndarray] = {}
    n = 0
    for xb, yb in batches(x, y, bs, seed=0, epoch=0, shuffle=False, drop_last=False):
        m = jax.device_get(program.eval_batch(model, xb, yb))
        for key, v in m.items():
            totals[key] = totals.get(key, 0.0) + np.atleast_1d(np.asarray(v, np.float64)) * len(yb)
        n += len(yb)
    return {key: v / max(n, 1) for key, v in totals.items()}


# ---------------------------------------------------------------------------
# Checkpoint helpers
# ---------------------------------------------------------------------------


def _template(program: Program) -> tuple[PyTree, PyTree]:
    return program.model, program.opt_state


def load_checkpoint(run: RunDir, which: str, program: Program) -> tuple[PyTree, PyTree, dict]:
    """``(model, opt_state, meta)`` of ``checkpoints/<which>.eqx`` (template from ``program``)."""
    (model, opt_state), meta = checkpoint.load(run.checkpoint(which), _template(program))
    return model, opt_state, meta


def load_run(run_dir: str | Path, which: str = "latest", overrides: tuple[str, ...] | list[str] = ()
             ) -> tuple[Config, Program, PyTree, dict]:
    """``(config, program, model, meta)`` of a run directory's checkpoint ``which``."""
    from ..config import load_config

    run = RunDir(run_dir)
    if not run.is_run():
        raise ValueError(f"{run.path}: not a run directory (no config.toml)")
    if not run.checkpoint(which).is_file():
        raise ValueError(f"{run.path}: no {which} checkpoint ({run.checkpoint(which)} not found)")
    config = load_config(run.config, overrides)
    program = build_program(config)
    model, _, meta = load_checkpoint(run, which, program)
    return config, program, model, meta


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Position:
    """A consistent snapshot: state after ``batch`` batches of epoch ``epoch + 1``."""

    model: PyTree
    opt_state: PyTree
    epoch: int  # completed epochs
    batch: int  # batches done in the next epoch
    sums: dict[str, Any]
    states: PersistentStates | None = None  # warm starts (updated in place, batch by batch)


def _zero_sums(k: int) -> dict[str, Any]:
    return {key: np.zeros(k) if key in _PER_SEED_SUMS else 0.0 for key in SUM_KEYS}


def _sums_from_json(d: dict | None, k: int) -> dict[str, Any]:
    out = _zero_sums(k)
    for key, v in (d or {}).items():
        out[key] = np.asarray(v, np.float64) if isinstance(v, list) else float(v)
    return out


def _accumulate(sums: dict[str, Any], m: dict[str, Any], bs: int, seconds: float | None) -> dict:
    out = dict(sums)
    out["examples"] = sums["examples"] + bs
    out["batches"] = sums["batches"] + 1
    for key in ("loss", "acc"):
        out[key] = sums[key] + np.atleast_1d(np.asarray(m[key], np.float64)) * bs
    for key in ("free_steps", "residual", "nonconverged"):
        out[key] = sums[key] + np.atleast_1d(np.asarray(m[key], np.float64))
    if "homeo_loss" in m:
        applied = bool(np.any(np.asarray(m["homeo_applied"])))
        if applied:
            out["homeo_loss"] = sums["homeo_loss"] + np.atleast_1d(np.asarray(m["homeo_loss"], np.float64))
            out["homeo_batches"] = sums["homeo_batches"] + 1
    if seconds is not None:
        out["step_seconds"] = sums["step_seconds"] + seconds
        out["timed_batches"] = sums["timed_batches"] + 1
    return out


def _check_finite(m: dict[str, Any], epoch: int, batch: int, seeds: int) -> None:
    """Raise :class:`TrainingDiverged` if the step's metrics show a non-finite state."""
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


def _call_step(program: Program, model, opt_state, x, y, key, u0=None, warm=None):
    """One training step (a seam for tests)."""
    return program.step(model, opt_state, x, y, key, u0, warm)


def _record(epoch: int, sums: dict[str, Any], test: dict[str, np.ndarray] | None,
            seconds: float, seeds: int, compile_seconds: float | None) -> dict[str, Any]:
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


def probe_batch(program: Program) -> tuple[np.ndarray, np.ndarray]:
    """The fixed diagnostics batch: the first ``diagnostics.batch_size`` training examples."""
    n = program.config.diagnostics.batch_size
    return program.dataset.x_train[:n], program.dataset.y_train[:n]


def run_diagnostics(program: Program, model: PyTree, epoch: int) -> tuple[dict, dict]:
    """``(means over seeds, {key: [value per seed]})`` of the diagnostics of ``model``."""
    from ..diagnostics import diagnostics

    x, y = probe_batch(program)
    key = jax.random.fold_in(jax.random.PRNGKey(program.config.train.seed), 100_000 + epoch)
    models = [model] if program.seeds == 1 else [unstack(model, i) for i in range(program.seeds)]
    free_steps = program.config.diagnostics.free_steps or None
    rows = [diagnostics(m, x, y, program.estimator, program.estimator.dynamics, key,
                        free_steps=free_steps) for m in models]
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    per = {k: [r[k] for r in rows] for k in keys}
    return {k: float(np.mean(v)) for k, v in per.items()}, per


class _Trainer:
    """State of one ``train`` call (kept on an object so Ctrl-C can checkpoint it)."""

    def __init__(self, config: Config, run: RunDir, program: Program, progress: bool) -> None:
        self.config, self.run, self.p, self.progress = config, run, program, progress
        self.best_acc: float | None = None
        self.best_epoch: int | None = None
        self.elapsed = 0.0
        self.compiled = False
        self.pos: _Position | None = None

    # -- checkpoints ------------------------------------------------------
    def meta(self, pos: _Position) -> dict[str, Any]:
        t = self.config.train
        return {
            "epoch": pos.epoch, "batch": pos.batch,
            "partial": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                        for k, v in pos.sums.items()} if pos.batch else None,
            "best_test_acc": self.best_acc, "best_epoch": self.best_epoch,
            "seed": t.seed, "seeds": t.seeds, "elapsed_seconds": self.elapsed,
            "rng": "init, root = split(PRNGKey(seed)); batch key = "
                   "fold_in(fold_in(root, epoch - 1), batch) (split into seeds if > 1)",
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def save(self, which: str, pos: _Position) -> None:
        meta = self.meta(pos)
        keep = None
        if which == "latest" and pos.states is not None:
            keep = f"states-{pos.epoch}-{pos.batch}.npz"
            sha = pos.states.save(self.run.checkpoint(which).parent / keep)
            meta.update(states_file=keep, states_sha256=sha)
        checkpoint.save(self.run.checkpoint(which), (pos.model, pos.opt_state), meta)
        if keep is not None:  # the checkpoint now points at `keep`: older states are garbage
            for old in self.run.checkpoint(which).parent.glob("states-*.npz"):
                if old.name != keep:
                    old.unlink(missing_ok=True)

    # -- loop -------------------------------------------------------------
    def log(self, text: str) -> None:
        if self.progress:
            tqdm.write(text, file=sys.stdout)

    def run_epoch(self, epoch: int) -> None:
        p, cfg = self.p, self.config
        pos = self.pos
        assert pos is not None and pos.epoch == epoch - 1
        t0 = time.perf_counter()
        keys = step_keys(cfg.train.seed, epoch, p.n_batches, p.seeds)
        data = islice(batches(p.dataset.x_train, p.dataset.y_train, cfg.data.batch_size,
                              seed=cfg.train.seed, epoch=epoch - 1, drop_last=cfg.data.drop_last,
                              augment=_augment(cfg, p.dataset), with_index=True), p.n_batches)
        bar = tqdm(total=p.n_batches, initial=pos.batch, desc=f"epoch {epoch}/{cfg.train.epochs}",
                   disable=not (self.progress and sys.stderr.isatty()), leave=False,
                   dynamic_ncols=True)
        compile_seconds = None
        try:
            for b, (xb, yb, idx) in enumerate(data):
                if b < pos.batch:
                    continue  # done before an interruption
                ts = time.perf_counter()
                p.batch_index = (epoch - 1) * p.n_batches + b
                warm = () if pos.states is None else pos.states.gather(idx)
                model, opt_state, m = _call_step(p, pos.model, pos.opt_state, xb, yb, keys[b],
                                                 *warm)
                m = jax.device_get(m)
                dt = time.perf_counter() - ts
                _check_finite(m, epoch, b, p.seeds)  # a diverged state is never stored
                if pos.states is not None:
                    pos.states.scatter(idx, m.pop("state"))
                first = not self.compiled
                self.compiled = True
                if first:
                    compile_seconds = dt
                sums = _accumulate(pos.sums, m, len(yb), None if first else dt)
                pos = self.pos = _Position(model, opt_state, epoch - 1, b + 1, sums, pos.states)
                if not bar.disable:
                    ms = 1000 * sums["step_seconds"] / max(sums["timed_batches"], 1)
                    bar.set_postfix(loss=f"{np.mean(m['loss']):.4f}",
                                    acc=f"{np.mean(m['acc']):.3f}", ms_batch=f"{ms:.1f}")
                    bar.update(1)
        finally:
            bar.close()
        self.end_epoch(epoch, pos, t0, compile_seconds)

    def end_epoch(self, epoch: int, pos: _Position, t0: float, compile_seconds) -> None:
        cfg, p = self.config, self.p
        last = epoch == cfg.train.epochs
        test = None
        if epoch % cfg.train.eval_every == 0 or last:
            test = evaluate(p, pos.model, p.dataset.x_test, p.dataset.y_test)
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        rec = _record(epoch, pos.sums, test, seconds, p.seeds, compile_seconds)
        d = cfg.diagnostics
        if d.enabled and (epoch % d.every == 0 or last):
            t_diag = time.perf_counter()
            means, per = run_diagnostics(p, pos.model, epoch)
            rec.update(means)
            if p.seeds > 1:
                rec["per_seed"].update(per)
            rec["diagnostics_seconds"] = time.perf_counter() - t_diag
        self.run.append_metrics(rec)
        boundary = _Position(pos.model, pos.opt_state, epoch, 0, _zero_sums(p.seeds), pos.states)
        if test is not None and (self.best_acc is None or rec["test_acc"] > self.best_acc):
            self.best_acc, self.best_epoch = rec["test_acc"], epoch
            self.save("best", boundary)
        self.pos = boundary
        if epoch % cfg.train.checkpoint_every == 0 or last:
            self.save("latest", boundary)
        test_txt = "" if test is None else (f" | test loss {rec['test_loss']:.4f} "
                                            f"acc {rec['test_acc']:.4f}")
        ms = rec["ms_per_batch"]
        self.log(f"epoch {epoch}/{cfg.train.epochs}  train loss {rec['train_loss']:.4f} "
                 f"acc {rec['train_acc']:.4f}{test_txt} | {seconds:.1f} s"
                 + (f", {ms:.1f} ms/batch" if ms is not None else ""))


def _summary(run: RunDir, config: Config, tr: _Trainer, status: str,
             message: str | None = None) -> dict[str, Any]:
    records = run.read_metrics()
    evald = [r for r in records if r.get("test_acc") is not None]
    final = evald[-1] if evald else None
    ms = [r["ms_per_batch"] for r in records if r.get("ms_per_batch") is not None]
    out: dict[str, Any] = {
        "run_dir": str(run.path), "status": status,
        "epochs": records[-1]["epoch"] if records else 0,
        "epochs_planned": config.train.epochs, "seeds": config.train.seeds,
        "data": config.data.name, "estimator": config.estimator.name,
        "final_test_acc": final["test_acc"] if final else None,
        "final_test_loss": final["test_loss"] if final else None,
        "final_train_acc": records[-1]["train_acc"] if records else None,
        "best_test_acc": tr.best_acc, "best_epoch": tr.best_epoch,
        "train_seconds": tr.elapsed,
        "ms_per_batch": float(np.median(ms)) if ms else None,
    }
    if final is not None:
        per = (final.get("per_seed") or {}).get("test_acc") or [final["test_acc"]]
        out["final_test_acc_per_seed"] = per
        out["final_test_acc_mean"] = float(np.mean(per))
        out["final_test_acc_std"] = float(np.std(per))
    if message:
        out["message"] = message
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of training."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    lines = [f"run        {s['run_dir']}  ({s['status']})",
             f"data       {s['data']}, estimator {s['estimator']}, seeds {s['seeds']}",
             f"epochs     {s['epochs']}/{s['epochs_planned']}",
             f"test acc   final {pct(s['final_test_acc'])}"
             + (f" ± {pct(s.get('final_test_acc_std'))} over {s['seeds']} seeds"
                if s["seeds"] > 1 and s.get("final_test_acc_std") is not None else "")
             + f", best {pct(s['best_test_acc'])}"
             + (f" (epoch {s['best_epoch']})" if s["best_epoch"] else ""),
             f"train acc  final {pct(s['final_train_acc'])}",
             f"time       {s['train_seconds']:.1f} s"
             + (f", {s['ms_per_batch']:.1f} ms/batch" if s["ms_per_batch"] else "")]
    if s.get("message"):
        lines.append(f"note       {s['message']}")
    return "\n".join(lines)


def train(config: Config, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train per ``config`` into run directory ``out_dir``; return the summary dict.

    ``resume=True`` continues from ``out_dir/checkpoints/latest.eqx`` (to
    ``config.train.epochs`` in total) and gives exactly the parameters of an
    uninterrupted run. Raises :class:`TrainingDiverged` on a non-finite state (the last
    good checkpoint is kept), :class:`TrainingInterrupted` on Ctrl-C (after saving a
    checkpoint of the last completed batch), ``ValueError`` for an unusable directory.
    """
    run = RunDir(out_dir)
    if resume and not run.has_checkpoint():
        raise ValueError(f"{run.path}: no checkpoint to resume from "
                         f"({run.checkpoint('latest')} not found)")
    if not resume and (run.has_checkpoint() or run.metrics.exists()):
        raise ValueError(f"{run.path}: already holds a run; resume it with `eqprop resume "
                         f"{run.path}` or choose another --out")
    program = build_program(config)
    tr = _Trainer(config, run, program, progress)
    if resume:
        model, opt_state, meta = load_checkpoint(run, "latest", program)
        done = int(meta["epoch"])
        if done > config.train.epochs or (done == config.train.epochs and meta.get("batch")):
            raise ValueError(f"{run.path}: already trained {done} epochs; pass a larger "
                             "total with --epochs")
        tr.best_acc, tr.best_epoch = meta.get("best_test_acc"), meta.get("best_epoch")
        tr.elapsed = float(meta.get("elapsed_seconds", 0.0))
        states = _warm_states(config, program)
        if states is not None and meta.get("states_file"):
            states.load(run.checkpoint("latest").parent / meta["states_file"],
                        meta.get("states_sha256"))
        tr.pos = _Position(model, opt_state, done, int(meta.get("batch", 0)),
                           _sums_from_json(meta.get("partial"), program.seeds), states)
        run.truncate_metrics(done)
        tr.log(f"resuming {run.path} at epoch {done + 1}"
               + (f", batch {tr.pos.batch}" if tr.pos.batch else ""))
    else:
        tr.pos = _Position(program.model, program.opt_state, 0, 0, _zero_sums(program.seeds),
                           _warm_states(config, program))
    run.write_config(config)
    try:
        for epoch in range(tr.pos.epoch + 1, config.train.epochs + 1):
            tr.run_epoch(epoch)
    except TrainingDiverged as e:
        summary = _summary(run, config, tr, "diverged", str(e))
        run.write_summary(summary)
        raise
    except KeyboardInterrupt:
        pos = tr.pos
        tr.save("latest", pos)
        msg = (f"interrupted in epoch {pos.epoch + 1} after {pos.batch} batch(es); checkpoint "
               f"saved to {run.checkpoint('latest')}; continue with `eqprop resume {run.path}`")
        raise TrainingInterrupted(msg, epoch=pos.epoch + 1, batch=pos.batch) from None
    summary = _summary(run, config, tr, "completed")
    run.write_summary(summary)
    print(format_summary(summary))
    return summary


def _warm_states(config: Config, program: Program) -> PersistentStates | None:
    """Empty persistent states when ``[dynamics] warm_start`` is on, else ``None``."""
    if not config.dynamics.warm_start:
        return None
    return PersistentStates.empty(program.model, program.dataset.x_train, program.seeds)


def with_epochs(config: Config, epochs: int | None) -> Config:
    """``config`` with ``train.epochs`` replaced (validated) when ``epochs`` is given."""
    if epochs is None:
        return config
    from ..config import with_updates

    return with_updates(config, train={"epochs": epochs})

