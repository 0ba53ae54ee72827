"""Data sets for eqprop (numpy only).

``load(name)`` returns a :class:`Dataset` (float32 inputs, images NHWC; int32 labels);
``available()`` reports which file-backed sets are present; ``batches`` iterates
deterministic mini-batches. Missing or broken files raise :class:`DataError`.
"""

from .base import DataError, Dataset
from .batches import batches, flatten, num_batches
from .registry import DATASETS, available, load, search_paths

__all__ = ["DATASETS", "DataError", "Dataset", "available", "batches", "flatten", "load",
           "num_batches", "search_paths"]
