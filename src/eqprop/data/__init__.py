"""Data sets for eqprop (numpy, on the host; the augmentation alone is JAX).

``load(name)`` returns a :class:`Dataset` (float32 inputs, images NHWC; int32 labels);
``available()`` reports which file-backed sets are present; ``batches`` iterates
deterministic mini-batches. Missing or broken files raise :class:`DataError`.
``flip_crop`` (:mod:`eqprop.data.augment`) is the training images' augmentation, run on
the device inside the jitted training step.
"""

from .augment import flip_crop
from .base import DataError, Dataset
from .batches import batches, flatten, num_batches
from .registry import DATASETS, available, load, search_paths

__all__ = ["DATASETS", "DataError", "Dataset", "available", "batches", "flatten", "flip_crop", "load",
           "num_batches", "search_paths"]
