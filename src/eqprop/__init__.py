"""eqprop: equilibrium propagation in JAX.

The package reads like the algorithm: ``network`` (the vector field) -> ``relax``
(fixed points, by the solver objects of ``solvers``) -> ``estimate`` (gradients) ->
``update`` (the training step).
"""

from . import activations, estimate, network, solvers
from .estimate import free_phase, make_estimator, parse_spec
from .network import (BipartiteModel, ConvNetwork, DenseNetwork, EnergyModel, EquilibriumModel, FeedbackModel,
                      InteractionModel, convnet, graph, layered)
from .plugins import load_plugin, register_model
from .relax import RelaxStats, relax
from .solvers import Anderson, FixedPoint, FixedPointSolver, PhaseSolvers
from .update import init_optimizer, make_train_step

__version__ = "0.1.0"

#: submodules imported on first use (``eqprop.train.train(config, out_dir)`` after
#: ``import eqprop``), so that ``import eqprop`` stays light
_LAZY = ("build", "config", "data", "diagnostics", "gradcheck", "homeostasis", "linear", "metrics",
         "registry", "settings", "train", "update")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'eqprop' has no attribute {name!r}")

__all__ = [
    "activations", "estimate", "network", "solvers", "RelaxStats", "relax",
    "FixedPointSolver", "FixedPoint", "Anderson", "PhaseSolvers",
    "EquilibriumModel", "InteractionModel", "EnergyModel", "BipartiteModel", "FeedbackModel",
    "DenseNetwork", "graph", "layered", "ConvNetwork", "convnet",
    "free_phase", "make_estimator", "parse_spec",
    "make_train_step", "init_optimizer",
]
