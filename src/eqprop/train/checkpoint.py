"""Crash-safe files of a run, and checkpoints as one atomic unit.

**Writing.** Every file a run reads back is either replaced atomically
(:func:`atomic_write`: a temporary file next to the target, written, fsync-ed, renamed
onto the target, the directory fsync-ed) or appended to and fsync-ed (:func:`append`,
for ``metrics.jsonl``, whose reader drops a torn last line). A process killed at any
instant leaves each file either as it was or as it was meant to be, plus at most a
stale temporary ``.NAME.XXXXXXXX.tmp`` that the next writer removes
(:func:`remove_stale_temps`). The file-system calls go through :func:`_write`,
:func:`_fsync`, :func:`_replace`, :func:`_fsync_dir` and :func:`_unlink`, the seams of
the fault-injection tests.

**A checkpoint** ``NAME`` (``latest`` or ``best``) in ``RUN_DIR/checkpoints/``::

    NAME.json                  the manifest: small JSON, replaced atomically
    tree-<sha256[:16]>.eqx     payload: the saved pytree's leaves (Equinox's leaf format)
    states-<sha256[:16]>.eqx   payload: further named blobs (the warm-start states)

The manifest is ``{"format": 2, "meta": {...}, "payloads": {name: {"file", "sha256",
"bytes"}}, "previous": {"meta", "payloads"} | null}``. Payloads are named by their
content, so a payload is never overwritten by different bytes. :func:`save` writes the
payloads first (a payload already on disk with the same hash is not written again: the
``best`` and ``latest`` checkpoints of one epoch share their tree), then replaces the
manifest, and only then deletes the files that no manifest names
(:func:`collect_garbage`). At every instant, then, ``NAME.json`` names a complete
checkpoint. ``previous`` is the entry the manifest replaced (while its files exist):
:func:`read` verifies sizes and hashes and falls back to it, with a
:class:`CheckpointWarning`, when a payload of the current entry is missing or corrupt.

**Format 1** (runs written before): ``NAME.eqx`` (the tree) with a sidecar ``NAME.json``
(the meta, ``sha256`` of the ``.eqx``, and for warm starts ``states_file`` naming a
``states-E-B.npz`` with its ``states_sha256``). It is read as before; the next save
replaces it by format 2.

**Untrusted files.** Nothing is unpickled. Manifests are capped at
:data:`MAX_MANIFEST_BYTES` and checked field by field (payload names must be content
names in the same directory). Payloads are decoded by :func:`decode`, which reads each
``.npy`` record's header itself and checks its dtype and shape against the template and
the bytes left in the file *before* allocating anything. Every failure is one line,
a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import os
import re
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..guards import EqpropWarning

__all__ = ["CheckpointError", "CheckpointWarning", "Snapshot", "atomic_write", "atomic_write_text",
           "append", "remove_stale_temps", "save", "load", "read", "read_meta", "decode",
           "serialise", "manifest_path", "meta_path", "collect_garbage", "FORMAT",
           "MAX_MANIFEST_BYTES"]

PyTree = Any

#: the manifest format written by :func:`save`
FORMAT = 2
#: a manifest larger than this is refused unread (a real one is a few kilobytes)
MAX_MANIFEST_BYTES = 1 << 20
#: an ``.npy`` record header longer than this is refused (numpy writes ~128 bytes)
MAX_HEADER_BYTES = 10_000

_PAYLOAD_RE = re.compile(r"(?P<name>[a-z][a-z0-9_]*)-(?P<hash>[0-9a-f]{16})\.eqx")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_LEGACY_STATES_RE = re.compile(r"states-\d+-\d+\.npz")
_TEMP_RE = re.compile(r"\.(?P<target>.+)\.[A-Za-z0-9_]{6,}\.tmp")
_NPY_MAGIC = b"\x93NUMPY"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


class CheckpointError(ValueError):
    """A checkpoint or run file is missing, corrupt, hostile, or does not fit the template.

    The message is one line and starts with the file's path.
    """


class CheckpointWarning(EqpropWarning):
    """A checkpoint's payload was missing or corrupt and its previous entry was used."""


# -- the file-system seams (the fault-injection tests wrap these) -------------------------


def _write(fh: BinaryIO, data: bytes, path: Path) -> None:
    """Write ``data`` to the open file ``fh`` (whose path is ``path``)."""
    fh.write(data)


def _fsync(fh: BinaryIO, path: Path) -> None:
    """Flush and fsync the open file ``fh`` (whose path is ``path``)."""
    fh.flush()
    os.fsync(fh.fileno())


def _replace(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst`` (atomic on POSIX)."""
    os.replace(src, dst)


def _fsync_dir(d: Path) -> None:
    """Fsync directory ``d`` so a rename in it is durable (best effort)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    """Remove ``path`` if it exists."""
    path.unlink(missing_ok=True)


# -- atomic files -----------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` atomically by ``data`` (bytes, or a function writing to the file).

    A temporary file next to ``path`` is written, fsync-ed and renamed onto ``path``;
    then the directory is fsync-ed. A failing writer leaves the previous file (if any)
    untouched and no temporary behind; a killed one leaves at most a stale temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; use the usual mode
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                _write(fh, data, tmp)
            _fsync(fh, tmp)
        _replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, text.encode("utf-8"))


def append(path: str | os.PathLike, data: bytes) -> None:
    """Append ``data`` to ``path`` (created) and fsync it.

    Not atomic: a kill can leave a prefix of ``data``; readers of appended files drop
    a torn last record (``RunDir.read_metrics``, ``RunDir.truncate_metrics``).
    """
    path = Path(path)
    with path.open("ab") as fh:
        _write(fh, data, path)
        _fsync(fh, path)


def remove_stale_temps(directory: str | os.PathLike, names: tuple[str, ...] | None = None) -> None:
    """Delete the temporaries a killed :func:`atomic_write` left in ``directory``.

    Only ``.NAME.XXXXXXXX.tmp`` files are touched (for ``NAME`` in ``names`` when given).
    Assumes no other process is writing in ``directory`` (one trainer per run).
    """
    d = Path(directory)
    if not d.is_dir():
        return
    for p in d.iterdir():
        m = _TEMP_RE.fullmatch(p.name)
        if m and (names is None or m["target"] in names) and p.is_file():
            _unlink(p)


# -- checkpoints --------------------------------------------------------------------------


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest of checkpoint ``path``: ``checkpoints/NAME.json`` (a ``.eqx`` is mapped)."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix == ".eqx" else path


#: the name used by format 1 for the manifest (there: a sidecar)
meta_path = manifest_path


def serialise(tree: PyTree) -> bytes:
    """The leaves of ``tree`` in Equinox's leaf format (one ``.npy`` record per array leaf)."""
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload_file(name: str, sha: str) -> str:
    return f"{name}-{sha[:16]}.eqx"


def save(path: str | os.PathLike, tree: PyTree, meta: Mapping[str, Any], *,
         payloads: Mapping[str, bytes] | None = None) -> None:
    """Write checkpoint ``path`` (``checkpoints/NAME.json``) as one atomic unit.

    **Arguments:** ``path``: the manifest (a ``NAME.eqx`` path means ``NAME.json``);
    ``tree``: the pytree to save (payload ``tree``); ``meta``: a JSON object stored in
    the manifest (the position); ``payloads``: further named blobs (names
    ``[a-z][a-z0-9_]*``, not ``tree``).

    Payloads first, then the manifest, then the garbage (module docstring).
    """
    path = manifest_path(path)
    blobs = {"tree": serialise(tree), **(payloads or {})}
    entries = {}
    for name, data in blobs.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"checkpoint payload name {name!r}: use [a-z][a-z0-9_]*")
        sha = _sha(data)
        target = path.parent / _payload_file(name, sha)
        if not _holds(target, len(data), sha):
            atomic_write(target, data)
        entries[name] = {"file": target.name, "sha256": sha, "bytes": len(data)}
    manifest = {"format": FORMAT, "meta": dict(meta), "payloads": entries,
                "previous": _fallback_entry(path)}
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write(path, text.encode("utf-8"))
    collect_garbage(path.parent)


def _holds(target: Path, size: int, sha: str) -> bool:
    """Whether ``target`` exists with exactly ``size`` bytes hashing to ``sha``."""
    try:
        if target.stat().st_size != size:
            return False
        return _sha(target.read_bytes()) == sha
    except OSError:
        return False


def _fallback_entry(path: Path) -> dict[str, Any] | None:
    """The entry a new manifest keeps as ``previous``: the newest one of the manifest at
    ``path`` (current, then previous) whose payload files are all present, else ``None``."""
    try:
        manifest = _parse_manifest(path)
    except CheckpointError:
        return None
    if manifest.get("format") != FORMAT:
        return None
    for entry in (manifest, manifest.get("previous")):
        if entry is not None and all(_present(path.parent / p["file"], p["bytes"])
                                     for p in entry["payloads"].values()):
            return {"meta": entry["meta"], "payloads": entry["payloads"]}
    return None


def _present(p: Path, size: int) -> bool:
    try:
        return p.stat().st_size == size
    except OSError:
        return False


def collect_garbage(directory: str | os.PathLike) -> None:
    """Delete the checkpoint files of ``directory`` that no manifest names.

    Kept: every payload named by a manifest's current or previous entry, format 1
    files named by a format 1 sidecar, and anything that is not a checkpoint file.
    Nothing is deleted when some manifest cannot be read (it may name anything).
    """
    d = Path(directory)
    keep: set[str] = set()
    superseded: set[str] = set()
    for m in d.glob("*.json"):
        try:
            manifest = _parse_manifest(m)
        except CheckpointError:
            return
        if manifest.get("format") == FORMAT:
            for entry in (manifest, manifest.get("previous")):
                if entry is not None:
                    keep.update(p["file"] for p in entry["payloads"].values())
            superseded.add(m.with_suffix(".eqx").name)
        else:
            keep.update(p["file"] for p in manifest["payloads"].values())
    remove_stale_temps(d)
    for p in d.iterdir():
        if p.name in keep or not p.is_file():
            continue
        if (_PAYLOAD_RE.fullmatch(p.name) or _LEGACY_STATES_RE.fullmatch(p.name)
                or p.name in superseded):
            _unlink(p)


@dataclass(frozen=True)
class Snapshot:
    """A checkpoint entry whose payloads were read and verified.

    **Fields:** ``manifest``: the manifest read; ``meta``: the entry's JSON object;
    ``blobs``: each payload's bytes by name; ``files``: each payload's path;
    ``fallback``: why the previous entry was used, or ``None``.
    """

    manifest: Path
    meta: dict[str, Any]
    blobs: dict[str, bytes] = field(repr=False)
    files: dict[str, Path]
    fallback: str | None = None


def read(path: str | os.PathLike) -> Snapshot:
    """Read and verify checkpoint ``path`` (``NAME.json``; ``NAME.eqx`` is mapped).

    Uses the manifest's previous entry, with a :class:`CheckpointWarning`, when a
    payload of the current one is missing or does not match its hash.

    **Raises:** :class:`CheckpointError` when the manifest is missing, unreadable or
    malformed, or no entry has all its payloads intact.
    """
    path = manifest_path(path)
    manifest = _parse_manifest(path)
    entries = [manifest] + ([manifest["previous"]] if manifest.get("previous") else [])
    problems = []
    for i, entry in enumerate(entries):
        try:
            blobs, files = _read_payloads(path, entry)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        fallback = None
        if i:
            fallback = (f"{problems[0]}; using the checkpoint's previous entry (epoch "
                        f"{entry['meta'].get('epoch')}, batch {entry['meta'].get('batch', 0)})")
            warnings.warn(fallback, CheckpointWarning, stacklevel=2)
        return Snapshot(path, dict(entry["meta"]), blobs, files, fallback)
    if len(problems) > 1:
        raise CheckpointError(f"{problems[0]}; its previous entry is broken too ({problems[1]})")
    raise CheckpointError(problems[0])


def _read_payloads(path: Path, entry: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Path]]:
    blobs, files = {}, {}
    for name, p in entry["payloads"].items():
        f = path.parent / p["file"]
        try:
            size = f.stat().st_size
            if p.get("bytes") is not None and size != p["bytes"]:
                raise CheckpointError(f"{f}: {size} bytes, its manifest {path.name} says "
                                      f"{p['bytes']} (interrupted write?)")
            data = f.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{f}: not found (named by {path.name})") from None
        except OSError as e:
            raise CheckpointError(f"{f}: unreadable ({_one_line(e)})") from None
        if p.get("sha256") is not None and _sha(data) != p["sha256"]:
            raise CheckpointError(f"{f}: does not match its manifest {path.name} (interrupted "
                                  "write or corruption?)")
        blobs[name], files[name] = data, f
    return blobs, files


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The meta of checkpoint ``path``'s current entry (payloads not read).

    For format 2 it carries ``payloads`` too (each payload's file, hash and size).

    **Raises:** :class:`CheckpointError` if the manifest is absent, unreadable or malformed.
    """
    manifest = _parse_manifest(manifest_path(path))
    return {**manifest["meta"], "payloads": manifest["payloads"]}


def load(path: str | os.PathLike, template: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """``(tree, meta)`` of checkpoint ``path``; ``template`` gives structure, shapes, dtypes.

    **Raises:** :class:`CheckpointError` (see :func:`read` and :func:`decode`).
    """
    snap = read(path)
    return decode(snap.blobs["tree"], template, snap.files["tree"]), snap.meta


# -- the manifest reader ------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def _parse_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, normalised: ``{"format", "meta", "payloads", "previous"}``.

    Format 1 sidecars become ``{"format": 1, "meta": sidecar, "payloads": {"tree":
    NAME.eqx, ["states": states_file]}, "previous": None}``.
    """
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, too large for a checkpoint manifest "
                                  f"(at most {MAX_MANIFEST_BYTES})")
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint manifest") from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({_one_line(e)})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{path}: too large for a checkpoint manifest")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({_one_line(e)})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: a checkpoint manifest is a JSON object, not "
                              f"{type(doc).__name__}")
    if "format" not in doc:
        return _legacy_manifest(path, doc)
    fmt = doc.get("format")
    if fmt != FORMAT or isinstance(fmt, bool):
        raise CheckpointError(f"{path}: checkpoint format {fmt!r} is not supported (this eqprop "
                              f"reads formats 1 and {FORMAT})")
    unknown = set(doc) - {"format", "meta", "payloads", "previous"}
    if unknown:
        raise CheckpointError(f"{path}: unknown manifest key(s) {', '.join(sorted(unknown))}")
    entry = _entry(path, doc, "")
    previous = doc.get("previous")
    return {"format": FORMAT, **entry,
            "previous": None if previous is None else _entry(path, previous, "previous.")}


def _entry(path: Path, e: Any, where: str) -> dict[str, Any]:
    if not isinstance(e, dict):
        raise CheckpointError(f"{path}: {where or 'the manifest'} is not a JSON object")
    meta, payloads = e.get("meta"), e.get("payloads")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: {where}meta is not a JSON object")
    if not isinstance(payloads, dict) or "tree" not in payloads:
        raise CheckpointError(f"{path}: {where}payloads must be an object naming at least 'tree'")
    out = {}
    for name, p in payloads.items():
        key = f"{where}payloads.{name}"
        if not isinstance(p, dict):
            raise CheckpointError(f"{path}: {key} is not a JSON object")
        file, sha, size = p.get("file"), p.get("sha256"), p.get("bytes")
        m = _PAYLOAD_RE.fullmatch(file) if isinstance(file, str) else None
        if m is None or m["name"] != name:
            raise CheckpointError(f"{path}: {key}.file must be '{name}-<16 hex digits>.eqx' in "
                                  f"the same directory, not {str(file)[:80]!r}")
        if not (isinstance(sha, str) and _SHA_RE.fullmatch(sha) and sha.startswith(m["hash"])):
            raise CheckpointError(f"{path}: {key}.sha256 must be the 64 hex digits its file "
                                  "name starts")
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            raise CheckpointError(f"{path}: {key}.bytes must be a non-negative integer")
        out[name] = {"file": file, "sha256": sha, "bytes": size}
    return {"meta": meta, "payloads": out}


def _legacy_manifest(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """Format 1: ``NAME.json`` is the sidecar of ``NAME.eqx`` (module docstring)."""
    sha = doc.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA_RE.fullmatch(sha)):
        raise CheckpointError(f"{path}: sha256 must be 64 hex digits")
    payloads = {"tree": {"file": path.with_suffix(".eqx").name, "sha256": sha, "bytes": None}}
    states = doc.get("states_file")
    if states is not None:
        ssha = doc.get("states_sha256")
        if not (isinstance(states, str) and _LEGACY_STATES_RE.fullmatch(states)):
            raise CheckpointError(f"{path}: states_file must be 'states-E-B.npz' in the same "
                                  f"directory, not {str(states)[:80]!r}")
        if ssha is not None and not (isinstance(ssha, str) and _SHA_RE.fullmatch(ssha)):
            raise CheckpointError(f"{path}: states_sha256 must be 64 hex digits")
        payloads["states"] = {"file": states, "sha256": ssha, "bytes": None}
    meta = {k: v for k, v in doc.items() if k not in ("sha256", "states_file", "states_sha256")}
    return {"format": 1, "meta": meta, "payloads": payloads, "previous": None}


# -- the payload reader -------------------------------------------------------------------


def decode(data: bytes, template: PyTree, source: str | os.PathLike) -> PyTree:
    """The pytree ``template`` with its array leaves read from ``data`` (leaf format).

    Mirrors ``eqx.tree_deserialise_leaves`` for trusted-or-not bytes: one ``.npy``
    record per array-like leaf of ``template`` (in ``jax.tree.leaves`` order); a record's
    dtype and shape must be the template leaf's (a Python or NumPy scalar leaf takes
    any numeric scalar), checked with the bytes left before reading; object dtypes are
    refused, so nothing is unpickled; trailing bytes are refused.

    **Arguments:** ``data``: the payload; ``template``: arrays, ``jax.ShapeDtypeStruct``
    or scalars giving what to read; ``source``: the file name for messages.

    **Raises:** :class:`CheckpointError` (one line, naming ``source``).
    """
    leaves, treedef = jax.tree.flatten(template)
    view = memoryview(data)
    offset, out = 0, []
    n = len(leaves)
    for i, x in enumerate(leaves):
        where = f"leaf {i + 1} of {n}"
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            arr, offset = _read_record(view, offset, np.dtype(x.dtype), tuple(x.shape), source,
                                       where)
            out.append(jnp.asarray(arr))
        elif isinstance(x, np.ndarray):
            arr, offset = _read_record(view, offset, x.dtype, x.shape, source, where)
            out.append(arr)
        elif eqx.is_array_like(x):
            dtype = x.dtype if isinstance(x, np.generic) else None
            arr, offset = _read_record(view, offset, dtype, (), source, where)
            try:
                out.append(type(x)(arr.item()))
            except (TypeError, ValueError, OverflowError) as e:
                raise CheckpointError(f"{source}: {where}: a {arr.dtype} scalar where the model "
                                      f"has a {type(x).__name__} ({_one_line(e)})") from None
        else:
            out.append(x)
    if offset != len(data):
        raise CheckpointError(f"{source}: {len(data) - offset} unexpected trailing bytes after "
                              f"the {n} leaves the model needs (a different model?)")
    return jax.tree.unflatten(treedef, out)


def _read_record(view: memoryview, offset: int, dtype: np.dtype | None, shape: tuple[int, ...],
                 source: Any, where: str) -> tuple[np.ndarray, int]:
    """One ``.npy`` record at ``offset``: ``(array, next offset)``; ``dtype`` ``None``
    admits any plain numeric dtype."""
    left = len(view) - offset
    if left < 10:
        raise CheckpointError(f"{source}: truncated ({where}: {left} bytes left, no array record)")
    if bytes(view[offset:offset + 6]) != _NPY_MAGIC:
        raise CheckpointError(f"{source}: {where} is not an array record (not an eqprop "
                              "checkpoint, or corrupt)")
    major = view[offset + 6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", view[offset + 8:offset + 10]), offset + 10
    elif major in (2, 3):
        if left < 12:
            raise CheckpointError(f"{source}: truncated ({where}: header cut off)")
        (hlen,), start = struct.unpack("<I", view[offset + 8:offset + 12]), offset + 12
    else:
        raise CheckpointError(f"{source}: {where}: unknown array record version {major}")
    if hlen > MAX_HEADER_BYTES:
        raise CheckpointError(f"{source}: {where}: array header of {hlen} bytes (at most "
                              f"{MAX_HEADER_BYTES})")
    if start + hlen > len(view):
        raise CheckpointError(f"{source}: truncated ({where}: header cut off)")
    header = _parse_header(bytes(view[start:start + hlen]), major, source, where)
    descr, fortran, got_shape = header
    if dtype is not None:
        want = np.lib.format.dtype_to_descr(np.dtype(dtype))
        if descr != want:
            raise CheckpointError(f"{source}: does not fit the model built from the config "
                                  f"({where}: dtype {descr!r}, the model needs {want!r})")
        dt = np.dtype(dtype)
    else:
        if not (isinstance(descr, str) and re.fullmatch(r"[<>|=][biufc][0-9]{1,2}", descr)):
            raise CheckpointError(f"{source}: {where}: dtype {str(descr)[:40]!r} is not a number")
        try:
            dt = np.dtype(descr)
        except TypeError:
            raise CheckpointError(f"{source}: {where}: dtype {descr!r} is not a number") from None
    if got_shape != tuple(shape):
        raise CheckpointError(f"{source}: does not fit the model built from the config "
                              f"({where}: shape {got_shape}, the model needs {tuple(shape)})")
    count = math.prod(shape)
    body = start + hlen
    nbytes = count * dt.itemsize
    if nbytes > len(view) - body:
        raise CheckpointError(f"{source}: truncated ({where} needs {nbytes} bytes, "
                              f"{len(view) - body} left)")
    arr = np.frombuffer(view, dtype=dt, count=count, offset=body)
    arr = arr.reshape(shape, order="F" if fortran else "C").copy()
    return arr, body + nbytes


def _parse_header(raw: bytes, major: int, source: Any, where: str
                  ) -> tuple[str, bool, tuple[int, ...]]:
    try:
        text = raw.decode("utf-8" if major >= 3 else "latin1")
        d = ast.literal_eval(text)
    except Exception as e:  # noqa: BLE001 - SyntaxError, ValueError, MemoryError, RecursionError
        raise CheckpointError(f"{source}: {where}: unreadable array header "
                              f"({type(e).__name__})") from None
    if not (isinstance(d, dict) and set(d) == {"descr", "fortran_order", "shape"}):
        raise CheckpointError(f"{source}: {where}: an array header holds descr, fortran_order "
                              "and shape")
    descr, fortran, shape = d["descr"], d["fortran_order"], d["shape"]
    if not isinstance(descr, str):
        raise CheckpointError(f"{source}: {where}: structured or unknown dtype {str(descr)[:40]!r} "
                              "(refused)")
    if not isinstance(fortran, bool):
        raise CheckpointError(f"{source}: {where}: fortran_order must be true or false")
    if not (isinstance(shape, tuple) and len(shape) <= 32
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise CheckpointError(f"{source}: {where}: shape {str(shape)[:40]} is not a tuple of "
                              "sizes")
    return descr, fortran, shape
