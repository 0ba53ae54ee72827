"""Test set-up: the math tests compare estimators to 1e-4 and better, so run JAX in
float64 (models still choose their own dtype; one test pins the float32 path)."""

import jax

jax.config.update("jax_enable_x64", True)
