"""Every reader of a user's file treats it as untrusted input (issue 16, item 2).

Each data reader (idx, CIFAR pickle, ImageNet 32x32 pickle and npz, the restricted
unpickler itself) and the config TOML reader is fed truncated, bit-flipped and hostile
inputs. Each call ends in a value or the module's one-line error (``DataError`` /
``ConfigError``), never another exception, never code execution (hostile pickles name
``os.system`` and friends with a command that would write a marker file), and never an
allocation larger than the file justifies (peak traced memory, numpy's included, is
bounded by a multiple of the file's size).

Bounded: 100 fixed (derandomized) examples per reader, no deadline; the file runs in
about 15 s. ``EQPROP_FUZZ_EXAMPLES=N`` runs N random examples per reader instead.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import pickletools
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqprop.config import ConfigError, read_toml
from eqprop.data import DataError
from eqprop.data import formats
from eqprop.data.safepickle import load_data_pickle

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
# a fixed, small campaign in the suite; EQPROP_FUZZ_EXAMPLES=5000 runs a long random one
EXAMPLES = int(os.environ.get("EQPROP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 100, deadline=None, derandomize=not EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MiB = 2**20
# a one-byte pickle opcode makes a Python object (a tuple, a dict, a memo entry: 50 to
# 200 bytes), so a pickle's objects may take a few hundred times its size; its arrays and
# strings no more than their bytes in the file
PICKLE_RATIO = 256
# what the readers may allocate beyond the file: buffers of the gzip / zip / io layers
SLACK = 2 * MiB


@contextlib.contextmanager
def traced_peak():
    """Yields a list that receives the peak traced allocation (bytes) of the block."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    box: list[int] = []
    try:
        yield box
    finally:
        box.append(tracemalloc.get_traced_memory()[1] - base)
        if not was:
            tracemalloc.stop()


def outcome(read, path: Path, error: type[Exception], bound: int):
    """Run ``read(path)``: returns its value or the error; fails on anything else, a
    multi-line message, or a peak allocation above ``bound`` bytes."""
    with traced_peak() as peak:
        try:
            value = read(path)
        except error as e:
            value = e
            assert "\n" not in str(e) and str(e), repr(e)
    assert peak[0] <= bound, f"{read.__name__} allocated {peak[0]} bytes for a " \
                             f"{path.stat().st_size}-byte file"
    return value


# --- seed files, and what a mutation can do to them -------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(f">I{arr.ndim}I", 0x0800 | arr.ndim, *arr.shape) + arr.tobytes()


RNG = np.random.default_rng(16)
IDX_IMAGES = idx_bytes(RNG.integers(0, 256, (2, 5, 4), dtype=np.uint8))
IDX_LABELS = idx_bytes(RNG.integers(0, 10, 7, dtype=np.uint8))
ROW = RNG.integers(0, 256, (1, 3072), dtype=np.uint8)


def cifar_pickle(protocol: int) -> bytes:
    return pickle.dumps({b"batch_label": b"x", b"labels": [3], b"data": ROW,
                         b"filenames": [b"a.png"]}, protocol=protocol)


def imagenet32_pickle(protocol: int) -> bytes:
    return pickle.dumps({"data": ROW, "labels": [7], "mean": ROW[0].astype(float)[:8]},
                        protocol=protocol)


def small_pickle(protocol: int) -> bytes:
    """Mostly structure: small arrays of several dtypes, nested containers, the memo."""
    shared = np.arange(4, dtype=">i2")
    return pickle.dumps({b"a": shared, "b": [shared, np.eye(2)], 3: (b"x", "y", None, True),
                         "c": {"d": [1, 2**70, -1.5]}, "e": np.zeros((0, 3), np.uint8)},
                        protocol=protocol)


def npz_bytes(compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, data=ROW, labels=np.array([5]))
    return buf.getvalue()


HOSTILE_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                2**31 - 1, 2**40, 2**63 - 1, 2**64 - 1]


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` truncated, bit-flipped, overwritten with a hostile length, spliced, or
    replaced by random bytes (positions biased to the structure at both ends)."""
    n = len(seed)
    pos = st.one_of(st.integers(0, min(n, 64)), st.integers(0, n), st.integers(max(0, n - 64), n))
    kind = draw(st.sampled_from(["truncate", "flip", "hostile", "splice", "random"]))
    data = bytearray(seed)
    if kind == "truncate":
        return bytes(data[:draw(pos)])
    if kind == "flip":
        for p in draw(st.lists(pos, min_size=1, max_size=4)):
            if p < n:
                data[p] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "hostile":
        value = draw(st.sampled_from(HOSTILE_INTS))
        width, order = draw(st.sampled_from([(1, "<"), (2, "<"), (4, "<"), (4, ">"), (8, "<")]))
        p = draw(pos)
        data[p:p + width] = (value % 2**(8 * width)).to_bytes(width, "little" if order == "<"
                                                              else "big")
        return bytes(data)
    if kind == "splice":
        p = draw(pos)
        return bytes(data[:p]) + draw(st.binary(max_size=16)) + bytes(data[p + draw(pos) % 8:])
    return draw(st.binary(max_size=min(2 * n, 512)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def put(workdir: Path, name: str, data: bytes) -> Path:
    p = workdir / name
    p.write_bytes(data)
    return p


# --- idx --------------------------------------------------------------------------------

def _read_images(p):
    return formats.read_idx_images(p)


def _read_labels(p):
    return formats.read_idx_labels(p, 10)


@FUZZ
@given(data=st.one_of(mutated(IDX_IMAGES), mutated(IDX_LABELS)), gz=st.booleans())
def test_fuzz_idx(workdir, data, gz):
    p = put(workdir, "f-idx3-ubyte" + (".gz" if gz else ""), gzip.compress(data) if gz else data)
    for read in (_read_images, _read_labels):
        bound = (formats.DEFLATE_MAX_RATIO if gz else 2) * p.stat().st_size + SLACK
        got = outcome(read, p, DataError, bound)
        if isinstance(got, np.ndarray):
            assert got.dtype == np.uint8 and got.ndim == (3 if read is _read_images else 1)


@FUZZ
@given(data=mutated(gzip.compress(IDX_IMAGES)))
def test_fuzz_idx_gzip_stream(workdir, data):
    p = put(workdir, "g-idx3-ubyte.gz", data)
    outcome(_read_images, p, DataError, formats.DEFLATE_MAX_RATIO * len(data) + SLACK)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_2_31_images_in_1kb_is_refused_before_allocating(workdir, gz):
    data = struct.pack(">IIII", 0x803, 2**31, 28, 28) + bytes(1024 - 16)
    p = put(workdir, "huge-idx3-ubyte" + (".gz" if gz else ""),
            gzip.compress(data) if gz else data)
    with traced_peak() as peak, pytest.raises(DataError, match="truncated idx file") as e:
        formats.read_idx_images(p)
    assert peak[0] < SLACK and str(p) in str(e.value)
    assert (f"= {2**31 * 28 * 28} bytes" in str(e.value))


def test_gzip_bomb_within_the_deflate_bound_reads_only_what_it_claims(workdir):
    """A 20 KB .gz that expands to 20 MB after a header claiming 10 bytes."""
    stream = struct.pack(">II", 0x801, 10) + bytes(10) + bytes(20 * MiB)
    p = put(workdir, "bomb-idx1-ubyte.gz", gzip.compress(stream, 9))
    assert p.stat().st_size < 40 * 1024
    with traced_peak() as peak, pytest.raises(DataError, match="unexpected bytes"):
        formats.read_idx_labels(p)
    assert peak[0] < SLACK


# --- pickles ------------------------------------------------------------------------------

SEEDS_CIFAR = [cifar_pickle(p) for p in (0, 2, 4)]
SEEDS_IN32 = [imagenet32_pickle(p) for p in (2, 4)]
SEEDS_SMALL = [small_pickle(p) for p in (0, 1, 2, 3, 4)]


def _read_cifar(p):
    return formats.read_cifar_pickle(p, "labels", 10)


def _read_in32(p):
    return formats.read_imagenet32_pickle(p)


@FUZZ
@given(data=st.one_of(*(mutated(s) for s in SEEDS_CIFAR)))
def test_fuzz_cifar_pickle(workdir, data):
    p = put(workdir, "data_batch_1", data)
    got = outcome(_read_cifar, p, DataError, PICKLE_RATIO * len(data) + SLACK)
    if isinstance(got, tuple):
        assert got[0].shape == (len(got[1]), 3072) and got[1].min(initial=0) >= 0


@FUZZ
@given(data=st.one_of(*(mutated(s) for s in SEEDS_IN32)))
def test_fuzz_imagenet32_pickle(workdir, data):
    p = put(workdir, "train_data_batch_1", data)
    got = outcome(_read_in32, p, DataError, PICKLE_RATIO * len(data) + SLACK)
    if isinstance(got, tuple):
        assert got[0].shape == (len(got[1]), 3072) and got[1].min(initial=0) >= 0


@FUZZ
@given(data=st.one_of(*(mutated(s) for s in SEEDS_SMALL)))
def test_fuzz_data_pickle_structure(workdir, data):
    p = put(workdir, "small", data)
    outcome(load_data_pickle, p, DataError, PICKLE_RATIO * len(data) + SLACK)


# hostile programs: random opcodes with random arguments, dangerous globals among them
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


DANGEROUS = [("posix", "system"), ("os", "system"), ("builtins", "eval"), ("builtins", "exec"),
             ("subprocess", "check_call"), ("__builtin__", "open"), ("builtins", "getattr"),
             ("copyreg", "_reconstructor"), ("numpy", "load"), ("numpy.testing", "Tester"),
             ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
             ("_codecs", "encode"), ("builtins", "bytes"), ("builtins", "bytearray")]


@st.composite
def hostile_program(draw, marker: Path) -> bytes:
    command = f"touch {marker}"
    pieces = {
        "global": st.sampled_from(DANGEROUS).map(lambda g: _global(*g)),
        "command": st.sampled_from([_str(command), _str(f"open({str(marker)!r}, 'w')"),
                                    _str("latin1"), _str("b"), _str("u1"), _str("O")]),
        "opcode": st.sampled_from(sorted({op.code.encode("latin1") for op in pickletools.opcodes})),
        "int": st.sampled_from(HOSTILE_INTS).map(
            lambda v: b"J" + (v % 2**32).to_bytes(4, "little")),
        "reduce": st.sampled_from([b"\x85R", b"\x86R", b"\x87R", b"R", b"b", b"(tR"]),
        "bytes": st.binary(max_size=12),
    }
    body = b"".join(draw(st.lists(st.one_of(*pieces.values()), max_size=24)))
    return draw(st.sampled_from([b"", b"\x80\x02", b"\x80\x04"])) + body + b"."


@FUZZ
@given(data=st.data())
def test_fuzz_hostile_pickle_programs(workdir, data):
    marker = workdir / "ran"
    program = data.draw(hostile_program(marker))
    p = put(workdir, "hostile", program)
    outcome(load_data_pickle, p, DataError, PICKLE_RATIO * len(program) + SLACK)
    assert not marker.exists()


def _p4(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


HOSTILE = [  # (name, program, what the message says is refused)
    ("reduce os.system", _p4(_global("os", "system") + _str("touch {m}") + b"\x85R"),
     "global 'os.system'"),
    ("stack_global", _p4(b"\x8c\x05posix\x8c\x06system\x93" + _str("touch {m}") + b"\x85R"),
     "global 'posix.system'"),
    ("INST", b"(S'touch {m}'\nios\nsystem\n.", "opcode INST"),
    ("OBJ", b"(cos\nsystem\nS'touch {m}'\no.", "global 'os.system'"),
    ("NEWOBJ", _p4(_global("collections", "OrderedDict") + b")\x81"),
     "global 'collections.OrderedDict'"),
    ("EXT1", _p4(b"\x82\x01"), "opcode EXT1"),
    ("persistent id", _p4(_str("x") + b"Q"), "opcode BINPERSID"),
    ("newline in a global", _p4(b"\x8c\x04os\nx\x8c\x06system\x93"), "global 'os\\nx.system'"),
    ("ndarray called", _p4(_global("numpy", "ndarray") + b"\x8a\x06\x00\x00\x00\x00\x00\x01"
                           b"\x85\x85R"), "a direct call of numpy.ndarray"),
    ("reconstruct a dtype", _p4(_global("numpy.core.multiarray", "_reconstruct")
                                + _global("numpy", "dtype") + b"K\x00\x85C\x01b\x87R"),
     "_reconstruct of numpy.dtype"),
    ("bytes(2**40)", _p4(_global("builtins", "bytes") + b"\x8a\x06\x00\x00\x00\x00\x00\x01"
                         b"\x85R"), "bytes() with 1 argument"),
    ("object dtype", _p4(_global("numpy", "dtype") + _str("O8") + b"\x89\x88\x87R"),
     "dtype 'O8'"),
    ("state on a dict", _p4(b"}}b"), "state set on a dict"),
    ("state on dtype class", _p4(_global("numpy", "dtype") + b"}b"), "state set on numpy.dtype"),
    ("items on a list", _p4(b"](K\x01K\x02u"), "items set on a list"),
    ("deep tuple key", _p4(b"}" + b")" + b"\x85" * 100_000 + b"K\x01s"),
     "a dict key of type tuple"),
    ("codecs.encode of a memo'd str, again and again",
     _p4(_global("_codecs", "encode") + b"\x94" + _str("x" * 1000) + b"\x94" + _str("latin1")
         + b"\x94" + b"(" + b"h\x00h\x01h\x02\x86R" * 2000 + b"l"),
     "_codecs.encode of more bytes than the file holds"),
    ("codecs rot13", _p4(_global("_codecs", "encode") + _str("x") + _str("rot13") + b"\x86R"),
     "_codecs.encode of 'x' as 'rot13'"),
]


@pytest.mark.parametrize("name, program, refused", [pytest.param(*h, id=h[0]) for h in HOSTILE])
def test_hostile_pickles_are_refused(workdir, name, program, refused):
    marker = workdir / f"ran-{abs(hash(name))}"
    program = program.replace(b"{m}", str(marker).encode())
    p = put(workdir, "data_batch_1", program)
    with traced_peak() as peak, pytest.raises(DataError) as e:
        formats.read_cifar_pickle(p, "labels", 10)
    msg = str(e.value)
    assert msg.startswith(f"{p}: refused to unpickle {refused}"), msg
    assert "\n" not in msg and not marker.exists()
    assert peak[0] < PICKLE_RATIO * len(program) + SLACK


OVERSIZED = [  # (name, program, what the message says)
    ("BINBYTES8 of 2**40", _p4(b"\x8e" + struct.pack("<Q", 2**40) + b"abc"), "truncated"),
    ("BINUNICODE8 of 2**62", _p4(b"\x8d" + struct.pack("<Q", 2**62)), "truncated"),
    ("FRAME of 2**40", b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"}.", "truncated"),
    ("LONG4 of 2**31-1", _p4(b"\x8b\xff\xff\xff\x7f\x00"), "truncated"),
    ("memo index 2**32-1", _p4(b"}r\xff\xff\xff\xff"), "missing key"),
    ("array shape vs data", None, r"an array of shape \(2147483648, 3072\) and dtype uint8 "
                                  r"over 10 bytes"),
]


@pytest.mark.parametrize("name, program, pattern", [pytest.param(*o, id=o[0]) for o in OVERSIZED])
def test_claimed_sizes_are_checked_before_allocating(workdir, name, program, pattern):
    if program is None:  # a real array pickle whose state claims (2**31, 3072) over 10 bytes
        real = pickle.dumps({b"data": np.zeros(10, np.uint8), b"labels": []}, protocol=2)
        program = real.replace(b"K\n\x85", b"\x8a\x05\x00\x00\x00\x80\x00M\x00\x0c\x86", 1)
    p = put(workdir, "data_batch_1", program)
    with traced_peak() as peak, pytest.raises(DataError, match=pattern):
        formats.read_cifar_pickle(p, "labels", 10)
    assert peak[0] < PICKLE_RATIO * len(program) + SLACK


# --- ImageNet 32x32 npz -------------------------------------------------------------------

def _read_npz(p):
    return formats.read_imagenet32_npz(p)


@FUZZ
@given(data=st.one_of(mutated(npz_bytes(False)), mutated(npz_bytes(True))))
def test_fuzz_imagenet32_npz(workdir, data):
    p = put(workdir, "train_data_batch_1.npz", data)
    got = outcome(_read_npz, p, DataError, formats.DEFLATE_MAX_RATIO * len(data) + SLACK)
    if isinstance(got, tuple):
        assert got[0].shape == (len(got[1]), 3072)


def _npz_claiming(shape: tuple[int, ...], compress: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                              "shape": shape})
    member = buf.getvalue() + bytes(1000)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compress) as zf:
        zf.writestr("data.npy", member)
        zf.writestr("labels.npy", member)
    return out.getvalue()


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_header_claiming_2_31_images_is_refused_before_allocating(workdir, compress):
    p = put(workdir, "train_data_batch_1.npz", _npz_claiming((2**31, 3072), compress))
    with traced_peak() as peak, pytest.raises(DataError, match=r"claims shape \(2147483648, "
                                                              r"3072\)"):
        formats.read_imagenet32_npz(p)
    assert peak[0] < SLACK


def test_npz_object_arrays_are_refused(workdir):
    buf = io.BytesIO()
    np.savez(buf, data=np.array([{"a": 1}], dtype=object), labels=np.array([1]))
    p = put(workdir, "train_data_batch_1.npz", buf.getvalue())
    with pytest.raises(DataError, match="dtype object"):
        formats.read_imagenet32_npz(p)


# --- config TOML ----------------------------------------------------------------------------

def _read_toml(p):
    return read_toml(p)


@FUZZ
@given(data=st.one_of(*(mutated(c.read_bytes()) for c in CONFIGS),
                      st.text(max_size=200).map(str.encode)))
def test_fuzz_config_toml(workdir, data):
    p = put(workdir, "config.toml", data)
    got = outcome(_read_toml, p, ConfigError, 200 * len(data) + SLACK)
    assert isinstance(got, dict | ConfigError)
    if isinstance(got, ConfigError):
        assert str(got).startswith(str(p))


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 12))
@given(depth=st.integers(1, 3_000), kind=st.sampled_from(["array", "table", "mixed"]))
def test_fuzz_config_toml_nesting(workdir, depth, kind):
    opens = {"array": "[" * depth, "table": "{a=" * depth,
             "mixed": "[{a=" * (depth // 2)}[kind]
    closes = {"array": "]" * depth, "table": "}" * depth, "mixed": "}]" * (depth // 2)}[kind]
    p = put(workdir, "config.toml", f"x = {opens}1{closes}\n".encode())
    got = outcome(_read_toml, p, ConfigError, 200 * p.stat().st_size + SLACK)
    if isinstance(got, ConfigError):
        assert "nested too deeply" in str(got) or "invalid TOML" in str(got)
