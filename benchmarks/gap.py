"""The test-accuracy gap between two runs trained on the same seeds, epoch by epoch.

    python benchmarks/gap.py RUN_A RUN_B [--json FILE]

Reads each run's ``metrics.jsonl`` (the records the trainer wrote, through
:class:`eqprop.train.rundir.RunDir`) and prints, for every epoch both runs reached, each
run's mean test accuracy over the seeds both trained, the per-seed gap B - A (seed i of one run against
seed i of the other: the same initialisation key and data order where the two configs share
``[train] seed`` and ``[data]``), its mean, smallest and largest, and how many seeds are
within 1 point either way; a warning where the two configs' ``[data]``, ``[train] seed``
or ``seeds`` differ. ``benchmarks/gpu.sh`` runs ``configs/fmnist-cnn-hep.toml`` against its BP
twin over several seeds and calls this; ``docs/results.md`` records the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from eqprop.train.rundir import RunDir


def per_seed_acc(run: Path) -> dict[int, np.ndarray]:
    """Epoch -> per-seed test accuracy in percent (shape ``(seeds,)``), from ``metrics.jsonl``."""
    out = {}
    for rec in RunDir(run).read_metrics():
        seeds = (rec.get("per_seed") or {}).get("test_acc")
        if seeds is None and rec.get("test_acc") is not None:
            seeds = [rec["test_acc"]]
        if seeds is not None and all(v is not None for v in seeds):
            out[rec["epoch"]] = 100.0 * np.asarray(seeds, dtype=float)
    return out


def mismatches(a: Path, b: Path) -> list[str]:
    """Why seed i of one run need not be seed i of the other: a different ``[data]``
    section, ``[train] seed`` or number of seeds in the two ``config.toml``."""
    import tomllib

    try:
        ca, cb = (tomllib.loads((r / "config.toml").read_text()) for r in (a, b))
    except (OSError, ValueError) as e:
        return [f"config.toml not read ({e}): the runs' seeds and data are not compared"]
    out = []
    if ca.get("data") != cb.get("data"):
        out.append("the runs' [data] sections differ: the gap compares different data")
    ta, tb = ca.get("train", {}), cb.get("train", {})
    if ta.get("seed") != tb.get("seed"):
        out.append(f"the runs' [train] seed differ ({ta.get('seed')} and {tb.get('seed')}): seed i of one "
                   "is not seed i of the other")
    na, nb = ta.get("seeds", 1), tb.get("seeds", 1)
    if na != nb:
        out.append(f"the runs' [train] seeds differ ({na} and {nb}): only the first {min(na, nb)} are compared")
    return out


def gap_table(a: Path, b: Path) -> list[dict]:
    """One row per epoch both runs evaluated: means, per-seed gaps (B - A, points)."""
    acc_a, acc_b = per_seed_acc(a), per_seed_acc(b)
    rows = []
    for epoch in sorted(set(acc_a) & set(acc_b)):
        k = min(len(acc_a[epoch]), len(acc_b[epoch]))  # the seeds both runs trained
        xa, xb = acc_a[epoch][:k], acc_b[epoch][:k]
        gap = xb - xa
        rows.append({"epoch": epoch, "seeds": k, "a_mean": float(xa.mean()), "a_std": float(xa.std()),
                     "b_mean": float(xb.mean()), "b_std": float(xb.std()),
                     "gap_mean": float(gap.mean()), "gap_min": float(gap.min()),
                     "gap_max": float(gap.max()), "within_1": int((abs(gap) <= 1.0).sum()),
                     "gap_per_seed": [float(g) for g in gap]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a", type=Path, help="the first run directory (e.g. the hEP run)")
    p.add_argument("run_b", type=Path, help="the second run directory (e.g. its BP twin)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not (run / "metrics.jsonl").is_file():
            print(f"{run}: no metrics.jsonl (not a run directory, or no epoch finished)", file=sys.stderr)
            return 2
    for note in mismatches(args.run_a, args.run_b):
        print(f"warning: {note}", file=sys.stderr)
    rows = gap_table(args.run_a, args.run_b)
    if not rows:
        print("no epoch evaluated in both runs", file=sys.stderr)
        return 1
    a, b = args.run_a.name, args.run_b.name
    print(f"| epoch | seeds | {a} test % | {b} test % | gap {b} - {a}: mean | min | max | seeds within 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {r['seeds']} | {r['a_mean']:.2f} ± {r['a_std']:.2f} | "
              f"{r['b_mean']:.2f} ± {r['b_std']:.2f} | {r['gap_mean']:.2f} | {r['gap_min']:.2f} | "
              f"{r['gap_max']:.2f} | {r['within_1']}/{r['seeds']} |")
    last = rows[-1]
    print(f"\nepoch {last['epoch']}, per-seed gap: " + ", ".join(f"{g:.2f}" for g in last["gap_per_seed"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
