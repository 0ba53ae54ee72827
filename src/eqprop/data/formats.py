"""Readers for on-disk data formats: idx (MNIST family), CIFAR pickles, ImageNet32 npz.

Every reader raises :class:`DataError` naming the file and the problem; raw
numpy / pickle / gzip / zip exceptions never escape.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import DataError

__all__ = [
    "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "read_bytes", "read_idx", "read_idx_images",
    "read_idx_labels", "read_cifar_pickle", "read_imagenet32_npz", "chw_to_nhwc_normalized",
]

IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim (N,)
CHW_32 = (3, 32, 32)
CHW_32_SIZE = 3 * 32 * 32


def read_bytes(path: str | os.PathLike) -> bytes:
    """Return the contents of ``path``, gunzipped if its name ends in ``.gz``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: bad gzip data ({e})") from None


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes; the header must carry ``magic``.

    Header: 4-byte big-endian magic (``0x0000080{ndim}``) then ``ndim`` big-endian
    uint32 dims. Returns a uint8 array of those dims.
    """
    data = read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated idx file ({len(data)} bytes, no header)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path}: wrong idx magic number 0x{found:08x} (expected 0x{magic:08x})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(data) - header
    if body < expected:
        raise DataError(f"{path}: truncated idx file; header promises dims {dims} = "
                        f"{expected} bytes but only {body} follow")
    if body > expected:
        raise DataError(f"{path}: malformed idx file; {body - expected} unexpected bytes "
                        f"after the {expected} promised by dims {dims}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read idx3 images as uint8 ``(N, rows, cols)``."""
    return read_idx(path, IDX_IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike, n_classes: int | None = None) -> np.ndarray:
    """Read idx1 labels as uint8 ``(N,)``, optionally checking they are ``< n_classes``."""
    labels = read_idx(path, IDX_LABELS_MAGIC)
    _check_label_range(path, labels, 0, n_classes)
    return labels


def read_idx_pair(images: str | os.PathLike, labels: str | os.PathLike,
                  n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read matching idx image/label files; counts must agree."""
    x, y = read_idx_images(images), read_idx_labels(labels, n_classes)
    if len(x) != len(y):
        raise DataError(f"{labels}: {len(y)} labels but {images} holds {len(x)} images")
    return x, y


def _check_label_range(path: str | os.PathLike, labels: np.ndarray, lo: int,
                       n_classes: int | None) -> None:
    if labels.size == 0 or n_classes is None:
        return
    lo_found, hi_found = int(labels.min()), int(labels.max())
    if lo_found < lo or hi_found >= lo + n_classes:
        raise DataError(f"{path}: labels range over [{lo_found}, {hi_found}], "
                        f"expected [{lo}, {lo + n_classes - 1}]")


def _get_key(d: dict, key: str):
    """Look up ``key`` as bytes (Python-2 pickles) or str."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _as_chw_batch(path: str | os.PathLike, data, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``data`` as uint8 ``(N, 3072)`` CHW rows and ``labels`` as ``(N,)``."""
    try:
        data = np.asarray(data)
        labels = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: data or labels are not arrays ({e})") from None
    if data.dtype != np.uint8:
        raise DataError(f"{path}: data has dtype {data.dtype}, expected uint8")
    if data.size % CHW_32_SIZE or (data.ndim == 2 and data.shape[1] != CHW_32_SIZE) \
            or data.ndim not in (1, 2):
        raise DataError(f"{path}: data has shape {data.shape}; its length is not a multiple "
                        f"of {CHW_32_SIZE} (= 3x32x32)")
    data = data.reshape(-1, CHW_32_SIZE)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels have shape {labels.shape} and dtype {labels.dtype}, "
                        "expected 1-D integers")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data, labels.astype(np.int64)


def read_cifar_pickle(path: str | os.PathLike, label_key: str,
                      n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python-pickle batch.

    The pickle (``encoding="bytes"``) is a dict with ``b"data"`` uint8
    ``(N, 3072)`` in CHW order and ``label_key`` (``b"labels"`` for CIFAR-10,
    ``b"fine_labels"`` for CIFAR-100). Returns uint8 ``(N, 3072)`` and int64 ``(N,)``.
    """
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - unpickling can raise nearly anything
        raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: pickle holds a {type(d).__name__}, expected a dict")
    missing = [k for k in ("data", label_key) if _get_key(d, k) is None]
    if missing:
        raise DataError(f"{path}: pickle is missing key(s) {', '.join(missing)}")
    data, labels = _as_chw_batch(path, _get_key(d, "data"), _get_key(d, label_key))
    _check_label_range(path, labels, 0, n_classes)
    return data, labels


def read_imagenet32_npz(path: str | os.PathLike,
                        n_classes: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Read one downsampled-ImageNet 32x32 ``.npz`` batch.

    Keys ``"data"`` uint8 ``(N, 3072)`` CHW and ``"labels"`` 1-based ints.
    Returns uint8 ``(N, 3072)`` and 0-based int64 labels ``(N,)``.
    """
    bad = (ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, pickle.UnpicklingError)
    try:
        npz = np.load(path, allow_pickle=False)
    except OSError as e:
        raise DataError(f"{path}: cannot read npz ({e.strerror or e})") from None
    except bad as e:
        raise DataError(f"{path}: bad npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an npz archive (holds a single array)")
    try:
        missing = [k for k in ("data", "labels") if k not in npz.files]
        if missing:
            raise DataError(f"{path}: npz is missing key(s) {', '.join(missing)}")
        data, labels = npz["data"], npz["labels"]
    except (OSError, *bad) as e:
        raise DataError(f"{path}: bad npz archive ({type(e).__name__}: {e})") from None
    finally:
        npz.close()
    data, labels = _as_chw_batch(path, data, labels)
    _check_label_range(path, labels, 1, n_classes)
    return data, labels - 1


def chw_to_nhwc_normalized(batches: Sequence[np.ndarray], mean: Sequence[float],
                           std: Sequence[float], chunk: int = 10_000) -> np.ndarray:
    """Concatenate uint8 CHW rows ``(N_i, 3072)`` into float32 NHWC ``(N, 32, 32, 3)``.

    Each pixel becomes ``(v / 255 - mean[c]) / std[c]``; conversion is chunked so
    peak memory stays close to the float32 output.
    """
    total = sum(len(b) for b in batches)
    out = np.empty((total, 32, 32, 3), dtype=np.float32)
    mean32 = np.asarray(mean, dtype=np.float32)
    scale = np.float32(1.0 / 255.0) / np.asarray(std, dtype=np.float32)
    shift = mean32 / np.asarray(std, dtype=np.float32)
    start = 0
    for b in batches:
        for i in range(0, len(b), chunk):
            rows = b[i:i + chunk].reshape(-1, *CHW_32).transpose(0, 2, 3, 1)
            out[start:start + len(rows)] = rows.astype(np.float32) * scale - shift
            start += len(rows)
    return out


def numeric_sorted(paths: Sequence[Path]) -> list[Path]:
    """Sort paths by the last integer in their name (``batch_2`` before ``batch_10``)."""
    def key(p: Path) -> tuple[int, str]:
        nums = re.findall(r"\d+", p.name)
        return (int(nums[-1]) if nums else -1, p.name)
    return sorted(paths, key=key)
