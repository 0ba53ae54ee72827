"""The guard of train and of the test suite (eqprop.jitting.release_near_map_limit,
tests/conftest.py): dropping the caches unmaps the programs XLA:CPU loaded, which is
what keeps a long-lived process under vm.max_map_count."""

import gc

import jax
import jax.numpy as jnp
import pytest

from eqprop.jitting import memory_maps, release_near_map_limit


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
    assert not release_near_map_limit(1.0)  # below the share: nothing dropped
    assert memory_maps()[0] == loaded
    assert release_near_map_limit(0.0)
    assert memory_maps()[0] - before < (loaded - before) / 2  # ...until they are dropped
    assert [float(p(jnp.zeros(1))[0]) for p in programs[:2]] == [1.0, 1.0]  # recompiled
