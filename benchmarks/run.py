"""Benchmark suite: speed of an EP training step against its floating-point floor,
solver modes, EP against implicit differentiation and BPTT, and peak memory.

    python benchmarks/run.py [--json FILE] [--quick] [--repeats R] [--batch B] [--epochs E [--epoch-modes M,...]]
    python benchmarks/run.py --model cnn [--config TOML] [--data fashion-mnist|cifar-shaped]
                             [--batch B] [--steps FREE/NUDGED] [--json FILE] [--quick] [--repeats R]

Reference: MLP 784-256-256-10 (float32), batch 50 (``--batch``), sigmoid4, hEP beta 0.5, N = 2 and 4,
real Fashion-MNIST batch when /usr/share/datasets/fashion-mnist exists, else uniform.
Everything is measured in ONE process, repeats interleaved across configurations,
medians reported. ``ms_per_epoch`` is ms/step x 60000 / batch (a Fashion-MNIST epoch)
at initialisation; ``--epochs E`` also trains the Fashion-MNIST reference config for E
epochs per relaxation mode (``benchmarks/epochs.py``: real per-epoch wall time, steps and
accuracy late in training, where stragglers matter) and adds them as ``"epochs"``.

``--model cnn`` benchmarks the convolutional network of ``configs/fmnist-cnn-hep.toml``
(``--config``) instead: hEP (the config's N and beta) with fixed steps and with
tolerance-based stopping, its floor (convolution + dense FLOPs over the convolution and
matmul throughput measured in the same run at the same shapes), the ``bp`` baseline's
step on the same architecture (EP over BP per step and per epoch) and the compiled
peak memory of EP and BPTT as the free steps grow (:func:`cnn_main`).
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax

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


def time_steps(steps: dict, model0, opt, x, y, key, repeats: int) -> tuple[dict, dict, dict]:
    """Each train step of ``steps`` ({label: step}) compiled from ``model0``, then timed
    ``repeats`` times, the labels interleaved (a noisy machine affects them alike).

    **Returns:** ``(compile seconds, {label: [seconds]}, {label: median ms})``.
    """
    state, compile_s = {}, {}
    for label, step in steps.items():
        m, s = model0, init_optimizer(opt, model0)
        t0 = time.perf_counter()
        m, s, _ = step(m, s, x, y, key)
        jax.block_until_ready(m)
        compile_s[label] = time.perf_counter() - t0
        state[label] = (m, s)
    times = {label: [] for label in steps}
    for _ in range(repeats):  # interleaved
        for label, step in steps.items():
            m, s = state[label]
            t0 = time.perf_counter()
            m, s, _ = step(m, s, x, y, key)
            jax.block_until_ready(m)
            times[label].append(time.perf_counter() - t0)
            state[label] = (m, s)
    return compile_s, times, {label: 1e3 * statistics.median(t) for label, t in times.items()}


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

def grad_memory(model, x, y, name: str, free_steps: int, settings: dict,
                nudged_steps: int = NUDGED) -> dict | None:
    """Compiled memory of the gradient computation (free phase + estimator)."""
    solvers = phase_solvers(free_steps=free_steps, nudged_steps=nudged_steps)
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
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: the reference MLP (default); cnn: the CNN of --config")
    p.add_argument("--batch", type=int, default=None,
                   help=f"batch size (default {BATCH}, the reference's; cnn: the config's); larger "
                        "batches use both cores and run the matmuls nearer the machine's throughput")
    p.add_argument("--config", default=None,
                   help="cnn only: the config whose [model], [dynamics], [estimator], [optim] are "
                        f"benchmarked (default {CNN_CONFIG.relative_to(ROOT)})")
    p.add_argument("--data", choices=tuple(CNN_DATA), default="fashion-mnist",
                   help="cnn only: fashion-mnist (28x28x1; the real first batch where installed, else "
                        "uniform) or cifar-shaped (32x32x3 standard-normal noise, 50000 per epoch)")
    p.add_argument("--steps", default=None, metavar="FREE/NUDGED",
                   help="cnn only: relaxation steps of the free and nudged phases (default: the config's)")
    p.add_argument("--epochs", type=int, default=0,
                   help="also train the reference config E epochs per mode (benchmarks/epochs.py)")
    p.add_argument("--epoch-modes", default="fixed,fast,fast+warm,tolerance,anderson")
    args = p.parse_args(argv)
    if args.model == "cnn":
        return cnn_main(args)
    for flag in ("config", "steps"):
        if getattr(args, flag) is not None:
            p.error(f"--{flag}: only with --model cnn")
    if args.data != "fashion-mnist":
        p.error("--data: only with --model cnn")
    repeats = args.repeats or (5 if args.quick else 30)
    points_list = (2,) if args.quick else (2, 4)
    mem_steps = (50, 100, 200) if args.quick else (50, 100, 200, 400)

    key = jax.random.PRNGKey(0)
    model0 = eqprop.layered(SIZES, key=key)
    batch = args.batch or BATCH
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

    compile_s, times, ms = time_steps({c[0]: c[1] for c in configs}, model0, opt, x, y, key, repeats)

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


# -- the CNN (--model cnn) -----------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CNN_CONFIG = ROOT / "configs" / "fmnist-cnn-hep.toml"
#: --data -> (one example's shape, examples per epoch, classes)
CNN_DATA = {"fashion-mnist": ((28, 28, 1), 60000, 10), "cifar-shaped": ((32, 32, 3), 50000, 10)}
PAPER_EPOCH_S = {"ep": 230.0, "bp": 8.0}  # Laborieux and Zenke 2022, CIFAR-10, the authors' GPU
CONV_ITERS = 20  # convolution pairs per timed fori_loop


def cnn_batch(data: str, batch: int):
    """``(x (B, H, W, C) float32, y (B,), source)``: the first Fashion-MNIST training
    images where installed (``data = "fashion-mnist"``), else noise of the data's shape
    (uniform in [0, 1] for Fashion-MNIST's shape, standard normal, like per-channel
    normalised images, for CIFAR's)."""
    shape, _, classes = CNN_DATA[data]
    if data == "fashion-mnist" and os.path.isdir("/usr/share/datasets/fashion-mnist"):
        from eqprop.data import load

        ds = load("fashion-mnist")
        x = jnp.asarray(ds.x_train[:batch], jnp.float32).reshape(batch, *shape)
        return x, jnp.asarray(ds.y_train[:batch]), "fashion-mnist"
    k = jax.random.PRNGKey(1)
    if data == "cifar-shaped":
        x, source = jax.random.normal(k, (batch, *shape), jnp.float32), "cifar-shaped (normal noise)"
    else:
        x, source = jax.random.uniform(k, (batch, *shape), jnp.float32), "uniform"
    return x, jnp.arange(batch) % classes, source


def cnn_ops(model, batch: int) -> dict[str, dict]:
    """The convolutions and the dense product of one evaluation of the conv network's maps:
    ``{name: {"kind", "lhs", "rhs", "flop"}}`` with ``flop`` the real FLOPs of one forward
    application (``2 B H W 9 C_in C_out`` for a 3x3 SAME convolution at the source's
    resolution, before its pooling; ``2 B n_flat n_out`` for the dense projection).
    ``input->c1`` is the drive (once per batch); the others are applied, with their
    transposes, at every relaxation step."""
    pops = model.populations
    order = ("input",) + model.names
    ops = {}
    for src, dst in zip(order[:-1], order[1:]):
        w = model.weights[f"{src}->{dst}"]
        if dst == model.output:
            n_flat, n_out = w.shape
            ops[f"{src}->{dst}"] = {"kind": "dense", "lhs": (batch, n_flat), "rhs": (n_flat, n_out),
                                    "flop": 2 * batch * n_flat * n_out}
        else:
            h, wd, c_in = pops[src]
            ops[f"{src}->{dst}"] = {"kind": "conv", "lhs": (batch, h, wd, c_in), "rhs": tuple(w.shape),
                                    "flop": 2 * batch * h * wd * w.shape[0] * w.shape[1] * c_in * w.shape[3]}
    return ops


def cnn_op_counts(ops: dict, relax_steps_real: int) -> dict[str, int]:
    """Forward-equivalent applications of each op in one hEP training step (tied feedback).

    A relaxation step applies every internal map and its transpose (the VJP feedback: the
    transposed convolution or ``W^T``), two per op; ``relax_steps_real`` counts the free
    and nudged steps, a complex phase's twice. The drive ``input->c1`` runs once per batch.
    The update (``field_vjp``) evaluates the drive and the field once more and forms the
    weight gradients (another field's and drive's worth): 2 drives + 2 relaxation steps,
    as the MLP's :func:`step_flops`. Pooling, activations and the readout are not counted."""
    first = next(iter(ops))
    return {name: 3 if name == first else 2 * (relax_steps_real + 2) for name in ops}


def bp_op_counts(ops: dict) -> dict[str, int]:
    """Forward-equivalent applications of each op in one ``bp`` step: the forward pass,
    the weight gradient and (except for the first, whose input is clamped) the input
    gradient."""
    first = next(iter(ops))
    return {name: 2 if name == first else 3 for name in ops}


def op_throughput(op: dict, compute_dtype: str, repeats: int, model=None) -> dict:
    """FLOP/s of ``op`` followed by its transpose (operands in ``compute_dtype``,
    accumulated in float32), chained :data:`CONV_ITERS` times in a ``fori_loop`` with a
    ``clip`` after each, minus a loop of the same clips alone (medians).

    ``gflops`` (the floor's): both as plain ``lax.conv_general_dilated`` NHWC/HWIO
    convolutions, the transpose being the convolution ``(B, H, W, C_out) -> (B, H, W,
    C_in)`` with the kernel flipped and its channel axes swapped (materialised outside the
    loop), i.e. this machine's convolution throughput at the shapes of the step;
    ``model_gflops``: the transpose as the conv network applies it, through ``model``'s
    own ``_conv_transpose`` (so the figure follows the network's code), or, without a
    ``model``, ``jax.linear_transpose`` of the plain HWIO convolution. For the dense op both
    are ``(z W) W^T`` with ``W^T`` materialised, as the network does."""
    k = jax.random.PRNGKey(5)
    f32 = jnp.float32
    cd = f32 if compute_dtype == "float32" else jnp.dtype(compute_dtype)
    a = jax.random.normal(k, op["lhs"], f32)
    w = jax.random.normal(jax.random.fold_in(k, 1), op["rhs"], f32) / jnp.sqrt(op["flop"] / (2 * a.size))
    dims = ("NHWC", "HWIO", "NHWC")

    def conv(z, w):
        return lax.conv_general_dilated(z.astype(cd), w.astype(cd), (1, 1), "SAME",
                                        dimension_numbers=dims, preferred_element_type=f32)

    def mm(p, q):
        return lax.dot_general(p.astype(cd), q.astype(cd), (((1,), (0,)), ((), ())),
                               preferred_element_type=f32)

    def as_model(z, w):  # ConvNetwork._conv + _conv_transpose
        if model is not None:
            return model._conv_transpose(bounded(conv(z, w)), w, z.shape[1:])
        wc = w.astype(cd)
        fwd = lambda v: lax.conv_general_dilated(v, wc, (1, 1), "SAME", dimension_numbers=dims)  # noqa: E731
        adjoint = jax.linear_transpose(fwd, jax.ShapeDtypeStruct(z.shape, cd))
        return adjoint(bounded(conv(z, w)).astype(cd))[0].astype(f32)

    def bounded(v):  # keeps the chain bounded; cheap, unlike tanh (see below)
        return jnp.clip(v, -4.0, 4.0)

    if op["kind"] == "conv":
        wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # the transpose's kernel, HWIO
        loops = {"gflops": (lambda z, w, wt: conv(bounded(conv(z, w)), wt)),
                 "model_gflops": (lambda z, w, wt: as_model(z, w))}
        mid = jax.eval_shape(lambda z: conv(z, w), a)
    else:
        wt = jnp.transpose(w)
        loops = {"gflops": (lambda z, w, wt: mm(bounded(mm(z, w)), wt))}
        mid = jax.eval_shape(lambda z: mm(z, w), a)
    # the same elementwise work alone (on both shapes the pair's loop bounds), subtracted.
    # Until 2026-12-04 this was tanh, on the input's shape only: XLA:CPU's rank-4 tanh
    # (about 4 ns per element) on the intermediate went uncounted, and the floor moved
    # 1.3x from run to run (130 to 164 ms for the same step)
    h0 = jnp.zeros(mid.shape, f32)
    alone = jax.jit(lambda a, h: lax.fori_loop(
        0, CONV_ITERS, lambda i, zh: (bounded(zh[0] * 1.0001), bounded(zh[1] * 1.0001)), (a, h)))
    jax.block_until_ready(alone(a, h0))
    out = {"kind": op["kind"], "lhs": list(op["lhs"]), "rhs": list(op["rhs"])}
    for name, pair in loops.items():
        loop = jax.jit(lambda a, w, wt, pair=pair: lax.fori_loop(
            0, CONV_ITERS, lambda i, z: bounded(pair(z, w, wt)), a))
        jax.block_until_ready(loop(a, w, wt))
        t_loop, t_alone = [], []
        for _ in range(max(repeats, 5)):
            t_loop.append(time_call(loop, a, w, wt))
            t_alone.append(time_call(alone, a, h0))
        t = max(statistics.median(t_loop) - statistics.median(t_alone), 1e-9)
        out[name] = CONV_ITERS * 2 * op["flop"] / t / 1e9
    out.setdefault("model_gflops", out["gflops"])
    return out


def pool_cost(model, batch: int, repeats: int) -> dict:
    """The softmax pooling's own cost in one relaxation step (elementwise work the floor
    leaves out): for each internal pooled projection ``src -> dst``, the pooling of the
    convolution's output ``(B, H_src, W_src, C_dst)`` and its VJP (what one relaxation step
    evaluates per pooled projection with tied feedback), chained :data:`CONV_ITERS` times
    in a ``fori_loop`` with a ``clip`` that keeps it bounded, minus the ``clip`` loop alone
    (medians). Until 2026-12-03 the baseline was a ``tanh(v) * 1.0001`` loop, which
    XLA:CPU runs about 5x slower on a rank-4 array than on the same data as ``(B, D)``
    (3.9 against 0.8 ns per element): as slow as the pooling, so the difference was ~0.

    **Returns:** ``{"shapes": [[B, H, W, C], ...], "ms_per_relax_step": float}``."""
    from eqprop.network.conv import softmax_pool

    shapes = []
    for src, dst in model.pooled_projections():
        h, w, _ = model.populations[src]
        shapes.append((batch, h, w, model.populations[dst][-1]))
    total = 0.0
    for shape in shapes:
        z = jax.random.normal(jax.random.PRNGKey(7), shape, jnp.float32)

        def pooled(v):
            p, vjp = jax.vjp(lambda t: softmax_pool(t, model.temperature), v)
            return jnp.clip(vjp(p)[0], -4.0, 4.0)

        loop = jax.jit(lambda a: lax.fori_loop(0, CONV_ITERS, lambda i, v: pooled(v), a))
        base = jax.jit(lambda a: lax.fori_loop(0, CONV_ITERS, lambda i, v: jnp.clip(v * 1.0001, -4.0, 4.0), a))
        jax.block_until_ready(loop(z))
        jax.block_until_ready(base(z))
        t_loop, t_base = [], []
        for _ in range(max(repeats, 5)):
            t_loop.append(time_call(loop, z))
            t_base.append(time_call(base, z))
        total += max(statistics.median(t_loop) - statistics.median(t_base), 0.0) / CONV_ITERS
    return {"shapes": [list(s) for s in shapes], "ms_per_relax_step": 1e3 * total}


def recomputed_share(model) -> float:
    """The share of the tied pooled projections ``src -> dst`` whose convolution an
    alternating sweep evaluates twice (``src``'s group updated before ``dst``'s: the
    feedback's pooling Jacobian at the old ``a_src``, the drive at the new one); the
    others share one (:meth:`eqprop.network.ConvNetwork.partition`). ``0.0`` without a
    partition or pooled projection."""
    groups = model.partition()
    pooled = [src for src, _ in model.pooled_projections()]
    if groups is None or not pooled:
        return 0.0
    if not model.tied:
        return 1.0
    return sum(src in groups[0] for src in pooled) / len(pooled)


def floor_of(ops: dict, counts: dict, thr: dict) -> tuple[float, float]:
    """``(GFLOP, floor ms)`` of ``counts`` applications of ``ops`` at the measured ``thr``."""
    flop = sum(counts[n] * ops[n]["flop"] for n in ops)
    ms = sum(1e3 * counts[n] * ops[n]["flop"] / (thr[n]["gflops"] * 1e9) for n in ops)
    return flop / 1e9, ms


def cnn_main(args) -> dict:
    """``--model cnn``: the conv network's training step, its floor, EP over BP and memory."""
    from eqprop.build import build_model, build_optimizer, estimator_settings
    from eqprop.config import load_config
    from eqprop.estimate import feedforward_loss

    config_path = Path(args.config) if args.config else CNN_CONFIG
    config = load_config(config_path)
    shape, per_epoch, classes = CNN_DATA[args.data]
    batch = args.batch or config.data.batch_size
    if args.steps:
        try:
            free_n, nudged_n = (int(v) for v in args.steps.split("/"))
        except ValueError:
            raise SystemExit(f"--steps: FREE/NUDGED, e.g. 250/40, got {args.steps!r}") from None
    else:
        free_n, nudged_n = config.dynamics.free_steps, config.dynamics.nudged_steps
    repeats = args.repeats or (3 if args.quick else 20)
    mem_steps = (free_n, 2 * free_n) if args.quick else (free_n, 2 * free_n, 4 * free_n)

    key = jax.random.PRNGKey(0)
    model0 = build_model(config, input_size=math.prod(shape), n_classes=classes, key=key,
                         input_shape=shape)
    x, y, source = cnn_batch(args.data, batch)
    settings = estimator_settings(config)
    name = settings.pop("name")
    if name != "hep":
        raise SystemExit(f"--config: the CNN benchmark times hEP; {config_path} has estimator {name!r}")
    points = settings.get("points", 2)
    steps_per_epoch = per_epoch // batch
    opt = build_optimizer(config, model0, steps_total=max(steps_per_epoch * config.train.epochs, 1))

    dyn = {"free_steps": free_n, "nudged_steps": nudged_n, "update": "synchronous"}
    cnn_modes = {"fixed": phase_solvers(config.dynamics, **dyn, tol=0.0),
                 "tolerance": phase_solvers(config.dynamics, **dyn, tol=TOL)}
    if model0.partition() is not None:  # the even/odd chain
        cnn_modes["alternating"] = phase_solvers(config.dynamics, **dict(dyn, update="alternating"), tol=0.0)
    configs = []  # (label, step, probe)
    for mode, solvers in cnn_modes.items():
        est = make_estimator("hep", solvers, **settings)
        configs.append((mode, make_train_step(est, opt, solver=solvers.free), make_probe(est, solvers.free)))
    bp = make_estimator("bp", cnn_modes["fixed"])
    configs.append(("bp", make_train_step(bp, opt, solver=cnn_modes["fixed"].free), None))

    compile_s, times, ms = time_steps({c[0]: c[1] for c in configs}, model0, opt, x, y, key, repeats)

    ops = cnn_ops(model0, batch)
    thr = {n: op_throughput(op, model0.compute_dtype, repeats, model0) for n, op in ops.items()}
    pooling = pool_cost(model0, batch, repeats)

    out = {"model": "cnn", "device": jax.devices()[0].device_kind, "jax": jax.__version__,
           "cpus": os.cpu_count(), "machine": platform.machine(),
           "config": str(config_path.resolve().relative_to(ROOT)) if config_path.resolve().is_relative_to(ROOT)
           else str(config_path),
           "data": source, "input_shape": list(shape), "channels": [model0.populations[p][-1] for p in model0.names[:-1]],
           "output_size": model0.populations[model0.output][0], "pools": list(model0.pools),
           "compute_dtype": model0.compute_dtype, "batch": batch, "free_steps": free_n,
           "nudged_steps": nudged_n, "points": points, "beta": settings.get("beta"), "tol": TOL,
           "repeats": repeats, "quick": args.quick, "examples_per_epoch": per_epoch,
           "steps_per_epoch": steps_per_epoch, "alternating": model0.partition() is not None,
           "throughput": thr, "modes": {}, "compile_s": compile_s}
    for label, _, probe in configs:
        if probe is None:
            continue
        r = {k: float(v) for k, v in probe(model0, x, y, key).items()}
        relax = int(r["free_steps"]) + phases_real_equiv(points) * int(r["nudged_steps"])
        if label == "alternating":  # steps count group updates: a sweep of both groups is one step's maps
            relax = -(-relax // 2)
        gflop, floor_ms = floor_of(ops, cnn_op_counts(ops, relax), thr)
        # the pooling's elementwise work beside the floor: a forward and a VJP per relaxation
        # step, and two steps' worth more in the update, as the convolutions (a sweep of the
        # alternating update pools once more, forward only, where a projection's source is
        # updated before its destination: about 1.5 units for those)
        again = recomputed_share(model0) if label == "alternating" else 0.0
        pool_ms = pooling["ms_per_relax_step"] * (relax + 2) * (1 + 0.5 * again)
        r.update(ms_per_step=ms[label], s_per_epoch=ms[label] * steps_per_epoch / 1e3,
                 ms_min=1e3 * min(times[label]), gflop=gflop, floor_ms=floor_ms,
                 over_floor=ms[label] / floor_ms, ep_over_bp=ms[label] / ms["bp"],
                 pool_ms=pool_ms, over_floor_and_pool=ms[label] / (floor_ms + pool_ms))
        out["modes"][label] = r
    gflop, floor_ms = floor_of(ops, bp_op_counts(ops), thr)
    out["bp"] = {"ms_per_step": ms["bp"], "s_per_epoch": ms["bp"] * steps_per_epoch / 1e3,
                 "ms_min": 1e3 * min(times["bp"]), "gflop": gflop, "floor_ms": floor_ms,
                 "over_floor": ms["bp"] / floor_ms}
    out["floor_ms"] = out["modes"]["fixed"]["floor_ms"]
    out["pooling"] = pooling
    out["ep_over_bp"] = out["modes"]["fixed"]["ep_over_bp"]
    out["ep_over_bp_tolerance"] = out["modes"]["tolerance"]["ep_over_bp"]

    def memory(est_name, s, est_settings):
        try:
            return grad_memory(model0, x, y, est_name, s, est_settings, nudged_steps=nudged_n)
        except Exception as err:  # e.g. a compiler that refuses a BPTT tape larger than the device
            return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}

    mem = {"free_steps": list(mem_steps), "ep": [], "bptt": []}
    for s in mem_steps:
        mem["ep"].append(memory("hep", s, settings))
        mem["bptt"].append(memory("bptt", s, {}))
    params, static = eqx.partition(model0, eqx.is_inexact_array)
    bp_mem = jax.jit(jax.grad(lambda p: feedforward_loss(eqx.combine(p, static), x, y))).lower(params).compile()
    bp_mem = bp_mem.memory_analysis()
    mem["bp"] = None if bp_mem is None else {"temp_bytes": int(bp_mem.temp_size_in_bytes)}
    out["memory"] = mem

    fx, tl = out["modes"]["fixed"], out["modes"]["tolerance"]
    print(f"# eqprop CNN benchmark ({out['device']}, jax {out['jax']}, {out['cpus']} cpus, "
          f"{out['config']}, data {source} {'x'.join(map(str, shape))}, channels {out['channels']} "
          f"pools {out['pools']}, out {out['output_size']}, {model0.compute_dtype}, batch {batch}, "
          f"hEP N={points} beta {settings.get('beta')}, {free_n}/{nudged_n} steps, "
          f"{repeats} interleaved repeats, medians)\n")
    print(f"| config | ms/step | s/epoch ({steps_per_epoch} steps) | free steps | nudged steps | "
          "free residual (max) | GFLOP | floor ms | x floor | EP / BP |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    names = {"fixed": f"hEP fixed {free_n}/{nudged_n}", "tolerance": f"hEP tolerance {TOL:g}",
             "alternating": f"hEP alternating {free_n}/{nudged_n}"}
    for label, r in out["modes"].items():
        print(f"| {names[label]} | {r['ms_per_step']:.1f} | {r['s_per_epoch']:.1f} | {r['free_steps']:.0f} | "
              f"{r['nudged_steps']:.0f} | {r['residual']:.1e} | {r['gflop']:.2f} | {r['floor_ms']:.1f} | "
              f"{r['over_floor']:.2f} | {r['ep_over_bp']:.1f} |")
    b = out["bp"]
    print(f"| BP (feed-forward, autodiff) | {b['ms_per_step']:.2f} | {b['s_per_epoch']:.1f} | 1 | | | "
          f"{b['gflop']:.3f} | {b['floor_ms']:.2f} | {b['over_floor']:.2f} | 1 |")
    if not out["alternating"]:
        print("\nalternating updates: not applicable (model.partition() is None)")
    print("\nthroughput of each op and its transpose in a fori_loop (the floor's denominators; in "
          "brackets with the transpose as the model applies it, jax.linear_transpose): " + "; ".join(
              f"{n} {'x'.join(map(str, t['lhs']))} {t['gflops']:.1f} ({t['model_gflops']:.1f}) GFLOP/s"
              for n, t in thr.items()))
    print(f"softmax pooling (forward and VJP, elementwise, not in the floor) at {pooling['shapes']}: "
          f"{pooling['ms_per_relax_step']:.3f} ms per relaxation step, {fx['pool_ms']:.1f} ms of the fixed "
          f"step ({100 * fx['pool_ms'] / fx['ms_per_step']:.0f}%); the fixed step is "
          f"{fx['over_floor_and_pool']:.2f}x floor + pooling")
    print(f"EP over BP per step and per epoch: fixed {fx['ep_over_bp']:.1f}x, tolerance {tl['ep_over_bp']:.1f}x; "
          f"speed-up of tolerance over fixed: {fx['ms_per_step'] / tl['ms_per_step']:.2f}x")
    print(f"per epoch of {per_epoch} examples ({steps_per_epoch} steps of {batch}): EP fixed "
          f"{fx['s_per_epoch']:.1f} s, tolerance {tl['s_per_epoch']:.1f} s, BP {b['s_per_epoch']:.2f} s. "
          f"Laborieux and Zenke 2022, CIFAR-10 (their CNN, batch 256, 250/40 steps, on their GPU): "
          f"EP {PAPER_EPOCH_S['ep']:.0f} s, BP {PAPER_EPOCH_S['bp']:.0f} s "
          f"({PAPER_EPOCH_S['ep'] / PAPER_EPOCH_S['bp']:.0f}x); only the ratio compares across machines, "
          f"and the absolute figure only with their architecture, batch and steps on a GPU")
    print("\n| free steps | EP temp MiB | BPTT temp MiB |\n|---|---|---|")
    fmt = lambda d: (f"{d['temp_bytes'] / 2**20:.2f}" if d and "temp_bytes" in d  # noqa: E731
                     else (d or {}).get("error", "n/a"))
    for s, e, t in zip(mem_steps, mem["ep"], mem["bptt"]):
        print(f"| {s} | {fmt(e)} | {fmt(t)} |")
    print(f"BP (one forward + backward pass) temp MiB: {fmt(mem['bp'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
