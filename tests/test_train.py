"""Tests for eqprop.train: the loop, metrics, checkpoints, resume, faults, several seeds.

All runs are tiny (synthetic data, a 16-8-4 network, <= 20 relaxation steps, 4 batches
per epoch) so the whole file takes a few seconds of compile time per run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqprop.config import Config, load_config, parse_config, with_updates
from eqprop.network.base import named_parameters, parameters
from eqprop.train import (RunDir, TrainingDiverged, TrainingInterrupted, TrainState, atomic_write,
                          build_program, evaluate, load_run, place, train, unstack, with_epochs)
from eqprop.train import checkpoint, loop
from eqprop.train.step import batch_key, step_keys

TINY = {
    "data": {"name": "synthetic", "batch_size": 32},
    "model": {"sizes": [16, 8, 4]},
    "dynamics": {"free_steps": 15, "nudged_steps": 5},
    "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
    "train": {"epochs": 2, "max_batches": 4, "seed": 3},
}

METRIC_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds",
               "ms_per_batch", "free_steps_mean", "residual_mean", "nonconverged_fraction"}


def tiny(**updates) -> Config:
    return with_updates(parse_config(TINY), **updates)


def params_of(run_dir: Path, which: str = "latest") -> dict[str, np.ndarray]:
    _, _, model, _ = load_run(run_dir, which)
    return {k: np.asarray(v) for k, v in named_parameters(parameters(model)).items()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6, err_msg=k)


def trained(tmp_path_factory, name: str, config: Config) -> Path:
    """Run directory of an uninterrupted run of ``config``."""
    out = tmp_path_factory.mktemp(name) / "run"
    train(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run, shared by the resume tests."""
    return trained(tmp_path_factory, "straight", tiny())


def test_training_reduces_loss(tmp_path, capsys):
    cfg = tiny(train={"epochs": 4, "max_batches": 8})
    summary = train(cfg, tmp_path / "run", progress=False)
    assert capsys.readouterr().out == ""  # progress=False: silent (a sweep reads the summary)
    records = RunDir(tmp_path / "run").read_metrics()
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["test_loss"] < records[0]["test_loss"]
    assert summary["status"] == "completed" and summary["epochs"] == 4


def test_run_directory_layout(straight):
    run = RunDir(straight)
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert METRIC_KEYS <= r.keys()
        assert r["batches"] == 4
        assert r["free_steps_mean"] == 15
    assert load_config(run.config) == tiny()
    for which in ("latest", "best"):
        assert run.checkpoint(which).is_file()
        assert checkpoint.meta_path(run.checkpoint(which)).is_file()
    meta = checkpoint.read_meta(run.checkpoint("latest"))
    assert meta["epoch"] == 2 and meta["batch"] == 0 and meta["seed"] == 3
    summary = json.loads(run.summary.read_text())
    for key in ("final_test_acc", "best_test_acc", "best_epoch", "train_seconds",
                "final_test_acc_mean", "final_test_acc_std"):
        assert key in summary
    assert summary["final_test_acc"] == records[-1]["test_acc"]


def test_checkpoint_round_trip(straight):
    config, program, model, meta = load_run(straight, "latest")
    m = evaluate(program, model, program.dataset.x_test, program.dataset.y_test)
    last = RunDir(straight).read_metrics()[-1]
    np.testing.assert_allclose(m["acc"][0], last["test_acc"], atol=1e-6)
    np.testing.assert_allclose(m["loss"][0], last["test_loss"], rtol=1e-5)
    # the leaves themselves survive save/load
    path = straight.parent / "copies" / "copy.json"
    checkpoint.save(path, (model, program.opt_state), {"epoch": 7})
    (model2, _), meta2 = checkpoint.load(path, (program.model, program.opt_state))
    assert meta2["epoch"] == 7
    assert_same_params(named_parameters(parameters(model)), named_parameters(parameters(model2)))


def test_checkpoint_mismatch_is_detected(straight, tmp_path):
    _, program, model, _ = load_run(straight)
    path = tmp_path / "c.json"
    checkpoint.save(path, model, {"epoch": 1})
    payload = tmp_path / checkpoint.read_meta(path)["payloads"]["tree"]["file"]
    payload.write_bytes(payload.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(checkpoint.CheckpointError, match="does not match") as info:
        checkpoint.load(path, model)
    assert str(info.value).startswith(str(payload)) and "\n" not in str(info.value)


def test_resume_equals_uninterrupted(straight, tmp_path):
    out = tmp_path / "run"
    train(tiny(train={"epochs": 1}), out, progress=False)
    train(with_epochs(load_config(out / "config.toml"), 2), out, resume=True, progress=False)
    assert_same_params(params_of(out), params_of(straight))
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]


def interrupt_at(monkeypatch, n: int):
    """Make the ``n``-th training step raise KeyboardInterrupt; returns the real step."""
    calls = {"n": 0}
    real = loop._call_step

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop, "_call_step", interrupting)
    return real


def test_ctrl_c_mid_epoch_then_resume_is_exact(straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = interrupt_at(monkeypatch, 6)  # epoch 2, batch 1
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny(), out, progress=False)
    assert (info.value.epoch, info.value.batch) == (2, 1)
    meta = checkpoint.read_meta(RunDir(out).checkpoint("latest"))
    assert (meta["epoch"], meta["batch"]) == (1, 1)
    monkeypatch.setattr(loop, "_call_step", real)
    train(load_config(out / "config.toml"), out, resume=True, progress=False)
    assert_same_params(params_of(out), params_of(straight))
    a, b = RunDir(out).read_metrics(), RunDir(straight).read_metrics()
    assert [r["epoch"] for r in a] == [1, 2]
    np.testing.assert_allclose(a[1]["train_loss"], b[1]["train_loss"], rtol=1e-5)


def test_a_resumed_epoch_counts_the_time_it_ran_before_the_interruption(tmp_path, monkeypatch):
    """A fresh user's interrupted-then-resumed epoch 1 reported 10.8 s against 19.5 s
    uninterrupted (the part before Ctrl-C was lost, and the summary's time with it)."""
    import time as _time

    out = tmp_path / "run"
    calls = {"n": 0}
    real = loop._call_step

    def slow_then_interrupt(*args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        if calls["n"] == 5:  # epoch 2, batch 0: counted before the interruption
            _time.sleep(1.0)
        return real(*args)

    monkeypatch.setattr(loop, "_call_step", slow_then_interrupt)
    with pytest.raises(TrainingInterrupted):
        train(tiny(), out, progress=False)
    meta = checkpoint.read_meta(RunDir(out).checkpoint("latest"))
    assert meta["batch"] == 1 and meta["partial_seconds"] >= 1.0
    (first,) = RunDir(out).read_metrics()
    assert meta["elapsed_seconds"] == pytest.approx(first["epoch_seconds"] + meta["partial_seconds"])
    monkeypatch.setattr(loop, "_call_step", real)
    train(load_config(out / "config.toml"), out, resume=True, progress=False)
    records = RunDir(out).read_metrics()
    assert records[1]["epoch_seconds"] > meta["partial_seconds"]  # the part before, kept
    summary = json.loads(RunDir(out).summary.read_text())
    assert summary["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in records))


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = loop._call_step

    def diverging(program, state, x, y, u0=None, warm=None):
        state, m = real(program, state, x, y, u0, warm)
        calls["n"] += 1
        if calls["n"] >= 6:  # epoch 2, batch 1: poison the state
            model = jax.tree.map(lambda a: a * jnp.nan if jnp.issubdtype(a.dtype, jnp.floating)
                                 else a, state.model)
            state = TrainState(model, state.opt_state, state.step, state.key)
            m = {**m, "nonfinite_step": np.int32(7), "loss": np.float32("nan"),
                 "nonfinite": {**m["nonfinite"], "h1": np.bool_(True)}}
        return state, m

    monkeypatch.setattr(loop, "_call_step", diverging)
    with pytest.raises(TrainingDiverged) as info:
        train(tiny(train={"epochs": 3}), out, progress=False)
    msg = str(info.value)
    assert "epoch 2" in msg and "batch 1" in msg and "h1" in msg and "\n" not in msg
    assert (info.value.epoch, info.value.batch, info.value.populations) == (2, 1, ["h1"])
    meta = checkpoint.read_meta(RunDir(out).checkpoint("latest"))
    assert meta["epoch"] == 1 and meta["batch"] == 0
    for v in params_of(out).values():
        assert np.all(np.isfinite(v))
    assert json.loads(RunDir(out).summary.read_text())["status"] == "diverged"


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing(fh):
        fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new.bin", lambda fh: (_ for _ in ()).throw(RuntimeError()))
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_several_seeds(tmp_path):
    out = tmp_path / "run"
    summary = train(tiny(train={"seeds": 3, "epochs": 1}), out, progress=False)
    rec = RunDir(out).read_metrics()[-1]
    per = rec["per_seed"]["test_acc"]
    assert len(per) == 3 and len(set(per)) == 3
    assert rec["test_acc"] == pytest.approx(np.mean(per))
    assert summary["final_test_acc_per_seed"] == per
    assert summary["final_test_acc_mean"] == pytest.approx(np.mean(per))
    assert summary["final_test_acc_std"] == pytest.approx(np.std(per))
    _, program, model, _ = load_run(out)
    assert program.seeds == 3
    assert jax.tree.leaves(parameters(model))[0].shape[0] == 3


def test_refuses_to_overwrite_or_resume_nothing(straight, tmp_path, capsys):
    # the Python API's advice, not the command line's (--out, eqprop resume)
    with pytest.raises(ValueError, match=r"already holds a run; continue it with "
                       r"train\(config, out_dir, resume=True\) or choose another out_dir$"):
        train(tiny(), straight, progress=False)
    with pytest.raises(ValueError, match="no checkpoint"):
        train(tiny(), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ValueError, match="already trained"):
        train(tiny(train={"epochs": 1}), straight, resume=True, progress=False)


def test_step_keys_are_pure_functions_of_seed_epoch_batch():
    a = step_keys(3, 2, 4)
    b = step_keys(3, 2, 6)[:4]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(step_keys(3, 1, 4), a)
    assert step_keys(3, 2, 4, seeds=3).shape[:2] == (4, 3)


# -- the training state and its one jitted step --------------------------------------


def probe(program, n: int = 32):
    """The first ``n`` training examples, placed."""
    return place((program.dataset.x_train[:n], program.dataset.y_train[:n]), batch_axis=0)


def test_the_step_derives_the_batch_keys_of_the_host_scheme():
    """The state's root key and global batch index give exactly the keys of step_keys."""
    program = build_program(tiny())
    n = program.n_batches
    for epoch in (1, 2):
        host = step_keys(3, epoch, n)
        for b in range(n):
            np.testing.assert_array_equal(
                np.asarray(batch_key(program.state.key, (epoch - 1) * n + b, n)), host[b])


def test_step_is_a_pure_function_of_the_state():
    """The same state and batch give the same new state; the counter advances by one."""
    program = build_program(tiny())
    x, y = probe(program)
    s1, _ = program.step(program.state, x, y)
    s2, _ = program.step(program.state, x, y)
    assert isinstance(s1, TrainState) and s1.step.dtype == jnp.int32
    assert (int(program.state.step), int(s1.step)) == (0, 1)
    np.testing.assert_array_equal(s1.key, program.state.key)
    before = jax.tree.leaves(parameters(program.model))
    for a, b, c in zip(jax.tree.leaves(parameters(s1.model)), jax.tree.leaves(parameters(s2.model)),
                       before):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(jax.tree.leaves(parameters(s1.model)), before))


def test_homeostasis_every_reads_the_state_step():
    program = build_program(tiny(homeostasis={"coef": 0.1, "every": 2}))
    x, y = probe(program)
    state, applied = program.state, []
    for _ in range(4):
        state, m = program.step(state, x, y)
        applied.append(bool(m["homeo_applied"]))
    assert applied == [True, False, True, False]
    odd = TrainState(program.state.model, program.state.opt_state, jnp.int32(5), program.state.key)
    assert not bool(program.step(odd, x, y)[1]["homeo_applied"])


def test_seeds_stack_the_networks_of_the_state():
    """K networks: model and optimizer state stacked, one shared batch counter and key."""
    program = build_program(tiny(train={"seeds": 3}))
    state = program.state
    assert state.step.shape == () and state.key.shape == (2,)
    w = jax.tree.leaves(parameters(state.model))[0]
    assert w.shape[0] == 3
    one = unstack(state, 1)
    np.testing.assert_array_equal(jax.tree.leaves(parameters(one.model))[0], w[1])
    assert one.step is state.step
    new, m = program.step(state, *probe(program))
    assert np.asarray(m["loss"]).shape == (3,) and int(new.step) == 1


def test_place_puts_arrays_on_the_device_and_keeps_the_rest():
    tree = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "f": len, "none": None, "k": 3}
    out = place(tree, batch_axis=0)
    assert isinstance(out["x"], jax.Array) and out["f"] is len and out["none"] is None
    assert out["k"] == 3
    np.testing.assert_array_equal(out["x"], tree["x"])


def test_every_step_gets_placed_data_and_the_global_batch_index(tmp_path, monkeypatch):
    seen = []
    real = loop._call_step

    def recording(program, state, x, y, u0=None, warm=None):
        seen.append((int(state.step), isinstance(x, jax.Array) and isinstance(y, jax.Array)))
        return real(program, state, x, y, u0, warm)

    monkeypatch.setattr(loop, "_call_step", recording)
    train(tiny(), tmp_path / "run", progress=False)
    assert seen == [(i, True) for i in range(8)]  # 2 epochs of 4 batches


# -- warm starts (persistent per-example states) -------------------------------------

WARM = {"model": {"sizes": [16, 16, 16, 4]},
        "dynamics": {"free_steps": 100, "nudged_steps": 5, "tol": 1e-4},
        "train": {"warm_start": True},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}


def warm(**updates) -> Config:
    cfg = with_updates(tiny(), **WARM)
    return with_updates(cfg, **updates)


@pytest.fixture(scope="module")
def warm_straight(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run with warm starts, shared by the warm resume tests."""
    return trained(tmp_path_factory, "warm", warm())


def test_warm_start_starts_from_the_last_fixed_point(tmp_path):
    """With a tiny learning rate the stored fixed points are (nearly) the new ones: the
    second visit of every example needs far fewer steps than a cold start."""
    slow = {"optim": {"lr": 1e-5}, "dynamics": {"tol": 1e-5},
            "train": {"epochs": 2, "max_batches": None}, "data": {"name": "synthetic", "batch_size": 256}}
    records = {}
    for on in (False, True):
        out = tmp_path / str(on)
        train(with_updates(warm(**slow), train={"warm_start": on}), out, progress=False)
        records[on] = RunDir(out).read_metrics()
    cold, hot = records[False], records[True]
    assert hot[0]["free_steps_mean"] == cold[0]["free_steps_mean"] > 20  # epoch 1: all cold
    assert hot[1]["free_steps_mean"] < 0.5 * cold[1]["free_steps_mean"]
    assert hot[1]["train_loss"] == pytest.approx(cold[1]["train_loss"], rel=1e-3)
    ckpts = tmp_path / "True" / "checkpoints"
    files = sorted(p.name for p in ckpts.glob("states-*"))
    manifest = json.loads((ckpts / "latest.json").read_text())
    named = sorted(e["payloads"]["states"]["file"] for e in (manifest, manifest["previous"]))
    assert files == named and len(files) == 2  # the latest checkpoint's and its fallback's
    assert not list((tmp_path / "False" / "checkpoints").glob("states-*"))


def test_warm_start_ctrl_c_then_resume_is_exact(warm_straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = interrupt_at(monkeypatch, 7)  # epoch 2, batch 2
    with pytest.raises(TrainingInterrupted):
        train(warm(), out, progress=False)
    meta = checkpoint.read_meta(RunDir(out).checkpoint("latest"))
    assert (meta["epoch"], meta["batch"]) == (1, 2)
    assert meta["payloads"]["states"]["file"].startswith("states-")
    monkeypatch.setattr(loop, "_call_step", real)
    train(load_config(out / "config.toml"), out, resume=True, progress=False)
    assert_same_params(params_of(out), params_of(warm_straight))
    a, b = RunDir(out).read_metrics(), RunDir(warm_straight).read_metrics()
    assert a[1]["free_steps_mean"] == b[1]["free_steps_mean"]


def test_warm_start_resume_checks_the_states_file(warm_straight, tmp_path):
    """A corrupt states payload falls back to the previous entry (with a warning); when
    that one is broken too, resume is a one-line error naming the file."""
    import shutil

    from eqprop.train.resume import restore

    out = tmp_path / "run"
    shutil.copytree(warm_straight, out)
    manifest = json.loads(RunDir(out).checkpoint("latest").read_text())
    current, previous = (out / "checkpoints" / e["payloads"]["states"]["file"]
                         for e in (manifest, manifest["previous"]))
    current.write_bytes(current.read_bytes()[:-8])
    cfg = with_epochs(load_config(out / "config.toml"), 3)
    program = build_program(cfg)
    with pytest.warns(checkpoint.CheckpointWarning, match="previous entry"):
        pos, _ = restore(RunDir(out), program)
    assert (pos.epoch, pos.batch) == (1, 0) and pos.states.seen.any()
    previous.write_bytes(previous.read_bytes()[:-8])
    with pytest.raises(checkpoint.CheckpointError, match="previous entry is broken too") as info:
        train(cfg, out, resume=True, progress=False)
    assert str(info.value).startswith(str(current)) and "\n" not in str(info.value)
    current.unlink()
    previous.unlink()
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        train(cfg, out, resume=True, progress=False)


# -- augmentation on the device ([data] augment: flip + pad-4 crop in the step) --------

AUGMENTED = {"data": {"name": "digits", "batch_size": 32, "augment": True},
             "model": {"sizes": [64, 16, 10]}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}


def augmented(**updates) -> Config:
    return with_updates(with_updates(tiny(), **AUGMENTED), **updates)


@pytest.fixture(scope="module")
def augmented_straight(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run on 8x8 digits with flip + pad-4 crop."""
    return trained(tmp_path_factory, "augmented", augmented())


def test_augmented_ctrl_c_mid_epoch_then_resume_is_exact(augmented_straight, tmp_path, monkeypatch):
    """The augmentation's key is a function of seed, epoch and batch: a run stopped
    mid-epoch and resumed ends with the parameters of an uninterrupted one; and the
    augmentation changes the run (without it the parameters differ)."""
    out = tmp_path / "run"
    real = interrupt_at(monkeypatch, 7)  # epoch 2, batch 2
    with pytest.raises(TrainingInterrupted) as info:
        train(augmented(), out, progress=False)
    assert (info.value.epoch, info.value.batch) == (2, 2)
    monkeypatch.setattr(loop, "_call_step", real)
    train(load_config(out / "config.toml"), out, resume=True, progress=False)
    assert_same_params(params_of(out), params_of(augmented_straight))
    a, b = RunDir(out).read_metrics(), RunDir(augmented_straight).read_metrics()
    np.testing.assert_allclose(a[1]["train_loss"], b[1]["train_loss"], rtol=1e-5)
    plain = tmp_path / "plain"
    train(augmented(data={"augment": False}), plain, progress=False)
    p, q = params_of(plain), params_of(augmented_straight)
    assert max(float(np.max(np.abs(p[k] - q[k]))) for k in p) > 1e-3


def test_anderson_with_tol_fraction_and_alternating_updates_trains(tmp_path):
    cfg = tiny(dynamics={"solver": "anderson", "tol": 1e-4, "tol_fraction": 0.1, "update": "alternating",
                         "anderson_memory": 2, "anderson_delay": 4, "free_steps": 60, "nudged_steps": 5},
               model={"sizes": [16, 8, 8, 4]}, train={"epochs": 1})
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "completed" and summary["epochs"] == 1
    record = RunDir(tmp_path / "run").read_metrics()[-1]
    assert np.isfinite(record["test_loss"]) and 4 < record["free_steps_mean"] < 60, record


def test_the_host_reads_the_metrics_of_several_steps_at_once(tmp_path, monkeypatch):
    """Issue 14 item 6: steps are dispatched without a wait; the host reads their metrics
    SYNC_EVERY at a time (the compiling first step alone), and the run is the same as one
    that reads every step's."""
    reads = []
    real_get = jax.device_get

    def counting(tree):
        if isinstance(tree, list):  # the loop's reads: a list of step metrics
            reads.append(len(tree))
        return real_get(tree)

    config = tiny(train={"epochs": 1, "max_batches": 10})
    monkeypatch.setattr(loop, "SYNC_EVERY", 1)
    train(config, tmp_path / "every", progress=False)
    monkeypatch.setattr(loop, "SYNC_EVERY", 4)
    monkeypatch.setattr(jax, "device_get", counting)
    train(config, tmp_path / "chunked", progress=False)
    assert reads == [1, 4, 4, 1]
    from eqprop.train.records import TIMING_KEYS as timing
    a, b = (RunDir(tmp_path / r).read_metrics() for r in ("every", "chunked"))
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in b]
    assert_same_params(params_of(tmp_path / "every"), params_of(tmp_path / "chunked"))


def test_a_validation_split_is_called_so_everywhere_and_seeds_show_their_spread(tmp_path, capsys):
    """With data.validation > 0 the evaluated split is held out of the training set; a fresh
    user read it as the test set in eval, the epoch line, the summary and the report (77.81%
    on the real test set against 79.33% shown). Several seeds show the train accuracy's
    spread beside the test accuracy's."""
    from eqprop.cli import main

    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nname = "synthetic"\nbatch_size = 32\nvalidation = 0.2\n'
                   '[model]\nsizes = [16, 8, 4]\n[dynamics]\nfree_steps = 15\nnudged_steps = 5\n'
                   '[train]\nepochs = 1\nmax_batches = 3\nseeds = 2\n')
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "| val loss" in shown and "| test loss" not in shown
    assert "val acc    final" in shown and "test acc" not in shown
    assert "train acc  final" in shown and shown.count("over 2 seeds") == 2
    summary = json.loads(RunDir(out).summary.read_text())
    assert summary["evaluated_on"] == "validation" and summary["final_train_acc_std"] >= 0
    assert main(["eval", str(out)]) == 0
    assert "validation split (held out of the training set, data.validation = 0.2" in capsys.readouterr().out
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "synthetic (validation split)" in (tmp_path / "rep" / "report.md").read_text()
    # without a validation split nothing changes
    cfg.write_text(cfg.read_text().replace("validation = 0.2\n", ""))
    assert main(["train", str(cfg), "--out", str(tmp_path / "plain")]) == 0
    shown = capsys.readouterr().out
    assert "| test loss" in shown and "test acc   final" in shown


def test_a_run_read_with_another_data_set_says_that_first(straight):
    """A review's `eqprop eval RUN --set data.name='"xor"'` was told of data.batch_size, then
    of model.sizes (a key it may not change): the data set is named first."""
    for extra in ([], ["data.batch_size=4"]):
        with pytest.raises(Exception, match=r"^data.name = 'xor': the run's network was trained on "
                           r"'synthetic' and takes its input shape and classes; evaluate it on a "
                           r"data set of the same shape \((data.batch_size|model.sizes)"):
            load_run(straight, "latest", ['data.name="xor"', *extra])
