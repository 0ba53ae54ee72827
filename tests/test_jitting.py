"""eqprop.jitting.jit: eqx.filter_jit's semantics, and programs released with the
function (a process that builds hundreds of runs must not keep every one compiled)."""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqprop.jitting import MAP_WARN_SHARE, jit, memory_maps


def test_arrays_are_traced_and_every_other_leaf_is_static():
    traces = []

    def f(x, scale, act=jnp.tanh, *, shift=0.0):
        traces.append((scale, act, shift))
        return {"y": act(x) * scale + shift, "scale": scale, "name": act.__name__}

    g = jit(f)
    x = jnp.linspace(-1.0, 1.0, 5)
    out = g(x, 2.0)
    np.testing.assert_allclose(out["y"], np.tanh(np.linspace(-1, 1, 5)) * 2.0, rtol=1e-12)
    assert out["scale"] == 2.0 and out["name"] == "tanh"  # non-array outputs come back as is
    g(x + 1.0, 2.0)  # new array values: no new trace
    g(np.ones(5), 2.0)  # a numpy array is traced too
    assert len(traces) == 1
    np.testing.assert_allclose(g(x, 3.0, jnp.sin, shift=1.0)["y"], np.sin(x) * 3.0 + 1.0, rtol=1e-12)
    assert traces[1:] == [(3.0, jnp.sin, 1.0)]  # a new static value traces anew


def test_the_compiled_function_goes_with_the_wrapper():
    """Dropping the jitted function releases the function it wraps and what it closed
    over (eqx.filter_jit keeps a closure alive in its process-wide cache)."""

    class Big:
        pass

    def make():
        held = Big()

        def step(x):
            return x * 2.0 + (held is not None)

        return jit(step), weakref.ref(held), weakref.ref(step)

    g, held, step = make()
    assert float(g(jnp.ones(()))) == 3.0
    assert held() is not None
    del g
    gc.collect()
    assert held() is None and step() is None


def test_a_training_program_is_released_when_dropped():
    """A built program's step and evaluation, once run and dropped, leave nothing alive:
    a notebook that trains hundreds of configs keeps only the one it holds."""
    from test_train import tiny

    from eqprop.train.program import build_program

    program = build_program(tiny())
    x, y = (jnp.asarray(a[:4]) for a in (program.dataset.x_train, program.dataset.y_train))
    state, _ = program.step(program.state, x, y)
    jax.block_until_ready(state)
    program.eval_batch(state.model, x, y, jnp.ones(4))
    # the functions compiled, closures made for this program (what Equinox's cache kept)
    refs = [weakref.ref(program)] + [weakref.ref(f.__wrapped__)
                                     for f in (program.step, program.eval_batch)]
    del program, state
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


@pytest.mark.parametrize("bad", [{1, 2}, bytearray(b"ab")])
def test_an_unhashable_static_argument_is_a_clear_error(bad):
    with pytest.raises((TypeError, ValueError), match="hash"):
        jit(lambda x, s: x)(jnp.ones(()), bad)


@pytest.mark.skipif(memory_maps() is None, reason="reads /proc/self/maps (Linux)")
def test_training_again_in_one_process_holds_no_more_compiled_programs(tmp_path):
    """Every program a run compiled is unmapped once the run is over (Linux: counted in
    /proc/self/maps; each loaded program maps regions of its own)."""
    from test_train import tiny

    from eqprop.train import train

    counts = []
    for name in "abc":
        train(tiny(), tmp_path / name, progress=False)
        gc.collect()
        counts.append(memory_maps()[0])
    assert counts[2] - counts[1] < 20, counts  # a run left its programs: ~100 more each


def test_a_run_in_a_process_near_the_map_limit_is_warned(tmp_path, monkeypatch):
    """Injected: a process that maps 80% of vm.max_map_count gets a warning before its
    run (naming the limit and the way out), not a segfault with no message later."""
    from test_train import tiny

    from eqprop import jitting
    from eqprop.guards import EqpropWarning
    from eqprop.train import train

    assert MAP_WARN_SHARE < 0.8
    monkeypatch.setattr(jitting, "memory_maps", lambda: (52424, 65530))
    with pytest.warns(EqpropWarning, match=r"train: this process maps 52424 memory regions of "
                      r"the kernel's limit of 65530 \(vm.max_map_count\).*raise the limit"):
        train(tiny(), tmp_path / "r", progress=False)
    monkeypatch.setattr(jitting, "memory_maps", lambda: (40000, 65530))
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*vm.max_map_count")
        train(tiny(), tmp_path / "s", progress=False)


@pytest.mark.parametrize("maps, released", [(40000, True), (20000, False)])
def test_a_run_first_drops_the_cached_programs_of_a_process_past_half_the_limit(
        maps, released, tmp_path, monkeypatch):
    """Injected: programs cached by module-level jitted functions (diagnostics under a
    sweep of beta kept one per value, +447 maps a run in a review) are dropped before a
    run once the process maps half of vm.max_map_count, and only then."""
    import equinox as eqx
    from test_train import tiny

    from eqprop import jitting
    from eqprop.train import train

    calls = []
    monkeypatch.setattr(jitting, "memory_maps", lambda: (maps, 65530))
    monkeypatch.setattr(eqx, "clear_caches", lambda: calls.append("eqx"))
    monkeypatch.setattr(jax, "clear_caches", lambda: calls.append("jax"))
    train(tiny(), tmp_path / "r", progress=False)
    assert calls == (["eqx", "jax"] if released else [])


@pytest.mark.skipif(memory_maps() is None, reason="reads /proc/self/maps (Linux)")
def test_a_sweep_of_beta_with_diagnostics_holds_no_more_compiled_programs(tmp_path):
    """The per-epoch diagnostics compile per run too: a sweep that changes the estimator
    (a review: +447 maps a run when they were cached process-wide) stays flat."""
    from test_train import tiny

    from eqprop.train import train

    counts = []
    for i in range(3):
        config = tiny(estimator={"beta": 0.1 + 0.01 * i}, diagnostics={"enabled": True},
                      train={"epochs": 1})
        train(config, tmp_path / str(i), progress=False)
        gc.collect()
        counts.append(memory_maps()[0])
    assert counts[2] - counts[1] < 20, counts
