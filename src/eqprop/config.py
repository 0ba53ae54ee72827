"""TOML configuration: one section per concern, parsed into frozen dataclasses.

The schema is described as data (:data:`SCHEMA`): every key has a type, a default
(taken from its dataclass), an optional allowed set or numeric range, and a one-line
description. Validation, the "allowed keys" lists and :func:`describe` (the README
reference) all come from it. Every problem raises :class:`ConfigError` whose message is
one line naming the key as ``section.key`` and what is allowed.

Pure Python (stdlib ``tomllib``); no JAX.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .dynamics import Dynamics as DynamicsConfig

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
    "LoggingConfig",
    "Config",
    "SCHEMA",
    "parse_config",
    "load_config",
    "read_toml",
    "apply_overrides",
    "to_dict",
    "dumps_toml",
    "with_updates",
    "describe",
]

# ---------------------------------------------------------------------------
# Allowed sets (one tuple each, so new values are added in one place)
# ---------------------------------------------------------------------------

DATASETS = (
    "digits", "synthetic", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet32",
    "xor", "and", "or", "nand", "nor", "xnor", "not", "identity",
)
MODEL_KINDS = ("layered", "graph")
FEEDBACKS = ("tied", "untied")
ACTIVATIONS = ("sigmoid4", "dsilu", "tanh", "hard-sigmoid")
READOUTS = ("softmax", "mse")
DTYPES = ("float32", "float64")
SOLVERS = ("fixed-point", "anderson")
LINEAR_SOLVERS = ("auto", "gmres", "fixed-point")
ESTIMATORS = ("ep", "hep", "online-hep", "exact-nudge", "implicit", "bptt", "contrast")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")

from .registry import LOGGERS as _LOGGERS  # noqa: E402

INPUT = "input"  # reserved population name: the clamped input of a graph model


class ConfigError(Exception):
    """Invalid configuration. ``str(e)`` is one line naming ``section.key``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


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


# ---------------------------------------------------------------------------
# Section dataclasses (these hold the defaults)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    batch_size: int = 50
    path: str | None = None
    validation: float = 0.0
    augment: bool = False
    drop_last: bool = True


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "layered"
    sizes: tuple[int, ...] = (784, 256, 256, 10)
    populations: Mapping[str, int] = FrozenMap()
    projections: tuple[tuple[str, str], ...] = ()
    output: str = "out"
    feedback: str = "tied"
    asymmetry_angle: float = 0.0
    activation: str = "sigmoid4"
    readout: str = "softmax"
    dtype: str = "float32"
    init_scale: float = 1.0


@dataclass(frozen=True)
class EstimatorConfig:
    name: str = "hep"
    beta: float = 0.5
    points: int = 2
    periods: int = 4


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    lr_multipliers: Mapping[str, float] = FrozenMap()
    clip_norm: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    seeds: int = 1
    eval_every: int = 1
    checkpoint_every: int = 1
    max_batches: int | None = None


@dataclass(frozen=True)
class HomeostasisConfig:
    coef: float = 0.0
    probes: int = 5
    every: int = 1


@dataclass(frozen=True)
class DiagnosticsConfig:
    enabled: bool = False
    batch_size: int = 256
    every: int = 1
    free_steps: int = 0


@dataclass(frozen=True)
class LoggingConfig:
    loggers: tuple[str, ...] = ()
    project: str = "eqprop"


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    dynamics: DynamicsConfig = DynamicsConfig()
    estimator: EstimatorConfig = EstimatorConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    homeostasis: HomeostasisConfig = HomeostasisConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    logging: LoggingConfig = LoggingConfig()


# ---------------------------------------------------------------------------
# Schema as data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """A numeric interval; ``None`` means unbounded on that side."""

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

# Value kinds; the string is also the "type" column of the docs.
STRING, INTEGER, FLOAT, BOOLEAN = "string", "integer", "float", "boolean"
INT_ARRAY, STRING_ARRAY = "array of integers", "array of strings"
PAIR_ARRAY = "array of [src, dst] string pairs"
INT_TABLE, FLOAT_TABLE = "table of integers", "table of floats"


@dataclass(frozen=True)
class FieldSpec:
    """One key of one section: kind, allowed values and a one-line description."""

    name: str
    kind: str
    doc: str
    choices: Any = None  # a tuple of strings, or a Registry (its names when checked)
    bounds: Bounds | None = None  # for numbers, array elements and table values
    optional: bool = False  # may be absent (None)
    min_len: int = 0  # arrays only
    default: Any = None  # filled in from the section dataclass

    def allowed_choices(self) -> tuple[str, ...] | None:
        """The allowed strings now (a registry's names at the time of the call)."""
        if self.choices is None:
            return None
        from .settings import Registry

        if isinstance(self.choices, Registry):
            from .registry import load_builtins

            load_builtins()
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


def _section(cls: type, *specs: FieldSpec) -> tuple[FieldSpec, ...]:
    """Attach the dataclass defaults to ``specs`` and check the names agree."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    if [s.name for s in specs] != list(defaults):
        raise RuntimeError(f"schema for {cls.__name__} does not match its fields")
    return tuple(dataclasses.replace(s, default=defaults[s.name]) for s in specs)


_F = FieldSpec
SECTION_CLASSES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "dynamics": DynamicsConfig,
    "estimator": EstimatorConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "homeostasis": HomeostasisConfig,
    "diagnostics": DiagnosticsConfig,
    "logging": LoggingConfig,
}

SCHEMA: dict[str, tuple[FieldSpec, ...]] = {
    "data": _section(
        DataConfig,
        _F("name", STRING, "Dataset.", choices=DATASETS),
        _F("batch_size", INTEGER, "Mini-batch size.", bounds=POSITIVE_INT),
        _F("path", STRING, "Dataset directory (absent: the default location).", optional=True),
        _F("validation", FLOAT, "Fraction of the training set held out.", bounds=UNIT_HALF_OPEN),
        _F("augment", BOOLEAN, "Apply data augmentation."),
        _F("drop_last", BOOLEAN, "Drop the last incomplete batch."),
    ),
    "model": _section(
        ModelConfig,
        _F("kind", STRING, "Architecture: a layer stack or a graph of populations.",
           choices=MODEL_KINDS),
        _F("sizes", INT_ARRAY, "Layered: [n_in, hidden..., last]; softmax readout: last = number of classes, read from the last hidden layer; mse: last = output population.",
           bounds=POSITIVE_INT, min_len=2),
        _F("populations", INT_TABLE, "Population name -> size (graph); 'input' is reserved.",
           bounds=POSITIVE_INT),
        _F("projections", PAIR_ARRAY, "Directed connections [src, dst] (graph)."),
        _F("output", STRING, "Output population (graph)."),
        _F("feedback", STRING, "Feedback weights tied to (or independent of) feedforward.",
           choices=FEEDBACKS),
        _F("asymmetry_angle", FLOAT, "Angle in degrees between feedback and transposed "
           "feedforward weights (untied only).", bounds=Bounds(lo=0, hi=90)),
        _F("activation", STRING, "Neuron activation.", choices=ACTIVATIONS),
        _F("readout", STRING, "Output cost.", choices=READOUTS),
        _F("dtype", STRING, "Floating-point precision.", choices=DTYPES),
        _F("init_scale", FLOAT, "Scale of the weight initialisation.", bounds=POSITIVE),
    ),
    "dynamics": _section(
        DynamicsConfig,
        _F("dt", FLOAT, "Relaxation step size.", bounds=Bounds(lo=0, hi=1, lo_open=True)),
        _F("free_steps", INTEGER, "Steps of the free phase.", bounds=POSITIVE_INT),
        _F("nudged_steps", INTEGER, "Steps of each nudged phase.", bounds=POSITIVE_INT),
        _F("tol", FLOAT, "Early-stop tolerance (0: run all steps).", bounds=NONNEGATIVE),
        _F("tol_fraction", FLOAT, "Free phase: stop once at most this fraction of the batch is above "
           "tol (0: every example must be), so that a few stragglers do not keep the batch iterating.",
           bounds=Bounds(lo=0, hi=1, hi_open=True)),
        _F("solver", STRING, "Equilibrium solver.", choices=SOLVERS),
        _F("linear_steps", INTEGER, "Iteration budget of the exact estimators' linear solves.",
           bounds=POSITIVE_INT),
        _F("linear_tol", FLOAT, "Relative tolerance of the linear solves (exact-nudge, implicit).", bounds=NONNEGATIVE),
        _F("linear_solver", STRING, "Linear solver of the exact estimators: the damped linearised relaxation with a GMRES fallback (auto), or either alone.",
           choices=LINEAR_SOLVERS),
        _F("state_bound", FLOAT, "A free-phase state with |u| above this counts as diverged (exploding), like a NaN.",
           bounds=POSITIVE),
        _F("converged_tol", FLOAT, "Exact estimators leave out examples whose free-phase residual exceeds this (0: keep all).",
           bounds=NONNEGATIVE),
        _F("update", STRING, "Update every population at once, or the two halves of a "
           "bipartite (layered) network in turn (plain iteration and Anderson): same fixed points, half the work per step.",
           choices=("synchronous", "alternating")),
        _F("anderson_memory", INTEGER, "History length of Anderson acceleration (solver = 'anderson').", bounds=NONNEGATIVE),
        _F("anderson_damping", FLOAT, "Anderson mixing parameter in (0, 1].", bounds=Bounds(lo=0, hi=1, lo_open=True)),
        _F("anderson_delay", INTEGER, "Plain steps before Anderson starts (counted like free_steps): skips "
           "the initial transient.", bounds=NONNEGATIVE),
        _F("warm_start", BOOLEAN, "Start each training example's free phase from its fixed point at "
           "the previous epoch (persistent states, saved with the latest checkpoint; the first "
           "epoch and evaluation start cold)."),
        _F("check_every", INTEGER, "With tol > 0, test the tolerance and divergence once every this "
           "many sweeps of the plain iteration (free phase, Anderson's delay, nudged phases) instead "
           "of after each: saves the residual's cost per step at up to check_every - 1 extra sweeps.",
           bounds=POSITIVE_INT),
    ),
    "estimator": _section(
        EstimatorConfig,
        _F("name", STRING, "Gradient estimator.", choices=ESTIMATORS),
        _F("beta", FLOAT, "Nudging strength.", bounds=POSITIVE),
        _F("points", INTEGER, "Number of nudged points N ('ep': 1 or 2).", bounds=POSITIVE_INT),
        _F("periods", INTEGER, "Oscillation periods (online-hep).", bounds=POSITIVE_INT),
    ),
    "optim": _section(
        OptimConfig,
        _F("name", STRING, "Optimizer.", choices=OPTIMIZERS),
        _F("lr", FLOAT, "Learning rate.", bounds=POSITIVE),
        _F("momentum", FLOAT, "Momentum (sgd) / first-moment decay.", bounds=UNIT_HALF_OPEN),
        _F("weight_decay", FLOAT, "Weight decay.", bounds=NONNEGATIVE),
        _F("schedule", STRING, "Learning-rate schedule.", choices=SCHEDULES),
        _F("lr_multipliers", FLOAT_TABLE, "Per-projection learning-rate multipliers.",
           bounds=POSITIVE),
        _F("clip_norm", FLOAT, "Clip the gradient to this global norm before the optimizer (0: off).",
           bounds=NONNEGATIVE),
    ),
    "train": _section(
        TrainConfig,
        _F("epochs", INTEGER, "Training epochs.", bounds=POSITIVE_INT),
        _F("seed", INTEGER, "Random seed."),
        _F("seeds", INTEGER, "Independently initialised networks trained together.",
           bounds=POSITIVE_INT),
        _F("eval_every", INTEGER, "Evaluate every this many epochs.", bounds=POSITIVE_INT),
        _F("checkpoint_every", INTEGER, "Checkpoint every this many epochs.",
           bounds=POSITIVE_INT),
        _F("max_batches", INTEGER, "Cap on batches per epoch (absent: no cap).",
           bounds=POSITIVE_INT, optional=True),
    ),
    "homeostasis": _section(
        HomeostasisConfig,
        _F("coef", FLOAT, "Jacobian-homeostasis coefficient (0: off).", bounds=NONNEGATIVE),
        _F("probes", INTEGER, "Gaussian probes per homeostatic-loss estimate.",
           bounds=POSITIVE_INT),
        _F("every", INTEGER, "Apply on one batch in `every` (batch index % every == 0).",
           bounds=POSITIVE_INT),
    ),
    "diagnostics": _section(
        DiagnosticsConfig,
        _F("enabled", BOOLEAN, "Record diagnostics (angle, jacobian_symmetry, alignment, "
           "bias cosines, homeo_loss) in metrics.jsonl."),
        _F("batch_size", INTEGER, "Size of the fixed probe batch (first training examples).",
           bounds=POSITIVE_INT),
        _F("every", INTEGER, "Run diagnostics every this many epochs.", bounds=POSITIVE_INT),
        _F("free_steps", INTEGER, "Free-phase steps for the probe batch; 0: the training "
           "`free_steps`. More steps take the diagnostics at the fixed point: an example "
           "that has not settled can dominate the batch cosines (`probe_nonconverged` "
           "reports how many).", bounds=NONNEGATIVE),
    ),
    "logging": _section(
        LoggingConfig,
        _F("loggers", STRING_ARRAY, "Metric loggers besides metrics.jsonl, which is always written.",
           choices=_LOGGERS),
        _F("project", STRING, "Run group name of the TensorBoard and Weights & Biases loggers."),
    ),
}
del _F

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


def _v_string_array(where: str, spec: FieldSpec, value: Any) -> tuple[str, ...]:
    items = _expect_list(where, value)
    choices = spec.allowed_choices()
    out = tuple(_expect_str(f"{where}[{i}]", v, choices) for i, v in enumerate(items))
    if len(out) < spec.min_len:
        raise ConfigError(f"{where}: needs at least {spec.min_len} entries, got {len(out)}")
    return out


def _v_integer(where: str, spec: FieldSpec, value: Any) -> int:
    return _expect_int(where, value, spec.bounds)


def _v_float(where: str, spec: FieldSpec, value: Any) -> float:
    return _expect_float(where, value, spec.bounds)


def _v_boolean(where: str, spec: FieldSpec, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(where, _ARTICLES[BOOLEAN], value)
    return value


def _v_int_array(where: str, spec: FieldSpec, value: Any) -> tuple[int, ...]:
    items = _expect_list(where, value)
    out = tuple(_expect_int(f"{where}[{i}]", v, spec.bounds) for i, v in enumerate(items))
    if len(out) < spec.min_len:
        raise ConfigError(f"{where}: needs at least {spec.min_len} entries, got {len(out)}")
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
    INT_ARRAY: _v_int_array,
    STRING_ARRAY: _v_string_array,
    PAIR_ARRAY: _v_pair_array,
    INT_TABLE: _v_int_table,
    FLOAT_TABLE: _v_float_table,
}


def _parse_section(section: str, table: Any) -> Any:
    """Validate one section table into its dataclass (missing keys take defaults)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{section}: expected a table, got '{_brief(table)}' ({_type_name(table)})")
    specs = SCHEMA[section]
    names = [s.name for s in specs]
    for key in table:
        if key not in names:
            raise ConfigError(f"{section}.{_brief(key)}: unknown key; allowed keys: {', '.join(names)}")
    values = {}
    for spec in specs:
        if spec.name not in table or (spec.optional and table[spec.name] is None):
            values[spec.name] = spec.default
        else:
            values[spec.name] = _VALIDATORS[spec.kind](f"{section}.{spec.name}", spec,
                                                       table[spec.name])
    return SECTION_CLASSES[section](**values)


def _check_graph(model: ModelConfig) -> None:
    """Cross-checks of a graph model's populations, projections and output."""
    if INPUT in model.populations:
        raise ConfigError(f"model.populations.{INPUT}: the name '{INPUT}' is reserved "
                          "for the clamped input; choose another population name")
    if model.kind != "graph":
        return
    if not model.populations:
        raise ConfigError("model.populations: kind = 'graph' needs at least one population")
    if not model.projections:
        raise ConfigError("model.projections: kind = 'graph' needs at least one projection")
    known = (INPUT, *model.populations)
    seen: set[tuple[str, str]] = set()
    for i, (src, dst) in enumerate(model.projections):
        where = f"model.projections[{i}]"
        for end in (src, dst):
            if end not in known:
                raise ConfigError(f"{where}: unknown population '{_brief(end)}'; "
                                  f"allowed: {_quoted(known)}")
        if dst == INPUT:
            raise ConfigError(f"{where}: destination may not be '{INPUT}' (input is clamped)")
        if src == dst:
            raise ConfigError(f"{where}: self-loop '{_brief(src)}' -> '{_brief(dst)}' "
                              "is not allowed")
        if (src, dst) in seen:
            raise ConfigError(f"{where}: duplicate projection '{_brief(src)}' -> '{_brief(dst)}'")
        seen.add((src, dst))
    if model.output not in model.populations:
        raise ConfigError(f"model.output: must be one of the declared populations "
                          f"{_quoted(list(model.populations))}, got '{_brief(model.output)}'")


def _cross_check(config: Config) -> None:
    """Checks that involve more than one key."""
    model, est = config.model, config.estimator
    if model.asymmetry_angle != 0.0 and model.feedback == "tied":
        raise ConfigError("model.asymmetry_angle: only meaningful with model.feedback = "
                          f"'untied', got {model.asymmetry_angle} with model.feedback = 'tied'")
    _check_graph(model)
    if est.name == "ep" and est.points not in (1, 2):
        raise ConfigError("estimator.points: 'ep' takes 1 (one-sided) or 2 (symmetric); "
                          f"use 'hep' for more, got {est.points}")


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Validate a dict (as from ``tomllib``); missing sections and keys take defaults."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a table, got '{_brief(raw)}' ({_type_name(raw)})")
    for name in raw:
        if name not in SCHEMA:
            raise ConfigError(f"unknown section '{_brief(name)}'; "
                              f"allowed sections: {', '.join(SCHEMA)}")
    config = Config(**{name: _parse_section(name, raw.get(name, {})) for name in SCHEMA})
    _cross_check(config)
    return config


# ---------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing/unreadable file or bad TOML raises ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file ({e.strerror or e})") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read TOML at ``path``, apply ``section.key=value`` overrides, validate."""
    return parse_config(apply_overrides(read_toml(path), overrides))


def _parse_override_value(text: str) -> Any:
    """Parse ``text`` as a TOML value; anything that is not valid TOML is a plain string."""
    text = text.strip()
    if "\n" in text or "\r" in text:
        return text
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["v"] if list(parsed) == ["v"] else text


def _split_override(override: str) -> tuple[list[str], Any]:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"override '{_brief(override)}': expected section.key=value")
    key, _, value = override.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{_brief(override)}': expected section.key=value")
    return parts, _parse_override_value(value)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``section.key=value`` overrides applied."""
    if isinstance(overrides, str):
        overrides = [overrides]
    out = _plain(copy.deepcopy(raw))
    for override in overrides:
        parts, value = _split_override(override)
        table = out
        for depth, part in enumerate(parts[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a table")
            table = child
        table[parts[-1]] = value
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


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """A plain nested dict (lists, dicts, None for absent keys); round-trips via parse_config."""
    return {name: {spec.name: _plain(getattr(getattr(config, name), spec.name))
                   for spec in specs}
            for name, specs in SCHEMA.items()}


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
    """A validated copy of ``config``, e.g. ``with_updates(c, estimator={"beta": 0.1})``."""
    raw = to_dict(config)
    for section, updates in section_updates.items():
        if section not in SCHEMA:
            raise ConfigError(f"unknown section '{section}'; allowed sections: {', '.join(SCHEMA)}")
        if not isinstance(updates, Mapping):
            raise ConfigError(f"{section}: expected a table")
        raw[section].update(updates)
    return parse_config(raw)


def describe() -> str:
    """Markdown reference of every section and key (type, default, allowed, description)."""
    out = ["# Configuration reference", ""]
    for section, specs in SCHEMA.items():
        out += [f"## [{section}]", "", "| key | type | default | allowed | description |",
                "|---|---|---|---|---|"]
        for s in specs:
            default = "absent" if s.default is None else f"`{_toml_value(_plain(s.default))}`"
            kind = s.kind + (" (optional)" if s.optional else "")
            out.append(f"| `{s.name}` | {kind} | {default} | {s.allowed()} | {s.doc} |")
        out.append("")
    return "\n".join(out)
