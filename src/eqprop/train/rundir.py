"""The run directory layout and its small file helpers.

::

    RUN_DIR/
      config.toml                   resolved configuration (``dumps_toml``), atomic
      metrics.jsonl                 one JSON object per completed epoch, appended + fsync-ed
      summary.json                  final summary (at the end, or on divergence), atomic;
                                    removed when the run is resumed (it is running again)
      checkpoints/latest.json       manifest of the latest checkpoint (position, payloads)
      checkpoints/best.json         manifest of the best checkpoint (best test accuracy)
      checkpoints/tree-<hash>.eqx   (model, opt_state) leaves, named by their content
      checkpoints/states-<hash>.eqx warm-start states of ``latest`` (``[train] warm_start``)

A run killed at any instant can be resumed: every file is replaced atomically or
appended to (:mod:`eqprop.train.checkpoint`), a torn last line of ``metrics.jsonl`` is
ignored by readers and cut off at resume (:meth:`RunDir.truncate_metrics`), and a
checkpoint is one atomic unit (its manifest). Runs written before (``latest.eqx`` with a
``latest.json`` sidecar, ``states-E-B.npz``) are read as before.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..config import Config, dumps_toml
from .checkpoint import append, atomic_write, atomic_write_text, remove_stale_temps

__all__ = ["RunDir", "default_run_dir", "jsonable"]


class RunDir:
    """Paths and file operations of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str = "latest") -> Path:
        """The manifest ``checkpoints/<which>.json`` (``which`` is ``latest`` or ``best``)."""
        return self.checkpoints / f"{which}.json"

    def is_run(self) -> bool:
        return self.config.is_file()

    def require(self) -> "RunDir":
        """This run directory, checked: ``self``.

        **Raises:** ``ValueError`` (one line) when the path does not exist, or holds no
        ``config.toml``."""
        if not self.path.exists():
            raise ValueError(f"{self.path}: no such run directory")
        if not self.is_run():
            raise ValueError(f"{self.path}: not a run directory (no config.toml)")
        return self

    def has_checkpoint(self) -> bool:
        return self.checkpoint("latest").is_file()

    def write_config(self, config: Config) -> None:
        """Write ``config.toml`` atomically (and remove temporaries a killed writer left)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temps()
        atomic_write_text(self.config, dumps_toml(config))

    def remove_stale_temps(self) -> None:
        """Remove the temporaries a killed writer of ``config.toml``, ``metrics.jsonl`` or
        ``summary.json`` left."""
        remove_stale_temps(self.path, (self.config.name, self.metrics.name, self.summary.name))

    def _metric_lines(self) -> list[tuple[bytes, dict[str, Any] | None]]:
        """Each line of ``metrics.jsonl`` (with its newline, if any) and its record, or
        ``None`` for a line that is not a complete record (torn or foreign)."""
        try:
            raw = self.metrics.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        last = 0
        for line in raw.splitlines(keepends=True):
            rec = None
            if line.endswith(b"\n"):
                try:  # NaN and Infinity are never written (allow_nan=False): not a record
                    rec = json.loads(line, parse_constant=_refuse_constant)
                except (ValueError, RecursionError):  # includes UnicodeDecodeError
                    rec = None
                if not _is_record(rec) or rec["epoch"] <= last:  # out of order: not ours
                    rec = None
                else:
                    last = rec["epoch"]
            out.append((line, rec))
        return out

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``, in order.

        Lines that are not a record as the trainer writes them are skipped: the torn last
        line a killed run may leave, blank or foreign lines, and edited ones (an ``epoch``
        that is not an integer above the previous record's, a figure that is not a finite
        number or ``null``, ``per_seed`` that is not lists of them);
        :meth:`unreadable_metric_lines` names them.
        """
        return [rec for _, rec in self._metric_lines() if rec is not None]

    def unreadable_metric_lines(self) -> list[int]:
        """The line numbers (from 1) of ``metrics.jsonl`` that :meth:`read_metrics` skips."""
        return [i for i, (_, rec) in enumerate(self._metric_lines(), 1) if rec is None]

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and fsync (a kill can tear only this line)."""
        line = json.dumps(jsonable(record), allow_nan=False) + "\n"
        append(self.metrics, line.encode("utf-8"))

    def truncate_metrics(self, last_epoch: int) -> list[int]:
        """Keep only the complete records with ``epoch <= last_epoch``, byte for byte.

        Called at resume (``last_epoch``: the checkpoint's epochs), so a resumed run never
        repeats an epoch and never appends after a torn line. Atomic; nothing is written
        when nothing changes.

        **Returns:** the line numbers (from 1) of the complete lines dropped that were not
        records (edited or foreign: the caller says so; a torn last line is not among them).
        """
        lines = self._metric_lines()
        keep = [line for line, rec in lines if rec is not None and rec["epoch"] <= last_epoch]
        if len(keep) == len(lines) or not lines:
            return []
        atomic_write(self.metrics, b"".join(keep))
        return [i for i, (line, rec) in enumerate(lines, 1) if rec is None and line.endswith(b"\n")]

    def clear_summary(self) -> None:
        """Remove ``summary.json`` (a resumed run is running again: it no longer holds)."""
        self.summary.unlink(missing_ok=True)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(jsonable(summary), indent=2) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json``, or ``None`` when absent, unreadable or not a JSON object."""
        try:
            if self.summary.stat().st_size > (1 << 20):
                return None
            out = json.loads(self.summary.read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        return out if isinstance(out, dict) else None


def line_numbers(lines: list[int]) -> str:
    """``"line 3"``, ``"lines 2, 5"``, ``"lines 1, 2, 3, 4, 5 ..."`` (the first five):
    the lines of ``metrics.jsonl`` a warning names."""
    return (f"line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines[:5]))}"
            + (" ..." if len(lines) > 5 else ""))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} in a record")


def _is_figure(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and math.isfinite(v))


def _is_record(rec: Any) -> bool:
    """Whether ``rec`` (a parsed line) is an epoch record as the trainer writes them:
    an integer ``epoch >= 1``, every other value a finite number or ``None``, and
    ``per_seed`` a mapping to lists of those (or ``None``)."""
    if not isinstance(rec, dict):
        return False
    epoch = rec.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return False
    for key, v in rec.items():
        if key == "per_seed":
            if not isinstance(v, dict) or not all(
                    w is None or (isinstance(w, list) and all(map(_is_figure, w))) for w in v.values()):
                return False
        elif not _is_figure(v):
            return False
    return True


def default_run_dir(config_path: str | os.PathLike, root: str | os.PathLike = "runs") -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>`` (a numeric suffix if that exists)."""
    base = Path(root) / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, non-finite floats to ``None``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
