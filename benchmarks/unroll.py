"""Training-step time against the relaxation loop's unroll factor (``[dynamics] unroll``).

    python benchmarks/unroll.py [CONFIG] [--unroll 1,2,4,8,16] [--rounds 5] [--steps 20]
                                [--set K=V ...] [--json FILE]

Builds CONFIG's program (default: configs/fmnist-mlp-hep.toml: fixed 150 / 20 steps, so
the fixed-budget loop runs; with ``tol > 0`` the unrolled chunk is ``check_every``) once
per factor, places ``--steps`` training batches, and times the steps back to back (one
wait at the end), the factors alternating for ``--rounds`` rounds. Prints the median ms
per step and its ratio to the first factor's. On a GPU each loop iteration costs a host
round trip that unrolling divides; on a CPU expect little difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax

from eqprop.config import load_config
from eqprop.train import build_program
from eqprop.train.placement import place_batch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "configs" / "fmnist-mlp-hep.toml"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(DEFAULT))
    p.add_argument("--unroll", default="1,2,4,8,16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json")
    args = p.parse_args(argv)
    factors = [int(f) for f in args.unroll.split(",")]
    runs = {}
    for f in factors:
        program = build_program(load_config(args.config, [*args.set, f"dynamics.unroll={f}"]))
        placed = []
        for xb, yb, _ in program.epoch_batches(1):
            placed.append(place_batch(xb, yb, layout=program.layout)[:2])
            if len(placed) == args.steps:
                break
        jax.block_until_ready(program.step(program.state, *placed[0]))  # compile
        runs[f] = (program, placed)
    times = {f: [] for f in factors}
    for _ in range(args.rounds):
        for f, (program, placed) in runs.items():
            state = program.state
            t = time.perf_counter()
            for x, y in placed:
                state, m = program.step(state, x, y)
            jax.block_until_ready((state, m))
            times[f].append(1e3 * (time.perf_counter() - t) / len(placed))
    med = {f: statistics.median(t) for f, t in times.items()}
    print(f"# step time by unroll factor ({Path(args.config).name}, {jax.devices()[0].device_kind}, "
          f"{args.rounds} interleaved rounds of {args.steps} steps, medians)\n")
    print("| unroll | ms/step | ratio to first |\n|---|---|---|")
    for f in factors:
        print(f"| {f} | {med[f]:.2f} | {med[f] / med[factors[0]]:.2f} |")
    result = {"ms_per_step": med, "all": times}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
