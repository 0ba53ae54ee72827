"""Mixed precision of the dense networks (``[model] compute_dtype``, issue 13 item 4).

- states, fields, parameters and gradients stay float32 under bfloat16/float16 compute,
  and complex states stay complex64 (two real products);
- the field is within the compute dtype's rounding of float32's (and not equal to it:
  the products really are computed in the lower precision);
- hEP's gradient under bfloat16 keeps cosine > 0.99 with the float32 implicit gradient;
- gradcheck compares a mixed-precision model's estimates with the float32-compute
  reference and says so (function and command);
- the configuration key, its choices and its one-line error.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqprop
from eqprop.build import build_model, phase_solvers
from eqprop.cli import main
from eqprop.config import ConfigError, load_config
from eqprop.estimate import free_phase, make_estimator
from eqprop.gradcheck import format_table, gradcheck
from eqprop.metrics import compare
from eqprop.network import MixedPrecisionModel

ROOT = Path(__file__).resolve().parents[1]
F32 = jnp.float32
#: unit roundoff of the compute dtypes (half an ulp at 1)
EPS = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
DYN = phase_solvers(free_steps=300, nudged_steps=150, tol=1e-6, linear_steps=2000, linear_tol=1e-7)


def _net(compute="float32", feedback="tied"):
    kw = dict(asymmetry_angle=30.0) if feedback == "untied" else {}
    return eqprop.layered([16, 32, 24, 5], key=jax.random.PRNGKey(0), feedback=feedback,
                          compute_dtype=compute, **kw)


def _batch():
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 16), F32)
    return x, jnp.arange(8) % 5


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_states_parameters_and_gradients_stay_float32(compute):
    m = _net(compute)
    assert isinstance(m, MixedPrecisionModel) and m.compute_dtype == compute
    x, y = _batch()
    free = jax.jit(lambda m, x: free_phase(m, x, DYN.free))(m, x)
    assert {v.dtype for v in free.u.values()} == {jnp.dtype(F32)}
    assert {v.dtype for v in m.field(free.u, m.prepare(x)).values()} == {jnp.dtype(F32)}
    assert {v.dtype for v in jax.tree.leaves(eqprop.network.parameters(m))} == {jnp.dtype(F32)}
    g, _ = make_estimator("hep", DYN, beta=0.5, points=4)(m, x, y, free, jax.random.PRNGKey(0))
    assert {v.dtype for v in jax.tree.leaves(g)} == {jnp.dtype(F32)}
    z = {p: (v + 0.1j * v).astype(jnp.complex64) for p, v in free.u.items()}
    assert {v.dtype for v in m.field(z, m.prepare(x)).values()} == {jnp.dtype(jnp.complex64)}


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
@pytest.mark.parametrize("feedback", ["tied", "untied"])
def test_field_within_the_compute_dtypes_rounding_of_float32s(compute, feedback):
    """|F_low - F_32| <= 3 eps (|x| |W_in| + sum |a| |W|) elementwise (each operand rounded
    once, relative error eps), real and complex; and F_low != F_32 (no silent float32)."""
    m32, low = _net("float32", feedback), _net(compute, feedback)
    x, _ = _batch()
    u = jax.tree.map(lambda v: 2.0 * v, free_phase(m32, x, DYN.free).u)  # an arbitrary state
    for z in (u, {p: (v + 0.3j * v).astype(jnp.complex64) for p, v in u.items()}):
        f32, flow = m32.field(z, m32.prepare(x)), low.field(z, low.prepare(x))
        absm = m32.with_compute_dtype("float32")
        # |x| |W_in| + sum |a| |W|: the field of the absolute values, without biases or -u
        absm = jax.tree.map(jnp.abs, absm)
        a_abs = {p: jnp.abs(v) for p, v in m32.activity(z).items()}
        drive = absm.prepare(jnp.abs(x))
        scale = absm.interaction(a_abs, drive)
        scale = {p: scale[p] - jnp.abs(m32.biases[p]) for p in scale}
        worst = max(float(jnp.max(jnp.abs(flow[p] - f32[p]) / scale[p])) for p in f32)
        assert worst <= 3 * EPS[compute], worst
        assert max(float(jnp.max(jnp.abs(flow[p] - f32[p]))) for p in f32) > 0


def test_hep_under_bfloat16_keeps_cosine_with_the_float32_implicit_gradient():
    m32, m16 = _net("float32"), _net("bfloat16")
    x, y = _batch()
    relax = jax.jit(lambda m, x: free_phase(m, x, DYN.free))
    g_ref, _ = make_estimator("implicit", DYN)(m32, x, y, relax(m32, x), None)
    g_hep, _ = make_estimator("hep", DYN, beta=0.5, points=6)(m16, x, y, relax(m16, x),
                                                             jax.random.PRNGKey(0))
    cos = compare(g_hep, g_ref)["total"]["cosine"]
    assert cos > 0.99, cos


def test_gradcheck_compares_with_the_float32_reference_and_says_so():
    x, y = _batch()
    m16 = _net("bfloat16")
    est = {"implicit": make_estimator("implicit", DYN)}
    r16, r32 = gradcheck(m16, x, y, est, DYN), gradcheck(_net("float32"), x, y, est, DYN)
    assert r16["precision"] == {"estimates": "bfloat16", "reference": "float32"}
    assert "precision" not in r32 and "reference_free" not in r32["relaxation"]
    assert r16["relaxation"]["reference_free"]["finite"]
    # float32 against itself is exact; bfloat16's implicit against the float32 reference is not
    assert r32["implicit"]["total"]["relative_error"] == 0.0
    assert 0 < r16["implicit"]["total"]["relative_error"] < 0.05
    assert r16["implicit"]["total"]["cosine"] > 0.999
    assert "mixed precision: the estimates computed in bfloat16" in format_table(r16)
    assert "mixed precision" not in format_table(r32)


def test_the_configuration_key(capsys):
    cfg = load_config(ROOT / "configs" / "digits-quick.toml", ['model.compute_dtype="bfloat16"'])
    m = build_model(cfg, input_size=64, n_classes=10, key=jax.random.PRNGKey(0))
    assert m.compute_dtype == "bfloat16"
    assert build_model(load_config(ROOT / "configs" / "digits-quick.toml"), input_size=64, n_classes=10,
                       key=jax.random.PRNGKey(0)).compute_dtype == "float32"
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "digits-quick.toml", ['model.compute_dtype="int8"'])
    msg = str(err.value)
    assert msg.startswith("model.compute_dtype: ") and "'bfloat16'" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        eqprop.layered([4, 5, 3], key=jax.random.PRNGKey(0), compute_dtype="float64")
    # the command: the mixed-precision estimate against the float32 reference, said so
    assert main(["gradcheck", str(ROOT / "configs" / "digits-quick.toml"), "--set",
                 'model.compute_dtype="bfloat16"', "--estimator", "hep:points=4"]) == 0
    out = capsys.readouterr().out
    assert "mixed precision: the estimates computed in bfloat16" in out
    assert "reference's free phase (float32)" in out


def test_building_a_run_sets_float32_products_unless_the_user_chose_a_precision():
    """The products a network does not make itself (a plugin's plain ``@``, lineax's in
    the exact references) follow JAX's process default, which on a GPU rounds float32
    operands to TensorFloat-32: build_model and the trainer set it to ``highest``, and
    keep a precision the user set."""
    from eqprop.build import configure_numerics

    cfg = load_config(ROOT / "configs" / "digits-quick.toml")
    before = jax.config.jax_default_matmul_precision
    try:
        jax.config.update("jax_default_matmul_precision", None)
        build_model(cfg, input_size=64, n_classes=10, key=jax.random.PRNGKey(0))
        assert jax.config.jax_default_matmul_precision == "highest"
        jax.config.update("jax_default_matmul_precision", "tensorfloat32")
        configure_numerics(cfg)
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
    finally:
        jax.config.update("jax_default_matmul_precision", before)
