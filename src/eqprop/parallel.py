"""Devices: the ``(seed, data)`` mesh a run is laid out on, from one CPU core to many hosts.

A run's arrays live on a :class:`jax.sharding.Mesh` with two axes (``[parallel]``):

- ``data``: each batch is split over it (examples on axis 0), the networks are
  replicated; every reduction over the batch (the relaxation's tolerance test, the
  divergence check, the mean of the gradient) is a global one, computed by XLA's
  partitioner (GSPMD) with collectives, so it gives the one-device result up to the
  order of a floating-point sum;
- ``seed``: the ``K = train.seeds`` stacked networks are split over it (their leading
  axis); each batch is replicated along it.

``devices = D`` devices with ``seed_devices = S`` form an ``S x (D / S)`` mesh. On a
CPU, ``devices = "all"`` (or a count) makes XLA expose one host device per core before
JAX initialises (:func:`configure`): at batch 50 one core of a 2-core machine otherwise
sits idle. Several processes (:func:`initialize`, ``jax.distributed``) extend the same
mesh over hosts: each process feeds its own rows of every batch
(:meth:`Layout.batch`), and only process 0 writes files.

Nothing here is specific to equilibrium propagation; the trainer places every batch and
state through :class:`Layout` (:mod:`eqprop.train.placement`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .guards import EqpropWarning

__all__ = ["SEED", "DATA", "Layout", "configure", "initialize", "make_layout", "is_writer",
           "backends_initialized"]

PyTree = Any

#: the mesh's axis names
SEED, DATA = "seed", "data"

_FORCE_FLAG = "--xla_force_host_platform_device_count"


def backends_initialized() -> bool:
    """Whether JAX has created its backends (after which the device count is fixed)."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _host_count(devices: int | str) -> int:
    return (os.cpu_count() or 1) if devices == "all" else int(devices)


def configure(devices: int | str) -> None:
    """Arrange for ``devices`` host (CPU) devices before JAX initialises its backends.

    ``"all"`` means one per core (``os.cpu_count()``). Left alone when the backends exist
    already (the count is then fixed; :func:`make_layout` says so if it is too small),
    when the user set ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, or the JAX
    option ``jax_num_cpu_devices``, or when one device is asked for. Only the CPU
    backend reads it: on a GPU the devices are the GPUs.

    **Arguments:** ``devices``: ``[parallel] devices``.
    """
    if devices == 1 or backends_initialized():
        return
    if _FORCE_FLAG in os.environ.get("XLA_FLAGS", "") or jax.config.jax_num_cpu_devices != -1:
        return
    jax.config.update("jax_num_cpu_devices", _host_count(devices))


def initialize(coordinator: str | None = None, processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Join a multi-process run (``jax.distributed.initialize``), before any JAX work.

    Arguments not given are read from ``EQPROP_COORDINATOR``, ``EQPROP_PROCESSES`` and
    ``EQPROP_PROCESS_ID``; when none is set either, nothing happens (one process), except
    on a cluster that ``jax.distributed`` detects itself (SLURM, Open MPI), which the
    variable ``EQPROP_DISTRIBUTED=auto`` asks for. On a CPU the collectives are gloo's.

    **Returns:** whether this process is part of a multi-process run.

    **Raises:** ``ValueError`` (one line) for an incomplete or inconsistent set, or when
    JAX's backends exist already.
    """
    env = os.environ
    coordinator = coordinator or env.get("EQPROP_COORDINATOR") or None
    processes = processes if processes is not None else _env_int("EQPROP_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("EQPROP_PROCESS_ID")
    auto = env.get("EQPROP_DISTRIBUTED", "") == "auto"
    given = [v is not None for v in (coordinator, processes, process_id)]
    if not any(given) and not auto:
        return False
    if any(given) and not all(given):
        raise ValueError("multi-process run: give all of --coordinator, --processes and "
                         "--process-id (or EQPROP_COORDINATOR, EQPROP_PROCESSES, EQPROP_PROCESS_ID)")
    if backends_initialized():
        raise ValueError("multi-process run: JAX was initialised before eqprop could join the "
                         "other processes; pass the flags to the eqprop command itself")
    if all(given):
        if not 0 <= process_id < processes:
            raise ValueError(f"--process-id: must be in [0, {processes}), got {process_id}")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()
    return True


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: must be an integer, got {text!r}") from None


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0; the only one of a
    single-process run). Does not initialise JAX's backends (so that :func:`configure`
    may still follow)."""
    from jax._src import distributed

    return (distributed.global_state.process_id or 0) == 0


@dataclass(frozen=True)
class Layout:
    """Where a run's arrays live: ``mesh`` with axes ``(seed, data)``, or ``None`` for one
    device (the default device; nothing is sharded).

    **Fields:** ``mesh``; ``seeds``: ``K``, the networks of the run (stacked when > 1).
    """

    mesh: Mesh | None = None
    seeds: int = 1

    @property
    def data_size(self) -> int:
        """Devices along the data axis (1 on one device)."""
        return 1 if self.mesh is None else self.mesh.shape[DATA]

    @property
    def seed_size(self) -> int:
        """Devices along the seed axis (1 on one device)."""
        return 1 if self.mesh is None else self.mesh.shape[SEED]

    @property
    def devices(self) -> int:
        return self.data_size * self.seed_size

    def sharding(self, *spec: Any) -> NamedSharding:
        """``NamedSharding(mesh, PartitionSpec(*spec))`` (``mesh`` must be set)."""
        assert self.mesh is not None
        return NamedSharding(self.mesh, P(*spec))

    def _put(self, tree: PyTree, spec_of) -> PyTree:
        arrays, static = eqx.partition(tree, eqx.is_array)
        if self.mesh is None:
            return eqx.combine(jax.device_put(arrays), static)
        placed = jax.tree.map(lambda a: _global_array(a, self.sharding(*spec_of(np.ndim(a)))), arrays)
        return eqx.combine(placed, static)

    def replicated(self, tree: PyTree) -> PyTree:
        """``tree`` whole on every device (models of one seed, keys, counters)."""
        return self._put(tree, lambda nd: ())

    def stacked(self, tree: PyTree) -> PyTree:
        """A stacked tree (leading axis ``K``; :func:`eqprop.train.step.stack`) split along
        the seed axis; an unstacked one (``K = 1``) replicated."""
        if self.seeds == 1:
            return self.replicated(tree)
        return self._put(tree, lambda nd: (SEED,) if nd else ())

    def batch(self, tree: PyTree, *, axis: int = 0) -> PyTree:
        """Leaves with examples on ``axis`` (0, or 1 for per-seed warm-start states
        ``(K, B, ...)`` split along the seed axis on axis 0) split over the data axis.

        In a multi-process run every process passes the whole batch and keeps its own rows.

        **Raises:** ``ValueError`` when the batch does not split evenly over the data axis.
        """
        def spec(nd: int) -> tuple:
            if nd == 0:
                return ()
            return (None,) * axis + (DATA,) if axis == 0 else (SEED, DATA)

        if self.mesh is not None:
            for a in jax.tree.leaves(eqx.filter(tree, eqx.is_array)):
                if np.ndim(a) > axis and np.shape(a)[axis] % self.data_size:
                    raise ValueError(f"a batch of {np.shape(a)[axis]} examples does not split "
                                     f"over the {self.data_size} devices of the data axis")
        return self._put(tree, spec)

    def constrain(self, tree: PyTree, spec: tuple) -> PyTree:
        """Inside ``jit``: ``tree``'s array leaves constrained to ``spec`` (``()``:
        replicated; ``(SEED,)``: split along the leading seed axis); the identity on one
        device."""
        if self.mesh is None:
            return tree
        arrays, static = eqx.partition(tree, eqx.is_array)
        s = self.sharding(*spec)
        arrays = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, s), arrays)
        return eqx.combine(arrays, static)

    def constrain_stacked(self, tree: PyTree) -> PyTree:
        """Inside ``jit``: as :meth:`stacked` places it."""
        return self.constrain(tree, (SEED,) if self.seeds > 1 else ())

    def gather(self, tree: PyTree) -> PyTree:
        """``tree`` replicated on every device, so that every process can read it (a
        collective: in a multi-process run every process calls it). The identity in a
        single-process run, where every array is readable already."""
        if self.mesh is None or jax.process_count() == 1:
            return tree
        arrays, static = eqx.partition(tree, eqx.is_array)
        arrays = jax.jit(lambda t: t, out_shardings=self.sharding())(arrays)
        return eqx.combine(arrays, static)

    def describe(self) -> str:
        """One line: ``"1 device"`` or ``"4 devices (seed 1 x data 4), 2 processes"``."""
        if self.mesh is None:
            return "1 device"
        procs = jax.process_count()
        return (f"{self.devices} devices (seed {self.seed_size} x data {self.data_size})"
                + (f", {procs} processes" if procs > 1 else ""))


def _global_array(a: Any, sharding: NamedSharding) -> jax.Array:
    """``a`` (a host or device array, the same on every process) as a global array with
    ``sharding``; each process supplies the shards of its own devices only."""
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def make_layout(devices: int | str, seed_devices: int, *, seeds: int, batch_size: int) -> Layout:
    """The layout of ``[parallel]`` for a run of ``seeds`` networks and batches of
    ``batch_size`` examples.

    **Arguments:** ``devices``, ``seed_devices``: ``[parallel]``; ``seeds``: ``K``;
    ``batch_size``: ``[data] batch_size``.

    **Returns:** a :class:`Layout` (``mesh=None`` when one device is used).

    **Raises:** ``ValueError`` (one line naming the ``[parallel]`` or ``[data]`` key)
    when fewer devices exist than asked for, ``seed_devices`` divides neither, or the
    batch does not split over the data axis. **Warns** (:class:`~eqprop.guards.EqpropWarning`)
    when more host devices than cores are used in one process (allowed, never faster).
    """
    available = jax.devices()
    n = len(available) if devices == "all" else int(devices)
    if n > len(available):
        hint = (" (on a CPU set [parallel] devices before JAX initialises: pass it to the "
                "eqprop command, or set XLA_FLAGS=--xla_force_host_platform_device_count=N)"
                if available[0].platform == "cpu" else "")
        raise ValueError(f"parallel.devices: {n} requested but {len(available)} "
                         f"{available[0].platform} device(s) exist{hint}")
    if n % seed_devices:
        raise ValueError(f"parallel.seed_devices: must divide the {n} devices, got {seed_devices}")
    if seeds % seed_devices:
        raise ValueError(f"parallel.seed_devices: must divide train.seeds = {seeds}, "
                         f"got {seed_devices}")
    data = n // seed_devices
    if batch_size % data:
        raise ValueError(f"data.batch_size: must be a multiple of the {data} devices of the data "
                         f"axis ([parallel] devices / seed_devices), got {batch_size}")
    if n == 1:
        return Layout(None, seeds)
    cores = os.cpu_count() or 1
    if available[0].platform == "cpu" and jax.process_count() == 1 and n > cores:
        warnings.warn(EqpropWarning(
            f"parallel.devices: {n} host devices share {cores} cores: the run is split as asked "
            f"but is slower than on {cores} (more devices than cores only add the exchanges "
            f"between them: measured 4.9x slower for 4 devices on 2 cores); devices = \"all\" "
            "gives one per core"), stacklevel=2)
    grid = np.asarray(available[:n]).reshape(seed_devices, data)
    return Layout(Mesh(grid, (SEED, DATA)), seeds)
