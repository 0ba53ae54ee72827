#!/usr/bin/env python3
"""Kill a real training run with SIGKILL at random instants, resume it, compare.

Trains a tiny configuration (synthetic data, a 16-8-4 network, warm starts, 2 batches
of 128 per epoch) with ``eqprop train`` in a subprocess, SIGKILLs it at a random instant,
continues it with ``eqprop resume`` (or ``eqprop train`` again when the kill came before
``config.toml`` existed), kills that too, and so on ``--kills`` times; then lets a last
``eqprop resume`` finish. It reports whether the result equals an uninterrupted run of
the same configuration:

* the final ``latest`` checkpoint's tree payload (model and optimizer state, every
  leaf) and warm-start states have the same SHA-256, i.e. are equal bit for bit;
* ``metrics.jsonl`` holds every epoch once, with the same figures (timings aside);
* ``summary.json`` says ``completed``.

Kill instants: after the first kill, a quarter of the kills fall uniformly in the time
a child takes to print its first epoch line (imports, the run directory, the first
epoch and its checkpoint); the others fall uniformly within two epochs after the child
printed its first epoch line, where checkpoints and metrics are being written.

Usage::

    python scripts/kill_resume.py                  # 20 kills (about 2 minutes on 2 cores)
    python scripts/kill_resume.py --kills 3 --seed 1 --workdir /tmp/kr --keep

Exit status 0 when the killed run ends equal to the uninterrupted one, 1 otherwise.
The uninterrupted run goes alongside the first killed one; compiled programs are shared
between the subprocesses through a JAX compilation cache in the work directory, so
later starts cost imports, not compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from eqprop.train.records import TIMING_KEYS

CONFIG = """\
[data]
name = "synthetic"
batch_size = 128

[model]
sizes = [16, 8, 4]

[dynamics]
free_steps = 15
nudged_steps = 5
tol = 0.0001

[optim]
name = "sgd"
lr = 0.2
momentum = 0.9

[train]
epochs = {epochs}
max_batches = 2
seed = 3
warm_start = true
"""

#: record keys that measure time, not training (they differ between runs)
TIMING = TIMING_KEYS


class Child:
    """One ``eqprop`` subprocess whose stdout lines are timestamped as they arrive."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.t0 = time.monotonic()
        self.err = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "eqprop.cli", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.lines: list[tuple[float, str]] = []
        self.first_epoch = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))
            if line.startswith("epoch "):
                self.first_epoch.set()
        self.first_epoch.set()  # the child ended: stop waiting

    def kill_after(self, seconds: float) -> bool:
        """SIGKILL at ``seconds`` after the start unless it ends first; whether it was killed."""
        try:
            self.proc.wait(timeout=max(0.0, seconds - (time.monotonic() - self.t0)))
            return False
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            return True

    def close(self) -> int:
        rc = self.proc.wait()
        self.reader.join()
        self.err.close()
        return rc


def epoch_times(lines: list[tuple[float, str]]) -> list[float]:
    return [t for t, line in lines if line.startswith("epoch ")]


def command(run: Path, config: Path) -> list[str]:
    """``resume`` once ``config.toml`` exists (the run may have no checkpoint yet), else
    ``train``."""
    if (run / "config.toml").is_file():
        return ["resume", str(run)]
    return ["train", str(config), "--out", str(run)]


def records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in TIMING})
    return out


def compare(ref: Path, run: Path) -> list[str]:
    """What differs between the two finished runs (empty when nothing does)."""
    problems = []
    a, b = (json.loads((d / "checkpoints" / "latest.json").read_text()) for d in (ref, run))
    for name in sorted(set(a["payloads"]) | set(b["payloads"])):
        sa = a["payloads"].get(name, {}).get("sha256")
        sb = b["payloads"].get(name, {}).get("sha256")
        if sa != sb:
            problems.append(f"final checkpoint payload '{name}' differs (sha256 {sa} vs {sb})")
    ra, rb = records(ref), records(run)
    if [r["epoch"] for r in rb] != [r["epoch"] for r in ra]:
        problems.append(f"metrics.jsonl epochs {[r['epoch'] for r in rb]}, expected "
                        f"{[r['epoch'] for r in ra]}")
    elif ra != rb:
        bad = [x["epoch"] for x, y in zip(ra, rb) if x != y]
        problems.append(f"metrics.jsonl figures differ in epoch(s) {bad}")
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("status") != "completed":
        problems.append(f"summary.json status {summary.get('status')!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default 20)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the run (default 3 * kills + 4, enough for every kill)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill instants")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a temporary "
                   "directory, removed at the end unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    epochs = args.epochs or 3 * args.kills + 4

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    for d in ("reference", "killed"):
        shutil.rmtree(work / d, ignore_errors=True)
    config = work / "tiny.toml"
    config.write_text(CONFIG.format(epochs=epochs))
    log = work / "stderr.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "JAX_COMPILATION_CACHE_DIR": str(work / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    # the uninterrupted run, alongside the first killed one (both compile)
    ref = work / "reference"
    reference = Child(["train", str(config), "--out", str(ref)], env, log)
    ref_rc = None
    try:

        def epoch_gap() -> float:
            """Seconds per epoch of the uninterrupted run (until it is done, a short guess,
            so that an early kill never lets a child finish the run)."""
            nonlocal ref_rc
            if ref_rc is None and reference.proc.poll() is not None:
                ref_rc = reference.close()
                t = epoch_times(reference.lines)
                if ref_rc == 0 and t:
                    print(f"uninterrupted run: {epochs} epochs, first epoch line at {t[0]:.2f} "
                          f"s (compiling), then {1000 * (t[-1] - t[0]) / max(len(t) - 1, 1):.0f}"
                          " ms per epoch")
            t = epoch_times(reference.lines)
            return (t[-1] - t[0]) / (len(t) - 1) if ref_rc is not None and len(t) > 1 else 0.03

        run = work / "killed"
        kills, completed = 0, False
        startup = None  # when a child with compiled programs cached prints its first epoch line
        while kills < args.kills:
            cmd = command(run, config)
            child = Child(cmd, env, log)
            if startup is not None and rng.random() < 0.25:
                when = rng.uniform(0.0, startup)
                killed = child.kill_after(when)
                where = f"{when:.2f} s after its start"
            else:
                child.first_epoch.wait()
                seen = epoch_times(child.lines)
                delay = rng.uniform(0.0, 2 * epoch_gap())
                if seen and kills:  # the first child compiled; later ones load the cache
                    startup = seen[0] if startup is None else min(startup, seen[0])
                killed = child.kill_after((seen[0] if seen else 0.0) + delay)
                where = f"{1000 * delay:.0f} ms after its first epoch line"
            rc = child.close()
            if not killed:
                if rc != 0:
                    print(f"`eqprop {cmd[0]}` failed with exit status {rc}; see {log}")
                    return 1
                print(f"the run completed before kill {kills + 1}; raise --epochs")
                completed = True
                break
            kills += 1
            print(f"kill {kills:2d}: `eqprop {cmd[0]}` SIGKILLed {where} "
                  f"({len(epoch_times(child.lines))} epoch line(s) printed)")
        if not completed:
            cmd = command(run, config)
            rc = Child(cmd, env, log).close()
            if rc != 0:
                tail = log.read_text().strip().splitlines()[-1:]
                print(f"the last `eqprop {cmd[0]}` failed with exit status {rc}: {' '.join(tail)}")
                return 1
        reference.proc.wait()
        epoch_gap()
        if ref_rc != 0:
            print(f"the uninterrupted run failed with exit status {ref_rc}; see {log}")
            return 1
        try:
            problems = compare(ref, run)
        except (OSError, ValueError, KeyError) as e:
            problems = [f"the finished runs cannot be compared ({type(e).__name__}: {e})"]
        if problems:
            print(f"DIFFERENT after {kills} kill(s): " + "; ".join(problems))
            return 1
        print(f"OK: after {kills} SIGKILL(s) and resumes the run ends with the parameters, "
              "optimizer state and warm-start states of the uninterrupted run (bit for bit), "
              "every epoch's figures once, and status completed")
        return 0
    finally:
        if reference.proc.poll() is None:
            reference.proc.kill()
            reference.close()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
