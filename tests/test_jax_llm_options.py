"""z_loss, softcap, shift and return_aux on JAX arrays: the custom_jvp rule gives the
generic core's values and gradients, forward mode included."""

from __future__ import annotations

import numpy as np
import pytest

import ls_xp

jax = pytest.importorskip("jax", reason="jax is not installed")
jnp = jax.numpy

CASES = [
    {"z_loss": 1e-2},
    {"softcap": 2.0},
    {"shift": 1},
    {"shift": 2, "reduction": "none"},
    {"z_loss": 1e-2, "softcap": 3.0, "shift": 1, "reduction": "sum"},
]


def _data(soft):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5))
    t = rng.dirichlet(np.ones(5), (2, 6)) if soft else rng.integers(0, 5, (2, 6))
    return x, t


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kw", CASES)
def test_grad_and_jvp_equal_the_core(kw, soft):
    x, t = _data(soft)
    want, want_grad = ls_xp.loss_and_grad(x, t, 0.1, **kw)
    tj = jnp.asarray(t)

    def f(a):
        return ls_xp.cross_entropy(a, tj, 0.1, **kw)

    np.testing.assert_allclose(np.asarray(f(jnp.asarray(x))), want, rtol=1e-10)
    grad = jax.grad(lambda a: jnp.sum(f(a)))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-9, atol=1e-12)
    v = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))
    tangent = jax.jvp(f, (jnp.asarray(x),), (v,))[1]
    numeric = (f(jnp.asarray(x) + 1e-6 * v) - f(jnp.asarray(x) - 1e-6 * v)) / 2e-6
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(numeric), rtol=1e-5, atol=1e-8)


def test_return_aux_under_jit_and_grad():
    x, y = _data(False)
    want, want_aux = ls_xp.cross_entropy(x, y, 0.1, z_loss=1e-3, return_aux=True)
    yj = jnp.asarray(y)
    (loss, aux), grad = jax.jit(
        jax.value_and_grad(
            lambda a: ls_xp.cross_entropy(a, yj, 0.1, z_loss=1e-3, return_aux=True), has_aux=True
        )
    )(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(loss), want, rtol=1e-12)
    for got, exp in zip(aux, want_aux, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-12)
    _, want_grad = ls_xp.loss_and_grad(x, y, 0.1, z_loss=1e-3)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-10)


LINEAR_CASES = [*CASES, {"z_loss": 1e-2, "softcap": 3.0, "shift": 1, "reduction": "none", "chunk_size": 3}]


def _linear_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 7, 4)), rng.normal(size=(9, 4)), rng.normal(size=9), rng.integers(0, 9, (2, 7))


@pytest.mark.parametrize("kw", LINEAR_CASES)
def test_fused_linear_scan_equals_the_core(kw):
    h, w_cls, b, y = _linear_data()
    want = ls_xp.linear_loss_and_grad(h, w_cls, y, 0.1, bias=b, **kw)
    yj = jnp.asarray(y)

    def f(a, c, d):
        return jnp.sum(ls_xp.linear_cross_entropy(a, c, yj, 0.1, bias=d, **kw))

    args = (jnp.asarray(h), jnp.asarray(w_cls), jnp.asarray(b))
    grads = jax.grad(f, argnums=(0, 1, 2))(*args)
    for got, exp in zip(grads, want[1:], strict=True):
        np.testing.assert_allclose(np.asarray(got), exp, rtol=1e-9, atol=1e-12)
    values = ls_xp.linear_loss_and_grad(*args[:2], yj, 0.1, bias=args[2], **kw)
    for got, exp in zip(values, want, strict=True):
        np.testing.assert_allclose(np.asarray(got), exp, rtol=1e-9, atol=1e-12)


def test_fused_linear_return_aux_under_jit():
    h, w_cls, b, y = _linear_data()
    _, want_aux = ls_xp.linear_cross_entropy(h, w_cls, y, 0.1, bias=b, z_loss=1e-3, return_aux=True)
    wj, yj, bj = jnp.asarray(w_cls), jnp.asarray(y), jnp.asarray(b)
    _, aux = jax.jit(
        lambda a: ls_xp.linear_cross_entropy(a, wj, yj, 0.1, bias=bj, z_loss=1e-3, return_aux=True)
    )(jnp.asarray(h))
    for got, exp in zip(aux, want_aux, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-10)
