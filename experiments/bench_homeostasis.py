"""Cost of Jacobian homeostasis per training step (784-256-256-10, batch 50, 150/20 steps,
hEP N = 2, untied 90 degrees, float32): the same step with and without homeostasis
(coef 1, probes 5), timed interleaved so that other load on the machine hits both alike.

    python experiments/bench_homeostasis.py [--repeats R] [--rounds K]
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
from eqprop.homeostasis import Homeostasis
from eqprop.update import init_optimizer, make_train_step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5, help="steps per round and variant")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--probes", type=int, default=5)
    args = p.parse_args(argv)
    model = eqprop.layered([784, 256, 256, 10], key=jax.random.PRNGKey(0), feedback="untied",
                           asymmetry_angle=90.0)
    solvers = phase_solvers(free_steps=150, nudged_steps=20)
    est = make_estimator("hep", solvers, beta=0.5, points=2)
    opt = optax.adamw(1e-4)
    steps = {"plain": make_train_step(est, opt, solver=solvers.free),
             "homeostasis": make_train_step(est, opt, Homeostasis(1.0, args.probes, 1), solver=solvers.free)}
    state = init_optimizer(opt, model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (50, 784))
    y = jnp.arange(50) % 10
    key = jax.random.PRNGKey(2)
    for s in steps.values():  # compile
        jax.block_until_ready(s(model, state, x, y, key))
    times = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, s in steps.items():
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(s(model, state, x, y, key))
                times[name].append(time.perf_counter() - t0)
    out = {k: {"ms_median": 1e3 * statistics.median(v), "ms_min": 1e3 * min(v)} for k, v in times.items()}
    out["overhead_median"] = out["homeostasis"]["ms_median"] / out["plain"]["ms_median"] - 1
    out["overhead_min"] = out["homeostasis"]["ms_min"] / out["plain"]["ms_min"] - 1
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
