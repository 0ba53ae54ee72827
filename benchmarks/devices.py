"""Training-step time against the number of devices the batch is split over.

    python benchmarks/devices.py [CONFIG] [--devices 1,2] [--rounds 3] [--steps 40]
                                 [--set K=V ...] [--json FILE]

For each count D of ``--devices``, a fresh process (``[parallel] devices = D``; on a CPU,
D host devices, which eqprop creates before JAX initialises) builds CONFIG's program
(default: configs/fmnist-mlp-hep.toml, batch 50), places ``--steps`` training batches on
the devices, compiles, and times the steps back to back (one wait at the end). The
processes of the counts alternate for ``--rounds`` rounds (a noisy machine affects them
alike); the table gives the median ms per step and its ratio to the first count's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "fmnist-mlp-hep.toml"


def worker(config_path: str, devices: int, steps: int, overrides: list[str]) -> float:
    import time

    import jax

    from eqprop.config import load_config
    from eqprop.train import build_program
    from eqprop.train.placement import place_batch

    config = load_config(config_path, [*overrides, f"parallel.devices={devices}"])
    program = build_program(config)
    placed = []
    for xb, yb, _ in program.epoch_batches(1):
        placed.append(place_batch(xb, yb, layout=program.layout)[:2])
        if len(placed) == steps:
            break
    state, _ = program.step(program.state, *placed[0])  # compile
    jax.block_until_ready(state)
    t = time.perf_counter()
    for x, y in placed:
        state, m = program.step(state, x, y)
    jax.block_until_ready((state, m))
    return 1e3 * (time.perf_counter() - t) / len(placed)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(DEFAULT))
    p.add_argument("--devices", default="1,2", help="comma-separated device counts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.config, args.worker, args.steps, args.set)))
        return {}
    counts = [int(c) for c in args.devices.split(",")]
    times: dict[int, list[float]] = {c: [] for c in counts}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for _ in range(args.rounds):
        for c in counts:
            cmd = [sys.executable, __file__, args.config, "--worker", str(c), "--steps", str(args.steps),
                   *[a for s in args.set for a in ("--set", s)]]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            times[c].append(json.loads(out.strip().splitlines()[-1]))
    med = {c: statistics.median(t) for c, t in times.items()}
    print(f"# step time by devices ({Path(args.config).name}, {os.cpu_count()} cpus, "
          f"{args.rounds} interleaved rounds of {args.steps} steps, medians)\n")
    print("| devices | ms/step | ratio to first |\n|---|---|---|")
    for c in counts:
        print(f"| {c} | {med[c]:.2f} | {med[c] / med[counts[0]]:.2f} |")
    result = {"ms_per_step": med, "all": times}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
