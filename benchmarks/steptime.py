"""Shared by the step-time benchmarks (devices.py, unroll.py, overhead.py): training
batches placed on the devices beforehand, steps timed back to back with one wait, and
the table of medians as ratios to the first setting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax


def placed_batches(program, epoch: int = 1, limit: int | None = None) -> list:
    """The first ``limit`` (default: all) training batches ``(x, y)`` of ``epoch``, placed
    through the program's layout."""
    from eqprop.train.placement import place_batch

    out = []
    for xb, yb, _ in program.epoch_batches(epoch):
        out.append(place_batch(xb, yb, layout=program.layout)[:2])
        if limit is not None and len(out) == limit:
            break
    return out


def time_steps(program, state, placed: list) -> float:
    """Seconds of ``program.step`` over ``placed`` from ``state``, one wait at the end."""
    t = time.perf_counter()
    for x, y in placed:
        state, m = program.step(state, x, y)
    jax.block_until_ready((state, m))
    return time.perf_counter() - t


def ratio_table(title: str, column: str, times: dict, json_path: str | None = None) -> dict:
    """Print the median ms/step of each setting of ``times`` ({setting: [ms, ...]}) and its
    ratio to the first setting's; write them to ``json_path`` when given."""
    import statistics

    med = {k: statistics.median(v) for k, v in times.items()}
    first = next(iter(med.values()))
    print(f"{title}\n")
    print(f"| {column} | ms/step | ratio to first |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / first:.2f} |")
    result = {"ms_per_step": med, "all": times}
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result
