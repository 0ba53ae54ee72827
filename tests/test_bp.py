"""The backpropagation baseline (``[estimator] name = "bp"``, issue 13 item 3).

- the gradient is ``jax.grad`` of a hand-written MLP with the same weights (a transposed
  matrix, a wrong sign or a feedback weight in the forward pass fails it);
- untied feedback gets exactly zero gradient, and the forward gradient is the tied
  twin's;
- ``feedforward`` is the free fixed point of the network with its feedback removed (a
  DAG: the relaxation reaches it exactly), for a layered net and a graph with a skip;
- a graph whose forward projections form a cycle, and a model without the capability,
  are refused with one line;
- the train step and evaluation read the forward pass (a bp-trained network is judged by
  what it was trained for), and digits-quick trained by bp exceeds 90% in 5 epochs;
- ``eqprop gradcheck`` refuses bp (it is not an estimate of the recurrent gradient).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqprop
from eqprop.build import phase_solvers
from eqprop.cli import main
from eqprop.config import ConfigError, load_config
from eqprop.estimate import BackProp, feedforward_loss, free_phase, make_estimator
from eqprop.gradcheck import gradcheck
from eqprop.network import FeedForwardModel
from eqprop.solvers import FixedPoint
from eqprop.train import build_program
from eqprop.update import init_optimizer, make_train_step

ROOT = Path(__file__).resolve().parents[1]
F64 = jnp.float64
BATCH = 5


def _batch(n_in: int, n_classes: int = 3):
    x = jax.random.uniform(jax.random.PRNGKey(1), (BATCH, n_in), F64, -1.0, 1.0)
    return x, jnp.arange(BATCH) % n_classes


def _bp_grad(model, x, y):
    est = make_estimator("bp")
    est.check(model)
    return eqx.filter_jit(lambda m: est(m, x, y, est.inference(m, x, None), None)[0])(model)


def _sigmoid4(u):
    return 1.0 / (1.0 + jnp.exp(-(4.0 * u - 2.0)))


def _mlp_loss(p, x, y):
    """The 5-7-6-3 MLP written out: ``u1 = x W1 + b1``, ``u2 = s(u1) W2 + b2``, logits
    ``s(u2) V + c``, mean softmax cross-entropy."""
    a1 = _sigmoid4(x @ p["W1"] + p["b1"])
    a2 = _sigmoid4(a1 @ p["W2"] + p["b2"])
    logits = a2 @ p["V"] + p["c"]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[jnp.arange(len(y)), y])


def _mlp_params(m):
    return {"W1": m.weights["input->h1"], "b1": m.biases["h1"], "W2": m.weights["h1->h2"],
            "b2": m.biases["h2"], "V": m.readout.weight, "c": m.readout.bias}


def test_gradient_is_autodiff_of_a_hand_written_mlp():
    """Non-square layers (5-7-6, 3 classes): a transpose would not even have the shape,
    and a sign error or a missing activation changes the values."""
    m = eqprop.layered([5, 7, 6, 3], key=jax.random.PRNGKey(0), dtype=F64)
    x, y = _batch(5)
    g = _bp_grad(m, x, y)
    want = jax.grad(_mlp_loss)(_mlp_params(m), x, y)
    got = _mlp_params(g)
    for k in want:
        assert got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert float(jnp.linalg.norm(want["W1"])) > 1e-3  # the test is not vacuous
    # the loss it differentiates is the MLP's
    np.testing.assert_allclose(feedforward_loss(m, x, y), _mlp_loss(_mlp_params(m), x, y), rtol=1e-13)


def test_untied_feedback_gets_zero_gradient_and_forward_is_the_tied_twins():
    tied = eqprop.layered([5, 7, 6, 3], key=jax.random.PRNGKey(0), dtype=F64)
    untied = eqprop.layered([5, 7, 6, 3], key=jax.random.PRNGKey(3), dtype=F64, feedback="untied",
                            asymmetry_angle=90.0)
    # the untied network with the tied one's forward weights, biases and readout
    untied = eqx.tree_at(lambda n: (n.weights["input->h1"], n.weights["h1->h2"], n.biases, n.readout),
                         untied, (tied.weights["input->h1"], tied.weights["h1->h2"], tied.biases,
                                  tied.readout))
    x, y = _batch(5)
    gt, gu = _bp_grad(tied, x, y), _bp_grad(untied, x, y)
    assert set(gu.weights) == {"input->h1", "h1->h2", "h2->h1"}
    assert float(jnp.max(jnp.abs(gu.weights["h2->h1"]))) == 0.0
    for k in ("input->h1", "h1->h2"):
        np.testing.assert_allclose(gu.weights[k], gt.weights[k], rtol=1e-12)


def _without_feedback(model):
    """The same network (same parameters) with every feedback removed: untied forward
    projections only (for an untied model, its feedback matrices dropped)."""
    fwd = model.forward_projections()
    bare = dataclasses.replace(
        model, projections=tuple(e._replace(tied=False) for e in fwd),
        weights={e.name: model.weights[e.name] for e in fwd})
    assert not bare.feedback_pairs() and not bare.symmetric
    return bare


@pytest.mark.parametrize("make", [
    lambda: eqprop.layered([5, 7, 6, 4, 3], key=jax.random.PRNGKey(0), dtype=F64),
    lambda: eqprop.graph({"h1": 8, "out": 5}, [["input", "h1"], ["h1", "out"], ["out", "h1"],
                                               ["input", "out"]], input_size=5, n_classes=3,
                         key=jax.random.PRNGKey(0), feedback="untied", asymmetry_angle=45.0, dtype=F64),
], ids=["layered-3-hidden-tied", "graph-untied-skip"])
def test_feedforward_is_the_fixed_point_without_feedback(make):
    """A network without feedback is a DAG: its free fixed point is one forward pass
    (reached exactly after depth synchronous steps). The feed-forward counterpart of the
    recurrent network is that fixed point; the recurrent network's own fixed point is not."""
    model = make()
    x, _ = _batch(5)
    ff = model.feedforward(model.prepare(x))
    bare = _without_feedback(model)
    free = free_phase(bare, x, FixedPoint(steps=50, tol=1e-13))
    assert float(jnp.max(free.stats.residual)) < 1e-13
    for p in ff:
        np.testing.assert_allclose(ff[p], free.u[p], rtol=1e-12, atol=1e-13, err_msg=p)
    # and differs from the recurrent network's fixed point (the feedback matters)
    rec = free_phase(model, x, FixedPoint(steps=400, tol=1e-12)).u
    assert max(float(jnp.max(jnp.abs(rec[p] - ff[p]))) for p in ff) > 1e-3


def test_forward_order_and_cycles():
    loop = eqprop.graph({"l1": 4, "l2": 4, "out": 3}, [["input", "l1"], ["l1", "l2"], ["l2", "out"],
                                                      ["out", "l1"]],
                        input_size=5, n_classes=3, key=jax.random.PRNGKey(0), feedback="untied")
    with pytest.raises(ValueError) as err:
        make_estimator("bp").check(loop)
    msg = str(err.value)
    assert msg.startswith("'bp' needs a feed-forward counterpart") and "\n" not in msg
    assert "cycle (l2 -> out -> l1 -> l2)" in msg and "model.projections" in msg
    # feedback listed after its forward projection is feedback; order follows the forward graph
    g = eqprop.graph({"b": 4, "a": 4}, [["input", "a"], ["a", "b"], ["b", "a"]], input_size=5,
                     n_classes=3, output="b", key=jax.random.PRNGKey(0), feedback="untied")
    assert g.forward_order() == ("a", "b")
    assert [e.name for e in g.forward_projections()] == ["input->a", "a->b"]


def test_models_without_the_capability_are_refused_in_one_line(tmp_path):
    directed = eqprop.network.directed(4, 3, 2, key=jax.random.PRNGKey(0), readout="softmax")
    assert not isinstance(directed, FeedForwardModel)
    with pytest.raises(ValueError, match=r"^'bp' needs a model with a feed-forward counterpart .*"
                                         r"'conv'\); this model has none$"):
        make_estimator("bp").check(directed)
    # through the configuration: one line naming estimator.name
    cfg = load_config(ROOT / "configs" / "xor-directed-hep.toml", ['estimator.name="bp"'])
    with pytest.raises(ConfigError) as err:
        build_program(cfg)
    assert str(err.value).startswith("estimator.name: 'bp' needs") and "\n" not in str(err.value)


def test_train_step_reads_the_forward_pass_and_descends():
    """The step's metrics are the forward pass's (loss = feedforward_loss, one 'step',
    residual 0), and a few plain SGD steps lower the feed-forward loss."""
    m = eqprop.layered([5, 7, 6, 3], key=jax.random.PRNGKey(0), dtype=F64)
    x, y = _batch(5)
    est = make_estimator("bp")
    opt = optax.sgd(2.0)
    step = make_train_step(est, opt, solver=FixedPoint(steps=3))  # the free solver is not used
    state = init_optimizer(opt, m)
    before = float(feedforward_loss(m, x, y))
    m1, state, metrics = step(m, state, x, y, jax.random.PRNGKey(0))
    assert float(metrics["loss"]) == pytest.approx(before, rel=1e-12)
    assert int(metrics["free_steps"]) == 1 and float(metrics["residual"]) == 0.0
    for _ in range(20):
        m1, state, metrics = step(m1, state, x, y, jax.random.PRNGKey(0))
    assert float(feedforward_loss(m1, x, y)) < 0.5 * before, float(feedforward_loss(m1, x, y))


def test_digits_quick_with_bp_trains_and_evaluates_by_the_forward_pass(tmp_path, capsys):
    """digits-quick.toml with estimator.name = "bp", 5 epochs: > 90% test accuracy, and
    `eqprop eval` reports the forward pass's accuracy (the run's final test accuracy),
    not the recurrent network's."""
    out = tmp_path / "bp"
    assert main(["train", str(ROOT / "configs" / "digits-quick.toml"), "--set",
                 'estimator.name="bp"', "--epochs", "5", "--out", str(out), "-q"]) == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test_acc"] > 0.90
    assert last["free_steps_mean"] == 1.0 and last["residual_mean"] == 0.0
    # eval of the checkpoint: the same figure, from the forward pass
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"{100 * last['test_acc']:.2f}%" in shown
    # no relaxation to report (it said "free phase: 1.0 steps, residual 0")
    assert "inference (bp): one feed-forward pass, no relaxation" in shown and "free phase" not in shown


def test_gradcheck_refuses_bp_in_one_line(tmp_path, capsys):
    m = eqprop.layered([5, 7, 6, 3], key=jax.random.PRNGKey(0), dtype=F64)
    x, y = _batch(5)
    dyn = phase_solvers(free_steps=20, nudged_steps=5, linear_steps=50)
    with pytest.raises(ValueError, match=r"^estimator SPEC 'bp': 'bp' is not an estimate of the "
                                         r"recurrent network's gradient"):
        gradcheck(m, x, y, {"bp": BackProp()}, dyn)
    quick = str(ROOT / "configs" / "digits-quick.toml")
    # no -e: the config's estimator is bp; the error names the config key, not a SPEC never given
    assert main(["gradcheck", quick, "--set", 'estimator.name="bp"']) == 2
    err = capsys.readouterr().err
    assert "estimator.name = 'bp' trains the feed-forward pass" in err and "SPEC" not in err
    assert len(err.strip().splitlines()) == 1
    # -e bp given: the error quotes that SPEC
    assert main(["gradcheck", quick, "-e", "bp"]) == 2
    err = capsys.readouterr().err
    assert "estimator SPEC 'bp'" in err and "not an estimate of the recurrent network's gradient" in err
    assert len(err.strip().splitlines()) == 1
    # a bp config checked with -e: the asymmetry diagnostics are the first SPEC's, and say so
    assert main(["gradcheck", quick, "--set", 'estimator.name="bp"', "-e", "ep", "-e", "exact-nudge",
                 "--json", str(tmp_path / "g.json")]) == 0
    table = capsys.readouterr().out
    assert "asymmetry diagnostics (ep: the config's 'bp' has no fixed point" in table
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["alignment"] < 1 - 1e-6  # ep's finite nudge, not the exact one's (1 by definition)


def test_the_bp_baseline_refuses_homeostasis_and_says_untied_feedback_is_unused(recwarn):
    """A fresh user's `--set homeostasis.coef=1 --set estimator.name=bp` ran 15x slower
    for a penalty BP never feels; untied feedback under BP stays at its initialisation."""
    from eqprop.guards import EqpropWarning

    base = ROOT / "configs" / "digits-quick.toml"
    with pytest.raises(ConfigError, match=r"^homeostasis\.coef: .*estimator 'bp' never runs"):
        build_program(load_config(base, ["estimator.name=\"bp\"", "homeostasis.coef=1.0"]))
    build_program(load_config(base, ["estimator.name=\"bp\"", "model.feedback=\"untied\""]))
    (w,) = [w for w in recwarn.list if issubclass(w.category, EqpropWarning)]
    assert str(w.message).startswith("model.feedback: estimator 'bp' never uses the untied feedback")
    recwarn.clear()
    build_program(load_config(base, ["estimator.name=\"bp\""]))  # tied: nothing to say
    assert not [w for w in recwarn.list if issubclass(w.category, EqpropWarning)]


def test_complex_nudges_on_a_real_only_activation_name_both_keys():
    base = ROOT / "configs" / "digits-quick.toml"
    with pytest.raises(ConfigError, match=r"^estimator\.name, model\.activation: estimator 'hep' "
                                          r"needs complex nudges"):
        build_program(load_config(base, ["estimator.name=\"hep\"", "estimator.points=3",
                                         "model.activation=\"hard-sigmoid\""]))


def test_homeostasis_on_tied_feedback_is_warned_as_a_penalty_that_is_zero(recwarn):
    """A fresh user's `--set homeostasis.coef=1` on a tied net ran 3x slower for a penalty
    that is identically zero (the Jacobian of an energy-based net is symmetric)."""
    from eqprop.guards import EqpropWarning

    base = ROOT / "configs" / "digits-quick.toml"

    def said():
        out = [str(w.message) for w in recwarn.list if issubclass(w.category, EqpropWarning)]
        recwarn.clear()
        return out

    build_program(load_config(base, ["homeostasis.coef=1.0"]))
    (msg,) = said()
    assert msg.startswith("homeostasis.coef: the network's feedback is tied") and "identically zero" in msg
    build_program(load_config(base, ["homeostasis.coef=1.0", "model.feedback=\"untied\""]))
    assert said() == []  # untied: the penalty is what homeostasis is for
    # and the claim itself: the penalty of the tied net is zero to rounding
    from eqprop.homeostasis import probe_loss

    def loss(extra):
        p = build_program(load_config(base, ["homeostasis.coef=1.0", *extra]))
        m = p.model
        d = m.prepare(jnp.asarray(p.dataset.x_train[:8]))
        a = jax.tree.map(lambda t: t + 0.3, m.activity(m.init_state(d)))
        return abs(float(probe_loss(m, a, d, jax.random.PRNGKey(0), 4)))

    assert loss([]) < 1e-5 * loss(["model.feedback=\"untied\"", "model.asymmetry_angle=90.0"])  # rounding
