"""The run directory layout and its small file helpers.

::

    RUN_DIR/
      config.toml              resolved configuration (``dumps_toml``)
      metrics.jsonl            one JSON object per completed epoch
      summary.json             final summary (written at the end, or on divergence)
      checkpoints/latest.eqx   (model, opt_state) + latest.json sidecar
      checkpoints/best.eqx     best test accuracy so far + best.json sidecar
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..config import Config, dumps_toml
from .checkpoint import atomic_write_text

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
        """``checkpoints/<which>.eqx`` (``which`` is ``latest`` or ``best``)."""
        return self.checkpoints / f"{which}.eqx"

    def is_run(self) -> bool:
        return self.config.is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint("latest").is_file()

    def write_config(self, config: Config) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, dumps_toml(config))

    def read_metrics(self) -> list[dict[str, Any]]:
        """All records of ``metrics.jsonl`` (a torn last line is ignored)."""
        if not self.metrics.is_file():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as fh:
            fh.write(json.dumps(jsonable(record)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_metrics(self, last_epoch: int) -> None:
        """Keep only records with ``epoch <= last_epoch`` (so a resume never duplicates)."""
        keep = [r for r in self.read_metrics() if r.get("epoch", 0) <= last_epoch]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary, json.dumps(jsonable(summary), indent=2) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.summary.read_text())
        except (OSError, json.JSONDecodeError):
            return None


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
