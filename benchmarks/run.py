"""Benchmark suite: speed of an EP training step against its floating-point floor,
solver modes, EP against implicit differentiation and BPTT, and peak memory.

    python benchmarks/run.py [--json FILE] [--quick] [--repeats R] [--batch B] [--epochs E [--epoch-modes M,...]]

Reference: MLP 784-256-256-10 (float32), batch 50 (``--batch``), sigmoid4, hEP beta 0.5, N = 2 and 4,
real Fashion-MNIST batch when /usr/share/datasets/fashion-mnist exists, else uniform.
Everything is measured in ONE process, repeats interleaved across configurations,
medians reported. ``ms_per_epoch`` is ms/step x 60000 / batch (a Fashion-MNIST epoch)
at initialisation; ``--epochs E`` also trains the Fashion-MNIST reference config for E
epochs per relaxation mode (``benchmarks/epochs.py``: real per-epoch wall time, steps and
accuracy late in training, where stragglers matter) and adds them as ``"epochs"``.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import eqprop
from eqprop.estimate import free_phase, make_estimator
from eqprop.build import phase_solvers
from eqprop.solvers import PhaseSolvers
from eqprop.update import init_optimizer, make_train_step
from epochs import MODES as EPOCH_MODES  # benchmarks/epochs.py, next to this file

SIZES = [784, 256, 256, 10]
BATCH = 50
BETA = 0.5
FREE, NUDGED = 150, 20
TOL = 1e-4
MEMORY = 5
EXAMPLES_PER_EPOCH = 60000  # Fashion-MNIST


# -- the network and the batch ----------------------------------------------------------

def make_batch(batch: int):
    if os.path.isdir("/usr/share/datasets/fashion-mnist"):
        from eqprop.data import load

        ds = load("fashion-mnist")
        x = jnp.asarray(ds.x_train[:batch].reshape(batch, -1))
        y = jnp.asarray(ds.y_train[:batch])
        return x, y, "fashion-mnist"
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, SIZES[0]))
    return x, jnp.arange(batch) % SIZES[-1], "uniform"


def modes() -> dict[str, PhaseSolvers]:
    """mode -> the solvers it benchmarks (from ``[dynamics]`` keys)."""
    base = {"free_steps": FREE, "nudged_steps": NUDGED}
    return {
        "fixed": phase_solvers(**base, tol=0.0),
        "tolerance": phase_solvers(**base, tol=TOL),
        "anderson": phase_solvers(**base, tol=TOL, solver="anderson", anderson_memory=MEMORY),
        "alternating": phase_solvers(**base, tol=0.0, update="alternating"),
        "alternating+tolerance": phase_solvers(**base, tol=TOL, update="alternating"),
        "alternating+anderson": phase_solvers(**base, tol=TOL, update="alternating", solver="anderson",
                                         **{k: EPOCH_MODES["fast+anderson"][k]
                                            for k in ("anderson_memory", "anderson_delay", "check_every")}),
    }


def make_probe(estimator, solver):
    """Free phase (``solver``) + estimate, returning the relaxation figures (not timed)."""

    @eqx.filter_jit
    def probe(model, x, y, key):
        free = free_phase(model, x, solver)
        _, est = estimator(model, x, y, free, key)
        ph = est.phases if est.phases is not None else est.linear  # nudged phases, or the linear solve
        return {
            "free_steps": free.stats.steps,
            "residual": jnp.max(free.stats.residual),
            "residual_mean": jnp.mean(free.stats.residual),
            "nudged_steps": ph.steps if ph is not None else jnp.asarray(0),
            "nudged_residual": jnp.max(ph.residual) if ph is not None else jnp.asarray(0.0),
        }

    return probe


# -- the floor ---------------------------------------------------------------------------

def step_flops(batch: int, phases_real_equiv: int, free_steps: int, nudged_steps: int,
               alternating: bool = False) -> float:
    """Matmul FLOPs of one hEP training step of 784-256-256-10 (tied weights; the softmax
    readout reads h2 and only enters the nudge).

    One relaxation step: 2 B (256*256*2) (the tied projection used forward and transposed),
    half of it with alternating updates (one group per step). Complex phases count twice.
    Input drive 2 B 784 256 once; the update's VJP repeats the drive and one field
    evaluation and forms the weight gradients (another field's worth, plus x^T v)."""
    n_in, h1, h2, out = SIZES
    relax_step = 2 * batch * (h1 * h2 * 2) // (2 if alternating else 1)
    drive = 2 * batch * n_in * h1
    vjp = 2 * drive + 2 * relax_step
    return (free_steps + phases_real_equiv * nudged_steps) * relax_step + drive + vjp


def phases_real_equiv(points: int) -> int:
    real = 2 if points % 2 == 0 else 1
    cplx = (points + 1) // 2 - 1
    return real + 2 * cplx


def time_call(f, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def matmul_throughput(rows: int, repeats: int) -> dict:
    """FLOP/s of a (rows, 256) @ (256, 256) matmul chained 100 times in a fori_loop, and of
    one 1024^3 matmul (medians)."""
    k = jax.random.PRNGKey(3)
    w = jax.random.normal(k, (256, 256)) / 16
    a = jax.random.normal(k, (rows, 256))

    @jax.jit
    def loop(a, w):
        return jax.lax.fori_loop(0, 100, lambda i, z: jnp.tanh(z @ w), a)

    big = jax.random.normal(k, (1024, 1024))
    mm = jax.jit(lambda p, q: p @ q)
    jax.block_until_ready(loop(a, w))
    jax.block_until_ready(mm(big, big))
    # time the tanh alone to remove it from the in-loop figure
    tloop = jax.jit(lambda a: jax.lax.fori_loop(0, 100, lambda i, z: jnp.tanh(z) * 1.0001, a))
    jax.block_until_ready(tloop(a))
    t_small, t_tanh, t_big = [], [], []
    for _ in range(max(repeats, 5)):
        t_small.append(time_call(loop, a, w))
        t_tanh.append(time_call(tloop, a))
        t_big.append(time_call(mm, big, big))
    small = 100 * 2 * rows * 256 * 256 / max(statistics.median(t_small) - statistics.median(t_tanh), 1e-9)
    return {"rows": rows, "small_gflops": small / 1e9,
            "large_gflops": 2 * 1024 ** 3 / statistics.median(t_big) / 1e9}


# -- memory --------------------------------------------------------------------------------

def grad_memory(model, x, y, name: str, free_steps: int, settings: dict) -> dict | None:
    """Compiled memory of the gradient computation (free phase + estimator)."""
    solvers = phase_solvers(free_steps=free_steps, nudged_steps=NUDGED)
    est = make_estimator(name, solvers, **settings)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def grads(p, x, y):
        m = eqx.combine(p, static)
        g, _ = est(m, x, y, free_phase(m, x, solvers.free), None)
        return g

    mem = jax.jit(grads).lower(params, x, y).compile().memory_analysis()
    if mem is None:
        return None
    return {"temp_bytes": int(mem.temp_size_in_bytes),
            "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes)}


# -- main ----------------------------------------------------------------------------------

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller sweeps (< 2 min)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batch", type=int, default=BATCH,
                   help=f"batch size (default {BATCH}, the reference's); larger batches use both "
                        "cores and run the matmuls nearer the machine's throughput")
    p.add_argument("--epochs", type=int, default=0,
                   help="also train the reference config E epochs per mode (benchmarks/epochs.py)")
    p.add_argument("--epoch-modes", default="fixed,fast,fast+warm,tolerance,anderson")
    args = p.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 30)
    points_list = (2,) if args.quick else (2, 4)
    mem_steps = (50, 100, 200) if args.quick else (50, 100, 200, 400)

    key = jax.random.PRNGKey(0)
    model0 = eqprop.layered(SIZES, key=key)
    batch = args.batch
    x, y, source = make_batch(batch)
    opt = optax.sgd(0.01, momentum=0.9)

    # configurations: (label, step, probe, points, mode)
    configs = []
    for n in points_list:
        for mode, dyn in modes().items():
            est = make_estimator("hep", dyn, beta=BETA, points=n)
            configs.append((f"{mode}/N={n}", make_train_step(est, opt, solver=dyn.free),
                            make_probe(est, dyn.free), n, mode))
    fixed = modes()["fixed"]
    for name in ("implicit", "bptt"):
        est = make_estimator(name, fixed)
        configs.append((name, make_train_step(est, opt, solver=fixed.free), None, None, name))

    state = {}
    compile_s = {}
    for label, step, _, _, _ in configs:
        m, s = model0, init_optimizer(opt, model0)
        t0 = time.perf_counter()
        m, s, _ = step(m, s, x, y, key)
        jax.block_until_ready(m)
        compile_s[label] = time.perf_counter() - t0
        state[label] = (m, s)
    times = {label: [] for label, *_ in configs}
    for _ in range(repeats):  # interleaved
        for label, step, *_ in configs:
            m, s = state[label]
            t0 = time.perf_counter()
            m, s, _ = step(m, s, x, y, key)
            jax.block_until_ready(m)
            times[label].append(time.perf_counter() - t0)
            state[label] = (m, s)
    ms = {label: 1e3 * statistics.median(t) for label, t in times.items()}

    thr = matmul_throughput(batch * 2, repeats)
    flops_per_s = thr["small_gflops"] * 1e9

    out = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "cpus": os.cpu_count(),
           "machine": platform.machine(), "data": source, "batch": batch, "repeats": repeats,
           "quick": args.quick, "tol": TOL, "anderson_memory": MEMORY,
           "matmul": thr, "modes": {}, "compile_s": compile_s}
    for label, _, probe, n, mode in configs:
        if probe is None:
            continue
        r = {k: float(v) for k, v in probe(model0, x, y, key).items()}
        flops = step_flops(batch, phases_real_equiv(n), int(r["free_steps"]), int(r["nudged_steps"]),
                           alternating=mode.startswith("alternating"))
        floor_ms = 1e3 * flops / flops_per_s
        r.update(ms_per_step=ms[label], ms_per_epoch=ms[label] * (EXAMPLES_PER_EPOCH // batch),
                 ms_min=1e3 * min(times[label]), gflop=flops / 1e9,
                 floor_ms=floor_ms, over_floor=ms[label] / floor_ms)
        out["modes"][label] = r
    # headline figures: N = 2
    for mode in modes():
        out["modes"][mode] = out["modes"][f"{mode}/N=2"]
    out["floor_ms"] = out["modes"]["fixed"]["floor_ms"]
    out["implicit_ms"], out["bptt_ms"] = ms["implicit"], ms["bptt"]
    out["ep_over_implicit"] = ms["fixed/N=2"] / ms["implicit"]
    out["ep_over_bptt"] = ms["fixed/N=2"] / ms["bptt"]

    mem = {"free_steps": list(mem_steps), "ep": [], "bptt": []}
    for s in mem_steps:
        mem["ep"].append(grad_memory(model0, x, y, "hep", s, {"beta": BETA, "points": 2}))
        mem["bptt"].append(grad_memory(model0, x, y, "bptt", s, {}))
    out["memory"] = mem

    print(f"# eqprop benchmark ({out['device']}, jax {out['jax']}, {out['cpus']} cpus, data {source}, "
          f"batch {batch}, {repeats} interleaved repeats, medians)\n")
    print("| config | ms/step | s/epoch (est.) | free steps | nudged steps | free residual (max) | GFLOP | floor ms | x floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in out["modes"].items():
        if "/" not in label:
            continue
        print(f"| {label} | {r['ms_per_step']:.1f} | {r['ms_per_epoch'] / 1e3:.1f} | {r['free_steps']:.0f} | {r['nudged_steps']:.0f} | "
              f"{r['residual']:.1e} | {r['gflop']:.2f} | {r['floor_ms']:.1f} | {r['over_floor']:.1f} |")
    print(f"| implicit (fixed) | {ms['implicit']:.1f} | | | | | | |")
    print(f"| bptt (fixed) | {ms['bptt']:.1f} | | | | | | |")
    print(f"\nmatmul throughput: ({thr['rows']}, 256) @ (256, 256) in a 100-step fori_loop "
          f"{thr['small_gflops']:.1f} GFLOP/s (used for the floor); 1024^3: {thr['large_gflops']:.1f} GFLOP/s")
    print(f"hEP N=2 (fixed) / implicit: {out['ep_over_implicit']:.2f};  / BPTT: {out['ep_over_bptt']:.2f}")
    print("speed-up over fixed: " + ", ".join(
        f"{m} {ms['fixed/N=2'] / ms[m + '/N=2']:.2f}x" for m in modes() if m != "fixed"))
    print("\n| free steps | EP temp MiB | BPTT temp MiB |\n|---|---|---|")
    for s, e, b in zip(mem_steps, mem["ep"], mem["bptt"]):
        fmt = lambda d: f"{d['temp_bytes'] / 2**20:.2f}" if d else "n/a"
        print(f"| {s} | {fmt(e)} | {fmt(b)} |")
    if args.epochs:
        from epochs import main as epochs_main

        print()
        out["epochs"] = epochs_main(["--epochs", str(args.epochs), "--modes", args.epoch_modes])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
