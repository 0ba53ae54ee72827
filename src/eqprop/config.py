"""TOML configuration: one section per concern, derived from the components' settings.

Every section is a frozen class whose fields, declared with
:func:`~eqprop.settings.setting`, are its keys: default, one-line description, allowed
values and bounds are written once, on the field. Two sections are tagged unions over a
registry: ``[model]`` on ``kind`` (:data:`~eqprop.registry.MODELS`) and ``[estimator]``
on ``name`` (:data:`~eqprop.registry.ESTIMATORS`); the keys of each variant are the
settings of the registered class, so a component registered later (a plugin) brings its
keys, documentation and messages with it. :data:`SCHEMA`, the validation,
:func:`describe` (``eqprop config``, ``docs/config.md``) and every message are derived
from those declarations. Every problem raises :class:`ConfigError`, whose message is one
line naming the key as ``section.key`` and what is allowed.

Pure Python (stdlib ``tomllib``) to import; parsing first imports the built-in
components (:func:`~eqprop.registry.load_builtins`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable, ClassVar

from .registry import DATASETS, ESTIMATORS, LINEAR_SOLVERS, LOGGERS, MODELS, PRUNERS, SOLVERS, load_builtins
from .settings import (BOOLEAN, COUNT_OR_ALL, FLOAT, FLOAT_TABLE, INT_ARRAY, INT_TABLE, INTEGER, NONNEGATIVE,
                       PAIR_ARRAY, POSITIVE, POSITIVE_INT, STRING, STRING_ARRAY, UNIT_HALF_OPEN,
                       Bounds, FrozenMap, Registry, SettingError, SettingField, setting, settings_of)

__all__ = [
    "ConfigError",
    "FrozenMap",
    "FieldSpec",
    "Bounds",
    "DataConfig",
    "ModelConfig",
    "DynamicsConfig",
    "EstimatorConfig",
    "OptimConfig",
    "TrainConfig",
    "HomeostasisConfig",
    "DiagnosticsConfig",
    "StabilityConfig",
    "PruningConfig",
    "LoggingConfig",
    "Variant",
    "Config",
    "SCHEMA",
    "variants",
    "parse_config",
    "load_config",
    "shipped_configs",
    "resolve_config",
    "load_run_config",
    "upgrade_run_config",
    "read_toml",
    "apply_overrides",
    "to_dict",
    "dumps_toml",
    "with_updates",
    "describe",
]


class ConfigError(Exception):
    """Invalid configuration. ``str(e)`` is one line naming ``section.key``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


# ---------------------------------------------------------------------------
# The sections that belong to the configuration itself
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """The data set and its mini-batches."""

    name: str = setting("digits", "Dataset.", choices=DATASETS)
    batch_size: int = setting(50, "Mini-batch size.", bounds=POSITIVE_INT)
    path: str | None = setting(None, "Dataset directory (absent: the default location).",
                               optional=True)
    validation: float = setting(0.0, "Fraction of the training set held out.",
                                bounds=UNIT_HALF_OPEN)
    augment: bool = setting(False, "Random horizontal flip and pad-4 random crop of the training "
                            "images, on the device, inside the jitted step (images only).")
    drop_last: bool = setting(True, "Drop the last incomplete batch.")


@dataclass(frozen=True)
class DynamicsSettings:
    """The keys of ``[dynamics]`` that every solver shares: step size, step budgets,
    stopping, the linear solves (the solver's own keys come from its class)."""

    dt: float = setting(1.0, "Relaxation step size.", bounds=Bounds(lo=0, hi=1, lo_open=True))
    free_steps: int = setting(150, "Steps of the free phase (with update = 'alternating', group "
                              "updates: two make a sweep, an odd number is rounded up to whole sweeps).", bounds=POSITIVE_INT)
    nudged_steps: int = setting(20, "Steps of each nudged phase (group updates, as free_steps).",
                                bounds=POSITIVE_INT)
    tol: float = setting(0.0, "Early-stop tolerance (0: run all steps).", bounds=NONNEGATIVE)
    tol_fraction: float = setting(
        0.0, "Free phase: stop once at most this fraction of the batch is above tol (0: every "
        "example must be), so that a few stragglers do not keep the batch iterating.",
        bounds=Bounds(lo=0, hi=1, hi_open=True))
    linear_steps: int = setting(1000, "Iteration budget of the exact estimators' linear solves "
                                "(with update = 'alternating', group updates of the damped iteration, "
                                "rounded up to whole sweeps).",
                                bounds=POSITIVE_INT)
    linear_tol: float = setting(1e-5, "Relative tolerance of the linear solves (exact-nudge, "
                                "implicit).", bounds=NONNEGATIVE)
    linear_solver: str = setting(
        "auto", "Linear solver of the exact estimators: the damped linearised relaxation with a "
        "GMRES fallback (auto), or either alone.", choices=LINEAR_SOLVERS)
    state_bound: float = setting(1e6, "A free-phase state with |u| above this counts as diverged "
                                 "(exploding), like a NaN.", bounds=POSITIVE)
    converged_tol: float = setting(0.0, "Exact estimators leave out examples whose free-phase "
                                   "residual exceeds this (0: keep all).", bounds=NONNEGATIVE)
    update: str = setting(
        "synchronous", "Update every population at once, or the two halves of a bipartite "
        "(layered or conv) network in turn (plain iteration, Anderson, and the exact estimators' "
        "linear solves): same fixed points, half the work per step.",
        choices=("synchronous", "alternating"))
    check_every: int = setting(
        1, "With tol > 0, test the tolerance and divergence once every this many sweeps of the "
        "plain iteration (free phase, Anderson's delay, nudged phases) instead of after each: "
        "saves the residual's cost per step at up to check_every - 1 extra sweeps.",
        bounds=POSITIVE_INT)
    unroll: int = setting(
        0, "Sweeps unrolled per iteration of the fixed-budget loop (tol = 0) of the plain "
        "iteration: 0 picks 2-4; larger saves a GPU's per-iteration loop cost (with tol > 0 the "
        "unrolled chunk is check_every).", bounds=NONNEGATIVE)


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer of the parameters."""

    name: str = setting("sgd", "Optimizer.", choices=("sgd", "adam", "adamw"))
    lr: float = setting(0.01, "Learning rate.", bounds=POSITIVE)
    momentum: float = setting(0.9, "Momentum (sgd) / first-moment decay b1 (adam, adamw).",
                             bounds=UNIT_HALF_OPEN)
    weight_decay: float = setting(0.0, "Weight decay.", bounds=NONNEGATIVE)
    schedule: str = setting("constant", "Learning-rate schedule.", choices=("constant", "cosine"))
    lr_multipliers: Mapping[str, float] = setting(
        FrozenMap(), "Per-projection learning-rate multipliers.", bounds=POSITIVE)
    clip_norm: float = setting(0.0, "Clip the gradient to this global norm before the optimizer "
                               "(0: off).", bounds=NONNEGATIVE)


@dataclass(frozen=True)
class TrainConfig:
    """The training run: epochs, seeds, evaluation and checkpoints."""

    epochs: int = setting(10, "Training epochs.", bounds=POSITIVE_INT)
    seed: int = setting(0, "Random seed.")
    seeds: int = setting(1, "Independently initialised networks trained together.",
                         bounds=POSITIVE_INT)
    eval_every: int = setting(1, "Evaluate every this many epochs.", bounds=POSITIVE_INT)
    checkpoint_every: int = setting(1, "Checkpoint every this many epochs.", bounds=POSITIVE_INT)
    max_batches: int | None = setting(None, "Cap on batches per epoch, the first of each epoch's "
                                      "shuffle (a different subset every epoch; the evaluation "
                                      "still reads the whole test split: raise eval_every to "
                                      "evaluate less often; absent: no cap).",
                                      bounds=POSITIVE_INT, optional=True)
    warm_start: bool = setting(
        False, "Start each training example's free phase from its fixed point at the previous "
        "epoch (persistent states, saved with the latest checkpoint; the first epoch and "
        "evaluation start cold).")


@dataclass(frozen=True)
class HomeostasisConfig:
    """Jacobian homeostasis (a penalty on the asymmetry of the network's Jacobian)."""

    coef: float = setting(0.0, "Jacobian-homeostasis coefficient (0: off).", bounds=NONNEGATIVE)
    probes: int = setting(5, "Gaussian probes per homeostatic-loss estimate.", bounds=POSITIVE_INT)
    every: int = setting(1, "Apply on one batch in `every` (batch index % every == 0).",
                         bounds=POSITIVE_INT)


@dataclass(frozen=True)
class DiagnosticsConfig:
    """Per-epoch diagnostics on a fixed probe batch."""

    enabled: bool = setting(False, "Record diagnostics (angle, jacobian_symmetry, alignment, bias "
                            "cosines, homeo_loss) in metrics.jsonl.")
    batch_size: int = setting(256, "Size of the fixed probe batch (first training examples).",
                              bounds=POSITIVE_INT)
    every: int = setting(1, "Run diagnostics every this many epochs.", bounds=POSITIVE_INT)
    free_steps: int = setting(
        0, "Free-phase steps for the probe batch; 0: the training `free_steps`, relaxed on to the "
        "fixed point where they leave the batch unsettled (`probe_settled_on`). More steps take "
        "the diagnostics at the fixed point: an example that has not settled can dominate the "
        "batch cosines (`probe_nonconverged` reports the fraction of the batch left unsettled).", bounds=NONNEGATIVE)


@dataclass(frozen=True)
class StabilityConfig:
    """Stability certificates of the free fixed point (docs/stability.md).

    Per-epoch figures, enforcement during training, and how ``eqprop stability`` computes
    the certificates.
    """

    every: int = setting(0, "Record `spectral_radius` (power iteration, max over the examples) and "
                         "`contraction_bound` in metrics.jsonl every this many epochs (0: off); "
                         "for the clipped DEEP dynamics `projected_radius`, `projected_certified` "
                         "and `saturated_fraction` instead.",
                         bounds=NONNEGATIVE)
    examples: int = setting(8, "Examples certified: the first ones of the training set.",
                            bounds=POSITIVE_INT)
    enforce: str = setting("none", "After each optimizer step, `contraction` rescales the coupling "
                           "(the weights h(a) is linear in) so that the contraction bound stays at "
                           "most `target` (rate dynamics only).", choices=("none", "contraction"))
    target: float = setting(0.95, "The contraction bound kept by enforce = 'contraction'.",
                            bounds=Bounds(lo=0, hi=1, lo_open=True, hi_open=True))
    power_iters: int = setting(200, "Power-iteration steps (spectral radius above `exact_max`, "
                               "coupling norm, per-epoch figures).", bounds=POSITIVE_INT)
    exact_max: int = setting(512, "Largest state size per example for the dense Jacobian (exact "
                             "spectral radius, Lyapunov, projected certificate, exact coupling "
                             "norm); above it, power iteration.", bounds=NONNEGATIVE)
    residual_tol: float = setting(1e-4, "An example whose projected free-phase residual is above "
                                  "this is not at a fixed point: its local certificates fail.",
                                  bounds=POSITIVE)


@dataclass(frozen=True)
class ParallelConfig:
    """``[parallel]``: the devices a run is laid out on (:mod:`eqprop.parallel`)."""

    devices: int | str = setting(
        1, "Devices of the run: a count, or 'all' (every device of every process; on a CPU, "
        "one host device per core, created before JAX initialises).", kind=COUNT_OR_ALL)
    seed_devices: int = setting(
        1, "Devices along the seed axis of the (seed, data) mesh: the train.seeds networks are "
        "split over them and each batch over the rest; must divide devices and train.seeds.",
        bounds=POSITIVE_INT)


@dataclass(frozen=True)
class LoggingConfig:
    """Where the training metrics go besides ``metrics.jsonl``."""

    loggers: tuple[str, ...] = setting(
        (), "Metric loggers besides metrics.jsonl, which is always written.", choices=LOGGERS)
    project: str = setting("eqprop", "Run group name of the TensorBoard and Weights & Biases "
                           "loggers.")


# ---------------------------------------------------------------------------
# Keys as data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One key of one section: kind, allowed values and a one-line description.

    Derived from a :func:`~eqprop.settings.setting` field (:meth:`of`). ``choices`` is a
    tuple of strings or a :class:`~eqprop.settings.Registry` (its names when checked).
    ``variants``: in a tagged-union section, the variants that have this key.
    """

    name: str
    kind: str
    doc: str
    choices: Any = None
    bounds: Bounds | None = None  # for numbers, array elements and table values
    optional: bool = False  # may be absent (None)
    min_len: int = 0  # arrays only
    default: Any = None
    variants: tuple[str, ...] = ()

    @classmethod
    def of(cls, s: SettingField) -> FieldSpec:
        """The spec of one setting of a component (its configuration key, kind, default...)."""
        sp = s.spec
        return cls(s.key, s.kind, sp.doc, sp.choices, sp.bounds, sp.optional, sp.min_len, s.default)

    def allowed_choices(self) -> tuple[str, ...] | None:
        """The allowed strings now (a registry's names at the time of the call)."""
        if self.choices is None:
            return None
        if isinstance(self.choices, Registry):
            _load_builtins()
            return self.choices.names()
        return tuple(self.choices)

    def allowed(self) -> str:
        """Human-readable allowed values ('' when any value of the kind is allowed)."""
        parts = []
        if self.choices is not None:
            parts.append("one of " + _quoted(self.allowed_choices()))
        if self.bounds is not None:
            parts.append(str(self.bounds))
        if self.min_len:
            parts.append(f"length >= {self.min_len}")
        return "; ".join(parts)


_loaded = False


def _load_builtins() -> None:
    """Register the built-in components (once; plugins register themselves later)."""
    global _loaded
    if not _loaded:
        load_builtins()
        _loaded = True


# ---------------------------------------------------------------------------
# Tagged unions: [model] and [estimator]
# ---------------------------------------------------------------------------

_RESERVED = frozenset({"settings", "variant", "components", "names", "default"})
_VARIANT_CLASSES: dict[tuple[str, str, type], type] = {}


class Variant:
    """Base of a tagged-union section (``[model]`` on ``kind``, ``[estimator]`` on ``name``).

    The union's variants are the components of a registry. :meth:`variant` makes, for
    one registered name, a frozen dataclass whose fields are the tag (``kind``) and the
    component's settings, each named by its configuration key: an instance is the parsed
    section (hashable, picklable, equal when the variant and every value are equal,
    attribute access ``config.model.sizes``).
    """

    _section: ClassVar[str]
    _tag: ClassVar[str]
    _registry: ClassVar[Registry]
    _default: ClassVar[str]
    _doc: ClassVar[str]
    # set on each variant class
    _name: ClassVar[str]
    _component: ClassVar[type]
    _specs: ClassVar[tuple[FieldSpec, ...]]
    _fields: ClassVar[dict[str, str]]  # configuration key -> the component's field name
    _common_keys: ClassVar[tuple[str, ...]]  # keys every variant shares (``_common``'s settings)
    _common: ClassVar[type | None] = None  # a settings class whose keys every variant has

    @classmethod
    def components(cls) -> dict[str, type]:
        """``{name: registered class}`` of the union's variants, in registration order."""
        _load_builtins()
        return dict(cls._registry.items())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The variants' names (the allowed values of the tag)."""
        return tuple(cls.components())

    @classmethod
    def variant(cls, name: str) -> type[Variant]:
        """The section class of variant ``name`` (made once per registered class).

        **Raises:** :class:`ConfigError` when no variant has that name; ``TypeError``
        when the component has a setting whose key is reserved (the tag, ``settings``...).
        """
        union = _UNIONS[cls._section]
        components = union.components()
        if name not in components:
            raise ConfigError(f"{union._section}.{union._tag}: must be one of "
                              f"{_quoted(components)}, got '{_brief(name)}'")
        component = components[name]
        made = _VARIANT_CLASSES.get((union._section, name, component))
        if made is None:
            made = _make_variant(union, name, component)
            _VARIANT_CLASSES[(union._section, name, component)] = made
        return made

    @classmethod
    def default(cls) -> Variant:
        """The default variant with its default settings."""
        union = _UNIONS[cls._section]
        return union.variant(union._default)()

    def settings(self) -> dict[str, Any]:
        """The component's keyword arguments ``{field name: value}`` (the tag left out)."""
        return {name: getattr(self, key) for key, name in self._fields.items()}

    def __reduce__(self):
        keys = (*self._common_keys, *self._fields)
        return _variant_of, (self._section, self._name, tuple((k, getattr(self, k)) for k in keys))


def _variant_of(section: str, name: str, items: tuple[tuple[str, Any], ...]) -> Variant:
    """Rebuild a variant section (pickling)."""
    return _UNIONS[section].variant(name)(**dict(items))


def _make_variant(union: type[Variant], name: str, component: type) -> type[Variant]:
    settings = settings_of(component)
    for s in settings:
        if s.key == union._tag or s.key.startswith("_") or s.key in _RESERVED:
            raise TypeError(f"{component.__module__}.{component.__qualname__}: the setting key "
                            f"{s.key!r} is reserved in [{union._section}]")
    common = settings_of(union._common) if union._common is not None else ()
    fields = [(union._tag, str, field(default=name, init=False))]
    fields += [(s.key, Any, field(default=s.default)) for s in (*common, *settings)]
    namespace = {"_name": name, "_component": component,
                 "_specs": tuple(FieldSpec.of(s) for s in (*common, *settings)),
                 "_fields": {s.key: s.name for s in settings},
                 "_common_keys": tuple(s.key for s in common),
                 "__doc__": f"``[{union._section}]`` with ``{union._tag} = \"{name}\"``: "
                            f"{_first_paragraph(component)}"}
    cls = dataclasses.make_dataclass(f"{union.__name__}[{name}]", fields, bases=(union,),
                                     frozen=True, namespace=namespace)
    cls.__module__ = __name__
    return cls


class ModelConfig(Variant):
    """``[model]``: the network, a tagged union on ``kind`` over :data:`~eqprop.registry.MODELS`."""

    _section = "model"
    _tag = "kind"
    _registry = MODELS
    _default = "layered"
    _doc = "Model kind; each kind has its own keys (below)."


class DynamicsConfig(Variant):
    """``[dynamics]``: the relaxations, a tagged union on ``solver`` over
    :data:`~eqprop.registry.SOLVERS`; the keys of :class:`DynamicsSettings` are shared by
    every solver, each solver adds its own settings (e.g. ``anderson_memory``)."""

    _section = "dynamics"
    _tag = "solver"
    _registry = SOLVERS
    _default = "fixed-point"
    _doc = "Equilibrium solver of the free phase; each has its own keys (below)."
    _common = DynamicsSettings


class EstimatorConfig(Variant):
    """``[estimator]``: the gradient estimator, a tagged union on ``name`` over
    :data:`~eqprop.registry.ESTIMATORS`."""

    _section = "estimator"
    _tag = "name"
    _registry = ESTIMATORS
    _default = "hep"
    _doc = "Gradient estimator; each has its own keys (below)."


class PruningConfig(Variant):
    """``[pruning]``: connections removed during training, a tagged union on ``method``
    over :data:`~eqprop.registry.PRUNERS` (:mod:`eqprop.pruning`)."""

    _section = "pruning"
    _tag = "method"
    _registry = PRUNERS
    _default = "none"
    _doc = "Pruning method; each has its own keys (below)."


@dataclass(frozen=True)
class Config:
    """A whole configuration: one frozen, hashable object per section."""

    data: DataConfig = DataConfig()
    model: ModelConfig = field(default_factory=ModelConfig.default)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig.default)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig.default)
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    homeostasis: HomeostasisConfig = HomeostasisConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    stability: StabilityConfig = StabilityConfig()
    pruning: PruningConfig = field(default_factory=PruningConfig.default)
    parallel: ParallelConfig = ParallelConfig()
    logging: LoggingConfig = LoggingConfig()


SECTION_CLASSES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "dynamics": DynamicsConfig,
    "estimator": EstimatorConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "homeostasis": HomeostasisConfig,
    "diagnostics": DiagnosticsConfig,
    "stability": StabilityConfig,
    "pruning": PruningConfig,
    "parallel": ParallelConfig,
    "logging": LoggingConfig,
}
_UNIONS: dict[str, type[Variant]] = {name: cls for name, cls in SECTION_CLASSES.items()
                                     if issubclass(cls, Variant)}

#: keys that moved to another section: the message says where
_MOVED: dict[tuple[str, str], str] = {("dynamics", "warm_start"): "train.warm_start"}


@cache
def _plain_specs(cls: type) -> tuple[FieldSpec, ...]:
    return tuple(FieldSpec.of(s) for s in settings_of(cls))


def _tag_spec(union: type[Variant]) -> FieldSpec:
    return FieldSpec(union._tag, STRING, union._doc, choices=union.names(), default=union._default)


def variants(section: str) -> dict[str, tuple[FieldSpec, ...]]:
    """``{variant name: its keys}`` of the tagged-union ``section`` (tag left out), now.

    **Raises:** ``KeyError`` when ``section`` is not a tagged union.
    """
    union = _UNIONS[section]
    return {name: union.variant(name)._specs for name in union.names()}


class _Schema(Mapping[str, tuple[FieldSpec, ...]]):
    """Section name -> the :class:`FieldSpec` of each of its keys, read at each access.

    A tagged-union section lists its tag, then every key of every variant once (each
    spec's ``variants`` names the variants that have it; see :func:`variants`).
    """

    def __getitem__(self, section: str) -> tuple[FieldSpec, ...]:
        cls = SECTION_CLASSES[section]
        if section not in _UNIONS:
            return _plain_specs(cls)
        owners: dict[str, list[str]] = {}
        first: dict[str, FieldSpec] = {}
        for name, specs in variants(section).items():
            for s in specs:
                first.setdefault(s.name, s)
                owners.setdefault(s.name, []).append(name)
        return (_tag_spec(cls), *(dataclasses.replace(s, variants=tuple(owners[k]))
                                  for k, s in first.items()))

    def __iter__(self) -> Iterator[str]:
        return iter(SECTION_CLASSES)

    def __len__(self) -> int:
        return len(SECTION_CLASSES)

    def __repr__(self) -> str:
        return f"SCHEMA({', '.join(SECTION_CLASSES)})"


#: section name -> its keys (derived from the section classes and the registries)
SCHEMA: Mapping[str, tuple[FieldSpec, ...]] = _Schema()


# ---------------------------------------------------------------------------
# Message helpers
# ---------------------------------------------------------------------------

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string",
               list: "array", tuple: "array", dict: "table", type(None): "none"}
_ARTICLES = {STRING: "a string", INTEGER: "an integer", FLOAT: "a float",
             BOOLEAN: "a boolean", "array": "an array", "table": "a table"}


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "table"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _brief(value: Any, limit: int = 60) -> str:
    """A one-line, printable, truncated rendering of ``value`` for messages."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = _toml_value(value)
        except (TypeError, ValueError):
            text = repr(value)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "(none registered)"


def _type_error(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, got '{_brief(value)}' ({_type_name(value)})")


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _expect_int(where: str, value: Any, bounds: Bounds | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(where, _ARTICLES[INTEGER], value)
    _check_bounds(where, value, bounds)
    return value


def _expect_float(where: str, value: Any, bounds: Bounds | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(where, _ARTICLES[FLOAT], value)
    try:
        value = float(value)
    except OverflowError:
        raise ConfigError(f"{where}: integer too large for a float, got '{_brief(value)}'") from None
    _check_bounds(where, value, bounds)
    return value


def _check_bounds(where: str, value: float, bounds: Bounds | None) -> None:
    if bounds is not None and value not in bounds:
        raise ConfigError(f"{where}: must be {bounds}, got {_brief(value)}")


def _expect_str(where: str, value: Any, choices: tuple[str, ...] | None) -> str:
    if not isinstance(value, str):
        raise _type_error(where, _ARTICLES[STRING], value)
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: must be one of {_quoted(choices)}, got '{_brief(value)}'")
    return value


def _expect_list(where: str, value: Any) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise _type_error(where, _ARTICLES["array"], value)
    return value


def _expect_table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _type_error(where, _ARTICLES["table"], value)
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: table keys must be strings, got '{_brief(key)}'")
    return value


def _v_string(where: str, spec: FieldSpec, value: Any) -> str:
    return _expect_str(where, value, spec.allowed_choices())


def _check_length(where: str, spec: FieldSpec, out: tuple) -> None:
    """An array setting's minimum length (``spec.min_len``), one line naming the key."""
    if len(out) < spec.min_len:
        raise ConfigError(f"{where}: needs at least {spec.min_len} "
                          f"{'entry' if spec.min_len == 1 else 'entries'}, got {len(out)}")


def _v_string_array(where: str, spec: FieldSpec, value: Any) -> tuple[str, ...]:
    items = _expect_list(where, value)
    choices = spec.allowed_choices()
    out = tuple(_expect_str(f"{where}[{i}]", v, choices) for i, v in enumerate(items))
    _check_length(where, spec, out)
    return out


def _v_integer(where: str, spec: FieldSpec, value: Any) -> int:
    return _expect_int(where, value, spec.bounds)


def _v_float(where: str, spec: FieldSpec, value: Any) -> float:
    return _expect_float(where, value, spec.bounds)


def _v_count_or_all(where: str, spec: FieldSpec, value: Any) -> int | str:
    if value == "all" and isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(where, "a positive integer or 'all'", value)
    _check_bounds(where, value, POSITIVE_INT)
    return value


def _v_boolean(where: str, spec: FieldSpec, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(where, _ARTICLES[BOOLEAN], value)
    return value


def _v_int_array(where: str, spec: FieldSpec, value: Any) -> tuple[int, ...]:
    items = _expect_list(where, value)
    out = tuple(_expect_int(f"{where}[{i}]", v, spec.bounds) for i, v in enumerate(items))
    _check_length(where, spec, out)
    return out


def _v_pair_array(where: str, spec: FieldSpec, value: Any) -> tuple[tuple[str, str], ...]:
    pairs = []
    for i, item in enumerate(_expect_list(where, value)):
        ok = isinstance(item, (list, tuple)) and len(item) == 2
        if not ok or not all(isinstance(x, str) for x in item):
            raise ConfigError(
                f"{where}[{i}]: expected a [src, dst] pair of strings, got '{_brief(item)}'")
        pairs.append((item[0], item[1]))
    return tuple(pairs)


def _v_int_table(where: str, spec: FieldSpec, value: Any) -> FrozenMap:
    table = _expect_table(where, value)
    return FrozenMap({k: _expect_int(f"{where}.{_brief(k)}", v, spec.bounds)
                      for k, v in table.items()})


def _v_float_table(where: str, spec: FieldSpec, value: Any) -> FrozenMap:
    table = _expect_table(where, value)
    return FrozenMap({k: _expect_float(f"{where}.{_brief(k)}", v, spec.bounds)
                      for k, v in table.items()})



_VALIDATORS: dict[str, Callable[[str, FieldSpec, Any], Any]] = {
    STRING: _v_string,
    INTEGER: _v_integer,
    FLOAT: _v_float,
    BOOLEAN: _v_boolean,
    COUNT_OR_ALL: _v_count_or_all,
    INT_ARRAY: _v_int_array,
    STRING_ARRAY: _v_string_array,
    PAIR_ARRAY: _v_pair_array,
    INT_TABLE: _v_int_table,
    FLOAT_TABLE: _v_float_table,
}


def _key_error(section: str, key: str, allowed: Sequence[str],
               union: type[Variant] | None = None, chosen: str = "") -> ConfigError:
    """The one-line message for a key that ``section`` (or its chosen variant) lacks."""
    where = f"{section}.{_brief(key)}"
    if (section, key) in _MOVED:
        return ConfigError(f"{where}: moved to {_MOVED[section, key]}")
    if union is not None:
        owners = [n for n in union.names() if key in union.variant(n)._fields]
        if owners:
            return ConfigError(f"{where}: belongs to {union._registry.kind} {_quoted(owners)}, "
                               f"not '{_brief(chosen)}'")
    return ConfigError(f"{where}: unknown key; allowed keys: {', '.join(allowed)}{_elsewhere(key, section)}")


def _sections_with(key: str) -> list[str]:
    """The sections (or a variant of theirs) that have ``key``."""
    out = []
    for name in SECTION_CLASSES:
        if name in _UNIONS:
            union = _UNIONS[name]
            has = any(key in union.variant(v)._fields or key in union.variant(v)._common_keys
                      for v in union.names())
        else:
            has = key in [spec.name for spec in SCHEMA.get(name, ())]
        if has:
            out.append(name)
    return out


def _elsewhere(key, section=None) -> str:
    """``"; 'epochs' is a key of [train]"`` where another section has ``key``, else ``""``."""
    if not isinstance(key, str):
        return ""
    owners = [f"[{n}]" for n in _sections_with(key) if n != section]
    return f"; '{_brief(key)}' is a key of {' and '.join(owners)}" if owners else ""


def _values(section: str, specs: Sequence[FieldSpec], table: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the keys of ``table`` that ``specs`` name; absent ones take their defaults."""
    values = {}
    for spec in specs:
        if spec.name not in table or (spec.optional and table[spec.name] is None):
            values[spec.name] = spec.default
        else:
            values[spec.name] = _VALIDATORS[spec.kind](f"{section}.{spec.name}", spec,
                                                       table[spec.name])
    return values


def _construct(section: str, cls: type, kwargs: Mapping[str, Any]) -> Any:
    """``cls(**kwargs)``, its own validation errors (``__post_init__``...) as ConfigError."""
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except SettingError as err:
        raise ConfigError(f"{section}.{err.key}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"{section}: {err}") from None


def _constructible(component: type, names: Sequence[str]) -> bool:
    """Whether ``component`` can be made from its settings alone (other fields defaulted)."""
    if inspect.isabstract(component):
        return False
    try:
        params = inspect.signature(component).parameters.values()
    except (TypeError, ValueError):
        return False
    free = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return all(p.name in names or p.default is not p.empty or p.kind in free for p in params)


def _parse_plain(section: str, cls: type, table: Mapping[str, Any]) -> Any:
    specs = SCHEMA[section]
    names = [s.name for s in specs]
    for key in table:
        if key not in names:
            raise _key_error(section, key, names)
    return _construct(section, cls, _values(section, specs, table))


def _parse_union(section: str, union: type[Variant], table: Mapping[str, Any]) -> Variant:
    """Validate a tagged-union section: the tag, then the chosen variant's keys.

    The registered component is also made from the settings when it can be (its own
    checks, e.g. a graph's projections, run in its ``__post_init__``).
    """
    tag = union._tag
    name = _expect_str(f"{section}.{tag}", table.get(tag, union._default), union.names())
    cls = union.variant(name)
    allowed = [tag, *cls._common_keys, *cls._fields]
    for key in table:
        if key not in allowed:
            raise _key_error(section, key, allowed, union, name)
    values = _values(section, cls._specs, table)
    if _constructible(cls._component, list(cls._fields.values())):
        _construct(section, cls._component, {cls._fields[k]: v for k, v in values.items()
                                             if k in cls._fields})
    return cls(**values)


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Validate a dict (as from ``tomllib``); missing sections and keys take defaults.

    **Raises:** :class:`ConfigError` (one line naming ``section.key``).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a table, got '{_brief(raw)}' ({_type_name(raw)})")
    for name in raw:
        if name not in SECTION_CLASSES:
            raise ConfigError(f"unknown section '{_brief(name)}'; "
                              f"allowed sections: {', '.join(SECTION_CLASSES)}{_elsewhere(name)}")
    _load_builtins()
    sections = {}
    for name, cls in SECTION_CLASSES.items():
        table = raw.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{name}: expected a table, got '{_brief(table)}' ({_type_name(table)})")
        sections[name] = (_parse_union(name, cls, table) if name in _UNIONS
                          else _parse_plain(name, cls, table))
    return Config(**sections)


# ---------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------


MAX_TOML_BYTES = 1 << 20  # a config or run config is a few KB; more is not a config


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing/unreadable file, one over ``MAX_TOML_BYTES`` (1 MiB: read
    no further than that) or bad TOML raises ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            text = fh.read(MAX_TOML_BYTES + 1)
        if len(text) > MAX_TOML_BYTES:
            raise ConfigError(f"{p}: more than {MAX_TOML_BYTES >> 20} MiB, too large for a "
                              "config file")
        return tomllib.loads(text.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays/tables
        raise ConfigError(f"{p}: invalid TOML: arrays or inline tables nested too deeply") \
            from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file ({e.strerror or e})") from None


def shipped_config_dirs() -> list[Path]:
    """Where the configs shipped with eqprop lie: ``configs/`` of the source checkout an
    editable install runs from, then ``<prefix>/share/eqprop/configs`` (a wheel's copy,
    ``[tool.setuptools.data-files]`` in pyproject.toml)."""
    checkout = Path(__file__).resolve().parents[2]
    dirs = [checkout / "configs"] if (checkout / "pyproject.toml").is_file() else []
    return dirs + [Path(sys.prefix) / "share" / "eqprop" / "configs"]


def shipped_configs() -> dict[str, Path]:
    """The shipped configs by name (the file's stem, e.g. ``"digits-quick"``), sorted by
    name: the first of :func:`shipped_config_dirs` that holds a name wins."""
    found: dict[str, Path] = {}
    for d in shipped_config_dirs():
        for f in sorted(d.glob("*.toml")) if d.is_dir() else []:
            found.setdefault(f.stem, f)
    return dict(sorted(found.items()))


def resolve_config(path: str | Path) -> Path:
    """The config file ``path`` names: the file itself when it exists, else, for a bare
    name (no directory; ``.toml`` optional), ``NAME.toml`` in the working directory, then
    the shipped config of that name (:func:`shipped_configs`). Raises :class:`ConfigError` naming every place searched
    and the shipped names."""
    p = Path(path)
    if p.exists() or len(p.parts) != 1:
        return p
    if p.suffix != ".toml" and p.with_name(p.name + ".toml").exists():  # the user's own first
        return p.with_name(p.name + ".toml")
    shipped = shipped_configs()
    stem = p.name[:-len(".toml")] if p.name.endswith(".toml") else p.name
    if stem in shipped:
        return shipped[stem]
    places = ", ".join([str(Path.cwd())] + [str(d) for d in shipped_config_dirs()])
    names = ", ".join(shipped) or "none found"
    raise ConfigError(f"{p}: config file not found (searched {places}); shipped configs: {names}")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read the TOML config ``path`` (a file, or a shipped config's name such as
    ``"digits-quick"``: :func:`resolve_config`), apply ``section.key=value`` overrides,
    validate. Raises :class:`ConfigError` (one line)."""
    return parse_config(apply_overrides(read_toml(resolve_config(path)), overrides))


def upgrade_run_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A run directory's ``config.toml`` written before the tagged unions, made current.

    Such files list every key of every section: ``dynamics.warm_start`` (now
    ``train.warm_start``) and the keys of the variants that were not chosen (e.g.
    ``anderson_memory`` under ``solver = "fixed-point"``, ``periods`` under
    ``name = "hep"``). A key that another variant owns is dropped only when it holds that
    variant's default (so the file said nothing with it); any other value stays and is
    reported by the parse as usual. A current file is returned unchanged.
    """
    out = _plain(copy.deepcopy(dict(raw)))
    dynamics = out.get("dynamics")
    if isinstance(dynamics, dict) and "warm_start" in dynamics:
        train = out.setdefault("train", {})
        if isinstance(train, dict):
            train.setdefault("warm_start", dynamics.pop("warm_start"))
    _load_builtins()
    for section, union in _UNIONS.items():
        table = out.get(section)
        if not isinstance(table, dict):
            continue
        name = table.get(union._tag, union._default)
        if not isinstance(name, str) or name not in union.names():
            continue
        chosen = union.variant(name)
        allowed = {union._tag, *chosen._common_keys, *chosen._fields}
        for key in [k for k in table if k not in allowed]:
            defaults = [_plain(s.default) for n in union.names() for s in union.variant(n)._specs
                        if s.name == key]
            if defaults and all(table[key] == d for d in defaults):
                del table[key]
    return out


#: the config sections whose keys ``--set`` may change on a trained run (eval, gradcheck,
#: stability): not the network's shape, nor its training
RUN_OVERRIDABLE = ("dynamics", "estimator", "data", "parallel")


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """:func:`load_config` for a run directory's ``config.toml``, through
    :func:`upgrade_run_config` (runs written by earlier versions resume)."""
    return parse_config(apply_overrides(upgrade_run_config(read_toml(path)), overrides))


def _parse_override_value(text: str) -> Any:
    """Parse ``text`` as a TOML value; anything else is a plain string, except what opens
    as an array, a table or a quoted string (``[64, 32,``): that is a TOML error.

    **Raises:** :class:`ConfigError` for an unclosed array, table or string."""
    text = text.strip()
    if "\n" in text or "\r" in text:
        return text
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError as err:
        if text[:1] in ("[", "{", '"', "'"):
            raise ConfigError(f"not valid TOML: {text!r} ({err})") from None
        return text
    return parsed["v"] if list(parsed) == ["v"] else text


def _split_override(override: str) -> tuple[list[str], Any]:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"override '{_brief(override)}': expected section.key=value")
    key, _, value = override.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{_brief(override)}': expected section.key=value")
    try:
        return parts, _parse_override_value(value)
    except ConfigError as err:
        raise ConfigError(f"override '{_brief(override)}': {err}") from None


def _switch_variant(section: str, table: Mapping[str, Any], name: Any,
                    keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``table`` without the keys that variant ``name`` of ``section`` lacks (but ``keep``).

    Switching ``[estimator] name`` from ``hep`` to ``implicit`` drops ``beta`` and
    ``points``; an unknown ``name`` leaves the table as it is (the parse reports it).
    """
    union = _UNIONS.get(section)
    if union is None or not isinstance(name, str) or name not in union.names():
        return dict(table)
    variant = union.variant(name)
    allowed = (*variant._common_keys, *variant._fields)
    return {k: v for k, v in table.items() if k in allowed or k == union._tag or k in keep}


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``section.key=value`` overrides applied.

    An override of a tagged union's tag (``estimator.name=implicit``) drops the keys of
    that section the new variant does not have, except those given by other overrides.

    **Raises:** :class:`ConfigError` for a malformed override or one into a non-table.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = _plain(copy.deepcopy(raw))
    given: set[tuple[str, str]] = set()
    for override in overrides:
        parts, value = _split_override(override)
        table = out
        for depth, part in enumerate(parts[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a table")
            table = child
        section = parts[0]
        if (len(parts) == 2 and section in _UNIONS and parts[1] == _UNIONS[section]._tag
                and table.get(parts[1]) != value):
            keep = frozenset(k for s, k in given if s == section)
            out[section] = table = _switch_variant(section, table, value, keep)
        table[parts[-1]] = value
        given.add((section, parts[1]))
    return out


# ---------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Convert tuples/mappings (recursively) to lists/dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _keys(section: Any) -> list[str]:
    """The keys of a parsed section (a tagged union's: its tag, then its variant's keys)."""
    if isinstance(section, Variant):
        return [section._tag, *section._common_keys, *section._fields]
    return [s.name for s in _plain_specs(type(section))]


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """A plain nested dict (lists, dicts, None for absent keys); round-trips via parse_config.

    A tagged-union section holds its tag and the keys of its variant only.
    """
    return {name: {key: _plain(getattr(getattr(config, name), key))
                   for key in _keys(getattr(config, name))}
            for name in SECTION_CLASSES}


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _toml_string(key)


def _toml_value(value: Any) -> str:
    """Render a value as inline TOML (str/int/float/bool/array/inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 'inf', '-inf', 'nan' and exponents are valid TOML
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps_toml(config: Config) -> str:
    """Write ``config`` as TOML; absent (None) keys are omitted."""
    blocks = []
    for section, table in to_dict(config).items():
        lines = [f"[{section}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def with_updates(config: Config, **section_updates: Mapping[str, Any]) -> Config:
    """A validated copy of ``config``, e.g. ``with_updates(c, estimator={"beta": 0.1})``.

    Changing a tagged union's tag (``estimator={"name": "implicit"}``) keeps the keys
    the new variant shares with the old one and drops the others.

    **Raises:** :class:`ConfigError` (one line naming ``section.key``).
    """
    raw = to_dict(config)
    for section, updates in section_updates.items():
        if section not in SECTION_CLASSES:
            raise ConfigError(f"unknown section '{section}'; "
                              f"allowed sections: {', '.join(SECTION_CLASSES)}")
        if not isinstance(updates, Mapping):
            raise ConfigError(f"{section}: expected a table")
        if section in _UNIONS:
            tag = _UNIONS[section]._tag
            if tag in updates and updates[tag] != raw[section][tag]:
                raw[section] = _switch_variant(section, raw[section], updates[tag])
        raw[section].update(updates)
    return parse_config(raw)


# ---------------------------------------------------------------------------
# The reference (eqprop config, docs/config.md)
# ---------------------------------------------------------------------------

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring on one line, as Markdown."""
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    text = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


_HEADER = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]


def _row(s: FieldSpec) -> str:
    default = "absent" if s.default is None else f"`{_toml_value(_plain(s.default))}`"
    kind = s.kind + (" (optional)" if s.optional else "")
    cells = [f"`{s.name}`", kind, default, s.allowed(), s.doc]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def describe() -> str:
    """Markdown reference of every section and key (type, default, allowed, description).

    A tagged-union section lists its tag, then each variant with its own keys. This is
    what ``eqprop config`` prints and ``docs/config.md`` holds.
    """
    _load_builtins()
    out = ["# Configuration reference", "",
           "Generated from the components' settings by `eqprop config` (do not edit by hand). "
           "Every key is optional; an absent key takes its default. `[model]` and "
           "`[estimator]` are tagged unions: `kind` and `name` choose a variant, each with its "
           "own keys, and a key of another variant is an error.", ""]
    for section, cls in SECTION_CLASSES.items():
        out += [f"## [{section}]", "", _first_paragraph(cls), ""]
        if section not in _UNIONS:
            out += [*_HEADER, *map(_row, SCHEMA[section]), ""]
            continue
        out += [*_HEADER, _row(_tag_spec(cls)), ""]
        for name, specs in variants(section).items():
            variant = cls.variant(name)
            out += [f"### {cls._tag} = \"{name}\"", "", _first_paragraph(variant._component), ""]
            out += [*_HEADER, *map(_row, specs), ""] if specs else ["No keys.", ""]
    return "\n".join(out)
