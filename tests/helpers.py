"""Shared helpers for the math tests."""

import jax
import jax.numpy as jnp

from eqprop.build import phase_solvers as solvers  # noqa: F401  ([dynamics] keys -> solver objects)
from eqprop.network import named_parameters


def flat_params(g):
    """Concatenate every trainable leaf of a model-shaped pytree (named order)."""
    return jnp.concatenate([jnp.ravel(v) for v in named_parameters(g).values()])


def flat(tree):
    return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(tree)])


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def cos(a, b):
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
