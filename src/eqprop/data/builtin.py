"""Built-in data sets that need no files: digits, synthetic, logic gates."""

from __future__ import annotations

import numpy as np

from .base import Dataset

__all__ = ["GATES", "load_digits", "load_synthetic", "load_gate"]

BUILTIN = "built-in"

# name -> (inputs per row of the truth table, output for each row)
GATES: dict[str, tuple[int, tuple[int, ...]]] = {
    "xor": (2, (0, 1, 1, 0)),
    "and": (2, (0, 0, 0, 1)),
    "or": (2, (0, 1, 1, 1)),
    "nand": (2, (1, 1, 1, 0)),
    "nor": (2, (1, 0, 0, 0)),
    "xnor": (2, (1, 0, 0, 1)),
    "not": (1, (1, 0)),
    "identity": (1, (0, 1)),
}


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits: x in [0, 1] (pixel / 16) as ``(N, 8, 8, 1)``, 10 classes.

    Fixed stratified split (``random_state=0``): 1437 train / 360 test.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10, BUILTIN)


def load_synthetic(n_train: int = 1024, n_test: int = 256, n_features: int = 16,
                   n_classes: int = 4) -> Dataset:
    """Deterministic Gaussian-teacher task from ``np.random.default_rng(0)``.

    ``x ~ N(0, I)`` of shape ``(N, 16)``; ``y = argmax(x @ W + b)`` for a fixed random
    linear teacher ``W (16, 4)``, ``b (4,)`` (so the classes are linearly separable).
    First 1024 rows are train, the last 256 test.
    """
    rng = np.random.default_rng(0)
    w = rng.normal(size=(n_features, n_classes)) / np.sqrt(n_features)
    b = 0.1 * rng.normal(size=n_classes)
    x = rng.normal(size=(n_train + n_test, n_features)).astype(np.float32)
    y = np.argmax(x @ w + b, axis=1).astype(np.int32)
    return Dataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                   n_classes, BUILTIN)


def load_gate(name: str) -> Dataset:
    """Full truth table of a logic gate: x in {0, 1} float32 ``(2**D, D)``, labels 0/1.

    Rows are in binary counting order (``[0,0], [0,1], [1,0], [1,1]``); train and
    test are both the whole table.
    """
    n_in, outputs = GATES[name]
    rows = np.arange(2 ** n_in)
    x = ((rows[:, None] >> np.arange(n_in - 1, -1, -1)) & 1).astype(np.float32)
    y = np.asarray(outputs, dtype=np.int32)
    return Dataset(name, x, y, x.copy(), y.copy(), 2, BUILTIN)
