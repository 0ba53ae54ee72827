"""The experiment driver's settings and its homeostasis headline (no training here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "experiments_run", Path(__file__).resolve().parent.parent / "experiments" / "run.py")
run = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(run)


def test_settings_cover_the_papers_grids():
    names = [s[0] for s in run.settings("finite-nudge")]
    assert len(names) == 8 and "N1-beta0.5" in names and "N6-beta0.05" in names
    asym = run.settings("asymmetry")
    assert [s[3]["x"] for s in asym[:7]] == [0, 15, 30, 45, 60, 75, 90]
    assert {s[2]["estimator"]["name"] for s in asym} == {"exact-nudge", "implicit"}
    homeo = {s[0]: s for s in run.settings("homeostasis")}
    assert set(homeo) == {"mlp-symmetric", "mlp-tied", "mlp-homeo", "mlp-plain", "loop-homeo",
                          "loop-plain"}
    assert homeo["mlp-tied"][2]["model"]["feedback"] == "tied"
    assert homeo["mlp-symmetric"][2]["model"]["asymmetry_angle"] == 0.0


def test_every_setting_builds_a_valid_config():
    import argparse

    for experiment in run.EXPERIMENTS:
        for data in ("digits", None):  # --data digits, and each config's own data set
            args = argparse.Namespace(epochs=1, seeds=1, max_batches=1, data=data)
            for name, base, updates, _ in run.settings(experiment):
                cfg = run.make_config(base, updates, args)
                assert cfg.train.epochs == 1 and cfg.data.name == (data or cfg.data.name), name
    args = argparse.Namespace(epochs=None, seeds=None, max_batches=None, data=None)
    chosen = {s[0]: run.make_config(s[1], s[2], args) for s in run.settings("directed")}
    assert [chosen[f"{t}-rate-hep"].data.name for t in ("xor", "and", "or", "not", "identity")] == \
        ["xor", "and", "or", "not", "identity"]
    assert chosen["xor-deep"].train.seeds == 10 and chosen["xor-deep"].estimator.name == "deep-rule"
    assert chosen["digits-rate-hep-pruned70"].pruning.sparsity == 0.7
    assert chosen["xor-rate-hep-contraction"].stability.enforce == "contraction"


def test_gap_closed():
    rows = [{"name": "mlp-symmetric", "acc": [0.88, 0.86]}, {"name": "mlp-plain", "acc": [0.80]},
            {"name": "mlp-homeo", "acc": [0.845]}]
    (line,) = run.gap_closed(rows)
    assert "7.00 points" in line and "+4.50 points" in line and "64% of the gap" in line
    assert run.gap_closed(rows[:2]) == []
    rows.append({"name": "mlp-tied", "acc": [0.79]})
    tied, _ = run.gap_closed(rows)
    assert tied.startswith("Accuracy gap, mlp-tied") and "no gap to close" in tied
    with pytest.raises(SystemExit):
        run.settings("nope")


def test_shipped_hep_compares_the_shipped_configs_on_the_same_seeds():
    import argparse

    chosen = {s[0]: s for s in run.settings("shipped-hep")}
    assert set(chosen) == {"hep-N2-beta0.05", "hep-N4-beta0.5", "implicit"}
    args = argparse.Namespace(epochs=None, seeds=None, max_batches=None, data=None)
    cfgs = {n: run.make_config(base, up, args) for n, (_, base, up, _) in chosen.items()}
    assert {c.train.seeds for c in cfgs.values()} == {3}
    assert {c.train.seed for c in cfgs.values()} == {0} and {c.train.epochs for c in cfgs.values()} == {50}
    assert (cfgs["hep-N2-beta0.05"].estimator.points, cfgs["hep-N2-beta0.05"].estimator.beta) == (2, 0.05)
    assert (cfgs["hep-N4-beta0.5"].estimator.points, cfgs["hep-N4-beta0.5"].estimator.beta) == (4, 0.5)
    assert cfgs["implicit"].estimator.name == "implicit"


def test_closest_to_implicit_ships_the_cheapest_within_the_margin():
    rows = [{"name": "implicit", "acc": [0.880, 0.882, 0.884]},
            {"name": "hep-N2-beta0.05", "acc": [0.877, 0.879, 0.880]},  # -0.33: outside
            {"name": "hep-N4-beta0.5", "acc": [0.879, 0.880, 0.881]}]   # -0.20: inside
    *per, decision = run.closest_to_implicit(rows)
    assert "-0.33 points" in per[0] and "-0.20 points" in per[1]
    assert decision.startswith("Ship: hep-N4-beta0.5")
    rows[1]["acc"] = [0.880, 0.881, 0.882]  # -0.10: both inside, N = 2 is cheaper
    assert run.closest_to_implicit(rows)[-1].startswith("Ship: hep-N2-beta0.05")
    rows[1]["acc"] = rows[2]["acc"] = [0.85]
    assert run.closest_to_implicit(rows)[-1].startswith("No hEP setting")
    assert run.closest_to_implicit(rows[1:]) == ["implicit has not run: no decision."]


@pytest.mark.parametrize("base", ["finite-nudge", "asymmetry", "homeostasis-mlp"])
def test_mlp_experiments_use_the_authors_architecture(base):
    """arXiv 2309.02214's mlp_2-256: dynamic populations 256, 256 and a 10-unit output
    population (the nudged one, with its own feedback into h2), then the softmax readout.
    Reading the classes straight from h2 leaves h2's error exact whatever the feedback, which
    hides most of the asymmetry bias (docs/asymmetry.md)."""
    import jax

    from eqprop.build import build_model
    from eqprop.config import load_config

    cfg = load_config(run.CONFIGS / f"{base}.toml")
    model = build_model(cfg, input_size=784, n_classes=10, key=jax.random.PRNGKey(0))
    assert model.populations == {"input": 784, "h1": 256, "h2": 256, "h3": 10}
    assert model.output == "h3"
    names = {e.name for e in model.projections}
    assert {"input->h1", "h1->h2", "h2->h3"} <= names
    if cfg.model.feedback == "untied":
        assert {"h2->h1", "h3->h2"} <= names
    assert model.readout.weight.shape == (10, 10)


def test_shards_are_disjoint_and_cover_every_setting():
    import argparse

    chosen = run.settings("directed")
    for n in (1, 2, 3, 5, len(chosen) + 2):
        parts = [run.shard(chosen, i, n) for i in range(1, n + 1)]
        names = [c[0] for part in parts for c in part]
        assert sorted(names) == sorted(c[0] for c in chosen) and len(set(names)) == len(chosen)
    assert run.parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "a/b", "3"):
        with pytest.raises(argparse.ArgumentTypeError, match="I/N"):
            run.parse_shard(bad)


def test_assemble_without_runs_trains_nothing(tmp_path, capsys):
    assert run.main(["directed", "--assemble", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no completed run of directed" in out and "training" not in out
    assert not any(tmp_path.rglob("metrics.jsonl"))


def test_a_run_of_another_configuration_is_refused_not_reported(tmp_path, capsys):
    """A setting changed since its run (e.g. a shipped config's beta) must not pass off
    the old run's results as the new setting's: the driver stops with one line."""
    import argparse

    from eqprop.train import RunDir

    name, base, updates, _ = next(s for s in run.settings("directed") if s[0] == "xor-rate-hep")
    args = argparse.Namespace(epochs=None, seeds=None, max_batches=None, data=None)
    config = run.make_config(base, updates, args)
    old = RunDir(tmp_path / "directed" / name)
    old.path.mkdir(parents=True)
    old.write_config(run.with_updates(config, estimator={"beta": config.estimator.beta * 2}))
    assert run.differs(old, config) and not run.differs(old, run.with_updates(
        config, estimator={"beta": config.estimator.beta * 2}))
    with pytest.raises(SystemExit):
        run.main(["directed", "--only", name, "--out", str(tmp_path)])
    assert "holds a run of another configuration" in capsys.readouterr().err
