"""Per-epoch wall time and accuracy of relaxation modes, trained side by side.

    python benchmarks/epochs.py [CONFIG] [--epochs E] [--modes fixed,fast,...]
                                [--max-batches M] [--out DIR] [--json FILE]

Trains CONFIG (default: configs/fmnist-mlp-hep.toml) once per mode, in this process,
with the same seed and the same number of epochs, and prints seconds per epoch (median
over epochs 2.., so compilation is left out; evaluation on the test set included),
free-phase steps, the fraction of unconverged examples and the final test accuracy,
each mode as a ratio to the first. Modes (``--set``-style overrides of ``[dynamics]``):

- ``fixed``: the papers' iteration: synchronous updates, a fixed 150 / 20 steps;
- ``alternating``: alternating updates, fixed steps (same fixed points, half the work);
- ``tolerance``: alternating, stop once every example's residual is below 1e-3;
- ``anderson``: Anderson acceleration (synchronous map, memory 5), tolerance 1e-3;
- ``fast``: alternating + tolerance 1e-3 with ``tol_fraction`` 0.1 (up to 10% of a batch
  may stop unconverged): the recommended fast mode (docs/guide.md, "Choosing the dynamics");
- ``fast+anderson``: the ``[dynamics]`` of ``configs/fmnist-mlp-hep-fast.toml``: ``fast``
  with Anderson acceleration of the alternating sweep (memory 2, after 40 plain steps),
  the plain iteration testing the tolerance every 5 sweeps (``check_every``);
- ``fast+warm``: ``fast`` plus warm starts (``[train] warm_start``; faster, but see the
  README's caution).

Run directories go to ``DIR/<mode>`` (default ``runs/bench-epochs``); they are overwritten.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tomllib
from pathlib import Path

import numpy as np

from eqprop.config import load_config, with_updates
from eqprop.train import RunDir, train

ROOT = Path(__file__).resolve().parent.parent
FAST_CONFIG = ROOT / "configs" / "fmnist-mlp-hep-fast.toml"
MODES: dict[str, dict] = {
    "fixed": {"update": "synchronous", "tol": 0.0},
    "alternating": {"update": "alternating", "tol": 0.0},
    "tolerance": {"update": "alternating", "tol": 1e-3},
    "anderson": {"update": "synchronous", "solver": "anderson", "tol": 1e-3},
    "fast": {"update": "alternating", "tol": 1e-3, "tol_fraction": 0.1},
    # the shipped fast config's [dynamics] (its step budgets are the reference's 150 / 20)
    "fast+anderson": {k: v for k, v in tomllib.loads(FAST_CONFIG.read_text())["dynamics"].items()
                      if k not in ("free_steps", "nudged_steps")},
    "fast+warm": {"update": "alternating", "tol": 1e-3, "tol_fraction": 0.1},
}
#: modes that also start each example from its last fixed point ([train] warm_start)
WARM = {"fast+warm"}


def run_mode(config_path: Path, mode: str, epochs: int, max_batches: int | None, out: Path) -> dict:
    config = load_config(config_path)
    train_up = {"epochs": epochs} | ({"max_batches": max_batches} if max_batches else {})
    train_up |= {"warm_start": True} if mode in WARM else {}
    config = with_updates(config, dynamics=MODES[mode], train=train_up)
    shutil.rmtree(out, ignore_errors=True)
    summary = train(config, out, progress=False)
    records = RunDir(out).read_metrics()
    secs = [r["epoch_seconds"] for r in records]
    steady = secs[1:] or secs
    return {
        "mode": mode, "dynamics": MODES[mode], "epochs": epochs,
        "seconds_per_epoch": float(np.median(steady)), "epoch_seconds": secs,
        "ms_per_batch": summary["ms_per_batch"],
        "free_steps": float(np.mean([r["free_steps_mean"] for r in records[1:] or records])),
        "nonconverged": float(np.mean([r["nonconverged_fraction"] for r in records[1:] or records])),
        "final_test_acc": summary["final_test_acc"], "best_test_acc": summary["best_test_acc"],
        "test_acc": [r["test_acc"] for r in records],
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(ROOT / "configs" / "fmnist-mlp-hep.toml"))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--modes", default="fixed,fast", help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--max-batches", type=int, default=None, help="cap on batches per epoch (smoke runs)")
    p.add_argument("--out", default="runs/bench-epochs")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    rows = []
    for mode in modes:
        print(f"[{mode}] {MODES[mode]}", flush=True)
        rows.append(run_mode(Path(args.config), mode, args.epochs, args.max_batches,
                             Path(args.out) / mode))
    base = rows[0]
    print(f"\n{Path(args.config).name}, {args.epochs} epochs, {platform.machine()} "
          f"({platform.processor() or 'cpu'})\n")
    print("| mode | s / epoch | speed-up | free steps | unconverged | final test acc | best |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds_per_epoch']:.1f} | "
              f"{base['seconds_per_epoch'] / r['seconds_per_epoch']:.2f}x | {r['free_steps']:.0f} | "
              f"{100 * r['nonconverged']:.1f}% | {100 * r['final_test_acc']:.2f}% | "
              f"{100 * r['best_test_acc']:.2f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
