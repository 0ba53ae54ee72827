"""``jit`` for the programs eqprop builds per run: ``eqx.filter_jit``'s semantics, with
the compiled programs cached on the function itself.

``eqx.filter_jit`` caches a wrapper per function in a process-wide table keyed weakly by
the function, but that wrapper holds the function as a static argument of its jit: a
closure made per run (a training step, an evaluation) is never released, nor is anything
XLA compiled for it. Each compiled program maps memory regions of its own (from a few
for a tiny program to ~80 for a training step), so a process that builds a few hundred
runs (a notebook's sweep, a test worker) crosses the kernel's ``vm.max_map_count``
(65530 by default) and crashes in LLVM's JIT ("Cannot allocate memory", then a
segfault). With :func:`jit`, dropping the returned function drops its programs.
Module-level jitted functions called with per-run settings (the stability figures under
a sweep of the solver; gradcheck) still keep a program per setting:
:func:`release_near_map_limit` drops every cached program when a process nears the
limit, and :func:`warn_near_map_limit` warns when what remains is still near.
"""

from __future__ import annotations

import functools
import gc
import warnings
from typing import Any, Callable, TypeVar

import equinox as eqx
import jax

F = TypeVar("F", bound=Callable[..., Any])

#: the share of ``vm.max_map_count`` past which :func:`warn_near_map_limit` warns
MAP_WARN_SHARE = 0.75
#: the share past which :func:`release_near_map_limit` drops the cached programs
MAP_RELEASE_SHARE = 0.5


class _Static(eqx.Module):
    """The non-array part of an output, carried through ``jax.jit`` in its tree."""

    value: Any = eqx.field(static=True)


def jit(f: F) -> F:
    """``f`` compiled as ``eqx.filter_jit`` compiles it: array leaves of the arguments
    (``jax.Array``, ``numpy.ndarray``) are traced; every other leaf (Python numbers,
    functions, strings) is static, and a value unequal to those seen compiles anew
    (equal ones, ``1`` and ``1.0``, share a program, as under ``eqx.filter_jit``);
    outputs may hold non-array leaves too.

    **Args:** ``f``: any callable; its arguments' static leaves must be hashable.

    **Returns:** a function with ``f``'s signature. Its compiled programs live as long as
    it does (not in Equinox's process-wide cache; see the module's docstring).
    """

    @functools.partial(jax.jit, static_argnums=0)
    def run(static, dynamic):
        leaves, treedef = static
        args, kwargs = eqx.combine(dynamic, jax.tree.unflatten(treedef, leaves))
        dynamic_out, static_out = eqx.partition(f(*args, **kwargs), eqx.is_array)
        return dynamic_out, _Static(static_out)

    @functools.wraps(f)
    def call(*args, **kwargs):
        dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
        leaves, treedef = jax.tree.flatten(static)
        dynamic_out, static_out = run((tuple(leaves), treedef), dynamic)
        return eqx.combine(dynamic_out, static_out.value)

    return call  # type: ignore[return-value]


def memory_maps() -> tuple[int, int] | None:
    """``(regions, limit)``: the memory regions this process maps and the kernel's limit
    on them (``vm.max_map_count``), on Linux; ``None`` where either cannot be read."""
    try:
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as fh:
            limit = int(fh.read())
        with open("/proc/self/maps", "rb") as fh:
            return sum(1 for _ in fh), limit
    except (OSError, ValueError):
        return None


def release_near_map_limit(share: float = MAP_RELEASE_SHARE) -> bool:
    """Drop every program JAX and Equinox keep compiled (``eqx.clear_caches()``,
    ``jax.clear_caches()``) when this process maps more than ``share`` of
    ``vm.max_map_count`` regions; return whether it did. What is needed again compiles
    again; nothing else changes."""
    maps = memory_maps()
    if maps is None or maps[0] <= share * maps[1]:
        return False
    eqx.clear_caches()
    jax.clear_caches()
    gc.collect()
    return True


def warn_near_map_limit(where: str) -> None:
    """Warn (:class:`~eqprop.guards.EqpropWarning`) when this process maps more than
    :data:`MAP_WARN_SHARE` of ``vm.max_map_count`` regions: the next programs XLA:CPU
    loads may cross it, and the process then dies in a segfault with no message. Meant
    to follow :func:`release_near_map_limit` (its message says the caches are dropped)."""
    from .guards import EqpropWarning

    maps = memory_maps()
    if maps is not None and maps[0] > MAP_WARN_SHARE * maps[1]:
        warnings.warn(
            f"{where}: this process maps {maps[0]} memory regions of the kernel's limit of "
            f"{maps[1]} (vm.max_map_count); each program XLA compiles maps more (tens for a "
            "training step), and past the limit the process crashes with a segfault. "
            "JAX's and Equinox's caches are dropped already: what holds them is the "
            "caller's (compiled functions kept alive); release those, or raise the limit "
            "(as root: sysctl -w vm.max_map_count=262144)", EqpropWarning, stacklevel=3)
