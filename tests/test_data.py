"""Tests for eqprop.data: formats, registry, built-ins, batches. Nothing is downloaded."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    import eqprop.data  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from eqprop.data import (DATASETS, DataError, Dataset, available, batches, flatten, load,
                         num_batches)
from eqprop.data.registry import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD,
                                  IMAGENET_MEAN, IMAGENET_STD)

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("EQPROP_DATA", raising=False)


# --- writers for tiny files in every format -------------------------------------------

def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.tobytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_idx_dir(d: Path, n_train: int = 5, n_test: int = 3, gz: bool = True,
                 fill: int | None = None) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        if fill is not None:
            x[:] = fill
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        arrays[split] = (x, y)
        ext = ".gz" if gz else ""
        write(d / f"{split}-images-idx3-ubyte{ext}", idx_bytes(x))
        write(d / f"{split}-labels-idx1-ubyte{ext}", idx_bytes(y))
    return arrays


def chw_rows(n: int, rng) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def dump(path: Path, obj) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def make_cifar10_dir(d: Path, n: int = 4) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = chw_rows(n, rng), [int(v) for v in rng.integers(0, 10, n)]
        dump(d / name, {b"data": data, b"labels": labels})
        out[name] = (data, labels)
    return out


def make_cifar100_dir(d: Path, n: int = 6) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    out = {}
    for name in ("train", "test"):
        data, labels = chw_rows(n, rng), [int(v) for v in rng.integers(0, 100, n)]
        dump(d / name, {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * n})
        out[name] = (data, labels)
    return out


def make_imagenet32_dir(d: Path, train_ids=(1, 2, 10), n: int = 3) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    out = {}
    for name in [f"train_data_batch_{i}" for i in train_ids] + ["val_data"]:
        data, labels = chw_rows(n, rng), rng.integers(1, 1001, n)
        np.savez(d / f"{name}.npz", data=data, labels=labels)
        out[name] = (data, labels)
    return out


def cifar_expected(row: np.ndarray, mean, std) -> np.ndarray:
    """Reference CHW row -> normalised HWC image, pixel by pixel."""
    img = row.reshape(3, 32, 32).astype(np.float64)
    out = np.empty((32, 32, 3))
    for c in range(3):
        out[:, :, c] = (img[c] / 255.0 - mean[c]) / std[c]
    return out


# --- idx (mnist, fashion-mnist) -------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_load_shapes_dtypes_values(tmp_path, name, gz):
    arrays = make_idx_dir(tmp_path, gz=gz)
    ds = load(name, path=str(tmp_path))
    assert ds.name == name and ds.n_classes == 10 and ds.source == str(tmp_path)
    assert ds.x_train.shape == (5, 28, 28, 1) and ds.x_test.shape == (3, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.input_shape == (28, 28, 1) and ds.input_size == 784
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])


def test_idx_pixel_255_is_one(tmp_path):
    make_idx_dir(tmp_path, fill=255)
    ds = load("mnist", path=tmp_path)
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 1.0


def test_path_beats_env(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "env" / "mnist", n_train=7)
    make_idx_dir(tmp_path / "arg", n_train=2)
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path / "env"))
    assert len(load("mnist", path=tmp_path / "arg").x_train) == 2
    assert len(load("mnist").x_train) == 7
    assert load("mnist").source == str(tmp_path / "env" / "mnist")


def test_missing_lists_every_searched_place(tmp_path, monkeypatch):
    if FASHION_SYSTEM.is_dir():
        pytest.skip("fashion-mnist is installed system-wide")
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path / "root"))
    (tmp_path / "root" / "fashion-mnist").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        load("fashion-mnist")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("fashion-mnist not found")
    for place in (tmp_path / "root" / "fashion-mnist", FASHION_SYSTEM):
        assert str(place) in msg
    assert msg.index(str(tmp_path / "root")) < msg.index(str(FASHION_SYSTEM))
    assert "apt-get install" in msg and "dataset-fashion-mnist" in msg and "EQPROP_DATA" in msg
    assert "train-images-idx3-ubyte" in msg  # says what is missing in the existing dir


def test_a_given_path_is_the_only_place_looked_at(tmp_path, monkeypatch):
    """data.path names the user's directory: a wrong one is a one-line error naming it
    (and any copy elsewhere), never a silent fallback to that copy (a user review trained
    on /usr/share/... with data.path = "/nonexistent")."""
    make_idx_dir(tmp_path / "env" / "mnist", n_train=7)
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path / "env"))
    for given, why in ((tmp_path / "nonexistent", "no such directory"), (tmp_path / "empty", "missing")):
        given.mkdir(exist_ok=True) if why == "missing" else None
        with pytest.raises(DataError) as e:
            load("mnist", path=given)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"data.path: mnist not found in {given} ({why}")
        assert msg.endswith(f"a copy is in {tmp_path / 'env' / 'mnist'}: remove data.path to use it")
    monkeypatch.delenv("EQPROP_DATA")
    with pytest.raises(DataError, match=r"Get it with"):
        load("mnist", path=tmp_path / "nonexistent")


def test_missing_with_nothing_to_search():
    with pytest.raises(DataError, match="mnist not found.*EQPROP_DATA"):
        load("mnist")


def test_unknown_name():
    with pytest.raises(DataError, match="allowed:.*cifar10") as e:
        load("svhn")
    assert "svhn" in str(e.value) and "fashion-mnist" in str(e.value)


def test_available(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "mnist")
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path))
    entries = {e["name"]: e for e in available()}
    assert set(entries) == set(DATASETS)
    for e in entries.values():
        assert set(e) == {"name", "available", "where", "searched", "how"}
    assert entries["mnist"]["available"] and entries["mnist"]["where"] == str(tmp_path / "mnist")
    assert not entries["cifar10"]["available"] and entries["cifar10"]["where"] is None
    assert str(tmp_path / "cifar10") in entries["cifar10"]["searched"]
    assert entries["xor"]["available"] and entries["digits"]["available"]
    assert "/usr/share/datasets/fashion-mnist" in entries["fashion-mnist"]["searched"]


def _break_file(d: Path, stem: str, data: bytes, gz: bool = True) -> Path:
    return write(d / (stem + (".gz" if gz else "")), data)


@pytest.mark.parametrize("case, pattern", [
    ("magic", "magic"), ("truncated", "truncated"), ("count", "labels"),
    ("gzip", "gzip"), ("header", "truncated"), ("extra", "unexpected bytes"),
    ("label-range", "labels range"),
])
def test_broken_idx(tmp_path, case, pattern):
    make_idx_dir(tmp_path)
    x = np.zeros((5, 28, 28), np.uint8)
    if case == "magic":
        bad = _break_file(tmp_path, IDX_STEMS[0], idx_bytes(x, magic=0x801))
    elif case == "truncated":
        bad = _break_file(tmp_path, IDX_STEMS[0], idx_bytes(x)[:-100])
    elif case == "count":
        bad = _break_file(tmp_path, IDX_STEMS[1], idx_bytes(np.zeros(4, np.uint8)))
    elif case == "gzip":
        bad = tmp_path / (IDX_STEMS[2] + ".gz")
        bad.write_bytes(b"this is not gzip")
    elif case == "header":
        bad = _break_file(tmp_path, IDX_STEMS[0], idx_bytes(x)[:10])
    elif case == "extra":
        bad = _break_file(tmp_path, IDX_STEMS[0], idx_bytes(x) + b"\0\0")
    else:
        bad = _break_file(tmp_path, IDX_STEMS[3], idx_bytes(np.full(3, 10, np.uint8)))
    with pytest.raises(DataError, match=pattern) as e:
        load("mnist", path=tmp_path)
    assert bad.name in str(e.value) and "\n" not in str(e.value)


def test_truncated_gzip_stream(tmp_path):
    make_idx_dir(tmp_path)
    p = tmp_path / (IDX_STEMS[0] + ".gz")
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DataError, match="gzip") as e:
        load("mnist", path=tmp_path)
    assert str(p) in str(e.value)


# --- CIFAR ------------------------------------------------------------------------------

def test_cifar10_values_and_nhwc(tmp_path):
    files = make_cifar10_dir(tmp_path)
    ds = load("cifar10", path=tmp_path)
    assert ds.x_train.shape == (20, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.n_classes == 10
    data, labels = files["data_batch_2"]
    np.testing.assert_allclose(ds.x_train[4], cifar_expected(data[0], CIFAR10_MEAN, CIFAR10_STD),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train[4:8], labels)
    np.testing.assert_array_equal(ds.y_test, files["test_batch"][1])


def test_cifar_channel_order(tmp_path):
    """A CHW image with constant channels (10, 20, 30) keeps them in channels 0, 1, 2."""
    make_cifar10_dir(tmp_path)
    row = np.repeat(np.array([10, 20, 30], np.uint8), 1024)[None]
    dump(tmp_path / "test_batch", {b"data": row, b"labels": [3]})
    ds = load("cifar10", path=tmp_path)
    for c, v in enumerate((10, 20, 30)):
        expect = (v / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        np.testing.assert_allclose(ds.x_test[0, :, :, c], expect, rtol=1e-5)
    # a single bright pixel at (row 1, col 2) of the green plane
    row = np.zeros((1, 3072), np.uint8)
    row[0, 1024 + 1 * 32 + 2] = 255
    dump(tmp_path / "test_batch", {b"data": row, b"labels": [0]})
    x = load("cifar10", path=tmp_path).x_test[0]
    hot = np.argwhere(x > 0)  # every other pixel is 0 -> negative
    assert hot.tolist() == [[1, 2, 1]]


def test_cifar10_subdir(tmp_path, monkeypatch):
    make_cifar10_dir(tmp_path / "cifar10" / "cifar-10-batches-py")
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path))
    ds = load("cifar10")
    assert ds.source == str(tmp_path / "cifar10" / "cifar-10-batches-py")


def test_cifar100(tmp_path):
    files = make_cifar100_dir(tmp_path / "cifar-100-python")
    ds = load("cifar100", path=tmp_path)
    assert ds.n_classes == 100 and ds.x_train.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, files["train"][1])
    np.testing.assert_allclose(
        ds.x_test[5], cifar_expected(files["test"][0][5], CIFAR100_MEAN, CIFAR100_STD),
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, pattern", [
    ("garbage", "unpickle"), ("truncated", "unpickle"), ("keys", "missing key"),
    ("length", "multiple of 3072"), ("count", "labels for"), ("notdict", "expected a dict"),
    ("range", "labels range"),
])
def test_broken_cifar(tmp_path, case, pattern):
    make_cifar10_dir(tmp_path)
    p = tmp_path / "data_batch_3"
    if case == "garbage":
        p.write_bytes(b"\x00not a pickle at all")
    elif case == "truncated":
        p.write_bytes(p.read_bytes()[:50])
    elif case == "keys":
        dump(p, {b"data": np.zeros((1, 3072), np.uint8)})
    elif case == "length":
        dump(p, {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    elif case == "count":
        dump(p, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    elif case == "notdict":
        dump(p, [1, 2, 3])
    else:
        dump(p, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    with pytest.raises(DataError, match=pattern) as e:
        load("cifar10", path=tmp_path)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_cifar_missing_file_is_not_found(tmp_path):
    make_cifar10_dir(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(DataError, match="cifar10 not found.*data_batch_5") as e:
        load("cifar10", path=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)


# --- the restricted unpickler ---------------------------------------------------------

class _Shell:
    """Pickles as ``os.system(command)``: what a crafted data_batch_1 would run."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_cifar_pickle_that_runs_a_shell_command_is_refused(tmp_path, protocol, where):
    make_cifar10_dir(tmp_path)
    marker, control = tmp_path / "marker", tmp_path / "control"
    payload = {"data": {b"data": _Shell(f"touch {marker}"), b"labels": [0]},
               "labels": {b"data": np.zeros((1, 3072), np.uint8),
                          b"labels": [_Shell(f"touch {marker}")]},
               "top": _Shell(f"touch {marker}")}[where]
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)
    # the payload is real: the stock unpickler runs it
    pickle.loads(pickle.dumps(_Shell(f"touch {control}"), protocol=protocol))
    assert control.exists()
    with pytest.raises(DataError) as e:
        load("cifar10", path=tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{p}: refused to unpickle global 'posix.system'"), msg
    assert "\n" not in msg and "numpy arrays" in msg
    assert not marker.exists()


def _dump2(path: Path, obj) -> Path:
    """Protocol 2, as the CIFAR originals (here written by Python 3: bytes go through
    ``_codecs.encode``, arrays through ``numpy._core.multiarray._reconstruct``)."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def test_real_format_cifar_batches_load(tmp_path):
    rng = np.random.default_rng(7)
    c10, c100 = tmp_path / "cifar-10-batches-py", tmp_path / "cifar-100-python"
    c10.mkdir(), c100.mkdir()
    batches10 = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = chw_rows(3, rng), [int(v) for v in rng.integers(0, 10, 3)]
        _dump2(c10 / name, {b"batch_label": b"training batch 1 of 5", b"labels": labels,
                            b"data": data, b"filenames": [b"a.png", b"b.png", b"c.png"]})
        batches10[name] = (data, labels)
    batches100 = {}
    for name in ("train", "test"):
        data, fine = chw_rows(2, rng), [int(v) for v in rng.integers(0, 100, 2)]
        _dump2(c100 / name, {b"filenames": [b"x.png", b"y.png"], b"batch_label": b"",
                             b"fine_labels": fine, b"coarse_labels": [1, 2], b"data": data})
        batches100[name] = (data, fine)
    assert b"_codecs" in (c10 / "test_batch").read_bytes()  # the protocol-2 spelling of bytes
    ds = load("cifar10", path=tmp_path)
    assert ds.x_train.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_train, sum((batches10[f"data_batch_{i}"][1]
                                                   for i in range(1, 6)), []))
    np.testing.assert_allclose(ds.x_test[2], cifar_expected(batches10["test_batch"][0][2],
                                                            CIFAR10_MEAN, CIFAR10_STD),
                               rtol=1e-5, atol=1e-5)
    ds = load("cifar100", path=tmp_path)
    np.testing.assert_array_equal(ds.y_test, batches100["test"][1])
    np.testing.assert_allclose(ds.x_train[1], cifar_expected(batches100["train"][0][1],
                                                             CIFAR100_MEAN, CIFAR100_STD),
                               rtol=1e-5, atol=1e-5)


class _Py2Pickler(pickle._Pickler):
    """Writes as Python 2 + numpy 1.x wrote the CIFAR originals: every str and bytes a
    Python 2 ``str`` (BINSTRING), arrays through ``numpy.core.multiarray``."""

    def save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        op = (pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256
              else pickle.BINSTRING + struct.pack("<i", len(b)))
        self.write(op + b)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[str] = dispatch[bytes] = save_py2_str


def test_python2_cifar_batch_loads(tmp_path):
    make_cifar10_dir(tmp_path)
    rng = np.random.default_rng(11)
    data, labels = chw_rows(2, rng), [4, 9]
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({"batch_label": "testing batch 1 of 1", "labels": labels,
                                       "data": data, "filenames": ["a.png", "b.png"]})
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"_codecs" not in raw and b"cnumpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "test_batch").write_bytes(raw)
    ds = load("cifar10", path=tmp_path)
    np.testing.assert_array_equal(ds.y_test, labels)
    np.testing.assert_allclose(ds.x_test[1], cifar_expected(data[1], CIFAR10_MEAN, CIFAR10_STD),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_data_pickle_every_protocol_to_4(tmp_path, protocol):
    from eqprop.data.safepickle import load_data_pickle
    arrays = {"u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
              "f8": np.linspace(0, 1, 4), "be": np.arange(3, dtype=">i4"),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
              "empty": np.zeros((0, 5), np.uint8), "bool": np.array([True, False])}
    obj = {**arrays, "labels": [1, -2, 2**40], "s": "text", "b": b"", "t": (1, None, 2.5)}
    p = tmp_path / "batch"
    with open(p, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    got = load_data_pickle(p)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)
    assert got["labels"] == [1, -2, 2**40] and got["s"] == "text"
    assert got["t"] == (1, None, 2.5) and got["b"] == b""


def test_data_pickle_refuses_protocol_5_buffers(tmp_path):
    """Protocol 5 writes arrays through numpy's ``_frombuffer``: not admitted."""
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f, protocol=5)
    with pytest.raises(DataError, match=r"refused to unpickle global "
                                        r"'numpy\._core\.numeric\._frombuffer'"):
        from eqprop.data.formats import read_cifar_pickle
        read_cifar_pickle(p, "labels", 10)


# --- ImageNet32 -------------------------------------------------------------------------

def test_imagenet32(tmp_path):
    files = make_imagenet32_dir(tmp_path, train_ids=(10, 2, 1))
    ds = load("imagenet32", path=tmp_path)
    assert ds.n_classes == 1000 and ds.x_train.shape == (9, 32, 32, 3)
    order = ["train_data_batch_1", "train_data_batch_2", "train_data_batch_10"]
    np.testing.assert_array_equal(ds.y_train, np.concatenate([files[k][1] for k in order]) - 1)
    np.testing.assert_array_equal(ds.y_test, files["val_data"][1] - 1)
    assert ds.y_train.min() >= 0 and ds.y_train.max() <= 999
    np.testing.assert_allclose(
        ds.x_train[3], cifar_expected(files["train_data_batch_2"][0][0], IMAGENET_MEAN,
                                      IMAGENET_STD), rtol=1e-5, atol=1e-5)


def test_imagenet32_needs_a_train_batch(tmp_path):
    make_imagenet32_dir(tmp_path, train_ids=())
    with pytest.raises(DataError, match="train_data_batch"):
        load("imagenet32", path=tmp_path)


@pytest.mark.parametrize("case, pattern", [
    ("keys", "missing key"), ("length", "multiple of 3072"), ("zip", "npz"),
    ("labels0", "labels range"), ("count", "labels for"), ("npy", "not an npz"),
])
def test_broken_imagenet32(tmp_path, case, pattern):
    make_imagenet32_dir(tmp_path)
    p = tmp_path / "train_data_batch_2.npz"
    if case == "keys":
        np.savez(p, data=np.zeros((1, 3072), np.uint8))
    elif case == "length":
        np.savez(p, data=np.zeros(3072 + 5, np.uint8), labels=np.ones(1, int))
    elif case == "zip":
        p.write_bytes(p.read_bytes()[:100])
    elif case == "labels0":
        np.savez(p, data=np.zeros((1, 3072), np.uint8), labels=np.zeros(1, int))
    elif case == "count":
        np.savez(p, data=np.zeros((2, 3072), np.uint8), labels=np.ones(3, int))
    else:
        with open(p, "wb") as f:
            np.save(f, np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=pattern) as e:
        load("imagenet32", path=tmp_path)
    assert str(p) in str(e.value)


def make_imagenet32_pickles(train_dir: Path, val_dir: Path, train_ids=(1, 2, 10),
                            n: int = 3, protocol: int = 4) -> dict:
    """The pickle distribution: dicts with str keys, labels a list, the mean image."""
    train_dir.mkdir(parents=True, exist_ok=True)
    val_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    out = {}
    for name in [f"train_data_batch_{i}" for i in train_ids] + ["val_data"]:
        data, labels = chw_rows(n, rng), [int(v) for v in rng.integers(1, 1001, n)]
        d = val_dir if name == "val_data" else train_dir
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels,
                         "mean": data.mean(axis=0)}, f, protocol=protocol)
        out[name] = (data, np.array(labels))
    return out


@pytest.mark.parametrize("protocol", [2, 4])
def test_imagenet32_pickles(tmp_path, protocol):
    files = make_imagenet32_pickles(tmp_path / "Imagenet32_train", tmp_path / "Imagenet32_val",
                                    train_ids=(10, 1, 2), protocol=protocol)
    ds = load("imagenet32", path=tmp_path)
    assert ds.n_classes == 1000 and ds.x_train.shape == (9, 32, 32, 3)
    assert ds.source == str(tmp_path)
    order = ["train_data_batch_1", "train_data_batch_2", "train_data_batch_10"]
    np.testing.assert_array_equal(ds.y_train, np.concatenate([files[k][1] for k in order]) - 1)
    np.testing.assert_array_equal(ds.y_test, files["val_data"][1] - 1)
    np.testing.assert_allclose(
        ds.x_test[1], cifar_expected(files["val_data"][0][1], IMAGENET_MEAN, IMAGENET_STD),
        rtol=1e-5, atol=1e-5)


def test_imagenet32_layouts_agree_and_pickles_win(tmp_path):
    files = make_imagenet32_pickles(tmp_path / "p", tmp_path / "p")
    npz = tmp_path / "n" / "Imagenet32_train_npz"
    npz.mkdir(parents=True)
    (tmp_path / "n" / "Imagenet32_val_npz").mkdir()
    for name, (data, labels) in files.items():
        d = npz.parent / "Imagenet32_val_npz" if name == "val_data" else npz
        np.savez_compressed(d / f"{name}.npz", data=data, labels=labels)
    a, b = load("imagenet32", path=tmp_path / "p"), load("imagenet32", path=tmp_path / "n")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    # both layouts in one directory: the pickles are read (an npz twin that is broken
    # would otherwise fail the load)
    for p in npz.iterdir():
        (tmp_path / "p" / p.name).write_bytes(b"not an npz")
    np.testing.assert_array_equal(load("imagenet32", path=tmp_path / "p").y_train, a.y_train)


def test_imagenet32_statistics_are_not_cifars():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert IMAGENET_MEAN != CIFAR10_MEAN


def test_imagenet32_not_found_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("EQPROP_DATA", str(tmp_path / "root"))
    make_imagenet32_pickles(tmp_path / "given" / "Imagenet32_train", tmp_path / "elsewhere")
    with pytest.raises(DataError) as e:
        load("imagenet32", path=tmp_path / "given")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.path: imagenet32 not found in")
    assert f"{tmp_path / 'given'} (missing val_data[.npz] (in ./ or Imagenet32_val/ or " \
           "Imagenet32_val_npz/))" in msg
    assert "Imagenet32_train.zip" in msg and "Imagenet32_val_npz.zip" in msg
    with pytest.raises(DataError) as e:  # no path: $EQPROP_DATA and the system places
        load("imagenet32")
    assert f"{tmp_path / 'root' / 'imagenet32'} (no such directory)" in str(e.value)


@pytest.mark.parametrize("case, pattern", [
    ("labels0", "labels range"), ("float-labels", "labels hold a float"),
    ("data-list", "data is a list"), ("evil", "refused to unpickle global 'builtins.eval'"),
])
def test_broken_imagenet32_pickle(tmp_path, case, pattern):
    make_imagenet32_pickles(tmp_path, tmp_path)
    p = tmp_path / "train_data_batch_2"
    row = np.zeros((1, 3072), np.uint8)
    obj = {"labels0": {"data": row, "labels": [0]},
           "float-labels": {"data": row, "labels": [1.0]},
           "data-list": {"data": [0] * 3072, "labels": [1]}}.get(case)
    if obj is None:
        p.write_bytes(b"\x80\x04cbuiltins\neval\n\x8c\x041+1\x85R.")
    else:
        with open(p, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(DataError, match=pattern) as e:
        load("imagenet32", path=tmp_path)
    assert str(e.value).startswith(str(p))


# --- built-ins --------------------------------------------------------------------------

def test_digits():
    ds = load("digits")
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() == 1.0 and ds.source == "built-in"
    assert ds.n_classes == 10 and set(np.unique(ds.y_test)) == set(range(10))


def test_synthetic_deterministic():
    a, b = load("synthetic"), load("synthetic")
    assert a.x_train.shape == (1024, 16) and a.x_test.shape == (256, 16)
    assert a.x_train.dtype == np.float32 and a.n_classes == 4
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert set(np.unique(a.y_train)) == {0, 1, 2, 3}


@pytest.mark.parametrize("gate, table", [
    ("xor", [0, 1, 1, 0]), ("and", [0, 0, 0, 1]), ("or", [0, 1, 1, 1]),
    ("nand", [1, 1, 1, 0]), ("nor", [1, 0, 0, 0]), ("xnor", [1, 0, 0, 1]),
    ("not", [1, 0]), ("identity", [0, 1]),
])
def test_gates(gate, table):
    ds = load(gate)
    x, y = ds.x_train, ds.y_train
    assert x.dtype == np.float32 and ds.n_classes == 2 and set(np.unique(x)) <= {0.0, 1.0}
    assert x.shape == (len(table), 1 if gate in ("not", "identity") else 2)
    assert len({tuple(r) for r in x}) == len(table)  # full truth table
    ops = {"xor": lambda a, b: a ^ b, "and": lambda a, b: a & b, "or": lambda a, b: a | b,
           "nand": lambda a, b: 1 - (a & b), "nor": lambda a, b: 1 - (a | b),
           "xnor": lambda a, b: 1 - (a ^ b), "not": lambda a: 1 - a, "identity": lambda a: a}
    xi = x.astype(int)
    np.testing.assert_array_equal(y, [ops[gate](*row) for row in xi])
    np.testing.assert_array_equal(y, table)
    np.testing.assert_array_equal(ds.x_test, x)
    np.testing.assert_array_equal(ds.y_test, y)


# --- validation split -------------------------------------------------------------------

def test_validation_split():
    full = load("synthetic")
    ds = load("synthetic", validation=0.25, seed=3)
    assert len(ds.x_train) == 768 and len(ds.x_test) == 256
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert not rows(ds.x_train) & rows(ds.x_test)
    assert rows(ds.x_train) | rows(ds.x_test) == rows(full.x_train)
    assert not rows(ds.x_test) & rows(full.x_test)  # true test set untouched
    again = load("synthetic", validation=0.25, seed=3)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    other = load("synthetic", validation=0.25, seed=4)
    assert not np.array_equal(other.x_test, ds.x_test)


def test_validation_range():
    for v in (-0.1, 1.0):
        with pytest.raises(DataError, match="validation"):
            load("xor", validation=v)


def test_dataset_checks_lengths():
    with pytest.raises(ValueError):
        Dataset("bad", np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(1), 2, "x")


# --- batches ----------------------------------------------------------------------------

def _data(n: int, shape=(3,)):
    x = np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape(n, *shape)
    return x, np.arange(n, dtype=np.int32)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), batch_size=st.integers(1, 64), seed=st.integers(0, 2**31),
       epoch=st.integers(0, 50), shuffle=st.booleans())
def test_batches_cover_once(n, batch_size, seed, epoch, shuffle):
    x, y = _data(n)
    got = list(batches(x, y, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                       drop_last=False))
    assert len(got) == num_batches(n, batch_size, drop_last=False)
    assert all(len(xb) == batch_size for xb, _ in got[:-1])
    seen = np.concatenate([yb for _, yb in got]) if got else np.array([], int)
    assert sorted(seen.tolist()) == list(range(n))
    for xb, yb in got:
        np.testing.assert_array_equal(xb, x[yb])  # x and y stay paired
    if not shuffle:
        assert seen.tolist() == list(range(n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), batch_size=st.integers(1, 64), seed=st.integers(0, 1000))
def test_batches_drop_last(n, batch_size, seed):
    x, y = _data(n)
    got = list(batches(x, y, batch_size, seed=seed, epoch=0))
    assert len(got) == n // batch_size == num_batches(n, batch_size)
    assert all(len(xb) == batch_size for xb, _ in got)
    seen = np.concatenate([yb for _, yb in got]) if got else np.array([], int)
    assert len(set(seen.tolist())) == len(seen) == (n // batch_size) * batch_size


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 100), batch_size=st.integers(1, 10), seed=st.integers(0, 1000),
       epoch=st.integers(0, 100))
def test_batches_deterministic(n, batch_size, seed, epoch):
    x, y = _data(n)
    a = [yb for _, yb in batches(x, y, batch_size, seed=seed, epoch=epoch)]
    b = [yb for _, yb in batches(x, y, batch_size, seed=seed, epoch=epoch)]
    c = [yb for _, yb in batches(x, y, batch_size, seed=seed, epoch=epoch + 1)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))  # P(equal) <= 1/10!


def test_batches_permutation_convention():
    x, y = _data(10)
    got = np.concatenate([yb for _, yb in batches(x, y, 5, seed=7, epoch=2)])
    np.testing.assert_array_equal(got, np.random.default_rng([7, 2]).permutation(10))


def test_batches_errors():
    x, y = _data(10)
    with pytest.raises(ValueError):
        batches(x, y, 0, seed=0, epoch=0)
    with pytest.raises(ValueError):
        batches(x, y[:5], 2, seed=0, epoch=0)


def test_flatten_and_num_batches():
    assert flatten(np.zeros((4, 8, 8, 1))).shape == (4, 64)
    assert flatten(np.zeros((4, 16))).shape == (4, 16)
    assert num_batches(10, 3) == 3 and num_batches(10, 3, drop_last=False) == 4
    assert num_batches(9, 3, drop_last=False) == 3 and num_batches(2, 3) == 0


def test_a_path_given_for_a_built_in_set_is_warned_about(tmp_path):
    """A review's ``--set data.path=...`` with the bundled digits was ignored silently."""
    import warnings

    with pytest.warns(UserWarning, match=r"data\.path: digits is built in \(no files are read\), so .* is "
                                         r"not used"):
        load("digits", path=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load("digits")
