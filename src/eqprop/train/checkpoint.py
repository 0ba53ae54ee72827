"""Atomic checkpoints: ``NAME.eqx`` (Equinox-serialised leaves) plus ``NAME.json`` sidecar.

The ``.eqx`` file holds ``eqx.tree_serialise_leaves`` of a pytree (the trainer stores
``(model, opt_state)``). Deserialising needs a *template* of the same structure, which
the trainer rebuilds from the run's ``config.toml``. The sidecar is a small JSON object
(epoch, batch position, best accuracy, RNG scheme, ...) plus the SHA-256 of the ``.eqx``
file, checked on load so a sidecar never describes a different state.

Every file is written atomically: a temporary file in the same directory, flushed and
fsync-ed, then ``os.replace``-d over the target. A failing writer leaves the previous
file (if any) untouched and no temporary behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import equinox as eqx

__all__ = ["CheckpointError", "atomic_write", "atomic_write_text", "save", "load", "read_meta",
           "meta_path"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


class CheckpointError(ValueError):
    """A checkpoint is missing, inconsistent with its sidecar, or does not fit the template."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temp file next to ``path``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; use the usual mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _fsync_dir(d: Path) -> None:
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


def meta_path(path: str | os.PathLike) -> Path:
    """The sidecar of ``checkpoints/NAME.eqx``: ``checkpoints/NAME.json``."""
    return Path(path).with_suffix(".json")


def save(path: str | os.PathLike, tree: Any, meta: dict[str, Any]) -> None:
    """Atomically write ``tree`` to ``path`` (``.eqx``) and ``meta`` (+ sha256) to its sidecar."""
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    data = buf.getvalue()
    atomic_write(path, lambda fh: fh.write(data))
    meta = {**meta, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of checkpoint ``path``; raises :class:`CheckpointError` if absent/broken."""
    mp = meta_path(path)
    try:
        return json.loads(mp.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{mp}: checkpoint sidecar not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{mp}: unreadable checkpoint sidecar ({e})") from None


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Load ``(tree, meta)`` from checkpoint ``path``; ``template`` gives structure/shapes."""
    path = Path(path)
    meta = read_meta(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    if meta.get("sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise CheckpointError(f"{path}: does not match its sidecar {meta_path(path).name} "
                              "(interrupted write?)")
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(data), template)
    except Exception as e:  # shape/dtype/structure mismatch
        msg = " ".join(str(e).splitlines())[:200]
        raise CheckpointError(f"{path}: does not fit the model built from the config ({msg})") from None
    return tree, meta
