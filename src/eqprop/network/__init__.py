"""Networks: the vector fields that relax to a fixed point."""

from .base import EquilibriumModel, named_parameters, parameters
from .dense import INPUT, DenseDrive, DenseNetwork, Projection, graph, layered
from .kinds import DenseKind, Graph, Layered, ModelKind
from .readout import MSEReadout, Readout, SoftmaxReadout, make_readout

__all__ = [
    "EquilibriumModel", "DenseNetwork", "DenseDrive", "Projection", "INPUT", "graph", "layered",
    "Readout", "SoftmaxReadout", "MSEReadout", "make_readout", "parameters", "named_parameters",
    "ModelKind", "DenseKind", "Layered", "Graph",
]
