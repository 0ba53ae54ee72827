"""Metric loggers: where each epoch's record goes.

A logger is a :class:`Logger` registered in :data:`eqprop.registry.LOGGERS`; the
trainer opens those named in ``[logging] loggers`` (plus :class:`JsonlLogger`, always)
when a run starts or resumes, hands each the record of every completed epoch
(:mod:`eqprop.train.records`), and closes them at the end, however the run ends.

Built in:

* ``metrics.jsonl`` (:class:`JsonlLogger`, always on, not named in the config): one
  JSON object per epoch; ``eqprop report`` and the summary read it.
* ``"tensorboard"``: the numeric values of each record as TensorBoard scalars at step
  ``epoch`` (``per_seed`` values as ``<key>/seed_<i>``), in ``RUN_DIR/tensorboard/``,
  written with tensorboardX (``pip install tensorboardX``). Watch with
  ``tensorboard --logdir RUN_DIR`` (or the parent of several runs).
* ``"wandb"``: the same scalars to Weights & Biases in offline mode, in
  ``RUN_DIR/wandb/`` (``pip install wandb``); the run is named after the run
  directory, grouped in ``[logging] project``, and carries the resolved configuration.
  Upload later with ``wandb sync RUN_DIR/wandb/offline-run-*``.

A logger whose package is missing fails at start-up, before any training, with a
one-line :class:`LoggerUnavailable` naming the ``pip install`` command.

A new logger is one class and one registration::

    from eqprop.registry import LOGGERS
    from eqprop.train.loggers import Logger

    @LOGGERS.register("print")
    class PrintLogger(Logger):
        def open(self, run_dir, config, *, resume_from=None):
            pass

        def log(self, record):
            print(record["epoch"], record["train_loss"])
"""

from __future__ import annotations

import abc
import importlib
import math
import tomllib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..config import ConfigError
from ..registry import LOGGERS

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Logger", "LoggerUnavailable", "JsonlLogger", "TensorBoardLogger", "WandbLogger",
           "make_loggers", "scalars"]


class LoggerUnavailable(ConfigError):
    """A logger named in ``[logging] loggers`` needs a package that is not installed."""


class Logger(abc.ABC):
    """Receives the record of every completed epoch of a run.

    **Class attributes:** ``requires``: the modules the logger imports (checked by
    :meth:`check` before training starts); ``install``: the ``pip install`` argument
    that provides them.

    Call order: :meth:`check`, :meth:`open`, :meth:`log` once per epoch, :meth:`close`
    (also after a divergence or Ctrl-C).
    """

    requires: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = ""

    @property
    def name(self) -> str:
        """The registered name (the class name when not registered)."""
        return getattr(type(self), "registered_name", type(self).__name__)

    def check(self) -> None:
        """Import the :attr:`requires` modules.

        **Raises:** :class:`LoggerUnavailable` (one line, with the ``pip install``
        command) when one is missing.
        """
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError:
                raise LoggerUnavailable(
                    f"logging.loggers: '{self.name}' needs the {module} package, which is not "
                    f"installed: pip install {self.install or module} "
                    "(or pip install 'eqprop[logging]')") from None

    @abc.abstractmethod
    def open(self, run_dir: Path, config: "Config", *, resume_from: int | None = None) -> None:
        """Start logging the run in ``run_dir`` (which exists and holds ``config.toml``).

        **Arguments:** ``run_dir``; ``config``: the run's resolved configuration;
        ``resume_from``: ``None`` for a fresh run, else the epochs the resumed
        checkpoint had completed (records of later epochs, logged before an
        interruption, are to be superseded).
        """

    @abc.abstractmethod
    def log(self, record: dict[str, Any]) -> None:
        """Log the record of one completed epoch (see :mod:`eqprop.train.records`)."""

    def close(self) -> None:
        """Flush and release files (default: nothing to do)."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numeric values of ``record`` as ``{tag: value}``, without ``epoch``.

    ``per_seed`` lists become ``<key>/seed_<i>``; ``None``, booleans and non-finite
    values are left out.
    """
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    out = {k: float(v) for k, v in record.items() if k != "epoch" and number(v)}
    for k, vs in (record.get("per_seed") or {}).items():
        for i, v in enumerate(vs or ()):
            if number(v):
                out[f"{k}/seed_{i}"] = float(v)
    return out


def _config_dict(config: "Config") -> dict[str, Any]:
    from ..config import dumps_toml

    return tomllib.loads(dumps_toml(config))


class JsonlLogger(Logger):
    """``RUN_DIR/metrics.jsonl``: one JSON object per epoch (always on; not registered).

    Non-finite numbers are written as ``null``. Each record is one appended, fsync-ed
    line, written before the epoch's checkpoint. On resume the records after the
    checkpoint's epoch, and a torn last line a killed run left, are dropped first, so
    the file never repeats an epoch; the stale ``summary.json`` is removed.
    """

    def __init__(self) -> None:
        self.run = None

    def open(self, run_dir: Path, config: "Config", *, resume_from: int | None = None) -> None:
        from .rundir import RunDir, line_numbers

        self.run = RunDir(run_dir)
        if resume_from is not None:
            dropped = self.run.truncate_metrics(resume_from)
            if dropped:  # never silent (a review's stray line stayed, unremarked)
                import warnings

                from ..guards import EqpropWarning

                warnings.warn(f"{self.run.metrics}: {line_numbers(dropped)} "
                              "not records the trainer wrote (edited?): dropped at resume",
                              EqpropWarning, stacklevel=2)
            self.run.clear_summary()

    def log(self, record: dict[str, Any]) -> None:
        self.run.append_metrics(record)


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """TensorBoard scalars in ``RUN_DIR/tensorboard/`` (tensorboardX), one step per epoch.

    On resume the events of epochs after the checkpoint are purged (tensorboardX's
    ``purge_step``), so TensorBoard shows each epoch once.
    """

    requires = ("tensorboardX",)
    install = "tensorboardX"

    def __init__(self) -> None:
        self.writer = None

    def open(self, run_dir: Path, config: "Config", *, resume_from: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        purge = None if resume_from is None else resume_from + 1
        self.writer = SummaryWriter(logdir=str(Path(run_dir) / "tensorboard"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """Weights & Biases in offline mode, in ``RUN_DIR/wandb/``; one step per epoch.

    The run's id is kept in ``RUN_DIR/wandb/run-id`` so that a resumed training logs
    to the same run. The console is left alone (no stdout capture) and nothing is sent
    over the network; ``wandb sync`` uploads later.
    """

    requires = ("wandb",)
    install = "wandb"

    def __init__(self) -> None:
        self.run = None

    def open(self, run_dir: Path, config: "Config", *, resume_from: int | None = None) -> None:
        import wandb

        run_dir = Path(run_dir)
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb" / "run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=config.logging.project, name=run_dir.resolve().name, id=run_id,
            dir=str(run_dir), mode="offline", resume="allow", config=_config_dict(config),
            settings=wandb.Settings(silent=True, console="off"))

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["epoch"]))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def make_loggers(names: Sequence[str]) -> list[Logger]:
    """:class:`JsonlLogger` followed by the registered loggers ``names``, each checked.

    **Raises:** ``ValueError`` for a name not in :data:`~eqprop.registry.LOGGERS`;
    :class:`LoggerUnavailable` when a logger's package is missing.
    """
    loggers: list[Logger] = [JsonlLogger()]
    for name in dict.fromkeys(names):  # in order, once each
        logger = LOGGERS.get(name)()
        logger.check()
        loggers.append(logger)
    return loggers
