"""The configuration derived from the registered components (issue 12, item 3).

A component's ``setting()`` fields are its configuration keys: a new one is parsed,
validated, documented by ``eqprop config`` and named in the error messages with no
other edit. ``[model]`` and ``[estimator]`` are tagged unions over their registries.
"""

from __future__ import annotations

import dataclasses
import pickle
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest

from eqprop.cli import main
from eqprop.config import (
    Config,
    ConfigError,
    EstimatorConfig,
    ModelConfig,
    apply_overrides,
    describe,
    dumps_toml,
    parse_config,
    to_dict,
    variants,
    with_updates,
)
from eqprop.network import Graph, Layered
from eqprop.registry import ESTIMATORS, MODELS, load_builtins
from eqprop.settings import NONNEGATIVE, POSITIVE, setting

ROOT = Path(__file__).resolve().parents[1]
load_builtins()


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


@dataclass(frozen=True)
class Wide(Layered):
    """A layered network with wider hidden layers (a test plugin)."""

    width_bonus: int = setting(0, "Extra units per hidden layer (test plugin).", bounds=NONNEGATIVE)


@pytest.fixture
def wide():
    MODELS.register("wide-test", Wide)
    try:
        yield Wide
    finally:
        MODELS.unregister("wide-test")


# --- adding a setting to a component makes it a configuration key ------------------------


def test_a_model_kind_setting_is_a_config_key(wide, capsys):
    c = parse_config({"model": {"kind": "wide-test", "width_bonus": 3, "sizes": [4, 3, 2]}})
    assert (c.model.kind, c.model.width_bonus, c.model.sizes) == ("wide-test", 3, (4, 3, 2))
    assert parse_config(to_dict(c)) == c
    assert parse_config(tomllib.loads(dumps_toml(c))) == c
    assert MODELS.get(c.model.kind)(**c.model.settings()) == Wide(width_bonus=3, sizes=(4, 3, 2))
    # validated with the setting's own bounds, named in the messages
    assert error_of({"model": {"kind": "wide-test", "width_bonus": -1}}) == \
        "model.width_bonus: must be >= 0, got -1"
    assert error_of({"model": {"width_bonus": 1}}) == \
        "model.width_bonus: belongs to model kind 'wide-test', not 'layered'"
    assert error_of({"model": {"kind": "wide-test", "nope": 1}}).endswith(", sizes, width_bonus")
    kinds = ", ".join(f"'{n}'" for n in MODELS.names())  # the built-in kinds, then the new one
    assert kinds.startswith("'layered', 'graph'") and kinds.endswith(", 'wide-test'")
    assert error_of({"model": {"kind": "wid"}}).startswith(f"model.kind: must be one of {kinds}, got 'wid'")
    # documented by `eqprop config`
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert '### kind = "wide-test"' in text
    assert "| `width_bonus` | integer | `0` | >= 0 | Extra units per hidden layer (test plugin). |" in text
    assert "A layered network with wider hidden layers (a test plugin)." in text


def test_an_unregistered_kind_is_gone(wide):
    MODELS.unregister("wide-test")
    assert "wide-test" not in describe()
    assert error_of({"model": {"width_bonus": 1}}).startswith("model.width_bonus: unknown key")


def test_a_solver_setting_is_a_dynamics_key(capsys):
    """A new solver (one class, one registration): its settings are [dynamics] keys, and
    build wires them into the free phase's solver object."""
    from eqprop import build
    from eqprop.registry import SOLVERS
    from eqprop.solvers import FixedPoint

    class Relaxed(FixedPoint):
        """The plain iteration under another name, with one setting (a test plugin)."""

        relaxed_factor: float = setting(0.5, "A factor (test plugin).", bounds=POSITIVE,
                                        key="relaxed_factor")

    SOLVERS.register("relaxed-test", Relaxed)
    try:
        c = parse_config({"dynamics": {"solver": "relaxed-test", "relaxed_factor": 0.25, "free_steps": 7}})
        assert (c.dynamics.solver, c.dynamics.relaxed_factor) == ("relaxed-test", 0.25)
        assert parse_config(to_dict(c)) == c
        free = build.build_solvers(c).free
        assert type(free) is Relaxed and (free.relaxed_factor, free.steps) == (0.25, 7)
        assert error_of({"dynamics": {"relaxed_factor": 0.5}}) == \
            "dynamics.relaxed_factor: belongs to solver 'relaxed-test', not 'fixed-point'"
        assert error_of({"dynamics": {"solver": "relaxed-test", "relaxed_factor": -1.0}}).startswith(
            "dynamics.relaxed_factor: must be > 0")
        assert main(["config"]) == 0
        text = capsys.readouterr().out
        assert '### solver = "relaxed-test"' in text and "| `relaxed_factor` | float | `0.5` |" in text
    finally:
        SOLVERS.unregister("relaxed-test")
    assert "relaxed-test" not in describe()


def test_an_estimator_setting_is_a_config_key(capsys):
    base = ESTIMATORS.get("hep")

    class Damped(base):
        """hEP with one more setting (a test plugin)."""

        damping: float = setting(1.0, "Damping of the nudges (test plugin).", bounds=POSITIVE)

    ESTIMATORS.register("hep-test", Damped)
    try:
        c = parse_config({"estimator": {"name": "hep-test", "damping": 0.5, "beta": 0.1}})
        assert (c.estimator.name, c.estimator.damping, c.estimator.beta) == ("hep-test", 0.5, 0.1)
        assert parse_config(to_dict(c)) == c
        assert error_of({"estimator": {"name": "hep-test", "damping": 0.0}}).startswith(
            "estimator.damping: must be > 0, got 0.0")
        assert error_of({"estimator": {"damping": 0.5}}) == \
            "estimator.damping: belongs to estimator 'hep-test', not 'hep'"
        assert main(["config"]) == 0
        text = capsys.readouterr().out
        assert '### name = "hep-test"' in text
        assert "| `damping` | float | `1.0` | > 0 | Damping of the nudges (test plugin). |" in text
    finally:
        ESTIMATORS.unregister("hep-test")
    assert "hep-test" not in describe()


# --- the reference ---------------------------------------------------------------------------


def test_docs_config_md_is_eqprop_config(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert out == describe() + "\n"
    assert (ROOT / "docs" / "config.md").read_text() == out, \
        "docs/config.md is stale: run `eqprop config > docs/config.md`"


def test_describe_lists_each_variant_with_its_keys():
    text = describe()
    for section, tag in (("model", "kind"), ("estimator", "name")):
        for name, specs in variants(section).items():
            block = text.split(f'### {tag} = "{name}"\n', 1)[1].split("\n#", 1)[0]
            assert [line.split("`")[1] for line in block.splitlines() if line.startswith("| `")] \
                == [s.name for s in specs]
    assert "| `sizes` |" in text.split('### kind = "layered"')[1].split("###")[0]
    assert "| `sizes` |" not in text.split('### kind = "graph"')[1].split("##")[0]


# --- tagged unions ---------------------------------------------------------------------------


GRAPH = {"kind": "graph", "populations": {"h1": 8, "out": 3},
         "projections": [["input", "h1"], ["h1", "out"], ["out", "h1"]], "feedback": "untied"}


def test_a_key_of_another_variant_names_its_owner():
    assert error_of({"model": {"populations": {"h": 1}}}) == \
        "model.populations: belongs to model kind 'graph', not 'layered'"
    assert error_of({"model": {**GRAPH, "sizes": [4, 2]}}) == \
        "model.sizes: belongs to model kind 'layered', not 'graph'"
    msg = error_of({"estimator": {"name": "implicit", "beta": 0.1}})
    assert msg.startswith("estimator.beta: belongs to estimator ") and msg.endswith(", not 'implicit'")
    assert "'hep'" in msg and "'ep'" in msg


def test_warm_start_moved_to_train():
    assert error_of({"dynamics": {"warm_start": True}}) == "dynamics.warm_start: moved to train.warm_start"
    assert parse_config({"train": {"warm_start": True}}).train.warm_start is True
    assert not hasattr(Config().dynamics, "warm_start")


def test_union_sections_are_frozen_hashable_picklable_values():
    c = parse_config({"model": GRAPH, "estimator": {"name": "ep", "points": 2}})
    assert isinstance(c.model, ModelConfig) and isinstance(c.estimator, EstimatorConfig)
    assert c.model.kind == "graph" and c.model.populations == {"h1": 8, "out": 3}
    assert c.estimator.name == "ep" and c.estimator.points == 2
    assert pickle.loads(pickle.dumps(c)) == c and hash(pickle.loads(pickle.dumps(c))) == hash(c)
    assert parse_config({"model": GRAPH}) == parse_config({"model": GRAPH})
    assert parse_config({"model": GRAPH}).model != Config().model
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.estimator.points = 1  # type: ignore[misc]
    assert to_dict(c)["model"] == {"kind": "graph", "feedback": "untied", "asymmetry_angle": 0.0,
                                   "activation": "sigmoid4", "readout": "softmax",
                                   "dtype": "float32", "init_scale": 1.0, "compute_dtype": "float32",
                                   "populations": {"h1": 8, "out": 3},
                                   "projections": [["input", "h1"], ["h1", "out"], ["out", "h1"]],
                                   "output": "out"}
    assert set(to_dict(Config())["estimator"]) == {"name", *(s.name for s in variants("estimator")["hep"])}
    assert "sizes" not in dumps_toml(c) and "populations" not in dumps_toml(Config())


def test_switching_variant_drops_the_keys_it_lacks():
    hep = parse_config({"estimator": {"name": "hep", "beta": 0.1, "points": 2}})
    assert with_updates(hep, estimator={"name": "implicit"}).estimator.name == "implicit"
    assert with_updates(hep, estimator={"name": "ep"}).estimator.beta == 0.1  # shared: kept
    with pytest.raises(ConfigError, match=r"^estimator\.beta: belongs to estimator"):
        with_updates(hep, estimator={"name": "implicit", "beta": 0.2})
    raw = {"estimator": {"name": "hep", "beta": 0.1, "points": 2}}
    assert apply_overrides(raw, ["estimator.name=implicit"]) == {"estimator": {"name": "implicit"}}
    assert apply_overrides(raw, ["estimator.name=ep"])["estimator"] == {"name": "ep", "beta": 0.1,
                                                                       "points": 2}
    # a key given by another override is kept, so the parse reports it
    bad = apply_overrides(raw, ["estimator.beta=0.3", "estimator.name=implicit"])
    assert bad == {"estimator": {"name": "implicit", "beta": 0.3}}
    layered = {"model": {"sizes": [4, 3, 2]}}
    graph = apply_overrides(layered, ["model.kind=graph", "model.populations.h=3",
                                      "model.projections=[['input','h']]", "model.output=h"])
    assert parse_config(graph).model.populations == {"h": 3}


# --- model kinds -----------------------------------------------------------------------------


def test_model_kinds_are_registered_settings_classes():
    assert MODELS.get("layered") is Layered and MODELS.get("graph") is Graph
    c = parse_config({"model": GRAPH})
    assert Graph(**c.model.settings()) == Graph(
        feedback="untied", populations={"h1": 8, "out": 3},
        projections=(("input", "h1"), ("h1", "out"), ("out", "h1")))


def test_build_checks_the_data():
    key = jax.random.PRNGKey(0)
    m = Layered(sizes=(4, 3, 2))
    with pytest.raises(ConfigError, match=r"^model\.sizes: the first size must be the input size 5"):
        m.build(input_size=5, n_classes=2, key=key)
    with pytest.raises(ConfigError, match=r"^model\.sizes: the last size must be the number of classes 3"):
        m.build(input_size=4, n_classes=3, key=key)
    # the default sizes (Fashion-MNIST's MLP) against the default data (the digits): a hint
    with pytest.raises(ConfigError, match=r"got 784 \(the default, \[784, 256, 256, 10\], is the "
                                          r"Fashion-MNIST MLP's: set model\.sizes, e\.g\. \[64, 64, 10\]\)$"):
        Layered().build(input_size=64, n_classes=10, key=key)
    with pytest.raises(ConfigError, match=r"^model: "):
        Layered(sizes=(4, 2)).build(input_size=4, n_classes=2, key=key)  # softmax needs a hidden layer
    net = Graph(**parse_config({"model": GRAPH}).model.settings()).build(input_size=4, n_classes=3, key=key)
    assert dict(net.sizes) == {"input": 4, "h1": 8, "out": 3}


def test_graph_checks_raise_setting_errors():
    with pytest.raises(ValueError, match="needs at least one projection"):
        Graph(populations={"h": 2})
    with pytest.raises(ValueError, match="only meaningful with model.feedback = 'untied'"):
        Layered(asymmetry_angle=10.0)
