"""Bring your own model: ``--plugin FILE``, its record in the run directory, the example
of docs/extending.md, and the errors of a plugin that cannot be loaded."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import eqprop
from eqprop import cli
from eqprop.cli import main
from eqprop.config import load_config
from eqprop.network import DenseKind, ModelKind
from eqprop.plugins import (PluginError, load_plugin, load_recorded, record_plugins,
                            recorded_plugins, register_model)
from eqprop.registry import DATASETS, ESTIMATORS, MODELS
from eqprop.settings import setting

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "my_field.py"
EXAMPLE_TOML = ROOT / "docs" / "examples" / "my_field.toml"
TEST_PLUGIN = ROOT / "tests" / "plugins" / "hopfield.py"
TEST_TOML = ROOT / "tests" / "plugins" / "hopfield.toml"


def forget(kind: str) -> None:
    """Undo a plugin's model registration and import, as a new process starts (so that
    a later command must find the plugin again, in the run directory)."""
    if kind in MODELS:
        module = MODELS[kind].__module__
        MODELS.unregister(kind)
        sys.modules.pop(module, None)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the documentation's example -------------------------------------------------------


def test_the_markdown_example_is_the_example_file():
    """docs/extending.md shows docs/examples/my_field.py verbatim (the file the tests run)."""
    md = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"<!-- example: docs/examples/(\S+) -->\n```\w*\n(.*?)```", md, re.S)
    assert {name for name, _ in blocks} == {"my_field.py", "my_field.toml"}
    for name, text in blocks:
        assert text == (ROOT / "docs" / "examples" / name).read_text(), name


def test_the_markdown_snippets_run():
    """The estimator and the data set of docs/extending.md register and work as shown."""
    md = (ROOT / "docs" / "extending.md").read_text()
    snippets = re.findall(r"<!-- snippet: tested -->\n```python\n(.*?)```", md, re.S)
    assert len(snippets) == 2
    try:
        for code in snippets:
            exec(compile(code, "docs/extending.md", "exec"), {})
        ds = DATASETS["rings"](None)
        assert ds.n_classes == 2 and ds.x_train.shape == (1000, 2)
        est = eqprop.make_estimator("my-ep", beta=0.2)
        model = load_plugin(EXAMPLE).MyFieldKind(hidden=4).build(input_size=2, n_classes=2,
                                                                 key=jax.random.PRNGKey(0))
        est.check(model)
        with pytest.raises(ValueError, match="EnergyModel"):
            est.check(eqprop.layered([2, 3, 2], key=jax.random.PRNGKey(0), feedback="untied"))
    finally:
        ESTIMATORS.unregister("my-ep")
        DATASETS.unregister("rings")


def test_the_example_is_an_energy_model():
    """dPhi/da = h(a) for the example's energy (the contrast estimator relies on it)."""
    model = load_plugin(EXAMPLE).MyFieldKind(hidden=5).build(input_size=3, n_classes=2,
                                                             key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    a = {"h": jax.random.uniform(jax.random.PRNGKey(2), (4, 5))}
    dphi, h = jax.jit(lambda m, a, x: (jax.grad(lambda a: jnp.sum(m.primitive(a, x)))(a),
                                       m.interaction(a, m.prepare(x))))(model, a, x)
    assert jnp.allclose(dphi["h"], h["h"], rtol=1e-6, atol=1e-6)
    assert model.symmetric and model.holomorphic and model.projector() is None


def test_the_example_trains_then_evaluates_and_resumes_without_plugin(tmp_path, capsys):
    """``eqprop train ... --plugin my_field.py`` records the file; ``eval`` and ``resume``
    of the run find the model in the run directory, with the original file gone."""
    plugin = tmp_path / "my_field.py"
    shutil.copyfile(EXAMPLE, plugin)
    run = tmp_path / "run"
    forget("my-field")
    assert main(["train", str(EXAMPLE_TOML), "--plugin", str(plugin), "--out", str(run), "-q",
                 "--epochs", "1", "--set", "train.max_batches=2", "--set", "estimator.points=2"]) == 0
    assert (run / "plugins" / "my_field.py").read_bytes() == EXAMPLE.read_bytes()
    assert load_config(run / "config.toml").model.kind == "my-field"
    plugin.unlink()
    forget("my-field")
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "top-1" in capsys.readouterr().out
    forget("my-field")
    from eqprop.train import load_run  # the Python API finds the run's plugins too (a review)

    config, _, _, _ = load_run(run)
    assert config.model.kind == "my-field"
    forget("my-field")
    assert main(["resume", str(run), "--epochs", "2", "-q"]) == 0
    records = lines(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_plugin_with_float16_parameters_is_warned_about(tmp_path, capsys):
    """A review's float16 ``W`` trained into "diverged at epoch 1" (the optimizer's state
    underflows): a one-line warning names the parameters before anything trains."""
    source = EXAMPLE.read_text().replace('register_model("my-field")', 'register_model("my-field-f16")')
    source = source.replace("return MyField(W=self.coupling * jax.random.normal(kw, (n, n)) / n**0.5,",
                            "return MyField(W=(self.coupling * jax.random.normal(kw, (n, n)) / n**0.5)"
                            ".astype(jnp.float16),")
    plugin = tmp_path / "half.py"
    plugin.write_text(source)
    try:
        main(["train", str(EXAMPLE_TOML), "--plugin", str(plugin), "--out", str(tmp_path / "run"), "-q",
              "--epochs", "1", "--set", "train.max_batches=1", "--set", 'model.kind="my-field-f16"'])
    finally:
        forget("my-field-f16")
    said = [ln for ln in capsys.readouterr().err.splitlines() if "float16" in ln]
    assert said and said[0].startswith("eqprop: warning: MyField: the parameters W are float16: the "
                                       "optimizer's steps and state underflow there")


#: each breach of the contract: the line of docs/examples/my_field.py it edits, and how
_FIELD_RETURN = 'return {"h": self.interaction(self.activity(u), drive)["h"] - u["h"]}'
_READOUT = 'make_readout("softmax", n, n_classes, key=kr)'
_BREACHES = {
    "abstract": ("    def field(self, u, drive):", "    def _not_the_field(self, u, drive):"),
    "signature": ("    def field(self, u, drive):", "    def field(self, u):"),
    "build": ("def build(self, *, input_size, n_classes, key):", "def build(self, *, input_size, key):"),
    "population": (_FIELD_RETURN, _FIELD_RETURN.replace('{"h":', '{"hidden":')),
    "readout": (_READOUT, 'make_readout("softmax", n, n_classes + 1, key=kr)'),
    "width": (_READOUT, 'make_readout("softmax", n + 3, n_classes, key=kr)'),
    "value": ("        n = self.hidden\n", "        n = self.hidden\n        raise ValueError('hidden too big')\n"),
    "output": ('output="h"', 'output="out"'),
    "no-return": ("        return MyField(W=", "        MyField(W="),
    "float16": (_FIELD_RETURN, 'return {"h": (self.interaction(self.activity(u), drive)["h"] - u["h"])'
                               '.astype(jnp.float16)}'),
}


@pytest.mark.parametrize("breach, said", [
    ("abstract", r"plugin .*broken_abstract\.py: line \d+, in build: TypeError: Can't instantiate "
                 # Python 3.11's words, then 3.12's
                 r"abstract class MyField (with abstract method field|without an implementation for "
                 r"abstract method 'field')"),
    ("signature", r"plugin .*broken_signature\.py: TypeError: MyField\.field\(\) takes 2 positional "
                  r"arguments but 3 were given"),
    ("build", r"plugin .*broken_build\.py: TypeError: MyFieldKind\.build\(\) got an unexpected "
              r"keyword argument"),
    # the shapes of the contract, traced before anything relaxes (JAX's errors from deep
    # inside a solver named neither the model nor the method: a review)
    ("population", r"MyField\.field\(u, drive\) returns a pytree unlike the state u \(missing 'h'; "
                   r"extra 'hidden'\)"),
    ("readout", r"MyField: the readout of output population 'h' gives logits of shape \(2, 11\) for a "
                r"batch of 2; the data has 10 classes"),
    ("width", r"MyField: the readout of output population 'h': TypeError: dot_general requires "
              r"contracting dimensions to have the same shape, got \(32,\) and \(35,\)"),
    ("output", r"MyField: the output population 'out' is not one of the state's \('h'\)"),
    ("no-return", r"MyFieldKind\.build returned NoneType, not an eqprop\.network\.EquilibriumModel"),
    ("value", r"plugin .*broken_value\.py: line \d+, in build: hidden too big"),  # a ValueError of its own
    ("float16", r"MyField\.field\(u, drive\) returns a pytree unlike the state u \('h': dtype float16 "
                r"where the state has float(32|64)\)"),  # float64: the suite runs in x64
])
def test_a_plugin_that_breaks_the_contract_is_a_one_line_error(tmp_path, capsys, breach, said):
    """A review's plugins with a missing field, a field without drive, a build without
    n_classes: tracebacks through eqprop's code and exit 1; now one line naming the file
    (and its line where the plugin's own code raised), exit 2."""
    source = EXAMPLE.read_text()
    kind = f"my-field-{breach}"
    source = source.replace('register_model("my-field")', f'register_model("{kind}")')
    old, replacement = _BREACHES[breach]
    assert old in source  # the example still has the line the breach edits
    source = source.replace(old, replacement)
    plugin = tmp_path / f"broken_{breach}.py"
    plugin.write_text(source)
    try:
        code = main(["train", str(EXAMPLE_TOML), "--plugin", str(plugin), "--out", str(tmp_path / "run"),
                     "-q", "--epochs", "1", "--set", "train.max_batches=2", "--set",
                     f'model.kind="{kind}"', "--set", "estimator.points=2"])
    finally:
        forget(kind)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.match("eqprop: error: " + said, err[0]), err[0]
    # refused while being built (the signature too, since the contract is traced there):
    # not a directory holding only plugins/
    assert not (tmp_path / "run").exists()
    if breach not in ("abstract", "signature", "build"):  # a ValueError (the check's, or the plugin's)
        assert "EQPROP_TRACEBACK" not in err[0]  # bad input: no contract suffix
        return
    assert err[0].endswith("(the contract of a component: docs/extending.md; EQPROP_TRACEBACK=1 "
                           "shows the traceback)")


def test_config_lists_a_plugins_keys(capsys):
    assert main(["config", "--plugin", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "my-field" in out and "Units of the population h." in out


# -- the test model of the shared table (tests/plugins/hopfield.py) -----------------------


def test_a_model_that_is_not_a_dense_network_trains_from_toml_with_plugin(tmp_path, capsys,
                                                                        monkeypatch):
    """The acceptance line: the table's non-DenseNetwork model, registered through the
    public API in a test file, trains for a few steps from a TOML config with --plugin;
    eval and gradcheck of the run find it without --plugin."""
    run = tmp_path / "run"
    assert main(["train", str(TEST_TOML), "--plugin", str(TEST_PLUGIN), "--out", str(run),
                 "-q"]) == 0
    (record,) = lines(run / "metrics.jsonl")
    assert record["epoch"] == 1 and math.isfinite(record["train_loss"])
    assert not issubclass(MODELS["test-hopfield"], DenseKind)
    assert recorded_plugins(run) == [run / "plugins" / "hopfield.py"]
    forget("test-hopfield")
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "top-1" in capsys.readouterr().out
    # gradcheck of a run loads its plugins before it runs (the command itself is
    # tested in test_cli.py; here it only checks that the model kind is there)
    forget("test-hopfield")
    found = []
    monkeypatch.setattr(cli, "_cmd_gradcheck", lambda args: found.append("test-hopfield" in MODELS) or 0)
    assert main(["gradcheck", str(run)]) == 0 and found == [True]


# -- loading, recording, errors --------------------------------------------------------


def test_a_file_is_loaded_once_whatever_its_path(tmp_path):
    copy = tmp_path / "copy_of_example.py"
    shutil.copyfile(EXAMPLE, copy)
    assert load_plugin(EXAMPLE) is load_plugin(copy)
    assert MODELS["my-field"].__module__ == load_plugin(EXAMPLE).__name__


@pytest.mark.parametrize("content, message", [
    (None, r"plugin .*missing\.py: no such file"),
    ("def f(:\n", r"plugin .*bad\.py: syntax error at line 1"),
    ("x = 1\nraise RuntimeError('boom')\n", r"plugin .*bad\.py: RuntimeError while importing "
                                            r"\(line 2\): boom"),
    ("from eqprop.registry import ESTIMATORS\nESTIMATORS.register('hep', object())\n",
     r"plugin .*bad\.py: ValueError while importing \(line 2\): estimator 'hep' is already "
     r"registered"),
])
def test_a_plugin_that_cannot_load_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / ("missing.py" if content is None else "bad.py")
    if content is not None:
        path.write_text(content)
    with pytest.raises(PluginError, match=message):
        load_plugin(path)
    assert main(["train", str(TEST_TOML), "--plugin", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_failed_plugin_leaves_the_registries_as_they_were(tmp_path):
    path = tmp_path / "half.py"
    path.write_text("from eqprop.registry import ESTIMATORS\n"
                    "ESTIMATORS.register('half-registered', object())\n"
                    "raise ImportError('a missing dependency')\n")
    with pytest.raises(PluginError, match="ImportError while importing"):
        load_plugin(path)
    assert "half-registered" not in ESTIMATORS


def test_not_a_python_file(tmp_path):
    path = tmp_path / "model.toml"
    path.write_text("")
    with pytest.raises(PluginError, match="not a Python file"):
        load_plugin(path)


def test_record_and_replace(tmp_path):
    """Recorded copies load from the run directory; a --plugin of the same file name
    replaces its copy; two files with one name cannot be recorded."""
    run = tmp_path / "run"
    (a := tmp_path / "a").mkdir()
    (b := tmp_path / "b").mkdir()
    for d, doc in ((a, "first"), (b, "second")):
        (d / "p.py").write_text(f'"""{doc}"""\n')
    assert record_plugins(run, [a / "p.py"]) == [run / "plugins" / "p.py"]
    (module,) = load_recorded(run)
    assert module.__doc__ == "first"
    assert load_recorded(run, skip={"p.py"}) == []
    with pytest.raises(PluginError, match="same file name"):
        record_plugins(run, [a / "p.py", b / "p.py"])


def test_register_model_makes_a_forgotten_dataclass_and_checks_the_base():
    try:
        @register_model("test-plugins-undecorated")
        class Undecorated(ModelKind):  # no @dataclass: register_model makes one
            width: int = setting(3, "A width.")

            def build(self, *, input_size, n_classes, key):
                raise NotImplementedError

        assert Undecorated().width == 3 and Undecorated(width=5).width == 5
        with pytest.raises(TypeError, match="ModelKind"):
            register_model("test-plugins-not-a-kind")(dict)
        assert eqprop.register_model is register_model
    finally:
        MODELS.unregister("test-plugins-undecorated")
