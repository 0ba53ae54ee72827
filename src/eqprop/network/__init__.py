"""Networks: the vector fields that relax to a fixed point."""

from .base import (BipartiteModel, BoxProjectedModel, ConnectedModel, EnergyModel, EquilibriumModel,
                   FeedbackModel, FeedForwardModel, InteractionModel, MixedPrecisionModel, named_parameters, parameters)
from .dense import INPUT, DenseDrive, DenseNetwork, Projection, graph, layered
from .conv import ConvDrive, ConvNetwork, convnet, softmax_pool
from .kinds import Conv, DenseKind, Graph, Layered, ModelKind
from .directed import (DeepNetwork, Directed, DirectedNetwork, RateNetwork, TiedRateNetwork,
                       directed)
from .readout import MSEReadout, Readout, SoftmaxReadout, make_readout

__all__ = [
    "EquilibriumModel", "InteractionModel", "EnergyModel", "BipartiteModel", "FeedbackModel",
    "BoxProjectedModel", "ConnectedModel", "FeedForwardModel", "MixedPrecisionModel", "DenseNetwork", "DenseDrive", "Projection", "INPUT", "graph", "layered",
    "Readout", "SoftmaxReadout", "MSEReadout", "make_readout", "parameters", "named_parameters",
    "ModelKind", "DenseKind", "Layered", "Graph", "Conv",
    "ConvNetwork", "ConvDrive", "convnet", "softmax_pool",
    "DirectedNetwork", "DeepNetwork", "RateNetwork", "TiedRateNetwork", "Directed", "directed",
]
