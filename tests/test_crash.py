"""A crash at any instant leaves a resumable run; checkpoint and states files are untrusted.

* Fault injection: the writer's file-system seams (:mod:`eqprop.train.checkpoint`:
  every write, fsync, rename, directory fsync and unlink of a run) are wrapped. One
  run records the directory as it is at each seam (before the call, and for a write
  also with half the bytes written: a torn write), so each image is what a SIGKILL at
  that instant leaves; another kind of test makes the seam raise, so the run dies there
  with its exception handlers run. Every one is then resumed, and must end with the
  checkpoints of the uninterrupted run, bit for bit (their payloads' SHA-256), the same
  metrics, a completed summary and no stray files.
* Real kills: ``scripts/kill_resume.py`` with three SIGKILLs of subprocess runs.
* Untrusted files: hypothesis feeds truncated, bit-flipped and hostile checkpoint
  payloads, manifests and warm-start states to the readers: each ends in a one-line
  :class:`~eqprop.train.checkpoint.CheckpointError` naming the file (or, for a change
  the format cannot see, a tree of the template's shapes), never a traceback, never
  unpickling, never an allocation larger than the file justifies.

The runs are tiny (16-8-4, warm starts, 3 epochs of 2 batches) and share one compiled
program (``loop.build_program`` is memoised here), so a resume costs milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import pickle
import shutil
import tracemalloc
import zipfile
from pathlib import Path
from unittest import mock

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqprop.config import parse_config
from eqprop.guards import EqpropWarning
from eqprop.train import RunDir, TrainingInterrupted, checkpoint, loop, train
from eqprop.train.checkpoint import CheckpointError
from eqprop.train.records import TIMING_KEYS
from eqprop.train.states import PersistentStates

ROOT = Path(__file__).resolve().parents[1]

CONFIG = parse_config({
    "data": {"name": "synthetic", "batch_size": 128},
    "model": {"sizes": [16, 8, 4]},
    "dynamics": {"free_steps": 15, "nudged_steps": 5, "tol": 1e-4},
    "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
    "train": {"epochs": 3, "max_batches": 2, "seed": 3, "warm_start": True},
})

SEAMS = ("_write", "_fsync", "_replace", "_fsync_dir", "_unlink")
TIMING = TIMING_KEYS  # record keys that measure time, not training
# a fixed, small campaign in the suite; EQPROP_FUZZ_EXAMPLES=5000 runs a long random one
EXAMPLES = int(os.environ.get("EQPROP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 40, deadline=None, derandomize=not EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

_PROGRAMS: dict = {}
_real_build = loop.build_program


def _cached_build(config, dataset=None):
    if dataset is not None:
        return _real_build(config, dataset)
    if config not in _PROGRAMS:
        _PROGRAMS[config] = _real_build(config)
    return _PROGRAMS[config]


@pytest.fixture(autouse=True)
def _one_program(monkeypatch):
    """Every train/resume here reuses the compiled program of its configuration."""
    monkeypatch.setattr(loop, "build_program", _cached_build)


def _no_fsync(fd):
    """``os.fsync`` made free: the seams still run, and what a killed process leaves
    does not depend on it (fsync orders writes against power loss, not process death)."""


@pytest.fixture(autouse=True)
def _fast_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", _no_fsync)


# -- helpers ----------------------------------------------------------------------------


def manifests(run: Path) -> dict[str, dict]:
    ck = run / "checkpoints"
    return {w: json.loads((ck / f"{w}.json").read_text()) for w in ("latest", "best")}


def figures(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in RunDir(run).read_metrics()]


def finish(run: Path) -> None:
    """What a user does after a crash: ``eqprop resume`` (``train`` again when the crash
    came before ``config.toml``); nothing when the summary says the run completed."""
    r = RunDir(run)
    s = r.read_summary()
    if s is not None and s.get("status") == "completed":
        return
    train(CONFIG, run, resume=r.is_run(), progress=False)


def assert_like(run: Path, ref: Path, what: str) -> None:
    """``run`` ended as the uninterrupted ``ref``: same payloads (bit for bit), figures,
    a completed summary, and no file that no manifest names."""
    got, want = manifests(run), manifests(ref)
    for which in ("latest", "best"):
        g = {k: v["sha256"] for k, v in got[which]["payloads"].items()}
        w = {k: v["sha256"] for k, v in want[which]["payloads"].items()}
        assert g == w, f"{what}: {which} differs"
        assert got[which]["meta"]["epoch"] == want[which]["meta"]["epoch"], what
    assert figures(run) == figures(ref), f"{what}: metrics.jsonl differs"
    assert RunDir(run).read_summary()["status"] == "completed", what
    named = {p["file"] for m in got.values() for e in (m, m["previous"]) if e
             for p in e["payloads"].values()}
    files = {p.name for p in (run / "checkpoints").iterdir()}
    assert files == named | {"latest.json", "best.json"}, f"{what}: stray files {files - named}"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")], what


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """An uninterrupted run, and the directory as a SIGKILL at each seam would leave it."""
    root = tmp_path_factory.mktemp("recorded")
    run, images = root / "run", root / "images"
    images.mkdir()
    out: list[Path] = []
    reals = {name: getattr(checkpoint, name) for name in SEAMS}

    def seam(name):
        def call(*args):
            target = Path(args[-1])
            img = images / f"{len(out):03d}-{name}-{target.name}"
            shutil.copytree(run, img)
            out.append(img)
            if name == "_write":  # the same instant with half of the bytes written
                torn = images / f"{len(out):03d}-torn-{target.name}"
                shutil.copytree(run, torn)
                with open(torn / target.relative_to(run), "ab") as fh:
                    fh.write(args[1][:len(args[1]) // 2])
                out.append(torn)
            return reals[name](*args)
        return call

    with mock.patch.object(loop, "build_program", _cached_build), \
            mock.patch.object(os, "fsync", _no_fsync), \
            mock.patch.multiple(checkpoint, **{n: seam(n) for n in SEAMS}):
        train(CONFIG, run, progress=False)
    return run, out


# -- fault injection ----------------------------------------------------------------------


def test_a_kill_at_any_write_rename_or_fsync_leaves_a_resumable_run(recorded, tmp_path):
    ref, images = recorded
    kinds = {img.name.split("-")[1] for img in images}
    assert kinds == {"_write", "torn", "_fsync", "_replace", "_fsync_dir", "_unlink"}, kinds
    assert len(images) > 60
    for img in images:
        run = tmp_path / img.name
        shutil.copytree(img, run)
        finish(run)
        assert_like(run, ref, img.name)


def test_a_writer_that_raises_at_any_seam_leaves_a_resumable_run(recorded, tmp_path):
    ref, images = recorded
    n = sum(1 for img in images if "-torn-" not in img.name)
    for k in range(n):
        calls = {"n": 0}
        reals = {name: getattr(checkpoint, name) for name in SEAMS}

        def seam(name):
            def call(*args):
                calls["n"] += 1
                if calls["n"] == k + 1:
                    raise OSError(f"injected failure of {name}")
                return reals[name](*args)
            return call

        run = tmp_path / f"{k:03d}"
        with mock.patch.multiple(checkpoint, **{n: seam(n) for n in SEAMS}):
            with pytest.raises(OSError, match="injected"):
                train(CONFIG, run, progress=False)
        finish(run)
        assert_like(run, ref, f"failure at seam {k}")


def test_ctrl_c_then_resume_and_a_run_written_before_resumes_exactly(recorded, tmp_path,
                                                                     monkeypatch):
    """Format 1 (``latest.eqx`` + sidecar, ``states-E-B.npz``), as eqprop wrote it
    before, of a mid-epoch Ctrl-C checkpoint: read, resumed exactly, then replaced."""
    ref, _ = recorded
    run = tmp_path / "run"
    calls = {"n": 0}
    real = loop._call_step

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, batch 1
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop, "_call_step", interrupting)
    with pytest.raises(TrainingInterrupted):
        train(CONFIG, run, progress=False)
    monkeypatch.setattr(loop, "_call_step", real)
    to_format_1(run)
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == [
        "best.eqx", "best.json", "latest.eqx", "latest.json", "states-1-1.npz"]
    assert checkpoint.read_meta(ck / "latest.json")["batch"] == 1
    finish(run)
    assert_like(run, ref, "format 1")


@pytest.mark.parametrize("stage", ["evaluate", "epoch_record"])
def test_ctrl_c_in_the_end_of_an_epoch_resumes_exactly(recorded, tmp_path, monkeypatch, stage):
    """Ctrl-C after an epoch's last batch, in its evaluation or its record: the checkpoint
    holds every batch of the epoch done (batch == n_batches), which resume refused
    ("batch 44 of an epoch of 44 batches", a review); it runs the epoch's end again and
    ends as the uninterrupted run."""
    ref, _ = recorded
    run = tmp_path / "run"
    real = getattr(loop, stage)
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's end
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, stage, interrupting)
    with pytest.raises(TrainingInterrupted, match="in epoch 2 after 2 batch"):
        train(CONFIG, run, progress=False)
    monkeypatch.undo()
    assert checkpoint.read_meta(run / "checkpoints" / "latest.json")["batch"] == 2
    finish(run)
    assert_like(run, ref, f"Ctrl-C in {stage}")


def test_a_ctrl_c_whose_exception_was_swallowed_still_stops_the_run(recorded, tmp_path, monkeypatch):
    """The CLI's handler requests the stop besides raising: where the KeyboardInterrupt
    is swallowed (raised in a garbage-collection callback of JAX, "Exception ignored in"),
    the loop stops at its next batch, with a checkpoint, and resumes exactly."""
    ref, _ = recorded
    run = tmp_path / "run"
    real = loop._call_step
    calls = {"n": 0}

    def swallowed(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2, batch 0: the signal came, its exception did not
            loop.request_stop("interrupted")
        return real(*args)

    monkeypatch.setattr(loop, "_call_step", swallowed)
    with pytest.raises(TrainingInterrupted, match="^interrupted in epoch 2 after 1 batch"):
        train(CONFIG, run, progress=False)
    monkeypatch.undo()
    finish(run)  # a new train() starts with no request pending
    assert_like(run, ref, "swallowed Ctrl-C")


def test_a_kill_while_the_run_builds_leaves_a_run_that_resume_restarts(recorded, tmp_path,
                                                                       monkeypatch):
    """Killed while its data loads or its model builds (before any step): config.toml is
    already there, so `eqprop resume` restarts it (a fresh user's Ctrl-C at 9 s had left no
    directory, while the guide promised a resumable run at any instant)."""
    ref, _ = recorded
    run = tmp_path / "run"

    def interrupted(config, dataset=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "build_program", interrupted)
    with pytest.raises(TrainingInterrupted, match=r"^interrupted while the run was being built .* "
                                                  r"continue with `eqprop resume "):
        train(CONFIG, run, progress=False)
    assert RunDir(run).is_run() and not RunDir(run).has_checkpoint()
    monkeypatch.setattr(loop, "build_program", _cached_build)
    train(CONFIG, run, resume=True, progress=False)
    assert_like(run, ref, "killed while building")


def test_a_run_that_cannot_build_leaves_no_run_directory(tmp_path, monkeypatch):
    def broken(config, dataset=None):
        raise ValueError("data.path: /nowhere: not found")

    monkeypatch.setattr(loop, "build_program", broken)
    with pytest.raises(ValueError, match="data.path"):
        train(CONFIG, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "given").mkdir()
    with pytest.raises(ValueError, match="data.path"):
        train(CONFIG, tmp_path / "given", progress=False)
    assert list((tmp_path / "given").iterdir()) == []  # the user's directory stays, empty


def to_format_1(run: Path) -> None:
    """Rewrite ``run``'s checkpoints as eqprop 0.1 wrote them (``checkpoint.save`` then:
    ``NAME.eqx`` = Equinox leaves, ``NAME.json`` = meta + sha256, ``states-E-B.npz``)."""
    ck = run / "checkpoints"
    for which in ("latest", "best"):
        snap = checkpoint.read(ck / f"{which}.json")
        meta = dict(snap.meta)
        (ck / f"{which}.eqx").write_bytes(snap.blobs["tree"])
        meta["sha256"] = hashlib.sha256(snap.blobs["tree"]).hexdigest()
        if "states" in snap.blobs:
            buf = io.BytesIO(snap.blobs["states"])
            arrays = []
            while buf.tell() < len(snap.blobs["states"]):
                arrays.append(np.load(buf))
            out = io.BytesIO()
            np.savez(out, seen=arrays[0], **{f"leaf{i}": a for i, a in enumerate(arrays[1:])})
            name = f"states-{meta['epoch']}-{meta['batch']}.npz"
            (ck / name).write_bytes(out.getvalue())
            meta["states_file"] = name
            meta["states_sha256"] = hashlib.sha256(out.getvalue()).hexdigest()
        (ck / f"{which}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for p in ck.glob("*-*.eqx"):
        p.unlink()


def test_a_torn_metrics_line_breaks_neither_report_nor_resume(recorded, tmp_path):
    from eqprop.train.report import report

    ref, images = recorded
    # the image of a kill in the middle of appending epoch 2's record (before its checkpoint)
    img = next(i for i in images if "-torn-metrics.jsonl" in i.name
               and len(figures(i)) == 1)
    run = tmp_path / "run"
    shutil.copytree(img, run)
    raw = (run / "metrics.jsonl").read_bytes()
    assert not raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1]
    with pytest.warns(EqpropWarning, match=r"metrics.jsonl: line 2 not a record the trainer wrote .*; left out"):
        report([run], tmp_path / "report")  # said, not silent (a review)
    finish(run)
    assert_like(run, ref, "torn metrics")
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert lines[0] == raw.splitlines(keepends=True)[0]  # the complete record, byte for byte


def test_a_report_says_when_metrics_hold_fewer_epochs_than_the_summary(recorded, tmp_path):
    """A completed run's metrics.jsonl cut in the middle (a review: `head -c 2500`): the
    report shows the 1 readable epoch and says that the summary has 3, and which line."""
    from eqprop.train.report import report

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    raw = (run / "metrics.jsonl").read_bytes()
    first = raw.index(b"\n") + 1
    (run / "metrics.jsonl").write_bytes(raw[:first + 40])
    with pytest.warns(EqpropWarning) as caught:
        report([run], tmp_path / "report")
    said = [str(w.message) for w in caught]
    assert any("line 2 not a record the trainer wrote" in m for m in said)
    assert any("summary.json says 3 epochs, metrics.jsonl holds records up to epoch 1" in m for m in said)


@pytest.mark.parametrize("edit", [
    '"test_acc": "abc"', '"test_acc": NaN', '"test_acc": 1e400', '"epoch": "3"', '"epoch": 1',
    '"per_seed": {"test_acc": ["x"]}', '"per_seed": [1]', '"test_acc": [0.5]'])
def test_an_edited_record_is_named_and_left_out_by_report_and_resume(recorded, tmp_path, edit):
    """A review's hostile metrics.jsonl: a figure that is a string, NaN or 1e400, an epoch
    that is a string or out of order, a malformed per_seed. report crashed (a string
    test_acc) or showed nan% and inf%; resume kept the line. Every reader now skips it and
    says which line."""
    from eqprop.train import with_epochs
    from eqprop.train.report import report

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    key = edit.split(":")[0]
    rec = lines[2]  # epoch 3's record: the edit replaces one of its entries
    start = rec.index(key) if key in rec else None
    if start is None:  # per_seed absent with one seed: add the entry
        bad = rec.rstrip().rstrip("}") + ", " + edit + "}\n"
    else:
        end = rec.index(", \"", start) if ", \"" in rec[start:] else len(rec.rstrip()) - 1
        bad = rec[:start] + edit + rec[end:]
    (run / "metrics.jsonl").write_text("".join(lines[:2]) + bad)
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2]
    assert RunDir(run).unreadable_metric_lines() == [3]
    with pytest.warns(EqpropWarning, match=r"metrics.jsonl: line 3 not a record the trainer wrote"):
        report([run], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "nan%" not in md and "inf%" not in md
    with pytest.warns(EqpropWarning, match=r"metrics.jsonl: line 3 not records the trainer wrote "
                      r"\(edited\?\): dropped at resume"):
        train(with_epochs(CONFIG, 4), run, resume=True, progress=False)
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [1, 2, 4]  # epoch 3's record: gone, said
    assert RunDir(run).unreadable_metric_lines() == []


@pytest.mark.parametrize("summary", ['{"status": "| x | y |\\n# hi", "train_seconds": "abc", "seeds": 1.5}',
                                     '[1, 2, 3]', '{"status": 5, "ms_per_batch": NaN}'])
def test_a_hostile_summary_neither_breaks_the_report_table_nor_passes_unsaid(recorded, tmp_path, summary):
    from eqprop.train.report import report

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "summary.json").write_text(summary)
    with pytest.warns(EqpropWarning, match=r"summary.json: (not a readable JSON object|"
                      r"[a-z_, ]+ not of the type the trainer writes)"):
        report([run], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text().splitlines()
    row = next(line for line in md if line.startswith("| run |"))
    assert "\n# hi" not in "\n".join(md) and not any(line.startswith("# hi") for line in md)
    cells = [c for c in row.replace("\\|", "").split("|")][1:-1]
    assert len(cells) == 13  # the header's columns: nothing split the row


def test_a_missing_payload_falls_back_to_the_previous_entry(recorded, tmp_path):
    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    RunDir(run).summary.unlink()  # as if killed before the summary; resume finishes it
    m = manifests(run)["latest"]
    (run / "checkpoints" / m["payloads"]["tree"]["file"]).unlink()
    with pytest.warns(checkpoint.CheckpointWarning, match="not found.*previous entry"):
        snap = checkpoint.read(run / "checkpoints" / "latest.json")
    assert snap.meta["epoch"] == m["previous"]["meta"]["epoch"] == 2
    with pytest.warns(checkpoint.CheckpointWarning):
        finish(run)
    assert_like(run, ref, "fallback")


def test_a_run_past_the_epoch_of_its_fallback_entry_names_the_entry(recorded, tmp_path):
    """Resuming a finished run to the epoch its previous entry holds: "already trained 2
    epochs" where metrics.jsonl says 3 needs the reason beside it."""
    from eqprop.train import with_epochs

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    m = manifests(run)["latest"]
    (run / "checkpoints" / m["payloads"]["tree"]["file"]).unlink()
    with pytest.warns(checkpoint.CheckpointWarning), pytest.raises(
            ValueError, match=r"already trained 2 epochs by its checkpoint's previous entry "
                              r"\(the newest is broken\); pass a larger total"):
        train(with_epochs(CONFIG, 2), run, resume=True, progress=False)
    shutil.copytree(ref, tmp_path / "intact")  # and without a fallback, no such clause
    with pytest.raises(ValueError, match=r"already trained 3 epochs; pass a larger total"):
        train(with_epochs(CONFIG, 2), tmp_path / "intact", resume=True, progress=False)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_resuming_a_completed_run_is_not_an_error_and_changes_nothing(recorded, tmp_path, capsys):
    """A SIGKILL after summary.json was written but before the process ended (CI's
    kill_resume met it) leaves a complete run: `eqprop resume` then says so and exits 0,
    returning the stored summary, and a second resume does the same."""
    from eqprop.cli import main

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = _tree_bytes(run)
    stored = json.loads((run / "summary.json").read_text())
    assert train(CONFIG, run, resume=True, progress=False) == stored
    assert capsys.readouterr().out == ""  # progress=False: silent
    for _ in range(2):
        assert main(["resume", str(run)]) == 0
        out = capsys.readouterr().out
        assert f"{run}: nothing to resume: the run completed its 3 epochs; pass a larger total " \
               "with --epochs to train further" in out
        assert "  (completed)\n" in out and "\nepochs     3/3\n" in out  # and its summary
    assert _tree_bytes(run) == before  # nothing written: no checkpoint, record or summary


@pytest.mark.parametrize("damage", ["status", "epochs", "keys", "deleted", "a list"])
def test_the_checkpoint_decides_that_a_run_is_complete_whatever_its_summary(recorded, tmp_path, damage):
    """A review: a completed run resumed with its summary.json garbled was refused (exit 2),
    with it deleted said "resuming at epoch 23" and trained nothing. The checkpoint decides:
    nothing to resume, exit 0, and a summary that is not this run's is written anew from the
    records and the checkpoint, equal to the one the run wrote."""
    from eqprop.cli import main

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    stored = json.loads((run / "summary.json").read_text())
    summary = dict(stored)
    if damage == "status":
        summary["status"] = "| x | y |\n# hi"
    elif damage == "epochs":
        summary["epochs"] = 2
    elif damage == "keys":
        del summary["data"]
    (run / "summary.json").write_text(json.dumps([1, 2, 3] if damage == "a list" else summary))
    if damage == "deleted":
        (run / "summary.json").unlink()
    before = {k: v for k, v in _tree_bytes(run).items() if k != "summary.json"}
    assert main(["resume", str(run)]) == 0
    rewritten = json.loads((run / "summary.json").read_text())
    assert {k: v for k, v in rewritten.items() if k != "run_dir"} == \
        {k: v for k, v in stored.items() if k != "run_dir"}
    assert {k: v for k, v in _tree_bytes(run).items() if k != "summary.json"} == before


def test_resume_says_when_it_writes_the_summary_anew(recorded, tmp_path, capsys):
    from eqprop.cli import main

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "summary.json").unlink()
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: nothing to resume: the run completed its 3 epochs; pass a larger total with " \
           "--epochs to train further (summary.json was missing or not this run's: written anew)" in out
    assert "resuming" not in out

def test_three_sigkills_of_a_real_run_then_resume_equal_an_uninterrupted_run(tmp_path, capsys):
    path = ROOT / "scripts" / "kill_resume.py"
    spec = importlib.util.spec_from_file_location("kill_resume", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rc = script.main(["--kills", "3", "--seed", "0", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OK: after 3 SIGKILL(s)" in out, out


# -- untrusted files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(recorded):
    """The reference run's latest checkpoint: its bytes and the templates to read them."""
    ref, _ = recorded
    program = _cached_build(CONFIG)
    snap = checkpoint.read(ref / "checkpoints" / "latest.json")
    states = PersistentStates.empty(program.model, program.dataset.x_train, 1)
    return {"snap": snap, "tree": (program.model, program.opt_state), "states": states}


def no_unpickling():
    """Any unpickling (or numpy's own loader, which can) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a reader unpickled or called np.load")

    return mock.patch.multiple(pickle, loads=refuse, load=refuse, Unpickler=refuse), \
        mock.patch.object(np, "load", refuse)


def one_line_naming(e: CheckpointError, name: str) -> None:
    msg = str(e)
    assert "\n" not in msg and name in msg, msg


def mutate(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "garbage", "splice"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "flip":
        buf = bytearray(data)
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if kind == "garbage":
        return draw(st.binary(max_size=512))
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(max_size=64)) + data[at:]


def check_tree(out, template) -> None:
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(template), strict=True):
        assert np.shape(a) == np.shape(b) and np.asarray(a).dtype == np.asarray(b).dtype


@FUZZ
@given(st.data())
def test_fuzzed_tree_payloads_are_one_line_errors(saved, data):
    blob = mutate(saved["snap"].blobs["tree"], data.draw)
    source = Path("checkpoints") / "tree-0123456789abcdef.eqx"
    p1, p2 = no_unpickling()
    tracemalloc.start()
    try:
        with p1, p2:
            out = checkpoint.decode(blob, saved["tree"], source)
    except CheckpointError as e:
        one_line_naming(e, str(source))
    else:
        check_tree(out, saved["tree"])
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * len(blob) + (1 << 20), peak


@FUZZ
@given(st.data())
def test_fuzzed_states_payloads_are_one_line_errors(saved, data):
    states: PersistentStates = saved["states"]
    fmt = data.draw(st.sampled_from(["eqx", "npz"]))
    if fmt == "eqx":
        good = saved["snap"].blobs["states"]
    else:
        buf = io.BytesIO()
        np.savez(buf, seen=states.seen, **{f"leaf{i}": a for i, a in enumerate(states.leaves)})
        good = buf.getvalue()
    blob = mutate(good, data.draw)
    source = Path("checkpoints") / f"states-1-2.{fmt}"
    fresh = PersistentStates(list(states.leaves), states.treedef, states.seen, 1)
    p1, p2 = no_unpickling()
    try:
        with p1, p2:
            fresh.restore(blob, source)
    except CheckpointError as e:
        one_line_naming(e, str(source))
    else:
        assert [a.shape for a in fresh.leaves] == [a.shape for a in states.leaves]
        assert fresh.seen.shape == states.seen.shape and fresh.seen.dtype == bool


@FUZZ
@given(st.data())
def test_fuzzed_manifests_are_one_line_errors_or_the_saved_tree(saved, tmp_path_factory, data):
    snap = saved["snap"]
    d = tmp_path_factory.mktemp("manifest")
    for name, blob in snap.blobs.items():
        (d / snap.files[name].name).write_bytes(blob)
    good = snap.manifest.read_bytes()
    if data.draw(st.booleans()):
        text = mutate(good, data.draw)
    else:  # any JSON at all
        value = data.draw(st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text(max_size=8),
            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                st.sampled_from(["format", "meta", "payloads", "previous", "tree", "file",
                                 "sha256", "bytes", "epoch", "states_file"]), kids, max_size=4),
            max_leaves=20))
        text = json.dumps(value).encode()
    path = d / "latest.json"
    path.write_bytes(text)
    p1, p2 = no_unpickling()
    try:
        with p1, p2, mock.patch.object(checkpoint.warnings, "warn"):
            out, meta = checkpoint.load(path, saved["tree"])
    except CheckpointError as e:
        one_line_naming(e, str(d))
    else:
        assert isinstance(meta, dict)
        check_tree(out, saved["tree"])


def npy_record(descr: str, shape: tuple, body: bytes = b"") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body


def test_a_header_claiming_a_huge_array_is_refused_before_allocating():
    shape = (1 << 16, 1 << 16)  # 16 GiB of float32 in a file of 1 KiB
    template = jax.ShapeDtypeStruct(shape, np.float32)
    blob = npy_record("<f4", shape, b"\0" * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="truncated.*17179869184 bytes, 1024 left"):
            checkpoint.decode(blob, template, "x.eqx")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(CheckpointError, match="shape"):  # a shape the model does not have
        checkpoint.decode(npy_record("<f4", (1 << 40,)), np.zeros(3, np.float32), "x.eqx")


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def test_a_pickle_in_a_checkpoint_is_never_unpickled(saved, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Marker(marker))
    record = npy_record("|O", (1,), evil)
    with pytest.raises(CheckpointError, match="dtype '\\|O'"):
        checkpoint.decode(record, saved["tree"], "latest.eqx")
    with pytest.raises(CheckpointError, match="not a number"):  # a scalar leaf takes numbers only
        checkpoint.decode(record, 1.0, "latest.eqx")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("seen.npy", record)
    with pytest.raises(CheckpointError, match="states-1-0.npz"):
        saved["states"].restore(buf.getvalue(), "states-1-0.npz")
    # format 1, where the tree file is named by the sidecar: same reader
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.eqx").write_bytes(record)
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    with pytest.raises(CheckpointError, match="latest.eqx"):
        checkpoint.load(run / "checkpoints" / "latest.json", saved["tree"])
    assert not marker.exists()


@pytest.mark.parametrize("manifest, match", [
    ({"format": 2, "meta": {}, "payloads": {"tree": {"file": "../../etc/passwd",
                                                      "sha256": "0" * 64, "bytes": 1}}},
     "tree-<16 hex digits>.eqx"),
    ({"format": 3, "meta": {}, "payloads": {}}, "format 3 is not supported"),
    ({"epoch": 1, "states_file": "/etc/shadow"}, "states_file"),
    ([1, 2], "JSON object"),
])
def test_hostile_manifests_name_the_file(tmp_path, manifest, match):
    path = tmp_path / "latest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoint.read(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    path.write_bytes(b"{" * (checkpoint.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(CheckpointError, match="too large"):
        checkpoint.read(path)


@pytest.mark.parametrize("change, match", [
    ({"epoch": -1}, "epoch must be a non-negative integer"),
    ({"epoch": "2"}, "epoch must be a non-negative integer"),
    ({"epoch": 1, "batch": 10 ** 6}, "batch 1000000 of an epoch of 2 batches"),
    ({"epoch": 1, "batch": 1, "partial": [1, 2]}, "partial must be a JSON object"),
    ({"epoch": 1, "batch": 1, "partial": {"loss": [1.0, 2.0]}}, "loss must have the shape"),
    ({"epoch": 1, "batch": 1, "partial": {"acc": {"x": 1}}}, "partial holds no running sums"),
    ({"best_test_acc": "high"}, "best_test_acc must be a finite number"),
])
def test_a_hostile_position_is_a_one_line_error(recorded, tmp_path, change, match):
    """Payloads intact, the meta forged: resume refuses it before training a batch."""
    from eqprop.train.resume import restore

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    path = run / "checkpoints" / "latest.json"
    manifest = json.loads(path.read_text())
    manifest["meta"].update(change)
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=match) as info:
        restore(RunDir(run), _cached_build(CONFIG))
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_truncated_latest_manifest_names_the_best_checkpoint_that_still_reads(recorded, tmp_path):
    """A hostile or truncated ``latest.json`` is a one-line error; where the run also
    holds a readable ``best.json``, the error says that ``--checkpoint best`` reads it."""
    from eqprop.train import load_run

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    latest = run / "checkpoints" / "latest.json"
    latest.write_bytes(latest.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"unreadable checkpoint manifest .*--checkpoint best reads it"):
        load_run(run, "latest")
    load_run(run, "best")  # still reads


def test_ctrl_c_after_an_epoch_is_saved_prints_that_epochs_line(recorded, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the epoch's checkpoint is written (the epoch done, its line not yet
    printed): the line is printed before the interrupt's message (a review saw epoch 4
    saved and its line missing), and the run resumes exactly."""
    ref, _ = recorded
    run = tmp_path / "run"
    real = loop._Trainer.save
    fired = []

    def interrupting(self, which, pos):
        real(self, which, pos)
        if which == "latest" and pos.epoch == 2 and pos.batch == 0 and not fired:
            fired.append(pos.epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(loop._Trainer, "save", interrupting)
    with pytest.raises(TrainingInterrupted, match="in epoch 3 after 0 batch"):
        train(CONFIG, run, progress=True)
    out = capsys.readouterr().out
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("epoch ")] == ["1/3", "2/3"]
    monkeypatch.undo()
    finish(run)
    assert_like(run, ref, "Ctrl-C as the epoch was saved")


def test_resume_without_checkpoints_refuses_a_completed_run_and_warns_before_replacing_records(
        recorded, tmp_path):
    """A review deleted a completed run's checkpoints and resume silently trained it anew
    over its metrics.jsonl. With summary.json saying "completed" it is now refused; with
    records but no summary (a kill between an epoch's record and its first checkpoint),
    the restart warns that it replaces them, then ends as the uninterrupted run."""
    import shutil

    ref, _ = recorded
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ValueError, match=r"summary\.json says the run completed, but it has no checkpoint"):
        train(CONFIG, run, resume=True, progress=False)
    assert len(RunDir(run).read_metrics()) == 3  # nothing replaced
    (run / "summary.json").unlink()
    with pytest.warns(UserWarning, match=r"metrics\.jsonl records 3 epoch\(s\): the run starts over"):
        train(CONFIG, run, resume=True, progress=False)
    assert_like(run, ref, "checkpoints deleted")
