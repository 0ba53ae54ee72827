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
import subprocess
import sys
from pathlib import Path

from steptime import ratio_table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "fmnist-mlp-hep.toml"


def worker(config_path: str, devices: int, steps: int, overrides: list[str]) -> float:
    import jax

    from eqprop.config import load_config
    from eqprop.train import build_program
    from steptime import placed_batches, time_steps

    program = build_program(load_config(config_path, [*overrides, f"parallel.devices={devices}"]))
    placed = placed_batches(program, limit=steps)
    jax.block_until_ready(program.step(program.state, *placed[0]))  # compile
    return 1e3 * time_steps(program, program.state, placed) / len(placed)


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
    return ratio_table(f"# step time by devices ({Path(args.config).name}, {os.cpu_count()} cpus, "
                       f"{args.rounds} interleaved rounds of {args.steps} steps, medians)",
                       "devices", times, args.json)

if __name__ == "__main__":
    main()
