"""eqprop: equilibrium propagation in JAX.

The package reads like the algorithm: ``network`` (the vector field) -> ``relax``
(fixed points, by the solver objects of ``solvers``) -> ``estimate`` (gradients) ->
``update`` (the training step).

Every name below is imported on first use (PEP 562), so that ``import eqprop`` and the
``eqprop`` command's start import nothing heavy: the command installs its Ctrl-C handling
before JAX loads (:mod:`eqprop.__main__`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: the public names and the submodule each comes from
_NAMES = {
    "free_phase": "estimate", "make_estimator": "estimate", "parse_spec": "estimate",
    "BipartiteModel": "network", "ConvNetwork": "network", "DenseNetwork": "network",
    "EnergyModel": "network", "EquilibriumModel": "network", "FeedbackModel": "network",
    "InteractionModel": "network", "convnet": "network", "graph": "network", "layered": "network",
    "load_plugin": "plugins", "register_model": "plugins",
    "RelaxStats": "relax", "relax": "relax",
    "Anderson": "solvers", "FixedPoint": "solvers", "FixedPointSolver": "solvers",
    "PhaseSolvers": "solvers",
    "init_optimizer": "update", "make_train_step": "update",
}
#: submodules reachable as attributes of ``eqprop`` (``eqprop.train.train(config, out_dir)``)
_SUBMODULES = ("activations", "build", "config", "data", "diagnostics", "estimate", "gradcheck",
               "homeostasis", "linear", "metrics", "network", "plugins", "registry", "relax",
               "settings", "solvers", "train", "update")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'eqprop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))


if TYPE_CHECKING:  # the names, for type checkers and editors
    from . import activations, estimate, network, solvers
    from .estimate import free_phase, make_estimator, parse_spec
    from .network import (BipartiteModel, ConvNetwork, DenseNetwork, EnergyModel, EquilibriumModel,
                          FeedbackModel, InteractionModel, convnet, graph, layered)
    from .plugins import load_plugin, register_model
    from .relax import RelaxStats, relax
    from .solvers import Anderson, FixedPoint, FixedPointSolver, PhaseSolvers
    from .update import init_optimizer, make_train_step

__all__ = [
    "activations", "estimate", "network", "solvers", "RelaxStats", "relax",
    "FixedPointSolver", "FixedPoint", "Anderson", "PhaseSolvers",
    "EquilibriumModel", "InteractionModel", "EnergyModel", "BipartiteModel", "FeedbackModel",
    "DenseNetwork", "graph", "layered", "ConvNetwork", "convnet",
    "free_phase", "make_estimator", "parse_spec",
    "make_train_step", "init_optimizer", "load_plugin", "register_model",
]
