"""Tests for eqprop.config (pure Python, fast)."""

from __future__ import annotations

import dataclasses
import pickle
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    import eqprop.config  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from eqprop.config import (
    SCHEMA,
    Config,
    ConfigError,
    EstimatorConfig,
    ModelConfig,
    apply_overrides,
    describe,
    dumps_toml,
    load_config,
    parse_config,
    to_dict,
    variants,
    with_updates,
)
from eqprop.registry import ACTIVATIONS, DATASETS, load_builtins

load_builtins()

EXAMPLE = """\
[data]
name = "digits"
batch_size = 50
[model]
kind = "graph"
populations = { h1 = 32, h2 = 32, out = 10 }
projections = [["input","h1"], ["h1","h2"], ["h2","h1"], ["h2","out"], ["out","h1"]]
feedback = "untied"
asymmetry_angle = 90.0
activation = "sigmoid4"
readout = "softmax"
[dynamics]
dt = 1.0
free_steps = 150
nudged_steps = 20
tol = 0.0
[estimator]
name = "hep"
beta = 0.5
points = 2
"""

EXAMPLE_LAYERED = EXAMPLE.replace(
    'kind = "graph"\npopulations = { h1 = 32, h2 = 32, out = 10 }\n'
    'projections = [["input","h1"], ["h1","h2"], ["h2","h1"], ["h2","out"], ["out","h1"]]\n',
    'kind = "layered"\nsizes = [784, 32, 32, 10]\n')
assert EXAMPLE_LAYERED != EXAMPLE

GRAPH = {
    "kind": "graph",
    "populations": {"h1": 8, "out": 3},
    "projections": [["input", "h1"], ["h1", "out"], ["out", "h1"]],
    "feedback": "untied",
}


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def graph(**changes) -> dict:
    return {"model": {**GRAPH, **changes}}


# --- defaults and the example -------------------------------------------------


def test_defaults_parse():
    c = parse_config({})
    assert c == Config()
    assert c.model.sizes == (784, 256, 256, 10)
    assert c.data.path is None and c.train.max_batches is None
    assert c.estimator.name == "hep" and c.dynamics.linear_tol == 1e-5
    hash(c)  # usable as a static argument
    assert pickle.loads(pickle.dumps(c)) == c


def test_schema_matches_dataclasses():
    for section, specs in SCHEMA.items():
        assert all(s.doc and "\n" not in s.doc for s in specs)
        if section in ("model", "estimator", "dynamics", "pruning"):  # tagged unions: each variant is a dataclass
            union = type(getattr(Config(), section))
            for name, vspecs in variants(section).items():
                cls = union.variant(name)
                tag = specs[0].name
                assert [tag] + [s.name for s in vspecs] == [f.name for f in dataclasses.fields(cls)]
                assert all(s.doc and "\n" not in s.doc for s in vspecs)
            continue
        cls = type(getattr(Config(), section))
        assert [s.name for s in specs] == [f.name for f in dataclasses.fields(cls)]


def test_example_parses(tmp_path):
    path = tmp_path / "ex.toml"
    path.write_text(EXAMPLE)
    c = load_config(path)
    assert c.model.kind == "graph"
    assert c.model.populations == {"h1": 32, "h2": 32, "out": 10}
    assert c.model.projections[0] == ("input", "h1")
    assert c.model.asymmetry_angle == 90.0
    assert c.estimator.points == 2


def test_int_accepted_as_float():
    c = parse_config({"estimator": {"beta": 1}, "dynamics": {"dt": 1}})
    assert c.estimator.beta == 1.0 and isinstance(c.estimator.beta, float)
    assert isinstance(c.dynamics.dt, float)


# --- error kinds ---------------------------------------------------------------


def test_unknown_key():
    # [model] is a tagged union: the allowed keys are those of the chosen kind
    msg = error_of({"model": {"sizez": [1, 2]}})
    assert msg.startswith("model.sizez: unknown key; allowed keys: kind, feedback, "
                          "asymmetry_angle, activation, readout, dtype, init_scale, compute_dtype, "
                          "sizes")
    msg = error_of(graph(sizez=[1, 2]))
    assert msg.startswith("model.sizez: unknown key; allowed keys: kind, feedback, "
                          "asymmetry_angle, activation, readout, dtype, init_scale, compute_dtype, "
                          "populations, projections, output")


def test_unknown_section():
    msg = error_of({"modle": {}})
    assert msg.startswith("unknown section 'modle'; allowed sections: data, model, dynamics")
    assert "is a key of" not in msg


def test_a_key_in_the_wrong_place_names_its_section():
    """A review wrote ``epochs = 3`` at the top level and ``estimator.nudged_steps``: the
    message names the section that has the key (a variant's key too)."""
    assert error_of({"epochs": 3}).endswith("; 'epochs' is a key of [train]")
    assert error_of({"estimator": {"nudged_steps": 3}}).endswith("; 'nudged_steps' is a key of [dynamics]")
    assert error_of({"model": {"lr": 3}}).endswith("; 'lr' is a key of [optim]")
    assert error_of({"train": {"projections": []}}).endswith("; 'projections' is a key of [model]")
    assert error_of({"estimator": {"foo": 3}}).endswith("allowed keys: name, beta, points")


def test_section_not_a_table():
    assert error_of({"model": 5}).startswith("model: expected a table")


def test_top_level_not_a_table():
    assert "expected a table" in error_of([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"dynamics": {"free_steps": 150.5}},
         "dynamics.free_steps: expected an integer, got '150.5' (float)"),
        ({"dynamics": {"free_steps": True}},
         "dynamics.free_steps: expected an integer, got 'true' (boolean)"),
        ({"estimator": {"beta": "big"}}, "estimator.beta: expected a float, got 'big' (string)"),
        ({"estimator": {"beta": False}}, "estimator.beta: expected a float"),
        ({"data": {"augment": 1}}, "data.augment: expected a boolean, got '1' (integer)"),
        ({"data": {"name": 3}}, "data.name: expected a string"),
        ({"data": {"path": 3}}, "data.path: expected a string"),
        ({"model": {"sizes": 10}}, "model.sizes: expected an array"),
        ({"model": {"sizes": [10, "a"]}}, "model.sizes[1]: expected an integer"),
        ({"model": {"kind": "graph", "populations": [1]}}, "model.populations: expected a table"),
        ({"model": {"kind": "graph", "populations": {"h": 1.5}}},
         "model.populations.h: expected an integer"),
        ({"optim": {"lr_multipliers": {"a": "x"}}}, "optim.lr_multipliers.a: expected a float"),
        ({"train": {"max_batches": 2.0}}, "train.max_batches: expected an integer"),
    ],
)
def test_wrong_type(raw, expected):
    assert error_of(raw).startswith(expected)


@pytest.mark.parametrize(
    "section, key, value, allowed",
    [
        ("model", "feedback", "tid", "must be one of 'tied', 'untied', got 'tid'"),
        ("model", "kind", "tree", "'layered', 'graph'"),
        ("model", "activation", "relu", "'sigmoid4', 'dsilu', 'tanh', 'hard-sigmoid'"),
        ("model", "readout", "ce", "'softmax', 'mse'"),
        ("model", "dtype", "float16", "'float32', 'float64'"),
        ("data", "name", "svhn", "'digits', 'synthetic'"),
        ("dynamics", "solver", "newton", "'fixed-point', 'anderson'"),
        ("estimator", "name", "hebb", "'ep', 'hep', 'online-hep'"),
        ("optim", "name", "rmsprop", "'sgd', 'adam', 'adamw'"),
        ("optim", "schedule", "linear", "'constant', 'cosine'"),
    ],
)
def test_not_in_allowed_set(section, key, value, allowed):
    msg = error_of({section: {key: value}})
    assert msg.startswith(f"{section}.{key}: must be one of ")
    assert allowed in msg and f"got '{value}'" in msg


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("dynamics", "dt", 1.5, "dynamics.dt: must be in (0, 1], got 1.5"),
        ("dynamics", "dt", 0, "dynamics.dt: must be in (0, 1], got 0.0"),
        ("dynamics", "free_steps", 0, "dynamics.free_steps: must be >= 1, got 0"),
        ("dynamics", "tol", -1e-3, "dynamics.tol: must be >= 0"),
        ("dynamics", "linear_steps", 0, "dynamics.linear_steps: must be >= 1"),
        ("dynamics", "check_every", 0, "dynamics.check_every: must be >= 1, got 0"),
        ("dynamics", "linear_tol", -1.0, "dynamics.linear_tol: must be >= 0"),
        ("data", "batch_size", 0, "data.batch_size: must be >= 1"),
        ("data", "validation", 1.0, "data.validation: must be in [0, 1), got 1.0"),
        ("model", "asymmetry_angle", 91, "model.asymmetry_angle: must be in [0, 90]"),
        ("model", "init_scale", 0.0, "model.init_scale: must be > 0"),
        ("model", "sizes", [10, 0], "model.sizes[1]: must be >= 1, got 0"),
        ("model", "sizes", [10], "model.sizes: needs at least 2 entries, got 1"),
        ("estimator", "beta", 0.0, "estimator.beta: must be > 0"),
        ("estimator", "beta", float("nan"), "estimator.beta: must be > 0, got nan"),
        ("estimator", "points", 0, "estimator.points: must be >= 1"),
        ("estimator", "periods", 0, "estimator.periods: must be >= 1"),  # online-hep's key
        ("optim", "lr", -0.1, "optim.lr: must be > 0"),
        ("optim", "momentum", 1.0, "optim.momentum: must be in [0, 1)"),
        ("optim", "weight_decay", -1, "optim.weight_decay: must be >= 0"),
        ("optim", "lr_multipliers", {"a": 0}, "optim.lr_multipliers.a: must be > 0"),
        ("train", "epochs", 0, "train.epochs: must be >= 1"),
        ("train", "seeds", 0, "train.seeds: must be >= 1"),
        ("train", "eval_every", 0, "train.eval_every: must be >= 1"),
        ("train", "checkpoint_every", 0, "train.checkpoint_every: must be >= 1"),
        ("train", "max_batches", 0, "train.max_batches: must be >= 1"),
        ("homeostasis", "coef", -1.0, "homeostasis.coef: must be >= 0"),
        ("homeostasis", "probes", 0, "homeostasis.probes: must be >= 1"),
        ("homeostasis", "every", 0, "homeostasis.every: must be >= 1"),
        ("diagnostics", "batch_size", 0, "diagnostics.batch_size: must be >= 1"),
        ("diagnostics", "every", 0, "diagnostics.every: must be >= 1"),
    ],
)
def test_out_of_range(section, key, value, expected):
    table = {key: value}
    if (section, key) == ("estimator", "periods"):
        table["name"] = "online-hep"  # the estimator that has periods
    assert error_of({section: table}).startswith(expected)


def test_messages_stay_one_line_for_odd_values():
    msg = error_of({"model": {"feedback": "a\nb" * 100}})
    assert msg.startswith("model.feedback: must be one of") and len(msg) < 200
    assert error_of({"model": {"bad\nkey": 1}}).startswith("model.bad\\nkey: unknown key")


def test_optional_keys():
    c = parse_config({"data": {"path": "/d"}, "train": {"max_batches": 3}})
    assert c.data.path == "/d" and c.train.max_batches == 3
    assert parse_config({"train": {"max_batches": None}}).train.max_batches is None


# --- cross-checks ----------------------------------------------------------------


def test_tied_with_angle_is_error():
    msg = error_of({"model": {"asymmetry_angle": 30.0}})
    assert msg.startswith("model.asymmetry_angle: only meaningful with model.feedback = 'untied'")
    assert parse_config({"model": {"asymmetry_angle": 30, "feedback": "untied"}})


def test_a_pool_temperature_where_nothing_pools_is_error():
    conv = {"kind": "conv", "channels": [4, 8]}
    msg = error_of({"model": {**conv, "pool": [0, 0], "pool_temperature": 0.5}})
    assert msg == "model.pool_temperature: applies to a pooling projection; model.pool = [0, 0] pools nowhere"
    assert parse_config({"model": {**conv, "pool": [0, 1], "pool_temperature": 0.5}})
    assert parse_config({"model": {**conv, "pool": [0, 0]}})


@pytest.mark.parametrize("points", [1, 2])
def test_ep_points_ok(points):
    assert parse_config({"estimator": {"name": "ep", "points": points}}).estimator.points == points


def test_ep_points_error():
    msg = error_of({"estimator": {"name": "ep", "points": 3}})
    assert msg.startswith("estimator.points: 'ep' takes 1 (one-sided) or 2 (symmetric); "
                          "use 'hep' for more")
    assert parse_config({"estimator": {"name": "hep", "points": 3}}).estimator.points == 3


def test_graph_ok():
    c = parse_config(graph())
    assert c.model.output == "out" and len(c.model.projections) == 3


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"populations": {}}, "model.populations: kind = 'graph' needs at least one population"),
        ({"projections": []}, "model.projections: kind = 'graph' needs at least one projection"),
        ({"populations": {"input": 4, "h1": 8, "out": 3}},
         "model.populations.input: the name 'input' is reserved"),
        ({"projections": [["input", "h2"]]}, "model.projections[0]: unknown population 'h2'"),
        ({"projections": [["input", "h1"], ["h1", "input"]]},
         "model.projections[1]: destination may not be 'input' (input is clamped)"),
        ({"projections": [["input", "h1"], ["h1", "h1"]]}, "model.projections[1]: self-loop"),
        ({"projections": [["input", "h1"], ["h1", "out"], ["h1", "out"]]},
         "model.projections[2]: duplicate projection 'h1' -> 'out'"),
        ({"output": "o"}, "model.output: must be one of the declared populations 'h1', 'out'"),
        ({"projections": [["input", "h1", "out"]]},
         "model.projections[0]: expected a [src, dst] pair of strings"),
        ({"projections": [["input", 1]]}, "model.projections[0]: expected a [src, dst] pair"),
        ({"projections": ["input"]}, "model.projections[0]: expected a [src, dst] pair"),
        ({"projections": "input->h1"}, "model.projections: expected an array"),
    ],
)
def test_graph_errors(changes, expected):
    assert error_of(graph(**changes)).startswith(expected)


def test_unknown_population_lists_allowed():
    msg = error_of(graph(projections=[["input", "h9"]]))
    assert "allowed: 'input', 'h1', 'out'" in msg


# --- overrides --------------------------------------------------------------------


def test_overrides_apply_and_typecheck(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE_LAYERED)  # sizes is a key of kind = "layered"
    c = load_config(path, ["estimator.points=4", "model.sizes=[64,10]", "model.feedback=untied",
                           "estimator.beta = 0.1", "data.path=/tmp/x y", "train.max_batches=3"])
    assert c.estimator.points == 4 and c.estimator.beta == 0.1
    assert c.model.sizes == (64, 10) and c.model.feedback == "untied"
    assert c.data.path == "/tmp/x y" and c.train.max_batches == 3
    with pytest.raises(ConfigError, match=r"^estimator\.points: expected an integer"):
        load_config(path, ["estimator.points=four"])
    with pytest.raises(ConfigError, match=r"^model\.feedback: must be one of 'tied', 'untied'"):
        load_config(path, ["model.feedback=tid"])


def test_overrides_nested_and_new_sections():
    raw = apply_overrides({}, ["model.populations.h1=4", "optim.lr_multipliers.h1=2"])
    assert raw == {"model": {"populations": {"h1": 4}}, "optim": {"lr_multipliers": {"h1": 2}}}
    original = {"model": {"sizes": [1, 2]}}
    apply_overrides(original, ["model.sizes=[3,4]"])
    assert original == {"model": {"sizes": [1, 2]}}  # not mutated


def test_override_value_parsing():
    raw = apply_overrides({}, ["a.b=true", "a.c=1e-3", "a.d=hello world", "a.e=", "a.f=x = 1"])
    assert raw["a"] == {"b": True, "c": 1e-3, "d": "hello world", "e": "", "f": "x = 1"}


@pytest.mark.parametrize("bad", ["model.sizes", "sizes=[1,2]", "=3", ".x=1", "model.=1",
                                 "model..x=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [bad])
    assert "section.key=value" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["[64, 32,", "{a = 1", '"unclosed', "'unclosed"])
def test_an_unclosed_override_value_is_a_toml_error(value):
    """What opens as an array, a table or a quoted string must be TOML: a truncated
    ``model.sizes=[64,32,`` said "expected an array, got '[64,32,' (string)"."""
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [f"model.sizes={value}"])
    msg = str(info.value)
    assert msg.startswith(f"override 'model.sizes={value}': not valid TOML: {value!r} (") and "\n" not in msg


def test_override_into_non_table():
    with pytest.raises(ConfigError, match=r"^model: expected a table"):
        apply_overrides({"model": 3}, ["model.sizes=[1,2]"])


def test_override_unknown_section_reported():
    with pytest.raises(ConfigError, match=r"^unknown section 'modle'"):
        parse_config(apply_overrides({}, ["modle.sizes=[1,2]"]))


# --- files --------------------------------------------------------------------------


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_a_shipped_config_by_name(tmp_path, monkeypatch):
    """`eqprop train digits-quick` from any directory: a bare name is a shipped config
    (with or without .toml); the user's own file of that name comes first."""
    from eqprop.config import resolve_config, shipped_configs

    monkeypatch.chdir(tmp_path)
    assert set(shipped_configs()) == {f.stem for f in CONFIGS.glob("*.toml")}
    assert resolve_config("digits-quick") == CONFIGS / "digits-quick.toml"
    assert resolve_config("xor-deep.toml") == CONFIGS / "xor-deep.toml"
    assert load_config("xor-deep", ["optim.lr=0.3"]) == load_config(CONFIGS / "xor-deep.toml",
                                                                    ["optim.lr=0.3"])
    (tmp_path / "xor-deep.toml").write_text('[data]\nname = "digits"\n')
    assert load_config("xor-deep").data.name == "digits"  # ./xor-deep.toml, not the shipped
    assert load_config("xor-deep.toml").data.name == "digits"


def test_an_unknown_name_lists_every_place_and_the_shipped_names(tmp_path, monkeypatch):
    from eqprop.config import shipped_config_dirs

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("digits-quik")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("digits-quik: config file not found (searched ")
    for place in [tmp_path, *shipped_config_dirs()]:
        assert str(place) in msg
    assert "digits-quick" in msg and "fmnist-cnn-hep" in msg
    with pytest.raises(ConfigError, match=r"^sub/digits-quick: config file not found$"):
        load_config("sub/digits-quick")  # a path is a path: no lookup


def test_a_wheel_carries_the_shipped_configs(tmp_path, monkeypatch):
    """pyproject's data-files put configs/*.toml in <prefix>/share/eqprop/configs, which
    the lookup searches after the checkout."""
    import glob

    pyproject = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())
    files = pyproject["tool"]["setuptools"]["data-files"]["share/eqprop/configs"]
    packed = {Path(f).name for pattern in files for f in glob.glob(str(CONFIGS.parent / pattern))}
    assert packed == {f.name for f in CONFIGS.glob("*.toml")}
    from eqprop.config import resolve_config, shipped_configs

    share = tmp_path / "share" / "eqprop" / "configs"
    share.mkdir(parents=True)
    (share / "extra.toml").write_text('[data]\nname = "xor"\n')
    (share / "digits-quick.toml").write_text('[data]\nname = "xor"\n')
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert resolve_config("extra") == share / "extra.toml"
    assert shipped_configs()["digits-quick"] == CONFIGS / "digits-quick.toml"  # checkout first


def test_toml_syntax_error_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nsizes = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "line 2" in msg and "\n" not in msg
    path.write_text("[model]\nsizes = [1, 2\n")  # error at end of document
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="bin.toml"):
        load_config(path)


def test_an_oversized_config_is_refused_without_reading_it_all(tmp_path):
    """A config file is a few KB: one over 1 MiB is a one-line error, read no further."""
    from eqprop.config import MAX_TOML_BYTES

    path = tmp_path / "big.toml"
    path.write_bytes(b"# " + b"x" * MAX_TOML_BYTES + b"\n[train]\nepochs = 1\n")
    with pytest.raises(ConfigError, match=r"big.toml: more than 1 MiB, too large for a config file$"):
        load_config(path)
    path.write_bytes(b"[train]\nepochs = 3\n# " + b"x" * (MAX_TOML_BYTES - 40) + b"\n")
    assert load_config(path).train.epochs == 3


def test_directory_is_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path)


# --- serialisation ----------------------------------------------------------------------


def test_to_dict_round_trip():
    c = parse_config(tomllib.loads(EXAMPLE))
    d = to_dict(c)
    assert d["model"]["projections"][0] == ["input", "h1"]
    assert type(d["model"]["populations"]) is dict
    assert parse_config(d) == c


def test_dumps_example_round_trip():
    c = parse_config(tomllib.loads(EXAMPLE))
    assert parse_config(tomllib.loads(dumps_toml(c))) == c
    assert parse_config(tomllib.loads(dumps_toml(Config()))) == Config()


def test_dumps_odd_strings_and_keys():
    c = parse_config({"data": {"path": 'we"ird\\ \n\t\x01\x7f é'},
                      "optim": {"lr_multipliers": {"h1->h2": 2.0, "a b": 1e-30, "x": 1e300}}})
    assert parse_config(tomllib.loads(dumps_toml(c))) == c


def test_with_updates():
    c = with_updates(Config(), estimator={"beta": 0.1}, model={"sizes": [4, 2]})
    assert c.estimator.beta == 0.1 and c.model.sizes == (4, 2)
    with pytest.raises(ConfigError, match=r"^estimator\.beta: must be > 0"):
        with_updates(c, estimator={"beta": -1.0})
    with pytest.raises(ConfigError, match="unknown section"):
        with_updates(c, nope={})


def test_describe_lists_every_key():
    text = describe()
    for section, specs in SCHEMA.items():
        assert f"## [{section}]" in text
        for spec in specs:
            assert f"| `{spec.name}` |" in text
    assert "`[784, 256, 256, 10]`" in text


def test_frozen():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.model.kind = "graph"  # type: ignore[misc]
    assert ModelConfig.variant("graph")().populations == {}


# --- property-based round trip ----------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s != "input")
pos_floats = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@st.composite
def graph_models(draw) -> dict:
    pops = draw(st.dictionaries(names, st.integers(1, 512), min_size=1, max_size=5))
    ends = ["input", *pops]
    edges = draw(st.lists(st.tuples(st.sampled_from(ends), st.sampled_from(list(pops))),
                          min_size=1, max_size=10, unique=True)
                 .filter(lambda es: any(s != d for s, d in es)))
    edges = [[s, d] for s, d in edges if s != d]
    return {"kind": "graph", "populations": pops, "projections": edges,
            "output": draw(st.sampled_from(list(pops)))}


@st.composite
def configs(draw) -> dict:
    feedback = draw(st.sampled_from(["tied", "untied"]))
    model = draw(st.one_of(
        st.builds(lambda s: {"sizes": s}, st.lists(st.integers(1, 4096), min_size=2, max_size=6)),
        graph_models()))
    model.update(
        feedback=feedback,
        asymmetry_angle=draw(st.floats(0, 90)) if feedback == "untied" else 0.0,
        activation=draw(st.sampled_from(ACTIVATIONS.names())),
        init_scale=draw(pos_floats),
    )
    est_name = draw(st.sampled_from(EstimatorConfig.names()))
    est_keys = {s.name for s in variants("estimator")[est_name]}
    # 'ep' and 'contrast' are one-sided or symmetric (points 1 or 2); online-hep needs 2 or more
    points = draw(st.integers(1, 2) if est_name in ("ep", "contrast") else
                  st.integers(2 if est_name == "online-hep" else 1, 16))
    raw = {
        "data": {"name": draw(st.sampled_from(DATASETS.names())), "batch_size": draw(st.integers(1, 10**4)),
                 "validation": draw(unit), "augment": draw(st.booleans())},
        "model": model,
        "dynamics": {"dt": draw(st.floats(1e-9, 1.0)), "free_steps": draw(st.integers(1, 10**5)),
                     "tol": draw(st.floats(0, 1)), "linear_tol": draw(st.floats(0, 1e-3))},
        # each estimator takes only its own keys
        "estimator": {"name": est_name, **{k: v for k, v in (("beta", draw(pos_floats)),
                                                              ("points", points)) if k in est_keys}},
        "optim": {"lr": draw(pos_floats), "momentum": draw(unit),
                  "lr_multipliers": draw(st.dictionaries(st.text(max_size=8), pos_floats,
                                                         max_size=3))},
        "train": {"seed": draw(st.integers(-(2**63), 2**63 - 1))},
    }
    if draw(st.booleans()):
        raw["data"]["path"] = draw(st.text(max_size=20))
        raw["train"]["max_batches"] = draw(st.integers(1, 1000))
    return raw


@settings(max_examples=150, deadline=None)
@given(configs())
def test_dumps_toml_round_trips(raw):
    c = parse_config(raw)
    text = dumps_toml(c)
    assert parse_config(tomllib.loads(text)) == c
    assert parse_config(to_dict(c)) == c


def test_diagnostics_free_steps():
    assert parse_config({"diagnostics": {"free_steps": 1000}}).diagnostics.free_steps == 1000
    assert parse_config({}).diagnostics.free_steps == 0
    msg = error_of({"diagnostics": {"free_steps": -1}})
    assert msg.startswith("diagnostics.free_steps") and ">= 0" in msg
