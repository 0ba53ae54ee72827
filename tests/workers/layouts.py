"""Worker of tests/test_parallel.py, run in a subprocess with 4 host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``): short digits runs under several
``[parallel]`` layouts, written to OUT/<name>.npz (every parameter and the last epoch's
test figures) for the test to compare.

    python tests/workers/layouts.py OUT
"""

import sys
from pathlib import Path

import jax
import numpy as np

from eqprop.config import load_config, with_updates
from eqprop.network import named_parameters
from eqprop.train import train
from eqprop.train.resume import load_run

ROOT = Path(__file__).resolve().parents[2]


def config(devices, seed_devices=1, seeds=1, epochs=2):
    c = load_config(ROOT / "configs" / "digits-quick.toml")
    # batch 28: a ragged last evaluation batch (360 test examples); a constant learning
    # rate, so that one epoch resumed to two is the two-epoch run (a cosine schedule's
    # length is the run's epochs)
    return with_updates(c, data={"batch_size": 28}, train={"epochs": epochs, "seeds": seeds,
                                                           "max_batches": 4},
                        optim={"schedule": "constant"},
                        parallel={"devices": devices, "seed_devices": seed_devices},
                        dynamics={"free_steps": 60, "nudged_steps": 30})


def record(out: Path, name: str, run: Path) -> None:
    _, program, model, _ = load_run(run)
    import json
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    arrays = {k: np.asarray(v) for k, v in named_parameters(model).items()}
    np.savez(out / f"{name}.npz", **arrays, test_acc=np.asarray(last["test_acc"]),
             test_loss=np.asarray(last["test_loss"]), devices=program.layout.devices)


def main(out: Path) -> None:
    assert len(jax.devices()) == 4, jax.devices()
    runs = out / "runs"
    for name, c in {
        "one": config(1),
        "four": config(4),
        "seeds-one": config(1, seeds=2),
        "seeds-mesh": config(4, seed_devices=2, seeds=2),
    }.items():
        train(c, runs / name, progress=False)
        record(out, name, runs / name)
    # one epoch on 4 devices, resumed on 1 (and the other way round)
    for name, first, second in (("four-then-one", 4, 1), ("one-then-four", 1, 4)):
        train(config(first, epochs=1), runs / name, progress=False)
        train(config(second), runs / name, resume=True, progress=False)
        record(out, name, runs / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
