"""The trainer's host overhead: an epoch's seconds beyond its jitted steps and evaluation.

    python benchmarks/overhead.py [CONFIG] [--epochs E] [--max-batches M] [--rounds R]
                                  [--set K=V ...] [--json FILE]

Trains CONFIG (default: configs/fmnist-mlp-hep-fast.toml) for E epochs (default 2) twice
per round, R rounds (default 3), with the trainer reading the step metrics every
``SYNC_EVERY`` steps (the default, :data:`eqprop.train.loop.SYNC_EVERY`) and every step
(the loop before issue 14 item 6), and measures in the same process the *floor*: the
same epoch's steps, from the same state, run back to back on batches placed on the
device beforehand, waited for once at the end. For the last epoch of each run it prints

    overhead = epoch_seconds - eval_seconds - floor seconds

and its share of the epoch (target: under 10%), from the medians over the rounds. Figures vary with the machine's load;
compare the two loops and the share, not seconds, across runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import jax

from eqprop.config import load_config, with_updates
from eqprop.train import RunDir, build_program, loop, train
from steptime import placed_batches, time_steps

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "fmnist-mlp-hep-fast.toml"


def floor_timer(config, epoch: int):
    """A function timing epoch ``epoch``'s steps alone (seconds), from the state the run
    has there (the epochs before it replayed untimed, so the relaxation converges as in
    the run): batches placed first, one wait at the end."""
    program = build_program(config)
    start = program.state
    for e in range(1, epoch):
        for x, y in placed_batches(program, e):
            start, _ = program.step(start, x, y)
    placed = placed_batches(program, epoch)
    jax.block_until_ready(program.step(start, *placed[0]))  # compiled

    def timed() -> float:
        return time_steps(program, start, placed)

    return timed


def run(config, sync_every: int, out: Path) -> dict:
    old = loop.SYNC_EVERY
    loop.SYNC_EVERY = sync_every
    try:
        shutil.rmtree(out, ignore_errors=True)
        train(config, out, progress=False)
    finally:
        loop.SYNC_EVERY = old
    return RunDir(out).read_metrics()[-1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(DEFAULT))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    config = load_config(args.config, args.set)
    updates = {"epochs": args.epochs} | ({"max_batches": args.max_batches} if args.max_batches else {})
    config = with_updates(config, train=updates)
    tmp = Path(tempfile.mkdtemp(prefix="eqprop-overhead-"))
    loops = {"sync every step": 1, f"sync every {loop.SYNC_EVERY} steps": loop.SYNC_EVERY}
    floors, recs = [], {label: [] for label in loops}
    try:
        timed = floor_timer(config, args.epochs)
        for _ in range(args.rounds):  # interleaved: the machine's load affects all alike
            floors.append(timed())
            for label, every in loops.items():
                recs[label].append(run(config, every, tmp / str(every)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    floor = statistics.median(floors)
    rows = {}
    for label, rs in recs.items():
        epoch = statistics.median(r["epoch_seconds"] for r in rs)
        ev = statistics.median(r.get("eval_seconds", 0.0) for r in rs)
        over = epoch - ev - floor
        rows[label] = {"epoch_seconds": epoch, "eval_seconds": ev, "floor_seconds": floor,
                       "overhead_seconds": over, "overhead_share": over / epoch,
                       "batches": rs[0]["batches"]}
    print(f"# trainer overhead ({Path(args.config).name}, epoch {args.epochs}, "
          f"{jax.devices()[0].device_kind}, {len(jax.devices())} device(s), medians of "
          f"{args.rounds} interleaved rounds)\n")
    print("| loop | epoch s | eval s | steps alone s | overhead s | overhead share |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['epoch_seconds']:.2f} | {r['eval_seconds']:.2f} | {r['floor_seconds']:.2f} | "
              f"{r['overhead_seconds']:.2f} | {100 * r['overhead_share']:.1f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
