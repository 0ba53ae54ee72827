"""Metric loggers: the registered-component contract, TensorBoard, W&B offline, missing packages.

Tiny runs (synthetic data, a 16-8-4 network, 4 batches per epoch), as in test_train.py.
"""

from __future__ import annotations

import glob
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from eqprop.config import Config, parse_config, with_updates
from eqprop.registry import LOGGERS
from eqprop.train import Logger, LoggerUnavailable, RunDir, TrainingInterrupted, loop, train
from eqprop.train.loggers import scalars

TINY = {
    "data": {"name": "synthetic", "batch_size": 32},
    "model": {"sizes": [16, 8, 4]},
    "dynamics": {"free_steps": 15, "nudged_steps": 5},
    "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
    "train": {"epochs": 2, "max_batches": 4, "seed": 3},
}


def tiny(*loggers: str, **updates) -> Config:
    cfg = with_updates(parse_config(TINY), logging={"loggers": list(loggers), "project": "tests"})
    return with_updates(cfg, **updates) if updates else cfg


class Recording(Logger):
    """Remembers every call (class-level, so the test sees the trainer's instances)."""

    calls: list = []

    def open(self, run_dir, config, *, resume_from=None):
        self.calls.append(("open", Path(run_dir).name, resume_from))

    def log(self, record):
        self.calls.append(("log", record["epoch"], record["train_loss"]))

    def close(self):
        self.calls.append(("close",))


@pytest.fixture
def recording():
    Recording.calls = []
    LOGGERS.register("recording", Recording)
    yield Recording
    LOGGERS.unregister("recording")


def test_a_registered_logger_is_opened_fed_each_epoch_and_closed(recording, tmp_path, monkeypatch):
    """Open, one record per epoch, close; also across Ctrl-C and resume, where it is told
    from which epoch the run continues."""
    out = tmp_path / "run"
    real, calls = loop._call_step, {"n": 0}

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, batch 1
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop, "_call_step", interrupting)
    with pytest.raises(TrainingInterrupted):
        train(tiny("recording"), out, progress=False)
    monkeypatch.setattr(loop, "_call_step", real)
    train(tiny("recording"), out, resume=True, progress=False)
    records = RunDir(out).read_metrics()
    assert recording.calls == [
        ("open", "run", None), ("log", 1, records[0]["train_loss"]), ("close",),
        ("open", "run", 1), ("log", 2, records[1]["train_loss"]), ("close",),
    ]


def tb_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every TensorBoard event file in ``logdir`` (TFRecord
    framing: length, its CRC, an ``Event`` protobuf, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_tensorboard_event_file_holds_the_epoch_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    train(tiny("tensorboard", train={"seeds": 2}), out, progress=False)
    records = RunDir(out).read_metrics()
    tags = tb_scalars(out / "tensorboard")
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "free_steps_mean",
                "residual_mean", "epoch_seconds", "test_acc_std"):
        assert sorted(tags[key]) == [1, 2], key
        for r in records:
            assert tags[key][r["epoch"]] == pytest.approx(r[key], rel=1e-6), key
    for i in range(2):
        assert tags[f"test_acc/seed_{i}"][2] == pytest.approx(records[1]["per_seed"]["test_acc"][i])
    assert "epoch" not in tags


def wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the offline W&B run in ``run_dir`` (a LevelDB-style log of
    ``Record`` protobufs after a 7-byte header, in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    raw = Path(path).read_bytes()
    pos, block, buf, rows = 7, 32768, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        buf += raw[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record.FromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in rec.history.item})
    return rows


def test_wandb_logs_the_epoch_scalars_offline_into_the_run_dir(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    train(tiny("wandb"), out, progress=False)
    records = RunDir(out).read_metrics()
    rows = wandb_history(out)
    assert [r["_step"] for r in rows] == [1, 2]
    for row, rec in zip(rows, records):
        for key in ("train_loss", "test_acc", "free_steps_mean"):
            assert row[key] == pytest.approx(rec[key]), key
    run_id = (out / "wandb" / "run-id").read_text().strip()
    assert Path(glob.glob(str(out / "wandb" / "offline-run-*"))[0]).name.endswith(run_id)


@pytest.mark.parametrize("name, package", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_a_missing_package_fails_at_start_up_with_the_install_command(name, package, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(LoggerUnavailable) as info:
        train(tiny(name), tmp_path / "run", progress=False)
    msg = str(info.value)
    assert f"pip install {package}" in msg and f"'{name}'" in msg and "\n" not in msg
    assert msg.startswith("logging.loggers:")
    assert not (tmp_path / "run").exists()  # nothing written, nothing trained


def test_scalars_flatten_per_seed_values_and_skip_what_is_not_a_number():
    rec = {"epoch": 3, "train_loss": 0.5, "test_acc": None, "batches": 4, "flag": True,
           "residual_mean": float("nan"), "per_seed": {"test_acc": [0.25, 0.75], "test_loss": None}}
    assert scalars(rec) == {"train_loss": 0.5, "batches": 4.0, "test_acc/seed_0": 0.25,
                            "test_acc/seed_1": 0.75}
    assert all(isinstance(v, float) for v in scalars(rec).values())
    assert np.isfinite(list(scalars(rec).values())).all()
