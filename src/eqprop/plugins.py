"""Plugins: a researcher's own components, in their own Python file.

A plugin is one self-contained Python file that registers components in the registries
of :mod:`eqprop.registry` when it is imported: a model kind (:func:`register_model`, or
``@MODELS.register(name)``), an estimator, a solver, a data set, a logger. The command
line loads it with ``--plugin FILE``::

    eqprop train my_field.toml --plugin my_field.py

``eqprop train`` copies the file into ``RUN_DIR/plugins/``; ``eqprop resume``,
``eqprop eval`` and ``eqprop gradcheck`` load the copies of a run directory by
themselves, so a run keeps working without ``--plugin`` (and without the original file).
A ``--plugin`` given to them replaces the recorded copy of the same file name.

A file is loaded once per process whatever its path or name: the module
(``eqprop_plugins.<stem>_<sha256 prefix>``) is found again by the file's content, so the
recorded copy of a file already loaded is not imported (nor registered) a second time.

See ``docs/extending.md`` for the contract a model implements.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable, TypeVar

from . import registry
from .settings import Registry, settings_of

__all__ = ["PluginError", "load_plugin", "load_plugins", "record_plugins", "recorded_plugins",
           "load_recorded", "register_model", "plugin_culprit", "PLUGIN_DIR"]

#: the folder of a run directory that holds the copies of its plugins
PLUGIN_DIR = "plugins"
_PACKAGE = "eqprop_plugins"
#: content digest -> name of the module loaded from it (its entry in ``sys.modules``)
_LOADED: dict[str, str] = {}

T = TypeVar("T", bound=type)


class PluginError(ValueError):
    """A plugin file that cannot be loaded or recorded; ``str(e)`` is one line naming the
    file and the cause (the command line reports it with exit code 2)."""

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        super().__init__(f"plugin {path}: {' '.join(str(cause).split())}")
        self.path = Path(path)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _registries() -> dict[str, Registry]:
    return {name: obj for name in registry.__all__
            if isinstance(obj := getattr(registry, name), Registry)}


def _snapshot() -> dict[str, dict]:
    return {name: dict(reg.items()) for name, reg in _registries().items()}


def _restore(snapshot: dict[str, dict]) -> None:
    """Undo the registrations made since ``snapshot`` (a plugin that failed half way)."""
    for name, reg in _registries().items():
        before = snapshot.get(name, {})
        for key in [k for k in reg.names() if k not in before]:
            reg.unregister(key)
        for key, obj in before.items():
            if key not in reg or reg[key] is not obj:
                reg.register(key, obj, replace=True)


def _where(err: BaseException, path: Path) -> str:
    """``" (line N)"`` of the innermost frame of ``err``'s traceback in ``path``."""
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        try:
            if Path(frame.filename).resolve() == path:
                line = frame.lineno
        except OSError:
            continue
    return f" (line {line})" if line is not None else ""


def load_plugin(path: str | os.PathLike) -> ModuleType:
    """Import the Python file ``path`` as a plugin: its components register themselves.

    **Arguments:** ``path``: a ``.py`` file.

    **Returns:** the module. A file whose content was loaded before in this process
    (from any path) is not imported again: the earlier module is returned.

    **Raises:** :class:`PluginError` (a ``ValueError``), one line naming the file, when it
    does not exist, is not a ``.py`` file, has a syntax error, or raises while it is
    imported (e.g. it registers a name that is taken). A plugin that fails leaves the
    registries as they were.
    """
    path = Path(path)
    if not path.is_file():
        raise PluginError(path, "no such file" if not path.exists() else "not a file")
    if path.suffix != ".py":
        raise PluginError(path, "not a Python file (expected a .py file)")
    try:
        source = path.read_bytes()
    except OSError as e:
        raise PluginError(path, e.strerror or e) from None
    digest = hashlib.sha256(source).hexdigest()[:12]
    known = sys.modules.get(_LOADED.get(digest, ""))
    if known is not None:
        return known
    stem = "".join(c if c.isalnum() or c == "_" else "_" for c in path.stem) or "plugin"
    name = f"{_PACKAGE}.{stem}_{digest}"
    registry.load_builtins()  # built-ins first: a plugin extends (or replaces) them
    if _PACKAGE not in sys.modules:
        package = ModuleType(_PACKAGE)
        package.__path__ = []  # a namespace for the plugins' modules
        sys.modules[_PACKAGE] = package
    resolved = path.resolve()
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover (a .py file always has one)
        raise PluginError(path, "cannot be imported")
    module = importlib.util.module_from_spec(spec)
    before = _snapshot()
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        _restore(before)
        raise PluginError(path, f"syntax error at line {e.lineno}: {e.msg}") from None
    except BaseException as e:  # noqa: BLE001 (reported, not swallowed)
        sys.modules.pop(name, None)
        _restore(before)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise PluginError(path, f"{type(e).__name__} while importing{_where(e, resolved)}: "
                          f"{e}") from None
    _LOADED[digest] = name
    return module


def load_plugins(paths: Iterable[str | os.PathLike]) -> list[ModuleType]:
    """:func:`load_plugin` of each path, in order."""
    return [load_plugin(p) for p in paths]


# ---------------------------------------------------------------------------
# Recording in a run directory
# ---------------------------------------------------------------------------


def record_plugins(run_dir: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Copy the plugin files ``paths`` into ``run_dir/plugins/`` (created).

    A recorded copy with the same file name is replaced. **Returns:** the copies' paths.
    **Raises:** :class:`PluginError` when a file is missing or two files share a name.
    """
    paths = [Path(p) for p in paths]
    names: dict[str, Path] = {}
    for p in paths:
        if not p.is_file():
            raise PluginError(p, "no such file")
        if p.name in names and names[p.name].resolve() != p.resolve():
            raise PluginError(p, f"has the same file name as {names[p.name]}; a run directory "
                              "records one plugin per file name")
        names[p.name] = p
    if not names:
        return []
    folder = Path(run_dir) / PLUGIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, p in names.items():
        target = folder / name
        tmp = folder / f".{name}.tmp"
        shutil.copyfile(p, tmp)
        os.replace(tmp, target)
        out.append(target)
    return out


def recorded_plugins(run_dir: str | os.PathLike) -> list[Path]:
    """The plugin files recorded in ``run_dir`` (sorted by name; empty when none)."""
    folder = Path(run_dir) / PLUGIN_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".py" and p.is_file())


def load_recorded(run_dir: str | os.PathLike, *, skip: Iterable[str] = ()) -> list[ModuleType]:
    """Load the plugins recorded in ``run_dir`` except the file names in ``skip``
    (those given again with ``--plugin``, which replace their copies).

    **Raises:** :class:`PluginError` as :func:`load_plugin`.
    """
    skip = set(skip)
    return [load_plugin(p) for p in recorded_plugins(run_dir) if p.name not in skip]


def plugin_culprit(err: BaseException) -> tuple[Path, str] | None:
    """The loaded plugin file an exception comes from, and where in it: a frame of its
    traceback in the file (``"line 12, in build"``), else a class or function the file
    defines named in the message (``Ring.field() takes 2 positional arguments``: eqprop
    called a member whose signature breaks the contract; ``""``). ``None`` when neither.

    The command line reports such an error as one line naming the file (exit code 2),
    not as a traceback through eqprop's code."""
    import re

    modules = [sys.modules[name] for name in _LOADED.values() if name in sys.modules]
    files = {os.path.realpath(m.__file__): m for m in modules if getattr(m, "__file__", None)}
    where = None
    for frame, line in traceback.walk_tb(err.__traceback__):
        path = os.path.realpath(frame.f_code.co_filename)
        if path in files:
            where = (Path(files[path].__file__), f"line {line}, in {frame.f_code.co_name}")
    if where is not None:
        return where
    message = str(err)
    for path, module in files.items():
        names = [n for n, v in vars(module).items()  # the classes and functions it defines
                 if callable(v) and getattr(v, "__module__", None) == module.__name__]
        if any(re.search(rf"\b{re.escape(n)}\b", message) for n in names):
            return Path(module.__file__), ""
    return None


# ---------------------------------------------------------------------------
# Registration helpers
# ---------------------------------------------------------------------------


def register_model(name: str, *, replace: bool = False) -> Callable[[T], T]:
    """Class decorator: register a model kind (the ``[model] kind = name`` of a config).

    The class subclasses :class:`~eqprop.network.ModelKind`; its fields declared with
    :func:`~eqprop.settings.setting` are its ``[model]`` keys, and its ``build`` makes the
    network. It is made a frozen dataclass when it is not one already (a forgotten
    ``@dataclass`` would silently drop the settings). Example::

        @register_model("my-field")
        class MyFieldKind(ModelKind):
            hidden: int = setting(64, "Units of the population.", bounds=POSITIVE_INT)

            def build(self, *, input_size, n_classes, key):
                return MyField(...)

    **Raises:** ``TypeError`` when the class is not a ``ModelKind`` or a setting's value
    kind cannot be inferred; ``ValueError`` when ``name`` is taken (unless ``replace``).
    """
    from .network.kinds import ModelKind

    def decorate(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, ModelKind)):
            raise TypeError(f"register_model({name!r}) decorates a subclass of "
                            f"eqprop.network.ModelKind, got {cls!r}")
        if "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(frozen=True)(cls)
        settings_of(cls)  # an uninferable setting fails here, at the plugin's line
        return registry.MODELS.register(name, cls, replace=replace)

    return decorate
