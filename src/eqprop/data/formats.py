"""Readers for on-disk data formats: idx (MNIST family), CIFAR pickles, ImageNet 32x32
pickles and npz.

Every file is untrusted input. Every reader raises :class:`DataError`, one line naming
the file and the problem; raw numpy / pickle / gzip / zip exceptions never escape. No
reader runs code a file names (pickles go through :mod:`.safepickle`, npz members are
read without pickle), and none allocates more than the file justifies: a size claimed
by a header is checked against the file's size before anything of that size is
allocated (for gzip and deflate, against the most the compressed bytes can expand to).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import DataError
from .safepickle import load_data_pickle

__all__ = [
    "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "read_idx", "read_idx_images", "read_idx_labels",
    "read_cifar_pickle", "read_imagenet32_pickle", "read_imagenet32_npz",
    "chw_to_nhwc_normalized",
]

IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dim (N,)
CHW_32 = (3, 32, 32)
CHW_32_SIZE = 3 * 32 * 32
# DEFLATE (gzip, zip) expands at most ~1032:1 (a 258-byte match per 2 bits); a claim of
# more than this many bytes per compressed byte cannot be true.
DEFLATE_MAX_RATIO = 1032


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def _read_into(f, n: int) -> bytearray:
    """Up to ``n`` bytes from ``f`` into one buffer of ``n`` (shortened if ``f`` ends)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    view.release()
    del buf[got:]
    return buf


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzipped if its name ends in ``.gz``).

    Header: 4-byte big-endian magic (``0x0000080{ndim}``) then ``ndim`` big-endian
    uint32 dims. The size the dims claim is checked against the file's size (for a
    ``.gz``, against :data:`DEFLATE_MAX_RATIO` times it) before it is allocated.

    **Returns:** a uint8 array of those dims.

    **Raises:** :class:`DataError` naming ``path``.
    """
    path = Path(path)
    size = _file_size(path)
    gz = path.suffix == ".gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            return _read_idx_stream(path, f, magic, size, gz)
    except (OSError, EOFError, zlib.error) as e:
        if gz and not isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
            raise DataError(f"{path}: bad gzip data ({e})") from None
        raise DataError(f"{path}: cannot read file ({getattr(e, 'strerror', None) or e})") \
            from None


def _read_idx_stream(path: Path, f, magic: int, size: int, gz: bool) -> np.ndarray:
    head = _read_into(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated idx file ({len(head)} bytes, no header)")
    (found,) = struct.unpack(">I", head)
    if found != magic:
        raise DataError(f"{path}: wrong idx magic number 0x{found:08x} (expected 0x{magic:08x})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims_raw = _read_into(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated idx header ({4 + len(dims_raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    expected = 1
    for d in dims:
        expected *= d
    if gz:
        if expected > DEFLATE_MAX_RATIO * size:
            raise DataError(f"{path}: truncated idx file; header promises dims {dims} = "
                            f"{expected} bytes, more than {size} gzipped bytes can hold")
    elif size - header != expected:
        body = size - header
        if body < expected:
            raise DataError(f"{path}: truncated idx file; header promises dims {dims} = "
                            f"{expected} bytes but only {body} follow")
        raise DataError(f"{path}: malformed idx file; {body - expected} unexpected bytes "
                        f"after the {expected} promised by dims {dims}")
    body = _read_into(f, expected)
    if len(body) < expected:
        raise DataError(f"{path}: truncated idx file; header promises dims {dims} = "
                        f"{expected} bytes but only {len(body)} follow")
    if f.read(1):
        raise DataError(f"{path}: malformed idx file; unexpected bytes after the {expected} "
                        f"promised by dims {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


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


def _labels_array(path: str | os.PathLike, labels) -> np.ndarray:
    """A list of ints or a 1-D integer array as int64 ``(N,)``."""
    if isinstance(labels, list):
        bad = next((v for v in labels if type(v) is not int), None)
        if bad is not None or (labels and not -2**63 <= min(labels) <= max(labels) < 2**63):
            what = f"a {type(bad).__name__}" if bad is not None else "integers beyond 64 bits"
            raise DataError(f"{path}: labels hold {what}, expected 1-D integers")
        return np.array(labels, dtype=np.int64)
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 \
            or not np.issubdtype(labels.dtype, np.integer):
        shape, dtype = getattr(labels, "shape", None), getattr(labels, "dtype", None)
        what = (f"have shape {shape} and dtype {dtype}" if isinstance(labels, np.ndarray)
                else f"are a {type(labels).__name__}")
        raise DataError(f"{path}: labels {what}, expected 1-D integers")
    if labels.dtype == np.uint64 and labels.size and int(labels.max()) >= 2**63:
        raise DataError(f"{path}: labels hold integers beyond 64 bits, expected 1-D integers")
    return labels.astype(np.int64)


def _as_chw_batch(path: str | os.PathLike, data, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``data`` as uint8 ``(N, 3072)`` CHW rows and ``labels`` as ``(N,)`` ints."""
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: data is a {type(data).__name__}, expected a uint8 array")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: data has dtype {data.dtype}, expected uint8")
    if data.size % CHW_32_SIZE or (data.ndim == 2 and data.shape[1] != CHW_32_SIZE) \
            or data.ndim not in (1, 2):
        raise DataError(f"{path}: data has shape {data.shape}; its length is not a multiple "
                        f"of {CHW_32_SIZE} (= 3x32x32)")
    data = data.reshape(-1, CHW_32_SIZE)
    labels = _labels_array(path, labels)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data, labels


def _batch_from_dict(path: str | os.PathLike, d: dict, label_key: str,
                     what: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [k for k in ("data", label_key) if _get_key(d, k) is None]
    if missing:
        raise DataError(f"{path}: {what} is missing key(s) {', '.join(missing)}")
    return _as_chw_batch(path, _get_key(d, "data"), _get_key(d, label_key))


def read_cifar_pickle(path: str | os.PathLike, label_key: str,
                      n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python-pickle batch, without running anything the file names.

    The pickle (read with ``encoding="bytes"`` by the restricted unpickler
    :func:`~eqprop.data.safepickle.load_data_pickle`) is a dict with ``b"data"`` uint8
    ``(N, 3072)`` in CHW order and ``label_key`` (``"labels"`` for CIFAR-10,
    ``"fine_labels"`` for CIFAR-100), a list of ints.

    **Returns:** uint8 ``(N, 3072)`` and int64 ``(N,)`` in ``[0, n_classes)``.

    **Raises:** :class:`DataError` naming ``path`` (a refused global among the causes).
    """
    data, labels = _batch_from_dict(path, load_data_pickle(path), label_key, "pickle")
    _check_label_range(path, labels, 0, n_classes)
    return data, labels


def read_imagenet32_pickle(path: str | os.PathLike,
                           n_classes: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Read one downsampled-ImageNet 32x32 pickle batch (``train_data_batch_<k>``, ``val_data``).

    The pickle (Chrabaszcz et al. 2017, read by the same restricted unpickler as
    CIFAR's) is a dict with ``"data"`` uint8 ``(N, 3072)`` CHW, ``"labels"`` a list of
    1-based ints and ``"mean"`` (the training set's mean image, not used here).

    **Returns:** uint8 ``(N, 3072)`` and 0-based int64 labels ``(N,)``.

    **Raises:** :class:`DataError` naming ``path``.
    """
    data, labels = _batch_from_dict(path, load_data_pickle(path), "labels", "pickle")
    _check_label_range(path, labels, 1, n_classes)
    return data, labels - 1


def read_imagenet32_npz(path: str | os.PathLike,
                        n_classes: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Read one downsampled-ImageNet 32x32 ``.npz`` batch.

    Keys ``"data"`` uint8 ``(N, 3072)`` CHW and ``"labels"`` 1-based ints (read by
    :func:`read_npz`: no pickle, sizes checked before allocating).

    **Returns:** uint8 ``(N, 3072)`` and 0-based int64 labels ``(N,)``.

    **Raises:** :class:`DataError` naming ``path``.
    """
    arrays = read_npz(path, ("data", "labels"))
    data, labels = _as_chw_batch(path, arrays["data"], arrays["labels"])
    _check_label_range(path, labels, 1, n_classes)
    return data, labels - 1


_NPY_MAGIC = b"\x93NUMPY"


def read_npz(path: str | os.PathLike, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` from an ``.npz`` archive, numeric dtypes only.

    Unlike ``np.load``, which allocates the shape an ``.npy`` header claims before
    reading, each member's claimed size must equal the member's uncompressed size in the
    archive, which must be one the compressed bytes can hold (stored: equal; deflated:
    at most :data:`DEFLATE_MAX_RATIO` times), which must lie inside the file. Object,
    structured and string dtypes are refused (nothing is unpickled).

    **Raises:** :class:`DataError` naming ``path`` and the problem.
    """
    path = Path(path)
    size = _file_size(path)
    bad = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
           NotImplementedError, RuntimeError, struct.error, SyntaxError, TypeError,
           KeyError, OverflowError, UnicodeDecodeError, MemoryError)
    try:
        with open(path, "rb") as raw:
            if raw.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
                raise DataError(f"{path}: not an npz archive (holds a single array)")
            raw.seek(0)
            with zipfile.ZipFile(raw) as zf:
                names = set(zf.namelist())
                missing = [k for k in keys if f"{k}.npy" not in names]
                if missing:
                    raise DataError(f"{path}: npz is missing key(s) {', '.join(missing)}")
                return {k: _read_npy_member(path, zf, f"{k}.npy", size) for k in keys}
    except DataError:
        raise
    except OSError as e:
        if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError):
            raise DataError(f"{path}: cannot read npz ({e.strerror or e})") from None
        raise DataError(f"{path}: bad npz archive ({type(e).__name__}: {e})") from None
    except bad as e:
        text = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: bad npz archive ({type(e).__name__}: {text})") from None


def _read_npy_member(path: Path, zf: zipfile.ZipFile, name: str, size: int) -> np.ndarray:
    info = zf.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{path}: npz member {name} uses zip compression method "
                        f"{info.compress_type} (only stored or deflated are read)")
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO
    if info.compress_size > size or info.file_size > ratio * info.compress_size + 64:
        raise DataError(f"{path}: bad npz archive; member {name} claims {info.file_size} "
                        f"bytes from {info.compress_size} compressed in a {size}-byte file")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path}: npz member {name} has .npy format version {version} "
                            "(1.0 and 2.0 are read)")
        if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise DataError(f"{path}: npz member {name} has dtype {dtype} "
                            "(only booleans, integers and floats are read)")
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        start = f.tell()
        if start + nbytes != info.file_size:
            raise DataError(f"{path}: bad npz archive; member {name} claims shape {shape} "
                            f"({nbytes} bytes of {dtype}) but holds {info.file_size - start}")
        body = _read_into(f, nbytes)
        if len(body) != nbytes or f.read(1):
            raise DataError(f"{path}: bad npz archive; member {name} is truncated")
    flat = np.frombuffer(body, dtype=dtype) if nbytes else np.empty(0, dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C")


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
