"""Test set-up: the math tests compare estimators to 1e-4 and better, so run JAX in
float64 (models still choose their own dtype; one test pins the float32 path).

Every test leaves the component registries as it found them: a test that registers a
model, estimator, solver or plugin of its own cannot change what a later test sees."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)

from eqprop import plugins  # noqa: E402
from eqprop.registry import load_builtins  # noqa: E402

load_builtins()  # before any snapshot: the built-ins are part of every test's starting point


@pytest.fixture(autouse=True)
def _registries_restored():
    snapshot, loaded = plugins._snapshot(), dict(plugins._LOADED)
    yield
    plugins._restore(snapshot)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
