"""Data and seed parallelism on a ``(seed, data)`` mesh (:mod:`eqprop.parallel`).

The multi-device runs need host devices arranged before JAX initialises, so they run in
a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(``tests/workers/layouts.py``). Exactness across layouts: the batch split over devices
changes only the order of the floating-point sums (the gradient's mean over the batch,
the relaxation's tolerance test), so float32 parameters agree to round-off: we allow
``1e-5`` of each matrix's largest entry after 8 steps (float32's epsilon is 1.2e-7; a
wrong shard, a dropped or doubled example, or a gradient averaged per device and not
globally moves them by 1e-3 or more).
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from eqprop.config import ConfigError, load_config, with_updates
from eqprop.parallel import make_layout
from eqprop.train import build_program, evaluate

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "workers" / "layouts.py"
TOL = 1e-5


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.stem: dict(np.load(p)) for p in out.glob("*.npz")}


def assert_same_parameters(a: dict, b: dict) -> None:
    names = [k for k in a if k not in ("test_acc", "test_loss", "devices")]
    assert names and set(names) == {k for k in b if k not in ("test_acc", "test_loss", "devices")}
    for k in names:
        scale = np.abs(a[k]).max()
        assert np.abs(a[k] - b[k]).max() <= TOL * scale, k


def test_four_devices_give_the_one_device_parameters(layouts):
    assert layouts["one"]["devices"] == 1 and layouts["four"]["devices"] == 4
    assert_same_parameters(layouts["one"], layouts["four"])
    # the test set of 360 examples in batches of 28: the ragged last batch is padded, masked
    np.testing.assert_allclose(layouts["four"]["test_acc"], layouts["one"]["test_acc"], atol=1e-9)
    np.testing.assert_allclose(layouts["four"]["test_loss"], layouts["one"]["test_loss"], rtol=1e-5)


def test_seeds_on_the_mesh_give_the_seeds_of_one_device(layouts):
    assert layouts["seeds-mesh"]["devices"] == 4
    assert_same_parameters(layouts["seeds-one"], layouts["seeds-mesh"])
    np.testing.assert_allclose(layouts["seeds-mesh"]["test_acc"], layouts["seeds-one"]["test_acc"],
                               atol=1e-9)


def test_a_checkpoint_resumes_under_another_layout(layouts):
    assert_same_parameters(layouts["one"], layouts["four-then-one"])
    assert_same_parameters(layouts["one"], layouts["one-then-four"])


def test_the_comparison_fails_on_a_real_difference(layouts):
    """The tolerance is far below what a wrong layout does: one SGD step more is seen."""
    moved = {k: (v * (1 + 1e-3) if k not in ("test_acc", "test_loss", "devices") else v)
             for k, v in layouts["one"].items()}
    with pytest.raises(AssertionError):
        assert_same_parameters(layouts["one"], moved)


# -- in this process (one device) ------------------------------------------------------


def _digits(**updates):
    return with_updates(load_config(ROOT / "configs" / "digits-quick.toml"), **updates)


def test_more_devices_than_exist_is_a_one_line_error():
    jax.devices()  # JAX initialised with its one device: the count can no longer change
    with pytest.raises(ConfigError, match=r"^parallel\.devices: 8 requested but 1 cpu device"):
        build_program(_digits(parallel={"devices": 8}))


@pytest.mark.parametrize("kwargs, match", [
    (dict(devices=4, seed_devices=3, seeds=3, batch_size=32), r"parallel\.seed_devices: must divide the 4"),
    (dict(devices=4, seed_devices=2, seeds=3, batch_size=32), r"parallel\.seed_devices: must divide train\.seeds"),
    (dict(devices=4, seed_devices=1, seeds=1, batch_size=30), r"data\.batch_size: must be a multiple of the 4"),
])
def test_layouts_that_do_not_fit_name_their_key(kwargs, match, monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda: [object()] * 4)
    with pytest.raises(ValueError, match=match):
        make_layout(**kwargs)


def test_the_ragged_last_batch_counts_each_example_once():
    """Evaluation in batches of 50 (a padded, masked last batch of 3) equals one batch of
    all 103 examples: with fixed steps every example's figures are its own."""
    program = build_program(_digits(dynamics={"tol": 0.0, "free_steps": 40}))
    x, y = program.dataset.x_test[:103], program.dataset.y_test[:103]
    ragged = evaluate(program, program.model, x, y, batch_size=50)
    whole = evaluate(program, program.model, x, y, batch_size=103)
    for k in ("loss", "acc", "top5"):
        np.testing.assert_allclose(ragged[k], whole[k], rtol=1e-5, err_msg=k)
    # residuals of about 1e-7 are float32 round-off, which the batch shape changes
    np.testing.assert_allclose(ragged["residual"], whole["residual"], atol=1e-6)


# -- several processes (jax.distributed, gloo collectives on the CPU) ------------------

MULTI = """
[data]
name = "digits"
batch_size = 28
[model]
sizes = [64, 64, 64, 10]
[dynamics]
update = "alternating"
free_steps = 60
nudged_steps = 30
tol = 1e-5
[estimator]
name = "hep"
points = 2
beta = 0.2
[optim]
lr = 0.05
[train]
epochs = 3
max_batches = 6
[parallel]
devices = "all"
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cli(*args, devices: int, **kw):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "eqprop.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _records(run: Path) -> list[dict]:
    import json

    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _parameters(run: Path) -> dict:
    from eqprop.network import named_parameters
    from eqprop.train import load_run

    _, _, model, _ = load_run(run)
    return {k: np.asarray(v) for k, v in named_parameters(model).items()}


def test_two_processes_match_one_and_resume_as_one(tmp_path):
    """2 processes x 2 host devices: the epoch records equal those of one process with 4
    devices; both processes killed (SIGKILL) after the first epoch's checkpoint, the run
    resumes as one process on one device and ends with the one-process parameters."""
    import time

    config = tmp_path / "c.toml"
    config.write_text(MULTI)
    ref = _cli("train", config, "--out", tmp_path / "ref", "--quiet", devices=4)
    port = _free_port()
    procs = [_cli("train", config, "--out", tmp_path / "run", "--quiet", "--coordinator",
                  f"localhost:{port}", "--processes", 2, "--process-id", i, devices=2)
             for i in range(2)]
    deadline = time.monotonic() + 300
    while len(_records(tmp_path / "run")) < 1 and time.monotonic() < deadline:
        assert all(p.poll() in (None, 0) for p in procs), [p.communicate()[0][-2000:] for p in procs]
        time.sleep(0.2)
    for p in procs:
        p.kill()
        p.wait()
    assert len(_records(tmp_path / "run")) in (1, 2), "killed after the first epoch"
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out[-2000:]
    one, two = _records(tmp_path / "ref"), _records(tmp_path / "run")
    for key in ("train_acc", "test_acc"):
        assert two[0][key] == pytest.approx(one[0][key], abs=1e-9), key
    for key in ("train_loss", "test_loss"):
        assert two[0][key] == pytest.approx(one[0][key], rel=1e-5), key
    resumed = _cli("resume", tmp_path / "run", "--quiet", "--set", "parallel.devices=1", devices=1)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-2000:]
    assert [r["epoch"] for r in _records(tmp_path / "run")] == [1, 2, 3]
    assert_same_parameters(_parameters(tmp_path / "ref"), _parameters(tmp_path / "run"))


def test_resume_changes_only_the_layout(tmp_path, capsys):
    from eqprop.cli import main

    assert main(["resume", str(tmp_path), "--set", "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("eqprop: error: resume --set: only [parallel] keys may change when a run "
                   "resumes (the others define the run), got 'optim.lr=0.1'")


def test_the_command_line_creates_the_host_devices_itself(tmp_path):
    """No XLA_FLAGS: `--set parallel.devices=2` on train, resume and eval creates two host
    devices before anything initialises JAX (a fresh user found train refusing it: the
    writer check had initialised the backend first); the layout is in summary.json."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    run = tmp_path / "run"

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "eqprop.cli", *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    cli("train", ROOT / "configs" / "digits-quick.toml", "--set", "parallel.devices=2",
        "--set", "train.max_batches=2", "--set", "data.batch_size=28", "--epochs", "1",
        "--out", run, "--quiet")
    assert json.loads((run / "summary.json").read_text())["layout"] == "2 devices (seed 1 x data 2)"
    out = cli("resume", run, "--epochs", "2", "--set", "parallel.devices=2", "--quiet")
    assert "on 2 devices (seed 1 x data 2)" in out
    cli("eval", run, "--set", "parallel.devices=2")


def test_more_host_devices_than_cores_run_and_say_so(tmp_path):
    """Allowed (the batch is split as asked) but never faster: one warning line; as many
    devices as cores say nothing."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cores = os.cpu_count() or 1
    for n, warned in ((cores + 1, True), (min(cores, 2), False)):
        proc = subprocess.run(
            [sys.executable, "-m", "eqprop.cli", "train", str(ROOT / "configs" / "digits-quick.toml"),
             "--set", f"parallel.devices={n}", "--set", f"data.batch_size={4 * n}",
             "--set", "train.max_batches=1", "--epochs", "1", "--out", str(tmp_path / str(n)), "--quiet"],
            env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        line = f"eqprop: warning: parallel.devices: {n} host devices share {cores} cores"
        assert (line in proc.stderr) == warned, proc.stderr[-2000:]
