"""Settings: the fields of a component that are configuration keys, and their registries.

A component (model kind, estimator, solver, optimizer section, logger, ...) is a frozen
class whose fields are its settings. A field declared with :func:`setting` carries its
documentation and its allowed values; the configuration schema, ``eqprop config``,
``docs/config.md`` and every configuration error message are derived from those
declarations (:mod:`eqprop.config`), so adding a setting is one line in one class.

A :class:`Registry` maps names to components; a component registers itself once
(``@MODELS.register("layered")``), and every allowed-values list is read from the
registry at the moment it is needed, so components registered later (plugins) are
included.

Pure Python; no JAX here.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "Bounds", "Setting", "SettingError", "setting", "settings_of", "Registry", "FrozenMap",
    "POSITIVE_INT", "NONNEGATIVE", "POSITIVE", "UNIT_HALF_OPEN",
    "STRING", "INTEGER", "FLOAT", "BOOLEAN", "COUNT_OR_ALL", "INT_ARRAY", "STRING_ARRAY", "PAIR_ARRAY", "INT_TABLE",
    "FLOAT_TABLE",
]

T = TypeVar("T")

# Value kinds; the string is also the "type" column of the docs.
STRING, INTEGER, FLOAT, BOOLEAN = "string", "integer", "float", "boolean"
INT_ARRAY, STRING_ARRAY = "array of integers", "array of strings"
COUNT_OR_ALL = "integer or 'all'"  # a positive count, or every one available
PAIR_ARRAY = "array of [src, dst] string pairs"
INT_TABLE, FLOAT_TABLE = "table of integers", "table of floats"

_META = "eqprop.setting"


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable mapping (compares equal to a dict with the same items)."""

    def __init__(self, data: Mapping[str, Any] | Sequence[tuple[str, Any]] = ()) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


class SettingError(ValueError):
    """An invalid setting value, raised by a component's own validation.

    ``key`` names the configuration key to blame, relative to the component's section
    (``"points"``, ``"projections[1]"``); the configuration reports it as
    ``section.key: message`` (one line). Being a ``ValueError``, it reads naturally to
    code that builds the component directly.

    **Arguments:** ``key``: the configuration key; ``message``: one line, without the key.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Bounds:
    """A numeric interval; ``None`` means unbounded on that side.

    ``lo_open`` / ``hi_open`` exclude the end. ``x in bounds`` tests membership (NaN is
    never in); ``str(bounds)`` is the phrase the error messages use (``"in (0, 1]"``,
    ``">= 1"``).
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        if math.isnan(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{self.lo}, {self.hi}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        return "any value"


POSITIVE_INT = Bounds(lo=1)
NONNEGATIVE = Bounds(lo=0)
POSITIVE = Bounds(lo=0, lo_open=True)
UNIT_HALF_OPEN = Bounds(lo=0, hi=1, hi_open=True)  # [0, 1)


class Registry(Generic[T]):
    """Names -> components of one kind (models, estimators, solvers, ...).

    ``kind`` names the kind in messages (``"estimator"``). Iterating yields the names in
    registration order; ``registry[name]`` raises ``KeyError`` with the allowed names,
    :meth:`get` raises ``ValueError`` with the same one-line message.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, a class decorator.

        A registered class gets the attribute ``registered_name = name``.

        **Returns:** ``obj`` (or the decorator, which returns the class).

        **Raises:** ``ValueError`` for an empty or non-string name, or a name already
        registered to another object unless ``replace`` (plugins that override a
        built-in say so).
        """
        def add(o: T) -> T:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
            if name in self._entries and not replace and self._entries[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({_describe(self._entries[name])}); pass replace=True to override it")
            self._entries[name] = o
            if isinstance(o, type):
                try:
                    o.registered_name = name  # type: ignore[attr-defined]
                except (AttributeError, TypeError):
                    pass
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plugins that clean up after themselves)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        """``(name, component)`` pairs, in registration order."""
        return self._entries.items()

    def unknown(self, name: Any) -> str:
        """The one-line message for an unknown name."""
        return f"unknown {self.kind} {name!r}; allowed: {', '.join(repr(n) for n in self._entries)}"

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise KeyError(self.unknown(name)) from None

    def get(self, name: str) -> T:
        """The component registered as ``name``; ``ValueError`` naming the allowed ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(self.unknown(name)) from None

    def name_of(self, obj: Any) -> str:
        """The name under which ``obj`` (or its class) is registered.

        **Raises:** ``ValueError`` when neither is registered here.
        """
        cls = obj if isinstance(obj, type) else type(obj)
        for n, o in self._entries.items():
            if o is obj or o is cls:
                return n
        raise ValueError(f"{_describe(obj)} is not a registered {self.kind}")

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _describe(o: Any) -> str:
    if isinstance(o, type):
        return f"{o.__module__}.{o.__qualname__}"
    return repr(o)


@dataclass(frozen=True)
class Setting:
    """What :func:`setting` attaches to a field: its documentation and allowed values.

    ``doc``: one line. ``choices``: a tuple of allowed strings, or a :class:`Registry`
    (its names at the time of the check). ``bounds``: the allowed interval of a number
    (of each entry of an array or table). ``optional``: the value may be absent
    (``None``). ``min_len``: least number of entries of an array. ``kind``: one of the
    value kinds (``"integer"``, ...); ``None`` infers it from the field's annotation.
    ``key``: the configuration key when it is not the field's name (e.g.
    ``anderson_memory`` for ``Anderson.memory``).
    """

    doc: str
    choices: Any = None
    bounds: Bounds | None = None
    optional: bool = False
    min_len: int = 0
    kind: str | None = None
    key: str | None = None

    def allowed_choices(self) -> tuple[str, ...] | None:
        """The allowed strings now (a registry's current names), or ``None`` if any."""
        if self.choices is None:
            return None
        if isinstance(self.choices, Registry):
            return self.choices.names()
        return tuple(self.choices)


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, choices: Any = None,
            bounds: Bounds | None = None, optional: bool = False, min_len: int = 0,
            kind: str | None = None, key: str | None = None, static: bool = True) -> Any:
    """A field that is a configuration setting (for ``eqx.Module`` and dataclasses alike).

    Example::

        class HolomorphicEP(Estimator):
            beta: float = setting(0.5, "Radius of the nudge circle.", bounds=POSITIVE)

    **Arguments:** ``default``: the default value (a setting needs one, see
    :func:`settings_of`); ``doc``: one line for ``eqprop config`` and the docs;
    ``choices``, ``bounds``, ``optional``, ``min_len``, ``kind``, ``key``: stored in
    the :class:`Setting`; ``static``: in an ``eqx.Module`` the field is static
    (hashable, never traced) unless ``static=False``.

    **Returns:** a ``dataclasses.field``.

    **Raises:** ``ValueError`` when ``doc`` is empty or has more than one line.
    """
    if not doc or "\n" in doc:
        raise ValueError("a setting needs a one-line doc")
    meta = {_META: Setting(doc, choices, bounds, optional, min_len, kind, key)}
    if static:
        meta["static"] = True  # read by equinox's dataclass machinery
    kwargs: dict[str, Any] = {"metadata": meta}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


@dataclass(frozen=True)
class SettingField:
    """One setting of a class: field name, config key, kind, default and its :class:`Setting`."""

    name: str
    key: str
    kind: str
    default: Any
    spec: Setting


def _kind_of(hint: Any, default: Any) -> str:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _kind_of(args[0], default)
    if hint is bool:
        return BOOLEAN
    if hint is int:
        return INTEGER
    if hint is float:
        return FLOAT
    if hint is str:
        return STRING
    if origin is tuple:
        if args and args[0] is int:
            return INT_ARRAY
        if args and args[0] is str:
            return STRING_ARRAY
        return PAIR_ARRAY
    if origin in (Mapping, dict, typing.Mapping) or hint in (Mapping, dict):
        return FLOAT_TABLE if args and args[-1] is float else INT_TABLE
    for t, k in ((bool, BOOLEAN), (int, INTEGER), (float, FLOAT), (str, STRING)):
        if isinstance(default, t):
            return k
    raise TypeError(f"cannot infer the value kind of a setting annotated {hint!r}; pass kind=")


def settings_of(cls: type) -> tuple[SettingField, ...]:
    """The settings of the dataclass (or ``eqx.Module``) ``cls`` in field order: the
    fields declared with :func:`setting`, as :class:`SettingField`.

    **Raises:** ``TypeError`` when a setting has no default, or its value kind can be
    inferred neither from its annotation nor its default (pass ``kind=``).
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: fall back on the defaults
        hints = {}
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if spec is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            raise TypeError(f"setting {cls.__name__}.{f.name} needs a default")
        kind = spec.kind or _kind_of(hints.get(f.name), default)
        out.append(SettingField(f.name, spec.key or f.name, kind, default, spec))
    return tuple(out)
