"""eqprop: equilibrium propagation in JAX.

The package reads like the algorithm: ``network`` (the vector field) -> ``relax``
(fixed points) -> ``estimate`` (gradients) -> ``update`` (the training step).
"""

from . import activations, estimate, network
from .estimate import free_phase, make_estimator, parse_spec
from .network import DenseNetwork, EquilibriumModel, graph, layered
from .relax import Dynamics, RelaxStats, relax
from .update import init_optimizer, make_eval_step, make_train_step

__version__ = "0.1.0"

__all__ = [
    "activations", "estimate", "network", "Dynamics", "RelaxStats", "relax",
    "DenseNetwork", "EquilibriumModel", "graph", "layered",
    "free_phase", "make_estimator", "parse_spec",
    "make_train_step", "make_eval_step", "init_optimizer",
]
