"""Milliseconds per training step of the reference MLP (784-256-256-10, batch 50, sigmoid4,
hEP N = 2, beta 0.5, 150 free + 20 nudged synchronous steps, tol 0) with the relaxation's
matmuls in float32, bfloat16 and float16 (``[model] compute_dtype``; float32 states and
accumulation), and the backpropagation baseline (``[estimator] name = "bp"``) of the same
network in float32: EP's cost as a multiple of BP's.

    python benchmarks/precision.py [--repeats R] [--batch B] [--json FILE]

Each configuration is compiled first; the timed repeats are interleaved across the
configurations (one step of each in turn), and the figures are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import eqprop
from eqprop.build import phase_solvers
from eqprop.estimate import make_estimator
from eqprop.update import init_optimizer, make_train_step

CASES = (("hep/float32", "hep", "float32"), ("hep/bfloat16", "hep", "bfloat16"),
         ("hep/float16", "hep", "float16"), ("bp/float32", "bp", "float32"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    solvers = phase_solvers(free_steps=150, nudged_steps=20, tol=0.0)
    opt = optax.sgd(0.01, momentum=0.9)
    x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, 784))
    y = jnp.arange(args.batch) % 10
    runs = {}
    for name, est, compute in CASES:
        model = eqprop.layered([784, 256, 256, 10], key=jax.random.PRNGKey(0), compute_dtype=compute)
        estimator = make_estimator(est, solvers, **({"beta": 0.5, "points": 2} if est == "hep" else {}))
        step = make_train_step(estimator, opt, solver=solvers.free)
        state = (model, init_optimizer(opt, model))
        t0 = time.perf_counter()
        out = step(*state, x, y, jax.random.PRNGKey(0))
        jax.block_until_ready(out[0])
        runs[name] = {"step": step, "state": state, "compile_s": time.perf_counter() - t0, "times": []}
    for _ in range(args.repeats):
        for r in runs.values():
            t0 = time.perf_counter()
            out = r["step"](*r["state"], x, y, jax.random.PRNGKey(0))
            jax.block_until_ready(out[0])
            r["times"].append(time.perf_counter() - t0)
    result = {name: {"ms_per_step": 1e3 * statistics.median(r["times"]), "ms_min": 1e3 * min(r["times"]),
                     "compile_s": r["compile_s"]} for name, r in runs.items()}
    f32 = result["hep/float32"]["ms_per_step"]
    result["ratios"] = {"bfloat16_over_float32": result["hep/bfloat16"]["ms_per_step"] / f32,
                        "float16_over_float32": result["hep/float16"]["ms_per_step"] / f32,
                        "ep_over_bp": f32 / result["bp/float32"]["ms_per_step"]}
    result["device"] = str(jax.devices()[0].device_kind)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
