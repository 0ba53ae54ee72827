"""Test set-up: the math tests compare estimators to 1e-4 and better, so run JAX in
float64 (models still choose their own dtype; one test pins the float32 path); a shared
JAX compilation cache.

Every test leaves the component registries as it found them: a test that registers a
model, estimator, solver or plugin of its own cannot change what a later test sees."""

import os
import tempfile

# One JAX compilation cache for the whole suite (every xdist worker, and the CLI
# subprocesses, which inherit the environment): many tests compile the same programs
# (the tiny training runs of test_train, test_loggers, test_pruning, test_crash, ...);
# measured 59 s -> 35 s for test_train + test_loggers from an empty cache (2 workers). Entries are
# keyed by the compiled program and JAX's version, so a stale one is never used.
# The directory is keyed by this CPU's feature flags too: a machine image restored on
# another host (a VM fork) otherwise loads code compiled for the first CPU (two xdist
# workers segfaulted in XLA:CPU on a cache filled before such a fork; not shown to be the
# cause, but never worth the risk).


def _cpu_key() -> str:
    import hashlib
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return hashlib.sha256((platform.machine() + flags).encode()).hexdigest()[:12]


os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"eqprop-test-jax-cache-{os.getuid()}-{_cpu_key()}"))
# only programs that took a while to compile: eager operations compile thousands of tiny
# ones, and a cache of thousands of entries costs more to search than they save
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# jax may have been imported by a pytest plugin before the environment above was set
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

from eqprop import plugins  # noqa: E402
from eqprop.jitting import release_near_map_limit  # noqa: E402
from eqprop.registry import load_builtins  # noqa: E402

load_builtins()  # before any snapshot: the built-ins are part of every test's starting point


@pytest.fixture(autouse=True)
def _registries_restored():
    snapshot, loaded = plugins._snapshot(), dict(plugins._LOADED)
    yield
    plugins._restore(snapshot)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)


# Each executable XLA:CPU loads maps ~80 memory regions, and a process may hold
# vm.max_map_count of them (65530 by default): past it, LLVM's JIT fails to map the next
# program ("LLVM compilation error: Cannot allocate memory") and the process segfaults.
# A test worker that runs a few hundred tests keeps the programs of every module-level
# jitted function they called alive in JAX's caches and crossed that line (workers
# crashed in deserialize_executable, in whichever test came next). When a worker holds
# 60% of the limit, drop JAX's and Equinox's caches (as `train` does at 50%): the
# programs still needed come back from the compilation cache above, or compile again
# (each drop costs that: not earlier than needed; below the 75% at which `train` warns,
# eqprop.jitting.MAP_WARN_SHARE).
@pytest.fixture(autouse=True)
def _loaded_programs_bounded():
    yield
    release_near_map_limit(0.6)
