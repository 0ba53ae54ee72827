"""The README's example runs as written, and the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_under_200_lines():
    assert len(README.splitlines()) < 200


def test_readme_example_runs_and_estimates_the_gradient():
    """The first python block: relax, estimate (hEP N = 4), one optax update. The estimate
    must agree with the implicit gradient on the same fixed point (so the example shows
    what it says, not just that it runs)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no python example"
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # noqa: S102
    eqprop = ns["eqprop"]
    assert ns["free"].stats.residual.max() < 1e-3  # the free phase settled
    implicit = eqprop.estimate.make_estimator("implicit")
    # the example's model before its update (the same constructor call, no compilation):
    # the exact gradient at the example's fixed point, against the example's estimate
    model = eqprop.layered([64, 64, 64, 10], key=ns["key"])
    g_est = ns["grads"]
    g_imp, _ = implicit(model, ns["x"], ns["y"], ns["free"], None)
    a = jnp.concatenate([jnp.ravel(v) for v in eqprop.network.named_parameters(g_est).values()])
    b = jnp.concatenate([jnp.ravel(v) for v in eqprop.network.named_parameters(g_imp).values()])
    assert float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.999
