"""``benchmarks/run.py --model cnn`` (issue 13 item 6): the FLOPs of the CNN's floor are
counted as the docstrings say.

A whole ``run.main(["--model", "cnn", "--quick", ...])`` on a tiny CNN (channels (2, 4),
batch 4, 8/3 steps) takes about 60 s on the 2-core CPU (ten compilations: three steps,
two probes, the memory sweep, the throughput loops), too long for the suite; it is run by
hand (benchmarks/README.md, "CNN")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # run.py imports epochs.py beside it
    import run as module

    yield module
    sys.modules.pop("run", None)
    sys.modules.pop("epochs", None)


def test_cnn_flop_count(run):
    """One relaxation step applies every internal map and its transpose; the drive runs
    three times (free phase, and forward and weight gradient in the update)."""
    import jax

    import eqprop.network.conv as conv

    model = conv.convnet((8, 8, 3), (2, 4), n_classes=10, key=jax.random.PRNGKey(0), output_size=5)
    ops = run.cnn_ops(model, batch=3)
    assert list(ops) == ["input->c1", "c1->c2", "c2->out"]
    assert ops["input->c1"]["flop"] == 2 * 3 * 8 * 8 * 9 * 3 * 2  # at the source's 8x8
    assert ops["c1->c2"]["flop"] == 2 * 3 * 4 * 4 * 9 * 2 * 4  # c1 is 4x4 after pooling
    assert ops["c2->out"]["flop"] == 2 * 3 * (2 * 2 * 4) * 5
    counts = run.cnn_op_counts(ops, relax_steps_real=10)
    assert counts == {"input->c1": 3, "c1->c2": 2 * 12, "c2->out": 2 * 12}


def test_pool_cost_times_the_pooled_internal_projections(run):
    """The pooling's cost is taken where a relaxation step pools: the convolution output of
    each internal pooled projection (c1 -> c2 at c1's resolution with c2's channels), not
    the drive's (hoisted) nor the dense output's."""
    import jax

    import eqprop.network.conv as conv

    model = conv.convnet((8, 8, 3), (2, 4), n_classes=10, key=jax.random.PRNGKey(0), output_size=5)
    r = run.pool_cost(model, batch=3, repeats=1)
    assert r["shapes"] == [[3, 4, 4, 4]] and r["ms_per_relax_step"] >= 0.0


def test_recomputed_share_follows_the_sweep_order(run):
    """The benchmark's pooling estimate for the alternating sweep counts a second forward
    pooling only where the sweep recomputes the convolution: none for the tied two-conv
    net (c2 goes first), every one when untied or when the order is reversed."""
    import jax

    import eqprop.network.conv as conv

    tied = conv.convnet((8, 8, 3), (2, 4), n_classes=10, key=jax.random.PRNGKey(0), output_size=5)
    assert run.recomputed_share(tied) == 0.0
    untied = conv.convnet((8, 8, 3), (2, 4), n_classes=10, key=jax.random.PRNGKey(0), output_size=5,
                          feedback="untied")
    assert run.recomputed_share(untied) == 1.0
    deep = conv.convnet((16, 16, 3), (2, 4, 4), n_classes=10, key=jax.random.PRNGKey(0), output_size=5)
    # c1 -> c2 and c2 -> c3 pool; c2's group (odd) goes first only if it wins: one of two shares
    assert run.recomputed_share(deep) == 0.5


def test_gap_pairs_seed_i_with_seed_i_at_each_epoch_both_evaluated(monkeypatch, tmp_path, capsys):
    """``benchmarks/gap.py`` (hEP against its BP twin over seeds): per-seed differences,
    only epochs both runs evaluated, and a one-line error for a directory with no records."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gap

    from eqprop.train.rundir import RunDir

    def write(name, rows):  # epoch -> per-seed test accuracy, or None (not evaluated)
        (tmp_path / name).mkdir()
        run = RunDir(tmp_path / name)
        for epoch, acc in rows.items():
            rec = {"epoch": epoch, "train_loss": 1.0, "test_acc": None if acc is None else sum(acc) / len(acc)}
            if acc is not None:
                rec["per_seed"] = {"test_acc": acc}
            run.append_metrics(rec)
        return run.path

    a = write("hep", {1: [0.80, 0.90], 2: None, 3: [0.85, 0.91]})
    b = write("bp", {1: [0.81, 0.92], 2: [0.83, 0.93], 3: [0.87, 0.90]})
    rows = gap.gap_table(a, b)
    assert [r["epoch"] for r in rows] == [1, 3]
    assert rows[0]["gap_per_seed"] == pytest.approx([1.0, 2.0])
    assert rows[1]["gap_per_seed"] == pytest.approx([2.0, -1.0])
    assert rows[1]["within_1"] == 1 and rows[1]["gap_max"] == pytest.approx(2.0)
    c = write("worse", {1: [0.76, 0.93, 0.5], 3: [0.80, 0.90, 0.5]})  # a third seed; 5 points behind
    rows = gap.gap_table(a, c)
    assert rows[1]["seeds"] == 2 and rows[1]["a_mean"] == pytest.approx(88.0)  # the seeds both trained
    assert rows[1]["gap_per_seed"] == pytest.approx([-5.0, -1.0]) and rows[1]["within_1"] == 1  # |gap|
    for run, seeds in ((a, 2), (c, 3)):
        (run / "config.toml").write_text(f"[data]\nname = 'digits'\n[train]\nseed = 0\nseeds = {seeds}\n")
    assert gap.mismatches(a, c) == ["the runs' [train] seeds differ (2 and 3): only the first 2 are compared"]
    assert gap.main([str(a), str(b)]) == 0
    assert "| 3 | 2 | 88.00 ± 3.00 | 88.50 ± 1.50 | 0.50 |" in capsys.readouterr().out
    assert gap.main([str(a), str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    sys.modules.pop("gap", None)
