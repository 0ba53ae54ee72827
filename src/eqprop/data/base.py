"""Core data types: the :class:`Dataset` container and :class:`DataError`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "Dataset"]


class DataError(Exception):
    """A data set could not be found or read.

    The message is one human-readable line that names the offending file, or
    every place that was searched and how to get the files (a message given with line
    breaks, say from a hostile file name, is joined onto one line).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class Dataset:
    """An in-memory classification data set.

    Conventions: ``x_*`` are float32, images NHWC ``(N, H, W, C)``, other data
    ``(N, D)``; ``y_*`` are int32 class labels ``(N,)`` in ``[0, n_classes)``.
    ``source`` is the directory the files were read from, or ``"built-in"``.
    When loaded with ``validation > 0`` the test split is the held-out
    validation part of the training set (the true test set is not used).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str

    def __post_init__(self) -> None:
        for field, dtype in (("x_train", np.float32), ("y_train", np.int32),
                             ("x_test", np.float32), ("y_test", np.int32)):
            object.__setattr__(self, field, np.asarray(getattr(self, field), dtype=dtype))
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if y.ndim != 1 or x.ndim < 2 or len(x) != len(y):
                raise ValueError(
                    f"{self.name}: {split} split has x shape {x.shape} and y shape {y.shape}; "
                    "expected x (N, ...) and y (N,)")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train examples {self.x_train.shape[1:]} and test "
                             f"examples {self.x_test.shape[1:]} differ in shape")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28, 1)`` or ``(16,)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def input_size(self) -> int:
        """Number of scalars in one example (product of :attr:`input_shape`)."""
        return int(np.prod(self.input_shape))

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape}, "
                f"test={self.x_test.shape}, n_classes={self.n_classes}, source={self.source!r})")
