"""Tests for the ``eqprop`` command line (``eqprop.cli.main`` returns the exit code)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from eqprop.cli import main
from eqprop.config import load_config, parse_config
from eqprop.train import loop

ROOT = Path(__file__).resolve().parents[1]

TINY_TOML = """
[data]
name = "synthetic"
batch_size = 32

[model]
sizes = [16, 8, 4]

[dynamics]
free_steps = 15
nudged_steps = 5

[optim]
lr = 0.2

[train]
epochs = 2
max_batches = 4
"""

SUBCOMMANDS = ("train", "resume", "eval", "gradcheck", "stability", "datasets", "report", "config")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture(scope="module")
def run_dir(tiny_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", str(tiny_config), "--out", str(out), "-q"]) == 0
    return out


def test_train_writes_run(run_dir):
    assert (run_dir / "config.toml").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run_dir / "checkpoints" / "latest.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_eval_on_the_first_examples_of_a_split(run_dir, capsys):
    """A quick look: ``--examples N`` evaluates the first N examples and says so (a review
    waited 2.5 minutes for a full test set with no way to shrink it)."""
    assert main(["eval", str(run_dir), "--examples", "7"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "the first 7 of " in out[0] and out[0].endswith(" examples")
    assert not out[2].startswith("mean")  # one seed: the row is the run's, not a mean over seeds
    assert main(["eval", str(run_dir), "--examples", "0"]) == 2
    assert "--examples: an integer >= 1, got 0" in capsys.readouterr().err


def test_the_summary_says_where_the_wall_time_went(run_dir):
    """The total time holds evaluation and compiling: a review read 69 s as training when
    56 of them were the test set's evaluation; the summary names those parts."""
    from eqprop.train import RunDir
    from eqprop.train.summary import format_summary

    s = json.loads((run_dir / "summary.json").read_text())
    records = RunDir(run_dir).read_metrics()
    assert s["eval_seconds"] == pytest.approx(sum(r["eval_seconds"] for r in records))
    assert 0 < s["eval_seconds"] + s["compile_seconds"] <= s["train_seconds"]
    line = next(ln for ln in format_summary(s).splitlines() if ln.startswith("time"))
    assert f"(of which evaluation {s['eval_seconds']:.1f} s, compiling {s['compile_seconds']:.1f} s)" in line
    assert "ms/batch" in line and "besides" not in line
    # the diagnostics run after the epoch's clock stopped: named beside the total, not in it
    # (a review: "6.1 s (of which evaluation 1.3 s, diagnostics 6.1 s, compiling 4.7 s)")
    d = dict(s, diagnostics_seconds=6.14, stability_seconds=0.5)
    line = next(ln for ln in format_summary(d).splitlines() if ln.startswith("time"))
    assert "(of which" in line and "diagnostics" not in line.split("besides")[0]
    assert line.endswith("; besides: diagnostics 6.1 s, stability figures 0.5 s")


def test_train_set_and_epochs(tiny_config, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", str(tiny_config), "--set", "optim.lr=0.05", "--epochs", "1",
                 "--out", str(out), "-q"])
    assert code == 0
    printed = capsys.readouterr().out  # -q: the directory and the summary block, no epochs
    assert printed.startswith(f"run directory: {out}\n") and "test acc   final" in printed
    assert "epoch 1/1" not in printed
    cfg = load_config(out / "config.toml")
    assert cfg.optim.lr == 0.05 and cfg.train.epochs == 1
    assert main(["resume", str(out), "--epochs", "2", "-q"]) == 0
    assert "test acc   final" in capsys.readouterr().out
    epochs = [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert load_config(out / "config.toml").train.epochs == 2


def test_eval(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "loss" in out and "top-5" not in out  # 4 classes
    assert main(["eval", str(run_dir), "--split", "train", "--checkpoint", "best"]) == 0
    out = capsys.readouterr().out
    assert "free phase: 15.0 steps" in out  # the run's own relaxation: 15 fixed steps
    # --set relaxes differently for the evaluation; the run directory is left as it was
    assert main(["eval", str(run_dir), "--set", "dynamics.free_steps=7"]) == 0
    assert "free phase: 7.0 steps" in capsys.readouterr().out
    assert load_config(run_dir / "config.toml").dynamics.free_steps == 15
    assert main(["eval", str(run_dir), "--set", "dynamics.check_every=0"]) == 2
    assert "dynamics.check_every" in capsys.readouterr().err


def test_gradcheck_json(run_dir, tiny_config, tmp_path, capsys):
    out = tmp_path / "gc.json"
    specs = ["hep:points=4:beta=0.5", "ep"]
    args = ["gradcheck", str(run_dir), "--json", str(out)]
    for s in specs:
        args += ["--estimator", s]
    assert main(args) == 0
    assert "cosine" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert "relaxation" in data
    for s in specs:
        entry = data[s]
        assert -1.0 <= entry["total"]["cosine"] <= 1.0001
        assert entry["total"]["relative_error"] >= 0
        assert entry["parameters"] and entry["error_vectors"] is not None
    # a config file works too, with the config's own estimator as the default SPEC
    out2 = tmp_path / "gc2.json"
    assert main(["gradcheck", str(tiny_config), "--set", "dynamics.free_steps=10",
                 "--json", str(out2)]) == 0
    assert "hep" in json.loads(out2.read_text())


def test_gradcheck_bad_spec(tiny_config, capsys):
    assert main(["gradcheck", str(tiny_config), "--estimator", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1
    # the allowed list is what gradcheck compares: not bp, which it refuses
    assert err.strip().endswith("allowed: ep, hep, online-hep, exact-nudge, implicit, bptt, contrast, deep-rule")
    # a setting given twice: the last one won without a word (a fresh user's hep:beta=0.5:beta=0.1)
    assert main(["gradcheck", str(tiny_config), "-e", "hep:beta=0.5:beta=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "eqprop: error: estimator SPEC 'hep:beta=0.5:beta=0.1': beta is given twice"
    # an estimator that cannot run on the model: the error says which of the -e it was
    assert main(["gradcheck", str(tiny_config), "--set", 'model.feedback="untied"', "-e", "hep",
                 "-e", "contrast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eqprop: error: estimator SPEC 'contrast': ") and "\n" not in err


def test_gradcheck_table_composes_the_diagnostics():
    """``gradcheck()`` compares estimators only; the command passes the diagnostics to
    ``format_table`` as a second argument and merges them into the JSON's top level."""
    import jax
    import jax.numpy as jnp

    import eqprop
    from eqprop.build import phase_solvers
    from eqprop.gradcheck import format_table, gradcheck, to_json

    m = eqprop.layered([4, 5, 3], key=jax.random.PRNGKey(0))
    x, y = jax.random.uniform(jax.random.PRNGKey(1), (3, 4)), jnp.arange(3) % 3
    dyn = phase_solvers(free_steps=20, nudged_steps=5, linear_steps=50)
    result = gradcheck(m, x, y, {"ep": eqprop.make_estimator("ep", dyn)}, dyn)
    assert set(result) == {"ep", "relaxation", "reference"}
    diag = {"angle": 12.5, "jacobian_symmetry": 0.75}
    plain, table = format_table(result), format_table(result, diag)
    assert "asymmetry diagnostics" not in plain and table.startswith(plain)
    assert "jacobian_symmetry" in table.split("asymmetry diagnostics")[1]
    merged = to_json({**result, **diag})
    assert merged["jacobian_symmetry"] == 0.75 and "cosine" in merged["ep"]["total"]
    # every column heading keeps a gap, also the 12-character "cos a/hidden" (a review
    # read "rel.errcos a/hidden"), and the per-parameter rows line up under their headings
    wide = {**result, "ep": {**result["ep"], "error_vectors": {"hidden": 0.5}}}
    head = next(line for line in format_table(wide).splitlines() if line.startswith("estimator"))
    assert "rel.err  cos a/hidden" in head
    rows = plain.split("per parameter (cosine / relative error):\n")[1].splitlines()
    assert rows[0].startswith("parameter ") and len({len(r) for r in rows[:3]}) == 1
    # each diagnostic with six decimals (a review read a bare "1" for 0.9999995) and, with
    # ``describe``, what it measures and what its ends mean
    from eqprop.diagnostics import DIAGNOSTIC_KEYS, DIAGNOSTIC_NOTES, describe

    diag = {"cos_implicit": 0.9999995, "angle/h1-h2": 90.0, "homeo_loss": 2.5e-7, "probe_settled_on": 1.0}
    legend = format_table(result, diag, describe=describe, notes=DIAGNOSTIC_NOTES).split("asymmetry diagnostics")[1]
    line = {ln.split()[0]: ln.split()[1] for ln in legend.splitlines()[1:] if not ln.startswith("  *")}
    assert line == {"cos_implicit": "0.9999995", "angle/h1-h2": "90.0000000", "homeo_loss": "2.500e-07",
                    "probe_settled_on": "1"}  # a flag
    assert "both biases (1: none)" in legend and "pair h1-h2" in legend
    assert "relaxed on past the training budget" in legend
    assert all(describe(k) for k in DIAGNOSTIC_KEYS) and describe("alignment/h1").endswith("population h1")
    assert "* over the recurrent parameters: the readout" in legend  # why cos_implicit < the total


def test_gradcheck_names_a_parameter_the_total_cosine_hides():
    """A review read a total cosine of 0.998 over a first-layer kernel at 0.19 (the exact
    readout gradient dominates the total): such a parameter is named in a warning."""
    from eqprop.gradcheck import HIDDEN_BELOW, HIDDEN_GAP, _hidden_parameters

    entry = {"total": {"cosine": 0.998}, "parameters": {
        "readout.weight": {"cosine": 1.0}, "weights.input->c1": {"cosine": 0.19011},
        "weights.c1->c2": {"cosine": 0.95}, "biases.c1": {"cosine": None}}}
    text = _hidden_parameters(entry)
    assert text.startswith("the total cosine 0.9980 hides weights.input->c1 0.190:")
    assert "c1->c2" not in text and HIDDEN_BELOW < 0.95 and HIDDEN_GAP == 0.1
    # a lower total hides less, but still a parameter far below it (a review: 0.966 over 0.58)
    assert _hidden_parameters({**entry, "total": {"cosine": 0.966}}).startswith(
        "the total cosine 0.9660 hides weights.input->c1 0.190:")
    assert _hidden_parameters({**entry, "total": {"cosine": 0.25}}) is None  # the total shows it
    assert _hidden_parameters({**entry, "total": {"cosine": None}}) is None  # no reference


def test_datasets(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "fashion-mnist" in out


def test_report(run_dir, tmp_path, capsys):
    # an extra numeric key becomes a diagnostics plot
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text((run_dir / "config.toml").read_text())
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (other / "metrics.jsonl").write_text(
        "".join(json.dumps({**r, "angle": 10.0 * r["epoch"]}) + "\n" for r in lines))
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), str(other), "--out", str(out)]) == 0
    for name in ("accuracy.png", "loss.png", "relaxation.png", "diagnostics.png", "report.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "tiny" in md and "other" in md
    # "other" has no summary (stopped, or running): its setting comes from its config
    row = next(line for line in md.splitlines() if line.startswith("| other |"))
    assert row.startswith("| other | synthetic | hep | 1 |") and row.endswith("| running or stopped |")
    # a run killed before its first epoch ended is left out with one line, not fatal
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.toml").write_text((run_dir / "config.toml").read_text())
    capsys.readouterr()
    assert main(["report", str(run_dir), str(empty), "--out", str(tmp_path / "rep2")]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"eqprop: warning: report: {empty} has no metrics.jsonl records yet; left out"]
    assert "Left out, no epoch recorded yet: empty." in (tmp_path / "rep2" / "report.md").read_text()
    assert main(["report", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"eqprop: error: {empty}: no metrics.jsonl records yet"


def test_bad_config_value(tiny_config, tmp_path, capsys):
    code = main(["train", str(tiny_config), "--set", "optim.lr=-1", "--out", str(tmp_path / "x")])
    assert code == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_model_the_enforcer_refuses_leaves_no_run_directory(tmp_path, capsys):
    """A config error raised after the program is built (stability.enforce on a conv net,
    refused by the trainer's enforcer) left a config.toml behind, unlike every other one."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nname = "digits"\nbatch_size = 16\n[model]\nkind = "conv"\n'
                   'channels = [2, 3]\noutput_size = 4\nactivation = "dsilu"\n'
                   '[stability]\nenforce = "contraction"\n[train]\nepochs = 1\nmax_batches = 2\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "x"), "-q"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("eqprop: error: stability.enforce: 'contraction' needs") and "\n" not in err
    # the directory named on stdout before the build is said to be gone, not left implied
    assert f"run directory: {tmp_path / 'x'}" in captured.out
    assert err.endswith(f"({tmp_path / 'x'} was removed: nothing was trained)")
    assert not (tmp_path / "x").exists()


def test_a_data_set_that_is_missing_leaves_no_run_directory_and_says_so(tmp_path, capsys):
    """The data load fails after stdout named the run directory: the error says it is gone."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nname = "cifar10"\npath = "{tmp_path / "nowhere"}"\n'
                   '[train]\nepochs = 1\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "x"), "-q"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and str(tmp_path / "nowhere") in err
    assert err.endswith(f"({tmp_path / 'x'} was removed: nothing was trained)")
    assert f"run directory: {tmp_path / 'x'}" in captured.out
    assert not (tmp_path / "x").exists()


def test_bad_input_files(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert main(["eval", str(tmp_path)]) == 2
    assert main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("eqprop: error:") for line in err)


@pytest.mark.parametrize("command", ["resume", "eval", "report", "stability", "gradcheck"])
def test_a_run_directory_argument_that_is_missing_or_not_a_run_says_which(command, tmp_path, capsys):
    """Every command that takes a run directory: a path that does not exist is named as
    such, an existing directory without config.toml as not a run (one line each)."""
    assert main([command, str(tmp_path / "nope")]) == 2
    assert main([command, str(tmp_path)]) == 2
    missing, empty = capsys.readouterr().err.strip().splitlines()
    assert missing.startswith(f"eqprop: error: {tmp_path / 'nope'}: no such ")
    assert empty == f"eqprop: error: {tmp_path}: not a run directory (no config.toml)"


def test_divergence_exit_code(tiny_config, tmp_path, monkeypatch, capsys):
    real = loop._call_step

    def diverging(*args):
        state, m = real(*args)
        return state, {**m, "loss": np.float32("inf")}

    monkeypatch.setattr(loop, "_call_step", diverging)
    assert main(["train", str(tiny_config), "--out", str(tmp_path / "d"), "-q"]) == 3
    err = capsys.readouterr().err
    assert "diverged at epoch 1, batch 0" in err and len(err.strip().splitlines()) == 1


def test_interrupt_exit_code(tiny_config, tmp_path, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_call_step", interrupt)
    assert main(["train", str(tiny_config), "--out", str(tmp_path / "i"), "-q"]) == 130
    assert (tmp_path / "i" / "checkpoints" / "latest.json").is_file()


def test_eval_says_a_checkpoint_was_saved_part_way_through_an_epoch(tiny_config, tmp_path,
                                                                    monkeypatch, capsys):
    real, calls = loop._call_step, []

    def interrupt_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop, "_call_step", interrupt_third)
    assert main(["train", str(tiny_config), "--out", str(tmp_path / "i"), "-q"]) == 130
    monkeypatch.setattr(loop, "_call_step", real)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "i")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "checkpoint latest (epoch 0 and 2 batches of epoch 1)" in first


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "usage: eqprop " + command in capsys.readouterr().out


def test_top_level_help_and_usage_error(capsys):
    assert main(["--help"]) == 0
    assert main([]) == 2
    assert main(["train"]) == 2


def test_fast_config_is_the_reference_with_fast_dynamics():
    """configs/fmnist-mlp-hep-fast.toml copies the reference config: only [dynamics] differs,
    and there only in the stopping and solver keys (the step budgets are the same caps)."""
    import dataclasses

    ref = load_config(ROOT / "configs" / "fmnist-mlp-hep.toml")
    fast = load_config(ROOT / "configs" / "fmnist-mlp-hep-fast.toml")
    assert dataclasses.replace(fast, dynamics=ref.dynamics) == ref
    from eqprop.config import to_dict
    from eqprop.settings import settings_of
    from eqprop.solvers import Anderson

    # the reference's fixed-point solver has no anderson_* keys: compare them to Anderson's defaults
    r, f = to_dict(ref)["dynamics"], to_dict(fast)["dynamics"]
    defaults = {s.key: s.default for s in settings_of(Anderson)}
    changed = {k for k in r.keys() | f.keys() if r.get(k, defaults.get(k)) != f.get(k, defaults.get(k))}
    assert changed == {"tol", "tol_fraction", "solver", "anderson_memory", "anderson_delay", "check_every"}


def test_config_reference(capsys):
    assert main(["config"]) == 0
    assert "## [train]" in capsys.readouterr().out


def test_the_first_clause_of_a_config_header():
    from eqprop.cli import _first_clause

    assert _first_clause("Short: and then a longer explanation (with a colon: inside). More.") == \
        "Short: and then a longer explanation (with a colon: inside)."
    assert _first_clause("As in Farinha et al. 2020 (arXiv 2006.08798), e.g. the XOR notebook; more") == \
        "As in Farinha et al. 2020 (arXiv 2006.08798), e.g. the XOR notebook"
    assert _first_clause("no stop at all") == "no stop at all"


def test_config_list_and_a_shipped_config_by_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    names = sorted(f.stem for f in (ROOT / "configs").glob("*.toml"))
    entries = [ln for ln in listed if ln and not ln.startswith((" ", "("))]  # continuations indented
    assert [ln.split()[0] for ln in entries] == names
    # each entry is its header's first clause, whole (a review read one line cut mid-sentence)
    text = " ".join(listed)
    deep = " ".join(text.split("xor-deep", 1)[1].split("xor-directed-hep")[0].split())
    assert deep == ("XOR with the DEEP dynamics and learning rule of Farinha et al. 2020 (arXiv "
                    "2006.08798), as in the authors' binary notebook")
    assert main(["config", "xor-deep", "--set", "optim.lr=0.3"]) == 0
    shown = capsys.readouterr().out
    (tmp_path / "run").mkdir()  # a run directory: its config.toml (a review: "Is a directory")
    (tmp_path / "run" / "config.toml").write_text(shown)
    assert main(["config", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out == shown
    assert main(["config", "xor-deep", "--set", "optim.lr=0.3"]) == 0
    assert load_config(ROOT / "configs" / "xor-deep.toml", ["optim.lr=0.3"]) == \
        parse_config(tomllib.loads(capsys.readouterr().out))
    assert main(["train", "no-such-config"]) == 2
    assert "shipped configs: cifar10-cnn-hep, " in capsys.readouterr().err
    # every command that takes a CONFIG takes a name (a review: stability and gradcheck did not)
    assert main(["stability", "xor-deep", "--set", "stability.examples=1"]) == 0
    assert "xor-deep: DeepNetwork" in capsys.readouterr().out
    for command in ("stability", "gradcheck"):
        assert main([command, "no-such-config"]) == 2
        err = capsys.readouterr().err
        assert "shipped configs: cifar10-cnn-hep, " in err and err.rstrip().endswith("(nor a run directory)")
        assert main([command, "sub/no-such-config"]) == 2
        assert capsys.readouterr().err.strip() == ("eqprop: error: sub/no-such-config: no such config "
                                                    "file or run directory")


@pytest.mark.parametrize("name", ["digits-quick", "fmnist-mlp-hep", "fmnist-mlp-implicit", "fmnist-mlp-hep-fast"])
def test_shipped_configs_parse(name):
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    if name.startswith("fmnist"):
        assert cfg.data.name == "fashion-mnist" and cfg.model.sizes == (784, 256, 256, 10)
        assert cfg.estimator.name == name.split("-")[2]
        assert (cfg.dynamics.free_steps, cfg.dynamics.nudged_steps) == (150, 20)


# A run directory's config.toml as eqprop wrote it before the tagged unions (every key of
# every section, dynamics.warm_start, the other variants' keys at their defaults): the
# TINY_TOML run above, dumped by the version of commit b0a1b74.
OLD_RUN_CONFIG = """
[data]
name = "synthetic"
batch_size = 32
validation = 0.0
augment = false
drop_last = true

[model]
kind = "layered"
sizes = [16, 8, 4]
populations = {}
projections = []
output = "out"
feedback = "tied"
asymmetry_angle = 0.0
activation = "sigmoid4"
readout = "softmax"
dtype = "float32"
init_scale = 1.0

[dynamics]
dt = 1.0
free_steps = 15
nudged_steps = 5
tol = 0.0
tol_fraction = 0.0
solver = "fixed-point"
linear_steps = 1000
linear_tol = 1e-05
linear_solver = "auto"
state_bound = 1000000.0
converged_tol = 0.0
update = "synchronous"
anderson_memory = 5
anderson_damping = 1.0
anderson_delay = 0
warm_start = false
check_every = 1

[estimator]
name = "hep"
beta = 0.5
points = 2
periods = 4

[optim]
name = "sgd"
lr = 0.2
momentum = 0.9
weight_decay = 0.0
schedule = "constant"
lr_multipliers = {}
clip_norm = 0.0

[train]
epochs = 2
seed = 0
seeds = 1
eval_every = 1
checkpoint_every = 1
max_batches = 4

[homeostasis]
coef = 0.0
probes = 5
every = 1

[diagnostics]
enabled = false
batch_size = 256
every = 1
free_steps = 0
"""


def test_a_run_written_before_the_tagged_unions_resumes(tiny_config, tmp_path):
    """The old config.toml is read as the config it meant (keys of other variants at their
    defaults dropped, warm_start moved to [train]); `eqprop resume` continues the run."""
    from eqprop.config import ConfigError, load_run_config, parse_config, upgrade_run_config
    import tomllib

    out = tmp_path / "old"
    assert main(["train", str(tiny_config), "--out", str(out), "--epochs", "1", "-q"]) == 0
    (out / "config.toml").write_text(OLD_RUN_CONFIG)
    assert load_run_config(out / "config.toml") == load_config(tiny_config)
    with pytest.raises(ConfigError, match="model.populations: belongs to model kind 'graph'"):
        load_config(out / "config.toml")  # a user's own file gets the one-line error instead
    # a key of another variant that is not at its default is not dropped silently
    raw = tomllib.loads(OLD_RUN_CONFIG)
    raw["dynamics"]["anderson_memory"] = 2
    with pytest.raises(ConfigError, match="dynamics.anderson_memory: belongs to solver 'anderson'"):
        parse_config(upgrade_run_config(raw))
    assert main(["resume", str(out), "-q"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_json_outputs_are_strict_json():
    """inf and nan (a Lyapunov margin of -inf) are written as null: RFC 8259 has neither."""
    from eqprop.cli import strict_json

    tree = {"a": float("-inf"), "b": [1.0, float("nan"), {"c": float("inf")}], "d": 2, "e": "x"}
    text = json.dumps(strict_json(tree), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": 2, "e": "x"}


@pytest.mark.parametrize("command", [["config"], ["datasets"]])
def test_a_closed_output_pipe_stops_quietly(command):
    """``eqprop config | head``: the reader has gone, so the command stops with SIGPIPE's
    status (141) and no traceback or "error: Broken pipe" line, for every command."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-c", "import sys; from eqprop.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", *command],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141


@pytest.mark.parametrize("delay", [0.5, 3.0])
def test_sigterm_at_any_point_exits_130_not_a_crash(tiny_config, tmp_path, delay):
    """SIGTERM (a scheduler's preemption) while JAX compiles or while it trains: the
    ``eqprop`` command exits 130 with its one line. Before, an interrupt during the first
    compile saved and then died in the interpreter's teardown (segmentation fault, 139)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "eqprop", "train", str(tiny_config),  # the command's entry point
         "--out", str(tmp_path / "run"), "-q", "--epochs", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("run directory:")  # JAX is about to start
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "terminated (SIGTERM)" in err and "Fatal Python error" not in err
    assert "\n\n" not in "\n" + err  # piped: no blank line before the message (a review)


def test_resume_with_other_epochs_warns_when_a_schedule_spans_the_run(tiny_config, tmp_path, capsys):
    """resume --epochs N re-lays a cosine schedule (or a magnitude-pruning schedule ending
    at the last epoch) over N epochs: it says so in one line; a constant one is silent."""
    for schedule, warned in (("cosine", True), ("constant", False)):
        out = tmp_path / schedule
        assert main(["train", str(tiny_config), "--out", str(out), "-q", "--epochs", "1",
                     "--set", f"optim.schedule='{schedule}'"]) == 0
        capsys.readouterr()
        assert main(["resume", str(out), "-q", "--epochs", "2"]) == 0
        err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
        if warned:
            assert err == ["eqprop: warning: resume --epochs 2 (the run was planned for 1): "
                           "optim.schedule = 'cosine' (the learning rate decays to 0 at the last "
                           "epoch) now spans 2 epochs from here on, so the result equals neither "
                           "the planned run nor an uninterrupted 2-epoch run"]
        else:
            assert err == []
    # a total the run has already reached is refused, and not warned about first
    assert main(["resume", str(tmp_path / "cosine"), "-q", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("eqprop: error:") and "already trained 2 epochs" in err[0]
    # a checkpoint cut short (an interrupted copy): one error line, and no advice on the
    # schedule of a run that cannot resume (a review saw the warning printed first)
    ck = tmp_path / "cosine" / "checkpoints"
    for f in ck.glob("*.eqx"):
        f.write_bytes(f.read_bytes()[:100])
    assert main(["resume", str(tmp_path / "cosine"), "-q", "--epochs", "5"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("eqprop: error:") and "interrupted write?" in err[0]


@pytest.mark.parametrize("command", ["eval", "gradcheck", "stability"])
@pytest.mark.parametrize("override", ["optim.lr=0.5", "model.sizes=[64, 10]", "train.epochs=9"])
def test_set_on_a_trained_run_may_not_change_the_network_or_its_training(run_dir, command, override,
                                                                         capsys):
    """A user's `eval RUN --set optim.lr=0.5` was silently ignored, and `--set model....`
    failed on the checkpoint's shapes without naming the key: both are one line naming it."""
    assert main([command, str(run_dir), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eqprop: error: --set on a run: only [dynamics], [estimator], [data], "
                          "[parallel]") and err.endswith(f"got {override!r}") and "\n" not in err


def test_set_on_a_trained_run_may_change_the_section_its_command_reads(run_dir, capsys, tmp_path):
    """A fresh user's `stability RUN --set stability.examples=4` was refused although
    [stability] changes nothing of the network; each command's own section is allowed on a
    run (and named in the error and the help), the other commands' are not."""
    js = tmp_path / "s.json"
    assert main(["stability", str(run_dir), "--set", "stability.examples=3", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["examples"] == 3
    capsys.readouterr()
    for command, other in (("eval", "stability.examples=3"), ("stability", "diagnostics.free_steps=5"),
                           ("gradcheck", "stability.examples=3")):
        assert main([command, str(run_dir), "--set", other]) == 2
        err = capsys.readouterr().err.strip()
        assert "--set on a run" in err and err.endswith(f"got {other!r}")
    for command, own in (("stability", "[stability]"), ("gradcheck", "[diagnostics]")):
        assert main([command, "--help"]) == 0
        assert own in " ".join(capsys.readouterr().out.split())


def test_gradcheck_says_when_one_example_sets_the_batch_cosines():
    """On a trained CNN one example of 50 carried 79% of recurrent backprop's |delta|^2,
    so the batch cos a/<population> (0.54) were that example's (0.97 without it): the
    result holds the concentration, each estimator's figures at that example and without
    it, and the table says so from CONCENTRATED_SHARE on."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import eqprop
    from eqprop.build import phase_solvers
    from eqprop.gradcheck import CONCENTRATED_SHARE, _at_example, _concentration, format_table, gradcheck

    # the functions, on vectors whose answer is known
    delta = {"h": np.array([[1.0, 0.0], [0.0, 1.0], [30.0, 40.0], [1.0, 1.0]])}
    v = {"h": np.array([[1.0, 0.0], [0.0, 1.0], [-8.0, 6.0], [1.0, 1.0]])}
    c = _concentration(delta)
    assert c["example"] == 2 and c["share"] == pytest.approx(2500 / 2504)
    assert c["max_over_median"] == pytest.approx(50 / np.median([1, 1, 50, np.sqrt(2)]))
    top = _at_example(v, delta, 2)
    assert top["cosine"] == pytest.approx(0.0, abs=1e-7) and top["norm_ratio"] == pytest.approx(0.2)
    assert top["without"]["h"] == pytest.approx(1.0)  # the rest agree exactly
    assert _concentration({"h": np.ones((2, 3))}) is None  # too few examples for a median

    # gradcheck's figures are those of the implicit estimator's delta, recomputed here
    m = eqprop.layered([4, 5, 3], key=jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 4)).at[0].multiply(8.0)
    y = jnp.arange(6) % 3
    dyn = phase_solvers(free_steps=60, nudged_steps=30, linear_steps=200)
    result = gradcheck(m, x, y, {"hep": eqprop.make_estimator("hep", dyn, beta=0.1, points=4)}, dyn)
    conc = result["relaxation"]["delta_concentration"]
    free = eqprop.free_phase(m, x, dyn.free)
    _, ref = eqprop.make_estimator("implicit", dyn)(m, x, y, free, jax.random.PRNGKey(0))
    sq = sum(np.sum(np.reshape(np.asarray(d), (6, -1)) ** 2, axis=1) for d in ref.error_vector.values())
    assert conc["example"] == int(np.argmax(sq)) and conc["share"] == pytest.approx(sq.max() / sq.sum(), rel=1e-3)
    assert result["hep"]["top_example"]["cosine"] > 0.99  # a small circle: hEP's da/dbeta is delta's
    assert result["hep"]["top_example"]["norm_ratio"] == pytest.approx(1.0, rel=1e-2)

    # the table's line appears exactly when the share reaches the threshold
    for share in (CONCENTRATED_SHARE - 0.01, CONCENTRATED_SHARE):
        shown = {**result, "relaxation": {**result["relaxation"], "delta_concentration": {**conc, "share": share}}}
        table = format_table(shown)
        said = f"example {conc['example']} of the batch carries {100 * share:.0f}%"
        assert (said in table) == (share >= CONCENTRATED_SHARE)
        assert (f"hep: at example {conc['example']} cosine" in table) == (share >= CONCENTRATED_SHARE)


def test_the_signal_handlers_request_the_stop_besides_raising():
    """SIGINT and SIGTERM raise KeyboardInterrupt and also leave a request the training
    loop honours at its next batch (where the exception is swallowed inside JAX); on the
    way out the handlers found are put back. Real signals, sent in a process of their
    own: not to a test worker that runs JAX."""
    import subprocess
    import sys

    code = """
import os, signal
from eqprop.cli import _stop_on_signals
from eqprop.train import loop
found = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
with _stop_on_signals():
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop._STOP_REQUESTS.clear()
        try:
            os.kill(os.getpid(), sig)
            for _ in range(100000):  # the handler runs between bytecodes
                pass
            print("no KeyboardInterrupt")
        except KeyboardInterrupt:
            print(loop._STOP_REQUESTS)  # the request, as the loop will see it
print(all(signal.getsignal(s) is h for s, h in found.items()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["['interrupted']", "['terminated (SIGTERM)']", "True"]


def test_train_from_python_leaves_the_signal_handlers_as_it_found_them(tmp_path):
    """``main(["train", ...])`` called in-process (a notebook, a test worker) puts back
    the SIGINT and SIGTERM handlers it replaced: a later Ctrl-C is the caller's again."""
    import signal

    found = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(["train", str(ROOT / "configs" / "xor-deep.toml"), "--out", str(tmp_path / "r"),
                 "--epochs", "1", "-q"]) == 0
    assert {s: signal.getsignal(s) for s in found} == found


def test_gradcheck_withholds_the_diagnostics_that_rest_on_an_untrusted_reference(tmp_path, capsys):
    """xor-deep's states sit on their box's bounds: no cosine with implicit
    differentiation is reported, and neither are the diagnostics that compare with it
    (a review read cos_implicit -0.0126 printed under "no cosine is reported")."""
    out = tmp_path / "g.json"
    assert main(["gradcheck", str(ROOT / "configs" / "xor-deep.toml"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "so no cosine is reported" in text
    assert not [ln for ln in text.splitlines() if ln.lstrip().startswith(("cos_", "alignment"))]
    assert "cos_implicit withheld: they compare with implicit differentiation" in text
    js = json.loads(out.read_text())
    assert js["reference"] is None and js["cos_implicit"] is None and js["alignment"] is None
    assert js["angle"] > 0  # what does not rest on the reference stays


def test_train_into_a_run_is_refused_before_the_directory_is_named(run_dir, tiny_config, capsys):
    """A review saw "run directory: X" printed, then "X: already holds a run"."""
    assert main(["train", str(tiny_config), "--out", str(run_dir), "-q"]) == 2
    captured = capsys.readouterr()
    assert "run directory:" not in captured.out
    assert captured.err.strip() == (f"eqprop: error: {run_dir}: already holds a run; resume it with "
                                    f"`eqprop resume {run_dir}` or choose another --out")


def test_train_into_a_file_is_one_line_naming_it(tiny_config, tmp_path, capsys):
    """``--out`` naming a file, or a path under one: a raw ``[Errno 17] File exists``
    before (a review); nothing is created."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, said in ((afile, f"{afile}: exists"), (afile / "sub", f"{afile / 'sub'}: {afile} exists")):
        assert main(["train", str(tiny_config), "--out", str(out), "-q"]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"eqprop: error: {said} and is not a directory; choose another --out\n"
        assert "run directory:" not in captured.out
    assert afile.read_text() == "x"


def test_report_plots_name_the_seed_mean_and_the_free_phases_unsettled_fraction(run_dir, tmp_path,
                                                                                monkeypatch):
    """A review: a 2-seed run's lines did not say they are seed means, and relaxation.png
    had the nudged phases' unsettled fraction but not the free phase's."""
    from eqprop.train import report as rep

    assert rep._seeds_tag([{"per_seed": {"test_acc": [0.9, 0.8]}}]) == " (mean of 2 seeds)"
    assert rep._seeds_tag([{"test_acc": 0.9}]) == "" and rep._seeds_tag([]) == ""
    drawn = {}
    monkeypatch.setattr(rep, "_plot", lambda path, runs, panels: drawn.__setitem__(path.name, panels))
    rep.report([run_dir], tmp_path / "rep")
    titles = [title for title, _, _ in drawn["relaxation.png"]]
    assert "free phases above 0.001 (fraction)" in titles


_START = """
import os, signal, sys
MODE = sys.argv[1]

class Kick:  # a signal while the command's modules import (JAX's second of loading)
    def find_spec(self, name, path=None, target=None):
        if name != "eqprop.cli":
            return None
        if MODE == "quiet":
            print("a warning of the import", file=sys.stderr)
            return None
        os.kill(os.getpid(), signal.SIGTERM if MODE == "sigterm" else signal.SIGINT)
        for _ in range(1000000):  # the handler runs between bytecodes: it must not raise here
            pass
        return None

sys.meta_path.insert(0, Kick())
sys.argv = ["eqprop", "config", "--list"]
from eqprop.__main__ import run
run()
"""


@pytest.mark.parametrize("mode", ["sigint", "sigterm", "quiet"])
def test_a_signal_while_the_command_starts_is_one_line_and_exit_130(mode):
    """The ``eqprop`` entry point (eqprop/__main__.py) takes Ctrl-C and SIGTERM before
    JAX loads and only records them while it imports: an exception raised there printed
    the import's traceback (a review saw 24 lines), was swallowed by a callback (the run
    went on to its end), or made nanobind abort (exit 134, a review). After the import,
    one line and exit 130; without a signal, what the import writes to stderr shows."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _START, mode], capture_output=True, text=True, timeout=300)
    if mode == "quiet":
        assert out.returncode == 0, out.stderr
        assert out.stderr == "a warning of the import\n" and "digits-quick" in out.stdout
        return
    how = "terminated (SIGTERM)" if mode == "sigterm" else "interrupted"
    assert (out.returncode, out.stdout) == (130, "")
    assert out.stderr == f"eqprop: {how} while starting; nothing was run\n"
