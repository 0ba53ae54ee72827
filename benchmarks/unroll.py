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
from pathlib import Path

import jax

from eqprop.config import load_config
from eqprop.train import build_program
from steptime import placed_batches, ratio_table, time_steps

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
        placed = placed_batches(program, limit=args.steps)
        jax.block_until_ready(program.step(program.state, *placed[0]))  # compile
        runs[f] = (program, placed)
    times = {f: [] for f in factors}
    for _ in range(args.rounds):
        for f, (program, placed) in runs.items():
            times[f].append(1e3 * time_steps(program, program.state, placed) / len(placed))
    return ratio_table(f"# step time by unroll factor ({Path(args.config).name}, "
                       f"{jax.devices()[0].device_kind}, {args.rounds} interleaved rounds of "
                       f"{args.steps} steps, medians)", "unroll", times, args.json)

if __name__ == "__main__":
    main()
