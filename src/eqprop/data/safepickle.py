"""A restricted unpickler for data pickles (CIFAR, ImageNet 32x32): data in, never code.

``pickle.load`` calls whatever a file names: a crafted ``data_batch_1`` whose
``__reduce__`` names ``os.system`` runs a shell command. :func:`load_data_pickle`
admits only what the published data pickles hold:

* plain data: dict, list, tuple, bytes, str, int, float, bool, None;
* numpy arrays through numpy's own reconstruction (``numpy.core.multiarray._reconstruct``
  or ``numpy._core.multiarray._reconstruct`` with ``numpy.ndarray``, and ``numpy.dtype``)
  for boolean, integer and floating dtypes;
* ``_codecs.encode(s, "latin1")`` and ``bytes()``: how Python 3 writes ``bytes`` at
  pickle protocol 2 (the CIFAR originals' protocol).

Everything else (any other global, object/extension/persistent-id/buffer opcodes,
state set on anything but an array or dtype, a dict key that is not str, bytes or
int) is refused before it runs, with a one-line :class:`DataError` naming the file
and what was refused::

    data_batch_1: refused to unpickle global 'posix.system' (a data pickle may hold only
    dicts, lists, tuples, bytes, str, numbers and numpy arrays)

Allocations never exceed what the file justifies: every read is checked against the
bytes left in the file before it is made (a length field claiming 2 GiB in a 1 KiB
file is refused), the memo is a dict (a huge memo index allocates nothing), an array
is built over the bytes the file holds (the claimed shape must match them exactly),
and ``_codecs.encode`` / ``bytes`` cannot make more bytes than the file holds. A dict
key is hashed only if it is str, bytes or int, so a deeply nested tuple (whose hash
recurses in C) never reaches a dict.
"""

from __future__ import annotations

import abc
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from .base import DataError

__all__ = ["load_data_pickle"]

_WHAT = ("a data pickle may hold only dicts, lists, tuples, bytes, str, numbers and "
         "numpy arrays")
_MAX_NDIM = 32
_DTYPE_CODE = re.compile(r"[|<>=]?(b1|[iu][1248]|f[248])")


class _Refused(Exception):
    """The pickle asked for something a data pickle never holds (``what`` says what)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _Truncated(Exception):
    """A read asked for more bytes than are left in the file."""


def _brief(obj: Any, limit: int = 60) -> str:
    """A short one-line repr that never converts a huge int or a long str in full."""
    if isinstance(obj, bool) or obj is None:
        return repr(obj)
    if isinstance(obj, int):
        return repr(obj) if obj.bit_length() <= 64 else f"<int of {obj.bit_length()} bits>"
    if isinstance(obj, (str, bytes)):
        text = repr(obj[:limit])
        return text + ("..." if len(obj) > limit else "")
    return f"<{type(obj).__name__}>"


# --- the admitted callables and the placeholders they return --------------------------

class _Placeholder(abc.ABC):
    """An array or dtype under construction; its state is checked before numpy sees it.
    BUILD (``__setstate__``) is admitted on placeholders only."""

    built = False

    @abc.abstractmethod
    def __setstate__(self, state: Any) -> None:
        """Check ``state`` as numpy writes it and build the value from it, once."""


class _DType(_Placeholder):
    """``numpy.dtype(code, align, copy)``: a boolean, integer or floating scalar dtype."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if isinstance(code, bytes):  # Python 2 pickles read with encoding="bytes"
            code = code.decode("ascii", "replace")
        if not isinstance(code, str) or not _DTYPE_CODE.fullmatch(code):
            raise _Refused(f"dtype {_brief(code)}")
        if type(align) not in (bool, int) or type(copy) not in (bool, int):
            raise _Refused(f"dtype arguments {_brief(align)}, {_brief(copy)}")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment,
        # flags[, metadata]); a plain scalar dtype has None / -1 / 0 in all but the first
        # two. The state is checked here and never handed to numpy.
        if self.built:
            raise _Refused("a second state for a dtype")
        if not isinstance(state, tuple) or not 2 <= len(state) <= 9 \
                or type(state[0]) is not int:
            raise _Refused(f"dtype state {_brief(state)}")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise _Refused(f"dtype byte order {_brief(order)}")
        if any(not (v is None or (type(v) is int and v in (-1, 0))) for v in state[2:]):
            raise _Refused("a structured or annotated dtype")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)
        self.built = True


class _NDArrayClass:
    """``numpy.ndarray`` as named by a pickle: an argument of ``_reconstruct`` only."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("a direct call of numpy.ndarray")


_NDARRAY = _NDArrayClass()


class _Array(_Placeholder):
    """``_reconstruct(ndarray, shape, b"b")``, then ``__setstate__``: an array over the
    file's bytes."""

    def __init__(self, cls: Any, shape: Any, typecode: Any) -> None:
        if cls is not _NDARRAY:
            raise _Refused(f"_reconstruct of {_kind(cls)}")
        _check_shape(shape)
        if typecode not in (b"b", "b"):
            raise _Refused(f"_reconstruct type code {_brief(typecode)}")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, shape, dtype, is_fortran, rawdata); very old files omit
        # the version.
        if self.built:
            raise _Refused("a second state for an array")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"array state {_brief(state)}")
        if len(state) == 5:
            if type(state[0]) is not int:
                raise _Refused(f"array state version {_brief(state[0])}")
            state = state[1:]
        shape, dtype, fortran, raw = state
        _check_shape(shape)
        if not isinstance(dtype, _DType):
            raise _Refused(f"an array of dtype {_kind(dtype)}")
        if type(fortran) not in (bool, int) or type(raw) is not bytes:
            raise _Refused(f"array data {_brief(raw)}")  # a list here means an object array
        size = dtype.dtype.itemsize
        for d in shape:
            size *= d
            if size > len(raw):
                break
        if size != len(raw):
            raise _Refused(f"an array of shape {_brief_shape(shape)} and dtype {dtype.dtype} "
                           f"over {len(raw)} bytes of data")
        flat = (np.frombuffer(raw, dtype=dtype.dtype) if raw
                else np.empty(0, dtype=dtype.dtype))
        self.array = flat.reshape(shape, order="F" if fortran else "C")
        self.built = True


def _check_shape(shape: Any) -> None:
    if type(shape) is not tuple or len(shape) > _MAX_NDIM \
            or any(type(d) is not int or not 0 <= d < 2**62 for d in shape):
        raise _Refused(f"array shape {_brief_shape(shape)}")


def _brief_shape(shape: Any) -> str:
    if type(shape) is not tuple:
        return _brief(shape)
    return "(" + ", ".join(_brief(d) for d in shape[:8]) + (", ...)" if len(shape) > 8 else ")")


class _Latin1Encode:
    """``_codecs.encode(s, "latin1")``: Python 3's way of writing bytes at protocol <= 2.

    One per load, with a budget of the file's size: a str the memo hands out again and
    again cannot be encoded into more bytes than the file holds.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if type(text) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise _Refused(f"_codecs.encode of {_brief(text)} as {_brief(encoding)}")
        if len(text) > self.budget:
            raise _Refused("_codecs.encode of more bytes than the file holds")
        self.budget -= len(text)
        return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how Python 3 writes ``b""`` at protocol <= 2 (nothing else is admitted)."""
    if args:
        raise _Refused(f"bytes() with {len(args)} argument(s)")
    return b""


_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _Latin1Encode,  # an instance per load (find_class)
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


def _kind(obj: Any) -> str:
    """What a pickle made ``obj`` from, for a message: a global's name or a type's."""
    for (module, name), value in _GLOBALS.items():
        if obj is value:
            return f"{module}.{name}"
    if isinstance(obj, _Latin1Encode):
        return "_codecs.encode"
    if isinstance(obj, _DType):
        return "a numpy.dtype"
    if isinstance(obj, _Array):
        return "a numpy array"
    return f"a {type(obj).__name__}"


# opcodes of plain data, the memo, globals (checked by find_class), REDUCE and BUILD
_OPCODES = (
    "PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 "
    "LONG LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE "
    "SHORT_BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES BINBYTES8 EMPTY_LIST APPEND "
    "APPENDS LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_DICT DICT SETITEM SETITEMS "
    "GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE GLOBAL STACK_GLOBAL REDUCE BUILD"
).split()
_OPCODE_NAMES = {getattr(pickle, n)[0]: n for n in dir(pickle)
                 if n.isupper() and isinstance(getattr(pickle, n), bytes)
                 and len(getattr(pickle, n)) == 1}


class _Dispatch(dict):
    """The pure-Python unpickler's opcode table, cut to :data:`_OPCODES`."""

    def __missing__(self, code: int):
        name = _OPCODE_NAMES.get(code)
        if name is None:
            raise pickle.UnpicklingError(f"invalid opcode 0x{code:02x}")
        raise _Refused(f"opcode {name}")


def _hashable_key(key: Any) -> None:
    if type(key) not in (str, bytes, int):
        raise _Refused(f"a dict key of type {type(key).__name__}")


class _Unpickler(pickle._Unpickler):  # the pure-Python one: a dict memo, no C recursion
    """Only :data:`_GLOBALS`, only :data:`_OPCODES`, state only on placeholders."""

    def __init__(self, file: _BoundedFile, size: int) -> None:
        super().__init__(file, encoding="bytes")
        self._encode = _Latin1Encode(size)

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"global {_brief(f'{module}.{name}', 80)}") from None
        return self._encode if found is _Latin1Encode else found

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _Placeholder):
            raise _Refused(f"state set on {_kind(inst)}")
        inst.__setstate__(state)

    def load_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise pickle.UnpicklingError("DICT with an odd number of items")
        for key in items[::2]:
            _hashable_key(key)
        self.append(dict(zip(items[::2], items[1::2])))

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        _hashable_key(key)
        self._dict_on_top()[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise pickle.UnpicklingError("SETITEMS with an odd number of items")
        target = self._dict_on_top()
        for key, value in zip(items[::2], items[1::2]):
            _hashable_key(key)
            target[key] = value

    def _dict_on_top(self) -> dict:
        target = self.stack[-1]
        if type(target) is not dict:
            raise _Refused(f"items set on {_kind(target)}")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._list_on_top().append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._list_on_top().extend(items)

    def _list_on_top(self) -> list:
        target = self.stack[-1]
        if type(target) is not list:
            raise _Refused(f"items appended to {_kind(target)}")
        return target

    dispatch = _Dispatch({code: load for code, load in pickle._Unpickler.dispatch.items()
                          if _OPCODE_NAMES.get(code) in _OPCODES})
    dispatch.update({pickle.BUILD[0]: load_build, pickle.DICT[0]: load_dict,
                     pickle.SETITEM[0]: load_setitem, pickle.SETITEMS[0]: load_setitems,
                     pickle.APPEND[0]: load_append, pickle.APPENDS[0]: load_appends})


class _BoundedFile:
    """A binary file whose reads may not ask for more bytes than it has left."""

    def __init__(self, f, size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            raise _Truncated(f"a read of {n} bytes with {self._left} left")
        data = self._f.read(n)
        if len(data) != n:
            raise _Truncated(f"a read of {n} bytes got {len(data)}")
        self._left -= n
        return data

    def readline(self) -> bytes:
        line = self._f.readline(self._left)
        self._left -= len(line)
        return line


def _unwrap(obj: Any) -> Any:
    """A finished array in place of its placeholder (dict values, one level down)."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise _Refused("an array without its data")
        return obj.array
    if isinstance(obj, _DType):
        raise _Refused("a dtype where data was expected")
    return obj


def load_data_pickle(path: str | os.PathLike) -> dict:
    """Unpickle the data pickle at ``path`` (a dict) without running anything it names.

    **Arguments:**

    - `path`: a CIFAR or ImageNet 32x32 pickle, any protocol from 0 to 4, written by
      Python 2 or 3 (read with ``encoding="bytes"``: Python 2 strings become bytes).

    **Returns:**

    The top-level dict, its numpy-array values as read-only arrays over the file's bytes.

    **Raises:**

    :class:`DataError`, one line naming ``path``: unreadable, truncated or malformed
    data, or a refused global, opcode or value (the message says which).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            obj = _Unpickler(_BoundedFile(f, size), size).load()
    except _Refused as e:
        raise DataError(f"{path}: refused to unpickle {e.what} ({_WHAT})") from None
    except _Truncated:
        raise DataError(f"{path}: cannot unpickle (truncated: the file ends early)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - malformed pickles raise many kinds
        raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: "
                        f"{_message(e)})") from None
    if type(obj) is not dict:
        raise DataError(f"{path}: pickle holds a {type(obj).__name__}, expected a dict")
    try:
        return {k: _unwrap(v) for k, v in obj.items()}
    except _Refused as e:
        raise DataError(f"{path}: refused to unpickle {e.what} ({_WHAT})") from None


def _message(e: BaseException) -> str:
    try:
        text = str(e)
    except Exception:  # noqa: BLE001 - str of a hostile value may itself fail
        text = "?"
    text = " ".join(text.split())
    return text[:200] + ("..." if len(text) > 200 else "")
