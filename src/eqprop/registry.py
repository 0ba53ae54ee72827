"""One registry per kind of component: the only vocabulary of the package.

Each component registers itself once, next to its definition::

    from eqprop.registry import ESTIMATORS

    @ESTIMATORS.register("hep")
    class HolomorphicEP(Estimator): ...

The configuration's allowed values, ``eqprop config``, ``docs/config.md`` and the error
messages read these registries; nothing else keeps a list of names. A plugin
(``--plugin my_field.py``) registers its components the same way.

Pure Python; the components themselves are registered when their modules are imported
(:func:`load_builtins`).
"""

from __future__ import annotations

import importlib

from .settings import Registry

__all__ = ["MODELS", "ESTIMATORS", "SOLVERS", "LINEAR_SOLVERS", "ACTIVATIONS", "READOUTS",
           "DATASETS", "LOGGERS", "PRUNERS", "load_builtins"]

#: model kinds (``[model] kind``): settings classes with ``build(input_size, n_classes, key)``
MODELS: Registry = Registry("model kind")
#: gradient estimators (``[estimator] name``)
ESTIMATORS: Registry = Registry("estimator")
#: fixed-point solvers of the relaxations (``[dynamics] solver``)
SOLVERS: Registry = Registry("solver")
#: linear solvers of the exact estimators (``[dynamics] linear_solver``)
LINEAR_SOLVERS: Registry = Registry("linear solver")
#: activations (``[model] activation``)
ACTIVATIONS: Registry = Registry("activation")
#: readouts (``[model] readout``)
READOUTS: Registry = Registry("readout")
#: data sets (``[data] name``)
DATASETS: Registry = Registry("data set")
#: metric loggers (``[logging] loggers``); ``metrics.jsonl`` is always written
LOGGERS: Registry = Registry("logger")
#: pruning methods (``[pruning] method``)
PRUNERS: Registry = Registry("pruning method")

_BUILTIN_MODULES = (
    "eqprop.activations",
    "eqprop.network",
    "eqprop.solvers",
    "eqprop.estimate",
    "eqprop.data",
    "eqprop.train.loggers",
    "eqprop.pruning",
)


def load_builtins() -> None:
    """Import the modules that register the built-in components (idempotent)."""
    for name in _BUILTIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:  # a module not written yet during a refactor
            if e.name != name:
                raise
