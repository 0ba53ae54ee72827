"""eqprop.complexmath: the float32 sin/cos and complex64 exp against NumPy in float64, their
derivatives, and the other dtypes passed to jnp unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqprop.complexmath import cexp, sincos


def _angles() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(-20.0, 20.0, 40001), rng.uniform(-1e4, 1e4, 20000),
                           [0.0, np.pi, -np.pi, np.pi / 2, 2 * np.pi]]).astype(np.float32)


def test_float32_sin_and_cos_are_within_1e_6_of_the_exact_values():
    y = _angles()
    s, c = (np.asarray(v, np.float64) for v in sincos(jnp.asarray(y)))
    exact = y.astype(np.float64)
    assert s.dtype == c.dtype and sincos(jnp.asarray(y))[0].dtype == jnp.float32
    np.testing.assert_allclose(s, np.sin(exact), rtol=0, atol=1e-6)
    np.testing.assert_allclose(c, np.cos(exact), rtol=0, atol=1e-6)
    small = np.abs(y) < 4
    np.testing.assert_allclose(s[small], np.sin(exact[small]), rtol=0, atol=5e-7)
    # and not merely close: a sign, a swapped pair or a quarter-period shift fail by O(1)
    assert np.max(np.abs(s - np.cos(exact))) > 1.0


def test_complex64_exp_is_within_1e_6_relative_of_the_exact_value():
    rng = np.random.default_rng(1)
    z = (rng.normal(size=20000) * 4 + 1j * rng.normal(size=20000) * 30).astype(np.complex64)
    e = np.asarray(cexp(jnp.asarray(z)), np.complex128)
    exact = np.exp(z.astype(np.complex128))
    assert cexp(jnp.asarray(z)).dtype == jnp.complex64
    np.testing.assert_array_less(np.abs(e - exact) / np.abs(exact), 1e-6)
    assert np.max(np.abs(e - np.exp(np.conj(z).astype(np.complex128))) / np.abs(exact)) > 1e-2  # not conj


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128, jnp.float32])
def test_other_dtypes_are_jnp_s_functions(dtype):
    z = jnp.asarray([0.3, -1.2, 4.0], dtype)
    if dtype != jnp.float32:  # the exact references and gradient checks run in these
        np.testing.assert_array_equal(np.asarray(cexp(z)), np.asarray(jnp.exp(z)))
    if not jnp.iscomplexobj(z) and dtype != jnp.float32:
        s, c = sincos(z)
        np.testing.assert_array_equal(np.asarray(s), np.asarray(jnp.sin(z)))
        np.testing.assert_array_equal(np.asarray(c), np.asarray(jnp.cos(z)))
    if dtype == jnp.float32:  # a real float32 exp: jnp's
        np.testing.assert_array_equal(np.asarray(cexp(z)), np.asarray(jnp.exp(z)))


def test_the_derivatives_are_the_exact_relations_on_the_values():
    """Forward and reverse mode: d exp(z) = exp(z) dz (holomorphic: complex-linear in dz),
    d sin = cos dy, d cos = -sin dy."""
    z = jnp.asarray([0.5 + 2.0j, -1.0 - 7.0j, 3.0 + 0.1j], jnp.complex64)
    for dz in (jnp.ones_like(z), 1j * jnp.ones_like(z), jnp.asarray([1 + 2j, -3j, 0.5], jnp.complex64)):
        e, de = jax.jvp(cexp, (z,), (dz,))
        np.testing.assert_allclose(np.asarray(de), np.asarray(e * dz), rtol=1e-6)
    # reverse mode, in JAX's convention for a real loss of complex inputs: as jnp.exp's
    for part in (jnp.real, jnp.imag):
        g = jax.grad(lambda v: part(jnp.sum(cexp(v))))(z)
        want = jax.grad(lambda v: part(jnp.sum(jnp.exp(v))))(z)
        np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-6)
    y = jnp.asarray([0.2, -3.0, 11.0], jnp.float32)
    s, c = sincos(y)
    _, (ds, dc) = jax.jvp(sincos, (y,), (jnp.full_like(y, 2.0),))
    np.testing.assert_allclose(np.asarray(ds), 2 * np.asarray(c), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dc), -2 * np.asarray(s), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda v: jnp.sum(sincos(v)[0]))(y)), np.asarray(c), rtol=1e-6)


def test_complex64_tanh_is_within_1e_6_of_the_exact_value_and_its_derivative_is_1_minus_tanh2():
    from eqprop.complexmath import tanh

    rng = np.random.default_rng(2)
    z = (rng.normal(size=50000) * 3 + 1j * rng.normal(size=50000) * 1.5).astype(np.complex64)
    z = np.concatenate([z, np.asarray([0, 1e-6j, -60 + 0.3j, 60 - 0.3j], np.complex64)])
    exact = np.tanh(z.astype(np.complex128))
    got = np.asarray(tanh(jnp.asarray(z)), np.complex128)
    assert tanh(jnp.asarray(z)).dtype == jnp.complex64
    # absolute near 0, relative to |tanh|^2 near the poles at i pi (k + 1/2), as any float32 form
    np.testing.assert_array_less(np.abs(got - exact) / (1 + np.abs(exact) ** 2), 1e-6)
    assert np.max(np.abs(got + exact)) > 1.0  # not its negative
    v = jnp.asarray(z[:3])
    for dv in (jnp.ones_like(v), 1j * jnp.ones_like(v)):
        t, dt = jax.jvp(tanh, (v,), (dv,))
        np.testing.assert_allclose(np.asarray(dt), np.asarray((1 - t * t) * dv), rtol=1e-6)
    g = jax.grad(lambda w: jnp.imag(jnp.sum(tanh(w))))(v)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(lambda w: jnp.imag(jnp.sum(jnp.tanh(w))))(v)),
                               rtol=1e-5)
