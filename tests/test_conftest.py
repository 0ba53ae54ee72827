"""The test suite's own guard (tests/conftest.py): dropping JAX's caches unmaps the
programs XLA:CPU loaded, which is what keeps a long-lived test worker under
vm.max_map_count."""

import gc

import jax
import jax.numpy as jnp
import pytest

from eqprop.jitting import memory_maps


@pytest.mark.skipif(memory_maps() is None, reason="reads /proc/self/maps (Linux)")
def test_dropping_jax_caches_unmaps_the_loaded_programs():
    jax.clear_caches()
    gc.collect()
    before = memory_maps()[0]
    programs = [jax.jit(lambda x, k=k: jnp.sin(x) * k + jnp.cos(x) ** k) for k in range(40)]
    for program in programs:
        program(jnp.ones(3)).block_until_ready()
    loaded = memory_maps()[0]
    assert loaded - before > 40  # each loaded program maps regions of its own
    gc.collect()
    assert memory_maps()[0] == loaded  # JAX's caches keep each program alive...
    jax.clear_caches()
    gc.collect()
    assert memory_maps()[0] - before < (loaded - before) / 2  # ...until they are dropped
    assert [float(p(jnp.zeros(1))[0]) for p in programs[:2]] == [1.0, 1.0]  # recompiled
