"""Load data sets by name, searching a fixed list of directories.

Every data set is registered in :data:`~eqprop.registry.DATASETS` (the ``[data] name``
values): a registered data set is a callable ``load(path) -> Dataset`` (``path``: the
data set's own directory or ``None``), so a new one is a function plus
``DATASETS.register(name, fn)``. The built-in ones below are generated in memory or read
from files.

Search order for file-backed data sets: the ``path`` argument (the data set's own
directory), then ``$EQPROP_DATA/<name>``, then any system location (Debian's
``dataset-fashion-mnist`` installs to ``/usr/share/datasets/fashion-mnist``).
CIFAR directories may be given as the directory itself or its parent holding the
standard ``cifar-10-batches-py`` / ``cifar-100-python`` subdirectory. ImageNet 32x32 is
read in either published layout, pickles (``train_data_batch_<k>``, ``val_data``) or
npz (the same names with ``.npz``), from the directory itself or the subdirectories its
archives extract to (``Imagenet32_train[_npz]``, ``Imagenet32_val[_npz]``).

Normalisation (every split with the same fixed statistics, so a run's inputs do not
depend on which files or validation split exist):

- CIFAR-10, CIFAR-100: per channel, ``(v / 255 - mean[c]) / std[c]`` with each set's own
  training-set statistics (:data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`,
  :data:`CIFAR100_MEAN`, :data:`CIFAR100_STD`), in
  :func:`~eqprop.data.formats.chw_to_nhwc_normalized`.
- ImageNet 32x32: per channel with the published ImageNet statistics
  (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), the statistics of the hEP papers' code
  (which divides by 1.5 times these stds, and for CIFAR-10 and CIFAR-100 alike by 1.5
  times (0.2023, 0.1994, 0.2010) with the CIFAR-10 means: their CIFAR inputs have std
  about 0.8).
- MNIST, Fashion-MNIST (``v / 255``) and digits (``v / 16``): one channel, scaled to
  [0, 1] and not standardised, as the EP papers' MLP and Fashion-MNIST pipelines (and
  every figure recorded with them here). Their statistics, for reference: Fashion-MNIST
  mean 0.286, std 0.353; digits mean 0.305, std 0.376.

Augmentation is not a loader's business: :func:`eqprop.data.augment.flip_crop` runs on
the device inside the training step.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..registry import DATASETS
from . import builtin, formats
from .base import DataError, Dataset

__all__ = ["DATASETS", "ENV_VAR", "available", "load", "search_paths"]

ENV_VAR = "EQPROP_DATA"
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
# The published ImageNet (ILSVRC-2012 training set) per-channel statistics, as used by
# torchvision: downsampling by box averaging keeps the means and shrinks the stds a
# little, and fixed values keep a run's normalisation independent of which batches exist.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET32_TRAIN_DIRS = (".", "Imagenet32_train", "Imagenet32_train_npz")
IMAGENET32_VAL_DIRS = (".", "Imagenet32_val", "Imagenet32_val_npz")


# --- locating files -------------------------------------------------------------------

def _idx_file(d: Path, stem: str) -> Path | None:
    """``stem.gz`` or ``stem`` in ``d``, whichever exists (gz preferred)."""
    for p in (d / f"{stem}.gz", d / stem):
        if p.is_file():
            return p
    return None


def _missing_idx(d: Path) -> list[str]:
    return [f"{s}[.gz]" for s in IDX_FILES if _idx_file(d, s) is None]


def _missing_plain(names: tuple[str, ...]) -> Callable[[Path], list[str]]:
    return lambda d: [n for n in names if not (d / n).is_file()]


_IMAGENET32_BATCH = re.compile(r"train_data_batch_\d+(\.npz)?")


def _imagenet32_train(d: Path) -> list[Path]:
    """The training batches under ``d``: the first of :data:`IMAGENET32_TRAIN_DIRS` that
    holds any, pickles if it has both layouts, in numeric order."""
    for sub in IMAGENET32_TRAIN_DIRS:
        try:
            found = [p for p in (d / sub).iterdir()
                     if _IMAGENET32_BATCH.fullmatch(p.name) and p.is_file()]
        except OSError:  # not there, or not readable: nothing found here
            continue
        pickles = [p for p in found if p.suffix != ".npz"]
        if found:
            return formats.numeric_sorted(pickles or found)
    return []


def _imagenet32_val(d: Path) -> Path | None:
    for sub in IMAGENET32_VAL_DIRS:
        for name in ("val_data", "val_data.npz"):
            if (d / sub / name).is_file():
                return d / sub / name
    return None


def _missing_imagenet32(d: Path) -> list[str]:
    def where(dirs: tuple[str, ...]) -> str:
        return " or ".join(f"{s}/" for s in dirs)
    missing = [] if _imagenet32_train(d) else [
        f"train_data_batch_<k>[.npz] (in {where(IMAGENET32_TRAIN_DIRS)})"]
    return missing + ([] if _imagenet32_val(d) else [
        f"val_data[.npz] (in {where(IMAGENET32_VAL_DIRS)})"])


# --- reading a located directory ------------------------------------------------------

def _read_idx_dir(d: Path) -> Arrays:
    """idx train/t10k pairs -> x/255 as ``(N, 28, 28, 1)`` float32, int labels."""
    out = []
    for split in ("train", "t10k"):
        x, y = formats.read_idx_pair(_idx_file(d, f"{split}-images-idx3-ubyte"),
                                     _idx_file(d, f"{split}-labels-idx1-ubyte"), 10)
        out += [(x.astype(np.float32) / np.float32(255.0))[..., None], y]
    return tuple(out)


def _read_cifar(d: Path, train: tuple[str, ...], test: str, label_key: str,
                n_classes: int, mean, std) -> Arrays:
    tr = [formats.read_cifar_pickle(d / f, label_key, n_classes) for f in train]
    te = formats.read_cifar_pickle(d / test, label_key, n_classes)
    return (formats.chw_to_nhwc_normalized([b[0] for b in tr], mean, std),
            np.concatenate([b[1] for b in tr]),
            formats.chw_to_nhwc_normalized([te[0]], mean, std), te[1])


def _read_cifar10(d: Path) -> Arrays:
    """CIFAR-10 pickles -> NHWC ``(N, 32, 32, 3)``, per-channel ``(v/255 - mean)/std``."""
    return _read_cifar(d, CIFAR10_FILES[:5], "test_batch", "labels", 10,
                       CIFAR10_MEAN, CIFAR10_STD)


def _read_cifar100(d: Path) -> Arrays:
    """CIFAR-100 pickles (fine labels) -> NHWC, normalised with CIFAR-100 statistics."""
    return _read_cifar(d, ("train",), "test", "fine_labels", 100,
                       CIFAR100_MEAN, CIFAR100_STD)


def _read_imagenet32_file(p: Path) -> tuple[np.ndarray, np.ndarray]:
    read = formats.read_imagenet32_npz if p.suffix == ".npz" else formats.read_imagenet32_pickle
    return read(p)


def _read_imagenet32(d: Path) -> Arrays:
    """ImageNet 32x32 batches (pickle or npz) -> NHWC, labels made 0-based.

    Normalised with the published ImageNet statistics (:data:`IMAGENET_MEAN`,
    :data:`IMAGENET_STD`). Uses whichever ``train_data_batch_<k>`` exist, in numeric
    order. Note: the full set is ~15.7 GB as float32.
    """
    tr = [_read_imagenet32_file(p) for p in _imagenet32_train(d)]
    te = _read_imagenet32_file(_imagenet32_val(d))
    return (formats.chw_to_nhwc_normalized([b[0] for b in tr], IMAGENET_MEAN, IMAGENET_STD),
            np.concatenate([b[1] for b in tr]),
            formats.chw_to_nhwc_normalized([te[0]], IMAGENET_MEAN, IMAGENET_STD), te[1])


# --- the registry ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Builtin:
    """A data set generated in memory (``path`` is not used)."""

    name: str
    make: Callable[[], Dataset]

    def __call__(self, path: str | os.PathLike | None = None) -> Dataset:
        return self.make()


@dataclass(frozen=True)
class _FileSpec:
    """A file-backed data set: what must exist in a directory and how to read it."""

    name: str
    n_classes: int
    missing: Callable[[Path], list[str]]
    read: Callable[[Path], Arrays]
    how: str
    system_dirs: tuple[str, ...] = ()
    subdir: str | None = None

    def __call__(self, path: str | os.PathLike | None = None) -> Dataset:
        return _load_files(self, path)


_FILE_SPECS: tuple[_FileSpec, ...] = (
    _FileSpec("mnist", 10, _missing_idx, _read_idx_dir,
              "download the four MNIST idx files (train-images-idx3-ubyte.gz, "
              "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
              f"t10k-labels-idx1-ubyte.gz) into a directory and pass it as path, "
              f"or put them in ${ENV_VAR}/mnist"),
    _FileSpec("fashion-mnist", 10, _missing_idx, _read_idx_dir,
              "apt-get update && apt-get install -y dataset-fashion-mnist "
              "(installs to /usr/share/datasets/fashion-mnist), or put the four idx files "
              f"in ${ENV_VAR}/fashion-mnist or a directory passed as path",
              system_dirs=("/usr/share/datasets/fashion-mnist",)),
    _FileSpec("cifar10", 10, _missing_plain(CIFAR10_FILES), _read_cifar10,
              "download and extract cifar-10-python.tar.gz (data_batch_1..5, test_batch) "
              f"into ${ENV_VAR}/cifar10 or a directory passed as path",
              subdir="cifar-10-batches-py"),
    _FileSpec("cifar100", 100, _missing_plain(CIFAR100_FILES), _read_cifar100,
              "download and extract cifar-100-python.tar.gz (train, test) "
              f"into ${ENV_VAR}/cifar100 or a directory passed as path",
              subdir="cifar-100-python"),
    _FileSpec("imagenet32", 1000, _missing_imagenet32, _read_imagenet32,
              "download the downsampled ImageNet 32x32 batches from image-net.org, pickled "
              "(Imagenet32_train.zip, Imagenet32_val.zip) or npz (Imagenet32_train_npz.zip, "
              f"Imagenet32_val_npz.zip), and extract them into ${ENV_VAR}/imagenet32 or a "
              "directory passed as path"),
)

_BUILTINS: tuple[_Builtin, ...] = (
    _Builtin("digits", builtin.load_digits),
    _Builtin("synthetic", builtin.load_synthetic),
    *(_Builtin(g, lambda g=g: builtin.load_gate(g)) for g in builtin.GATES),
)

for _entry in (*_BUILTINS, *_FILE_SPECS):
    DATASETS.register(_entry.name, _entry)
del _entry


def search_paths(name: str, path: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for ``name``, in order (each base, then its standard subdir)."""
    spec = _spec(name)
    bases = [Path(path)] if path is not None else []
    if os.environ.get(ENV_VAR):
        bases.append(Path(os.environ[ENV_VAR]) / name)
    bases += [Path(p) for p in spec.system_dirs]
    return _with_subdir(spec, bases)


def _with_subdir(spec: _FileSpec, bases: list[Path]) -> list[Path]:
    """Each base directory, then its standard subdirectory (when the data set has one)."""
    dirs: list[Path] = []
    for b in bases:
        dirs += [b] + ([b / spec.subdir] if spec.subdir else [])
    return dirs


def _spec(name: str) -> _FileSpec:
    _check_name(name)
    entry = DATASETS[name]
    if not isinstance(entry, _FileSpec):
        raise DataError(f"{name} is built in; it has no files to search for")
    return entry


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")


def _locate(name: str) -> tuple[Path | None, list[str]]:
    """First directory of ``$EQPROP_DATA`` and the system places holding every needed
    file, and a note per directory searched."""
    return _locate_in(_spec(name), search_paths(name))


def _locate_in(spec: _FileSpec, dirs: list[Path]) -> tuple[Path | None, list[str]]:
    """First of ``dirs`` holding every needed file, and a note per directory searched."""
    notes = []
    for d in dirs:
        if not d.is_dir():
            notes.append(f"{d} (no such directory)")
            continue
        missing = spec.missing(d)
        if not missing:
            return d, notes
        notes.append(f"{d} (missing {', '.join(missing)})")
    return None, notes


def available() -> list[dict]:
    """One entry per data set: ``name``, ``available``, ``where``, ``searched``, ``how``.

    Built-in sets report ``where="built-in"`` and an empty ``searched`` list; data sets
    registered by plugins ``where="registered"``. Only ``$EQPROP_DATA`` and system
    locations are consulted (no ``path``).
    """
    out = []
    for name, entry in DATASETS.items():
        if not isinstance(entry, _FileSpec):
            where, how = ((builtin.BUILTIN, "built in; nothing to download")
                          if isinstance(entry, _Builtin) else ("registered", "registered by a plugin"))
            out.append({"name": name, "available": True, "where": where, "searched": [],
                        "how": how})
            continue
        where, _ = _locate(name)
        out.append({"name": name, "available": where is not None,
                    "where": None if where is None else str(where),
                    "searched": [str(p) for p in search_paths(name)],
                    "how": entry.how})
    return out


def load(name: str, *, path: str | os.PathLike | None = None, validation: float = 0.0,
         seed: int = 0) -> Dataset:
    """Load the registered data set ``name`` (one of :data:`~eqprop.registry.DATASETS`).

    ``path`` is the data set's own directory: when given, the only place searched (its
    standard subdirectory too), so that a wrong path is an error rather than a silent
    fallback to another copy; else ``$EQPROP_DATA`` and the system locations (built-in
    sets ignore it). With ``validation`` in ``(0, 1)`` that fraction of the training set,
    chosen by a ``seed``-ed shuffle, becomes the *test* split: the returned test split
    is then the held-out validation set and the true test set is not returned.
    Raises :class:`DataError` if the name is unknown, the files are not found, or
    a file is malformed.
    """
    _check_name(name)
    if not 0.0 <= validation < 1.0:
        raise DataError(f"validation must be in [0, 1), got {validation}")
    ds = DATASETS[name](path)
    if path is not None and ds.source == "built-in":  # a review's --set data.path went unnoticed
        import warnings

        from ..guards import EqpropWarning

        warnings.warn(f"data.path: {name} is built in (no files are read), so {path} is not used",
                      EqpropWarning, stacklevel=2)
    return split_validation(ds, validation, seed) if validation > 0 else ds


def _load_files(spec: _FileSpec, path: str | os.PathLike | None) -> Dataset:
    name = spec.name
    if path is not None:
        # a directory the user named is the only place looked at: falling back to another
        # copy would train on data the user did not ask for, and say nothing
        where, notes = _locate_in(spec, _with_subdir(spec, [Path(path)]))
        if where is None:
            elsewhere, _ = _locate(name)
            hint = (f"; a copy is in {elsewhere}: remove data.path to use it" if elsewhere
                    else f". Get it with: {spec.how}")
            raise DataError(f"data.path: {name} not found in {'; '.join(notes)}{hint}")
    else:
        where, notes = _locate(name)
    if where is None:
        searched = "; ".join(notes) or f"nothing (no path given and ${ENV_VAR} not set)"
        raise DataError(f"{name} not found; searched: {searched}. Get it with: {spec.how}")
    x_tr, y_tr, x_te, y_te = spec.read(where)
    return Dataset(name, x_tr, y_tr, x_te, y_te, spec.n_classes, str(where))


def split_validation(ds: Dataset, validation: float, seed: int) -> Dataset:
    """Move ``round(validation * N)`` (at least 1) shuffled training examples to the test split."""
    n = len(ds.x_train)
    n_val = max(1, int(round(validation * n)))
    if n_val >= n:
        raise DataError(f"{ds.name}: validation={validation} leaves no training examples "
                        f"(N={n})")
    perm = np.random.default_rng(seed).permutation(n)
    val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Dataset(ds.name, ds.x_train[tr], ds.y_train[tr], ds.x_train[val], ds.y_train[val],
                   ds.n_classes, ds.source)
