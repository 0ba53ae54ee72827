"""Milliseconds per EP training step for the reference MLP (784-256-256-10, batch 50,
150 free + 20 nudged steps, sigmoid4, hEP beta 0.5), N = 2 (real) and N = 4 (complex),
with synchronous updates (the papers' iteration) and alternating updates of the two halves
of the layered network (``[dynamics] update = "alternating"``: same fixed points, half the
matmuls per step).

    python benchmarks/step.py [--json FILE] [--repeats R] [--batch B]

Times the whole jitted step (free phase, nudged phases, update) after compilation,
median over R runs, and reports the compile time of the first call.
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


def bench(points: int, *, batch: int, repeats: int, free_steps: int, nudged_steps: int,
          update: str = "synchronous") -> dict:
    key = jax.random.PRNGKey(0)
    model = eqprop.layered([784, 256, 256, 10], key=key)
    solvers = phase_solvers(free_steps=free_steps, nudged_steps=nudged_steps, update=update)
    est = make_estimator("hep", solvers, beta=0.5, points=points)
    opt = optax.sgd(0.01, momentum=0.9)
    step = make_train_step(est, opt, solver=solvers.free)
    state = init_optimizer(opt, model)
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 784))
    y = jnp.arange(batch) % 10
    t0 = time.perf_counter()
    model, state, m = step(model, state, x, y, key)
    jax.block_until_ready(model)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model, state, m = step(model, state, x, y, key)
        jax.block_until_ready(model)
        times.append(time.perf_counter() - t0)
    return {"ms_per_step": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times), "compile_s": compile_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--free-steps", type=int, default=150)
    p.add_argument("--nudged-steps", type=int, default=20)
    args = p.parse_args(argv)
    out = {}
    for update in ("synchronous", "alternating"):
        for n in (2, 4):
            r = bench(n, batch=args.batch, repeats=args.repeats, free_steps=args.free_steps,
                      nudged_steps=args.nudged_steps, update=update)
            key = f"N={n}" if update == "synchronous" else f"N={n} alternating"
            out[key] = r
            print(f"{key}: {r['ms_per_step']:.1f} ms per step (min {r['ms_min']:.1f}), compile {r['compile_s']:.1f} s")
    out["N=4/N=2"] = out["N=4"]["ms_per_step"] / out["N=2"]["ms_per_step"]
    out["alternating/synchronous N=2"] = out["N=2 alternating"]["ms_per_step"] / out["N=2"]["ms_per_step"]
    print(f"ratio N=4 / N=2: {out['N=4/N=2']:.2f}; alternating / synchronous (N=2): "
          f"{out['alternating/synchronous N=2']:.2f}  ({jax.devices()[0].device_kind}, {jax.__version__})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
