"""Elementwise cost of eqprop.complexmath's functions against jnp's, on this machine.

Each function is applied 50 times in a ``fori_loop`` to a (100, 4768) array (the size of
a batch of conv-net states), the variants interleaved, medians; printed as ns per
element and jnp's time over eqprop's (the speed-up). Real exp is the yardstick.

    python benchmarks/complexmath.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from eqprop import complexmath

SHAPE, ITERS = (100, 4768), 50


def _loop(f):
    return jax.jit(lambda a: lax.fori_loop(0, ITERS, lambda i, z: f(z) * 0.5 + z * 0.5, a))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    k = jax.random.PRNGKey(0)
    z = (jax.random.normal(k, SHAPE) * (1 + 0.3j)).astype(jnp.complex64)
    y = jnp.real(z)
    pairs = {  # name: (jnp's, eqprop's, operand)
        "exp of complex64": (jnp.exp, complexmath.cexp, z),
        "tanh of complex64": (jnp.tanh, complexmath.tanh, z),
        "sin + cos of float32": (lambda v: jnp.sin(v) + jnp.cos(v), lambda v: sum(complexmath.sincos(v)), y),
    }
    runs = {"exp of float32 (yardstick)": (_loop(jnp.exp), y)}
    for name, (ref, ours, arg) in pairs.items():
        runs[f"{name}, jnp"] = (_loop(ref), arg)
        runs[f"{name}, eqprop"] = (_loop(ours), arg)
    for f, a in runs.values():
        jax.block_until_ready(f(a))
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved
        for name, (f, a) in runs.items():
            t = time.perf_counter()
            jax.block_until_ready(f(a))
            times[name].append(time.perf_counter() - t)
    n = ITERS * SHAPE[0] * SHAPE[1]
    ns = {name: 1e9 * statistics.median(t) / n for name, t in times.items()}
    print(f"# eqprop.complexmath against jnp ({jax.devices()[0].device_kind}, jax {jax.__version__}, "
          f"{args.repeats} interleaved repeats, medians)\n")
    print("| function | ns per element | speed-up over jnp |\n|---|---|---|")
    for name, v in ns.items():
        base = name.rsplit(", ", 1)[0]
        ratio = f"{ns[base + ', jnp'] / v:.1f}x" if name.endswith(", eqprop") else ""
        print(f"| {name} | {v:.2f} | {ratio} |")
    return ns


if __name__ == "__main__":
    main()
