"""Pruning (eqprop.pruning): pruned weights stay exactly zero through every optimizer,
each method removes what its paper says, no neuron is disconnected, for every model type."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqprop
from eqprop import pruning as P
from eqprop.network import named_parameters, parameters
from eqprop.settings import SettingError

from table import MODELS_UNDER_TEST

F64 = jnp.float64


def _layered():
    return eqprop.layered([6, 8, 8, 3], key=jax.random.PRNGKey(0), dtype=F64)


@pytest.mark.parametrize("case", MODELS_UNDER_TEST, ids=str)
def test_prunable_weights_of_every_model_type(case):
    """Every model of the shared table has prunable matrices (two or more axes, readout
    excepted), and the masks start full."""
    model = case.make(jax.random.PRNGKey(0))
    masks = P.init_masks(model)
    assert masks, case.id
    named = named_parameters(parameters(model))
    for name, m in masks.items():
        assert m.dtype == bool and m.shape == named[name].shape and bool(jnp.all(m))
        assert named[name].ndim >= 2 and not name.startswith("readout")
    assert P.sparsity(masks)["sparsity"] == 0.0


OPTIMIZERS = {"sgd-momentum": optax.sgd(0.1, momentum=0.9), "adam": optax.adam(0.05),
              "adamw": optax.adamw(0.05, weight_decay=0.1)}


@pytest.mark.parametrize("case,opt", [(c, "sgd-momentum") for c in MODELS_UNDER_TEST]
                         + [(MODELS_UNDER_TEST[0], "adam"), (MODELS_UNDER_TEST[0], "adamw")],
                         ids=lambda v: str(v))
def test_pruned_weights_stay_exactly_zero_through_momentum(case, opt):
    """Momentum built up before pruning must not move a pruned weight afterwards."""
    model = case.make(jax.random.PRNGKey(0))
    tx = P.keep_pruned(OPTIMIZERS[opt])
    state = tx.init(parameters(model))
    grad = jax.tree.map(lambda w: jnp.ones_like(w) if eqx.is_inexact_array(w) else w, parameters(model))
    for _ in range(3):  # momentum and moments accumulate on every weight
        upd, state = tx.update(grad, state, parameters(model))
        model = eqx.apply_updates(model, upd)
    pruner = P.Magnitude(sparsity=0.5)
    model, state = P.prune(pruner, model, state, jax.random.PRNGKey(1), epoch=1, epochs=1)
    masks = P.masks_of(state)
    before = named_parameters(parameters(model))
    sp = P.sparsity(masks, existing=P.connections(model))
    for name, m in masks.items():  # about half of the connections removed, a few kept per column
        assert 0.3 < sp[f"sparsity/{name}"] <= 0.5, name
        assert bool(jnp.all(before[name][~m] == 0))
    for _ in range(3):
        upd, state = tx.update(grad, state, parameters(model))
        model = eqx.apply_updates(model, upd)
    after = named_parameters(parameters(model))
    for name, m in masks.items():
        assert bool(jnp.all(after[name][~m] == 0.0)), name  # exactly zero
        assert bool(jnp.all(after[name][m] != before[name][m])), name  # the kept ones learn


def test_l1_adds_strength_times_sign():
    model = _layered()
    params = parameters(model)
    tx = P.keep_pruned(optax.sgd(1.0), l1=0.25)
    zeros = jax.tree.map(lambda w: jnp.zeros_like(w) if eqx.is_inexact_array(w) else w, params)
    upd, _ = tx.update(zeros, tx.init(params), params)
    named_u, named_w = named_parameters(upd), named_parameters(params)
    for name in P.init_masks(model):
        np.testing.assert_array_equal(named_u[name], -0.25 * jnp.sign(named_w[name]))
    assert bool(jnp.all(named_u["biases.h1"] == 0))  # biases are not prunable


def test_stochastic_pruning_is_the_papers_softmax():
    """p_ij = softmax_i(-|w_ij| / T) over neuron j's live incoming weights, only for
    |w_ij| < tol; a connection is removed where p_ij > u_ij (NumPy transcription)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, (7, 5))
    mask = np.ones((7, 5), bool)
    mask[0, 0] = mask[3, 2] = False
    pr = P.Stochastic(tol=0.02, temperature=0.01)
    p = np.asarray(pr.probabilities(jnp.asarray(w), jnp.asarray(mask)))
    e = np.where(mask, np.exp(-np.abs(w) / 0.01), 0.0)
    ref = e / e.sum(axis=0, keepdims=True)
    ref[~mask | (np.abs(w) >= 0.02)] = 0.0
    np.testing.assert_allclose(p, ref, rtol=1e-12)
    key = jax.random.PRNGKey(3)
    u = np.asarray(jax.random.uniform(key, w.shape, dtype=F64))
    new = np.asarray(pr.select(jnp.asarray(w), jnp.asarray(mask), jnp.ones(w.shape, bool), key, 1, 1))
    np.testing.assert_array_equal(new, mask & ~(ref > u))
    assert (new <= mask).all()
    assert not (~new & mask & (np.abs(w) >= 0.02)).any()  # strong connections are never removed


def test_zhu_gupta_schedule():
    s = lambda t: P.zhu_gupta_sparsity(t, 0.8, start=2, end=6)  # noqa: E731
    assert s(1) == 0.0 and s(2) == 0.0 and s(6) == 0.8 and s(9) == 0.8
    assert s(4) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert all(s(t) <= s(t + 1) for t in range(1, 8))


def test_magnitude_removes_the_smallest_and_never_a_whole_column():
    w = jnp.asarray(np.arange(1, 13, dtype=float).reshape(4, 3))  # column j's entries grow with i
    w = w.at[:, 2].set(1e-3 * jnp.arange(1, 5))  # a column of tiny weights
    pr = P.Magnitude(sparsity=0.5, start=1, end=1)
    m = jnp.ones(w.shape, bool)
    new = P._keep_one_per_column(pr.select(w, m, m, None, 1, 1), m, w)
    # the six smallest are column 2 (4) and w = 1, 2: column 2 keeps its largest
    assert not bool(new[0, 0]) and not bool(new[0, 1]) and bool(new[3, 2])
    assert int(jnp.sum(~new)) == 5 and bool(jnp.all(jnp.any(new, axis=0)))


def test_pruning_never_disconnects_a_neuron():
    """Weights all below tol with a certain removal: each column keeps one connection."""
    w = jnp.full((6, 4), 1e-4).at[2, 1].set(2e-4)
    pr = P.L1(tol=1.0)
    new = P._keep_one_per_column(pr.select(w, jnp.ones(w.shape, bool), jnp.ones(w.shape, bool), None, 1, 1),
                                 jnp.ones(w.shape, bool), w)
    assert bool(jnp.all(jnp.sum(new, axis=0) == 1)) and bool(new[2, 1])


def test_a_directed_networks_absent_entries_are_not_connections():
    """A ConnectedModel (the directed network's mask): pruning keeps absent entries out of
    the masks and counts sparsity over the connections that exist."""
    from eqprop.network import ConnectedModel, directed

    model = directed(3, 6, 2, key=jax.random.PRNGKey(0), connectivity="random", density=0.5,
                     dtype=F64)
    assert isinstance(model, ConnectedModel)
    exist = P.connections(model)["W"]
    n = int(jnp.sum(exist))
    assert 0 < n < exist.size
    tx = P.keep_pruned(optax.sgd(0.1))
    state = tx.init(parameters(model))
    assert P.sparsity(P.masks_of(state), existing=P.connections(model))["sparsity"] == 0.0
    w0 = jnp.abs(model.W)
    model, state = P.prune(P.Magnitude(sparsity=0.5, end=1), model, state, jax.random.PRNGKey(1), 1, 1)
    m = P.masks_of(state)["W"]
    assert not bool(jnp.any(m & ~exist))  # absent entries are never live
    removed = n - int(jnp.sum(m))
    assert removed == pytest.approx(0.5 * n, abs=exist.shape[1])  # half of the connections, give or take one per column
    assert P.sparsity({"W": m}, existing={"W": exist})["sparsity"] == pytest.approx(removed / n)
    # the smallest connections went (a few small ones stay, each the last input of its neuron)
    assert float(jnp.max(w0[exist & ~m])) <= float(jnp.median(w0[m]))
    assert bool(jnp.all(model.W[exist & ~m] == 0))


def test_impossible_target_sparsity_is_a_one_line_error():
    with pytest.raises(SettingError, match="0.8 would disconnect neurons.*at most 0.75") as e:
        P.Magnitude(sparsity=0.8).check({"weights.input->h1": (4, 3)})
    assert e.value.key == "sparsity"
    P.Magnitude(sparsity=0.7).check({"weights.input->h1": (4, 3)})


def test_the_bound_on_sparsity_counts_the_connections_that_exist():
    """A directed net's W: each neuron's incoming connections are those of its mask, not
    the rows of W (a review was told 0.8889 for a net whose neurons have 8 inputs of 9)."""
    exist = np.ones((9, 9), bool)
    np.fill_diagonal(exist, False)  # no self-connections: 8 inputs per neuron
    assert P.most_removable((9, 9)) == pytest.approx(8 / 9)
    assert P.most_removable((9, 9), exist) == pytest.approx(7 / 8)
    with pytest.raises(SettingError, match=r"0.88 would disconnect neurons of W .*at most 0.875$"):
        P.Magnitude(sparsity=0.88).check({"W": (9, 9)}, {"W": exist})
    P.Magnitude(sparsity=0.87).check({"W": (9, 9)}, {"W": exist})
    ragged = exist.copy()
    ragged[:7, 0] = False  # neuron 0 keeps one input of its own: nothing of it to remove
    n = ragged.sum()
    assert P.most_removable((9, 9), ragged) == pytest.approx(1 - 9 / n)
    # stacked seeds (random connectivity differs per seed): the least of them
    assert P.most_removable((9, 9), np.stack([exist, ragged])) == pytest.approx(1 - 9 / n)


def test_a_missed_target_is_said_and_a_met_one_is_not():
    """Magnitude's target can be missed below the bound (a neuron about to lose its last
    input keeps it); the trainer warns with shortfall's phrase, at the final target only."""
    w = jnp.array([[5.0, 0.1], [4.0, 0.2], [3.0, 0.3]])  # column 1 all small: it must keep one
    tx = P.keep_pruned(optax.sgd(0.1))
    model = {"W": w}
    state = tx.init(model)
    prun = P.Magnitude(sparsity=0.5, end=2)
    model, state = P.prune(prun, model, state, jax.random.PRNGKey(0), 2, 2)
    masks = P.masks_of(state)
    # half of 6 = 3 smallest are column 1's three: one of them is kept, so 2 of 6 removed
    assert int(jnp.sum(~masks["W"])) == 2
    assert P.shortfall(prun, masks, {}, 2, 2) == ["W at sparsity 0.333 of the 0.500 targeted"]
    assert P.shortfall(prun, masks, {}, 1, 4) == []  # not yet at the final target
    assert P.shortfall(P.Magnitude(sparsity=1 / 3, end=2), masks, {}, 2, 2) == []
    assert P.shortfall(P.L1(), masks, {}, 2, 2) == []  # no target to miss


def test_prune_stacked_seeds_independently():
    """K = 2 stacked seeds: each seed's masks come from its own weights and key."""
    from eqprop.train.step import stack

    m1 = _layered()
    m2 = eqprop.layered([6, 8, 8, 3], key=jax.random.PRNGKey(7), dtype=F64)
    model = stack([m1, m2])
    tx = P.keep_pruned(optax.sgd(0.1))
    state = jax.vmap(tx.init)(parameters(model))
    model, state = P.prune(P.Magnitude(sparsity=0.5), model, state, jax.random.PRNGKey(0), 1, 1, seeds=2)
    masks = P.masks_of(state)
    for i, mi in enumerate((m1, m2)):
        _, si = P.prune(P.Magnitude(sparsity=0.5), mi, tx.init(parameters(mi)), jax.random.PRNGKey(0), 1, 1)
        for name, m in P.masks_of(si).items():
            np.testing.assert_array_equal(masks[name][i], m)
    sp = P.sparsity(masks, seeds=2)
    assert len(sp["sparsity"]) == 2 and sp["sparsity"][0] == pytest.approx(sp["sparsity"][1], abs=0.05)
    assert set(sp) == {"sparsity", "sparsity/weights.input->h1", "sparsity/weights.h1->h2",
                       "connections", "connections_removed"}
    n = sum(int(m[0].size) for m in masks.values())
    assert sp["connections"] == [n, n]
    assert sp["connections_removed"] == [sum(int(jnp.sum(~v[i])) for v in masks.values())
                                         for i in range(2)]


# ---------------------------------------------------------------------------
# In training: [pruning], checkpoints, resume, metrics, errors
# ---------------------------------------------------------------------------

TINY = {
    "data": {"name": "synthetic", "batch_size": 32},
    "model": {"sizes": [16, 8, 8, 4]},
    "dynamics": {"free_steps": 15, "nudged_steps": 15},
    "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9},
    "train": {"epochs": 3, "max_batches": 3, "seed": 3, "seeds": 2},
    "pruning": {"method": "stochastic", "tol": 0.3, "temperature": 0.05},
}


def _tiny(**updates):
    from eqprop.config import parse_config, with_updates

    return with_updates(parse_config(TINY), **updates)


def _final(run_dir):
    from eqprop.train import load_run

    _, _, model, meta = load_run(run_dir)
    return model, meta


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    from eqprop.train import train

    out = tmp_path_factory.mktemp("pruned") / "run"
    train(_tiny(), out, progress=False)
    return out


def test_training_prunes_and_logs_sparsity(pruned_run):
    from eqprop.train import RunDir, load_run

    recs = RunDir(pruned_run).read_metrics()
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    s = [r["sparsity"] for r in recs]
    assert 0 < s[0] <= s[1] <= s[2] < 1  # the removed stay removed
    assert len(recs[-1]["per_seed"]["sparsity"]) == 2
    assert {"sparsity/weights.input->h1", "sparsity/weights.h1->h2"} <= recs[-1].keys()
    from eqprop.train.report import report

    md = report([pruned_run], pruned_run.parent / "report").read_text()
    assert "| sparsity |" in md and f"| {100 * recs[-1]['sparsity']:.2f}% |" in md
    # the checkpoint holds the masks, and the model's pruned weights are exactly zero
    from eqprop.train.resume import load_checkpoint

    _, program, model, _ = load_run(pruned_run)
    masks = P.masks_of(load_checkpoint(RunDir(pruned_run), "latest", program)[1])
    named = named_parameters(parameters(model))
    for name, m in masks.items():
        assert m.shape[0] == 2
        assert bool(jnp.all(named[name][~m] == 0.0))
        removed = 1 - float(jnp.mean(m))
        assert removed == pytest.approx(recs[-1][f"sparsity/{name}"], abs=1e-9)
    # the summary counts them (a review found only a fraction per epoch)
    from eqprop.train import format_summary

    summary = RunDir(pruned_run).read_summary()
    assert summary["connections_removed"] == [sum(int(jnp.sum(~m[i])) for m in masks.values())
                                              for i in range(2)]
    assert summary["connections"] == [sum(int(m[0].size) for m in masks.values())] * 2
    lo, hi = sorted(summary["connections_removed"])
    line = next(ln for ln in format_summary(summary).splitlines() if ln.startswith("pruning"))
    assert line == (f"pruning    sparsity {recs[-1]['sparsity']:.3f} (mean over 2 seeds): "
                    f"{lo if lo == hi else f'{lo}-{hi}'} of {summary['connections'][0]} connections "
                    "removed per seed")


def test_zeros_a_model_does_not_declare_are_said_before_pruning_counts_them():
    """A plugin's fixed structure held as zeros, without ConnectedModel: pruning would
    count them as connections it removes (a review's run said sparsity 0.45 with none of
    its edges pruned); the trainer warns. A declared structure (directed net) does not."""
    import dataclasses
    import warnings

    from eqprop.guards import EqpropWarning
    from eqprop.train import build_program
    from eqprop.train.loop import _warn_undeclared_zeros

    program = build_program(_tiny(pruning={"method": "magnitude", "sparsity": 0.5},
                                  train={"seeds": 1}))
    w = program.model.weights["input->h1"]
    structured = eqx.tree_at(lambda m: m.weights["input->h1"], program.model, w.at[:, ::2].set(0.0))
    zeros = int(jnp.sum(structured.weights["input->h1"] == 0))
    with pytest.warns(EqpropWarning, match=rf"weights.input->h1 {zeros} of {w.size}\); pruning "
                      r"counts them as connections it removes: declare the structure with "
                      r"eqprop.network.ConnectedModel.connections\(\)"):
        _warn_undeclared_zeros(dataclasses.replace(
            program, state=eqx.tree_at(lambda st: st.model, program.state, structured)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_undeclared_zeros(program)  # no zeros
        directed = eqprop.network.DirectedNetwork  # absent entries declared: nothing to say
        assert issubclass(directed, eqprop.network.ConnectedModel)
        assert P.undeclared_zeros(build_program(_directed_config()).model) == {}


def _directed_config():
    from eqprop.config import load_config

    return load_config("xor-deep", ["pruning.method=\"magnitude\"", "pruning.sparsity=0.5"])


def test_resume_prunes_exactly_as_uninterrupted(pruned_run, tmp_path):
    from eqprop.config import load_config
    from eqprop.train import train, with_epochs

    out = tmp_path / "run"
    train(_tiny(train={"epochs": 2}), out, progress=False)
    train(with_epochs(load_config(out / "config.toml"), 3), out, resume=True, progress=False)
    a, _ = _final(out)
    b, _ = _final(pruned_run)
    na, nb = named_parameters(parameters(a)), named_parameters(parameters(b))
    for k in na:
        np.testing.assert_array_equal(np.asarray(na[k]) == 0, np.asarray(nb[k]) == 0, err_msg=k)
        np.testing.assert_allclose(na[k], nb[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_pruning_config_errors_are_one_line():
    from eqprop.config import ConfigError
    from eqprop.train import build_program

    with pytest.raises(ConfigError, match=r"^pruning\.sparsity: 0\.95 would disconnect neurons of "
                                          r"weights\.h1->h2 \(each keeps one of its incoming "
                                          r"connections\): at most 0\.875$"):
        build_program(_tiny(pruning={"method": "magnitude", "sparsity": 0.95}))
    with pytest.raises(ConfigError, match="pruning.method: must be one of 'none', 'stochastic', "
                                          "'magnitude', 'l1'"):
        _tiny(pruning={"method": "prune-it"})
    with pytest.raises(ConfigError, match="pruning.sparsity: belongs to pruning method 'magnitude'"):
        _tiny(pruning={"method": "l1", "sparsity": 0.5})
    with pytest.raises(ConfigError, match=r"^pruning\.end: 2 is before start = 4"):
        _tiny(pruning={"method": "magnitude", "start": 4, "end": 2})
    with pytest.raises(ConfigError, match=r"^pruning\.start: 5 is after the last epoch \(3\)"):
        build_program(_tiny(pruning={"method": "magnitude", "start": 5}))


def test_a_plugin_parameter_with_more_than_two_axes_is_warned_about_before_pruning():
    """Pruning reads the last axis as the receiving neuron; a review's (C, C, K) ring
    kernel had its offsets there, silently. eqprop's own kernels (HWIO) are not warned of."""
    import types

    import equinox as eqx
    import jax.numpy as jnp

    from eqprop.guards import EqpropWarning
    from eqprop.pruning import Magnitude
    from eqprop.train.loop import _warn_many_axes

    class Ring(eqx.Module):  # a plugin's model: defined outside eqprop
        k: jnp.ndarray
        w: jnp.ndarray

    program = types.SimpleNamespace(pruner=Magnitude(), seeds=1,
                                    model=Ring(k=jnp.ones((2, 2, 3)), w=jnp.ones((4, 5))))
    with pytest.warns(EqpropWarning, match=r"^pruning: k \(2, 2, 3\): more than two axes; the last "
                      r"is taken as the receiving neuron"):
        _warn_many_axes(program)
    stacked = types.SimpleNamespace(pruner=Magnitude(), seeds=3,
                                    model=Ring(k=jnp.ones((3, 4, 5)), w=jnp.ones((3, 4, 5))))
    with pytest.warns(EqpropWarning) as caught:  # seeds stacked: (4, 5) is a matrix
        _warn_many_axes(stacked)
        import warnings
        warnings.warn("sentinel", EqpropWarning)
    assert [str(w.message) for w in caught] == ["sentinel"]
