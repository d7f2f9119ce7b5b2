"""The language-model options: z-loss, softcapping, the causal shift and the statistics of
the same pass, against independent float64 formulas and mpmath, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import ls_xp

mpmath = pytest.importorskip("mpmath", reason="mpmath is not installed (the exact reference)")
from ls_xp._tools import exact as _exact  # noqa: E402

REDUCTIONS = ("mean", "sum", "none")


def _lse(x):
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


def _independent(x, y, eps, *, z_loss=0.0, softcap=None, weight=None, ignore_index=-100, reduction="mean"):
    """The loss in float64 from its definition: CE of the (capped) logits + z lse^2, the
    z-term's "mean" over the counted rows."""
    xc = x if softcap is None else softcap * np.tanh(x / softcap)
    k = x.shape[-1]
    w = np.ones(k) if weight is None else np.asarray(weight, dtype=float)
    valid = y != ignore_index
    ys = np.where(valid, y, 0)
    logp = xc - _lse(xc)[..., None]
    q = np.full(x.shape, eps / k)
    np.put_along_axis(q, ys[..., None], 1 - eps + eps / k, axis=-1)
    ce = -(w * q * logp).sum(-1) * valid
    zt = z_loss * _lse(xc) ** 2 * valid
    if reduction == "none":
        return ce + zt
    if reduction == "sum":
        return ce.sum() + zt.sum()
    return ce.sum() / (w[ys] * valid).sum() + zt.sum() / valid.sum()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_z_loss_and_softcap_follow_their_definitions(xb, rng, reduction, weighted):
    x, y = rng.normal(size=(12, 7)) * 4, rng.integers(0, 7, 12)
    y[[2, 5]] = -100
    w = rng.uniform(0.5, 2.0, 7) if weighted else None
    kw = dict(reduction=reduction, weight=None if w is None else xb.asarray(w))
    for z, cap in ((1e-2, None), (0.0, 3.0), (1e-3, 2.5)):
        got = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), 0.1, z_loss=z, softcap=cap, **kw)
        want = _independent(x, y, 0.1, z_loss=z, softcap=cap, weight=w, reduction=reduction)
        np.testing.assert_allclose(xb.np(got), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_with_every_option_match_mpmath(xb, rng, reduction):
    x, y = rng.normal(size=(6, 5)) * 3, rng.integers(0, 5, 6)
    y[1] = -100
    w = rng.uniform(0.5, 2.0, 5)
    opts = dict(z_loss=1e-2, softcap=4.0, reduction=reduction)
    for convention in ("uniform", "others"):
        loss, grad = ls_xp.loss_and_grad(
            xb.asarray(x), xb.asarray(y), 0.2, weight=xb.asarray(w), convention=convention, **opts
        )
        want_loss, want_grad = _exact.evaluate(
            x.tolist(), y.tolist(), 0.2, weight=w.tolist(), convention=convention, **opts
        )
        want_loss = np.asarray([float(v) for v in want_loss] if reduction == "none" else float(want_loss))
        np.testing.assert_allclose(xb.np(loss), want_loss, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(xb.np(grad), np.array(want_grad, dtype=float), rtol=1e-11, atol=1e-15)


def test_adversarial_rows_against_mpmath(xb):
    """Huge logits, -inf logits and a softcap close to the logits' scale."""
    x = np.array([[1e4, -1e4, 0.0, 3.0], [-np.inf, 2.0, 1.0, 0.5], [29.0, 30.0, -31.0, 0.0]])
    y = np.array([0, 1, 1])
    for cap, z in ((None, 1e-4), (30.0, 1e-4), (1e3, 0.0)):
        if cap is None and np.isinf(x).any():
            xs = x.copy()
            xs[1, 0] = -50.0
        else:
            xs = x
        loss, grad = ls_xp.loss_and_grad(xb.asarray(xs), xb.asarray(y), 0.0, z_loss=z, softcap=cap)
        want, wgrad = _exact.evaluate(xs.tolist(), y.tolist(), 0.0, z_loss=z, softcap=cap)
        np.testing.assert_allclose(xb.np(loss), float(want), rtol=1e-12)
        np.testing.assert_allclose(xb.np(grad), np.array(wgrad, dtype=float), rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_aux_equals_separately_computed_statistics(xb, rng, reduction):
    x, y = rng.normal(size=(10, 6)), rng.integers(0, 6, 10)
    y[3] = -100
    x[0, :2] = 5.0  # a tie: the first maximum counts
    y[0] = 1
    loss, aux = ls_xp.cross_entropy(
        xb.asarray(x), xb.asarray(y), 0.1, z_loss=1e-3, reduction=reduction, return_aux=True
    )
    valid = y != -100
    lse = _lse(x) * valid
    hit = (x.argmax(-1) == y) & valid
    zt = 1e-3 * _lse(x) ** 2 * valid
    if reduction == "none":
        want_acc, want_z = hit, zt
    elif reduction == "sum":
        want_acc, want_z = hit.sum(), zt.sum()
    else:
        want_acc, want_z = hit.sum() / valid.sum(), zt.sum() / valid.sum()
    np.testing.assert_allclose(xb.np(aux.lse), lse, rtol=1e-13)
    np.testing.assert_allclose(xb.np(aux.accuracy), want_acc, rtol=1e-13)
    np.testing.assert_allclose(xb.np(aux.z_loss), want_z, rtol=1e-12)
    assert int(xb.np(aux.count)) == valid.sum()
    np.testing.assert_allclose(
        xb.np(loss), _independent(x, y, 0.1, z_loss=1e-3, reduction=reduction), rtol=1e-12
    )


def test_aux_of_probability_targets_uses_their_first_argmax(xb, rng):
    x = rng.normal(size=(8, 5))
    t = rng.dirichlet(np.ones(5), size=8)
    _, aux = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(t), 0.1, return_aux=True)
    np.testing.assert_allclose(xb.np(aux.accuracy), np.mean(x.argmax(-1) == t.argmax(-1)), rtol=1e-13)
    assert int(xb.np(aux.count)) == 8


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shift_equals_slicing(xb, rng, reduction):
    """shift=1 is the causal-LM loss of HF's ForCausalLMLoss: logits[:, :-1] against
    labels[:, 1:], without copying either array."""
    x, y = rng.normal(size=(3, 6, 5)), rng.integers(0, 5, (3, 6))
    y[0, 2] = -100
    kw = dict(reduction=reduction, z_loss=1e-3)
    (loss, aux), grad = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(y), 0.1, shift=2, return_aux=True, **kw)
    (want, waux), wgrad = ls_xp.loss_and_grad(
        xb.asarray(x[:, :-2]), xb.asarray(y[:, 2:]), 0.1, return_aux=True, **kw
    )
    np.testing.assert_allclose(xb.np(loss), xb.np(want), rtol=1e-13)
    np.testing.assert_allclose(xb.np(grad)[:, :-2], xb.np(wgrad), rtol=1e-13)
    assert np.all(xb.np(grad)[:, -2:] == 0.0)
    np.testing.assert_allclose(xb.np(aux.lse), xb.np(waux.lse), rtol=1e-13)
    assert int(xb.np(aux.count)) == int(xb.np(waux.count))


def test_shift_with_probability_targets(xb, rng):
    x, t = rng.normal(size=(2, 5, 4)), rng.dirichlet(np.ones(4), size=(2, 5))
    loss, grad = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(t), 0.1, shift=1)
    want, wgrad = ls_xp.loss_and_grad(xb.asarray(x[:, :-1]), xb.asarray(t[:, 1:]), 0.1)
    np.testing.assert_allclose(xb.np(loss), xb.np(want), rtol=1e-13)
    np.testing.assert_allclose(xb.np(grad)[:, :-1], xb.np(wgrad), rtol=1e-13)
    assert xb.np(grad).shape == x.shape and np.all(xb.np(grad)[:, -1] == 0)


def test_kl_divergence_takes_the_options(xb, rng):
    x, y = rng.normal(size=(5, 4)), rng.integers(0, 4, 5)
    base = ls_xp.kl_divergence(xb.asarray(x), xb.asarray(y), 0.1, softcap=2.0)
    ce = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), 0.1, softcap=2.0)
    ce0 = ls_xp.cross_entropy(xb.asarray(2.0 * np.tanh(x / 2.0)), xb.asarray(y), 0.1)
    kl0 = ls_xp.kl_divergence(xb.asarray(2.0 * np.tanh(x / 2.0)), xb.asarray(y), 0.1)
    np.testing.assert_allclose(xb.np(base), xb.np(kl0), rtol=1e-13)
    np.testing.assert_allclose(xb.np(ce), xb.np(ce0), rtol=1e-13)
    grad, aux = ls_xp.cross_entropy_grad(xb.asarray(x), xb.asarray(y), 0.1, z_loss=1e-2, return_aux=True)
    assert xb.np(grad).shape == x.shape and int(xb.np(aux.count)) == 5


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        (dict(z_loss=-1e-4), ValueError, r"z_loss must be a finite number >= 0 .*got -0\.0001"),
        (dict(z_loss=float("nan")), ValueError, r"z_loss must be a finite number >= 0"),
        (dict(z_loss=float("inf")), ValueError, r"z_loss must be a finite number >= 0"),
        (dict(z_loss="big"), TypeError, r"z_loss must be a real number, got 'big'"),
        (dict(softcap=0.0), ValueError, r"softcap must be a finite number > 0 .*got 0\.0"),
        (dict(softcap=-3), ValueError, r"softcap must be a finite number > 0"),
        (dict(shift=-1), ValueError, r"shift must be an integer >= 0 .*got -1"),
        (dict(shift=1.5), TypeError, r"shift must be an integer, got 1\.5"),
        (dict(shift=6), ValueError, r"shift=6 must be smaller than the sequence length 6"),
        (dict(shift=1, axis=1), ValueError, r"shift=1 needs logits of shape \(\.\.\., T, K\)"),
        (dict(return_aux=1), TypeError, r"return_aux must be True or False, got 1"),
        (dict(softcap=30.0, log_probs=True), ValueError, r"softcap needs logits, but log_probs=True"),
        (dict(z_loss=1e-4, log_probs=True), ValueError, r"z_loss needs logits, but log_probs=True"),
    ],
)
def test_bad_llm_options_name_the_argument(kw, error, message):
    x, y = np.zeros((2, 6, 4)), np.zeros((2, 6), dtype=int)
    with pytest.raises(error, match=message):
        ls_xp.cross_entropy(x, y, 0.1, **kw)


# ---------------------------------------------------------------- the fused linear loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_linear_options_equal_the_unfused_loss(xb, rng, reduction):
    h, w_cls = rng.normal(size=(2, 7, 5)), rng.normal(size=(9, 5))
    b, y = rng.normal(size=9), rng.integers(0, 9, (2, 7))
    y[0, 3] = -100
    weight = rng.uniform(0.5, 2.0, 9)
    kw = dict(reduction=reduction, z_loss=1e-2, softcap=3.0, weight=xb.asarray(weight))
    H, W, B, Y = xb.asarray(h), xb.asarray(w_cls), xb.asarray(b), xb.asarray(y)
    for shift in (0, 2):
        (loss, aux), gh, gw, gb = ls_xp.linear_loss_and_grad(
            H, W, Y, 0.1, bias=B, shift=shift, return_aux=True, chunk_size=3, **kw
        )
        (want, waux), g = ls_xp.loss_and_grad(
            xb.asarray(h @ w_cls.T + b), Y, 0.1, shift=shift, return_aux=True, **kw
        )
        g = xb.np(g)
        np.testing.assert_allclose(xb.np(loss), xb.np(want), rtol=1e-12)
        np.testing.assert_allclose(xb.np(gh), g @ w_cls, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(xb.np(gw), np.einsum("btv,btd->vd", g, h), rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(xb.np(gb), g.sum((0, 1)), rtol=1e-11, atol=1e-14)
        for field in ("lse", "z_loss", "accuracy", "count"):
            np.testing.assert_allclose(xb.np(getattr(aux, field)), xb.np(getattr(waux, field)), rtol=1e-12)


def test_fused_linear_mixed_dtypes_are_promoted(rng):
    """float32 hidden states with a float64 head: computed as ``hidden @ classifier.T``
    promotes them; each gradient in its input's dtype."""
    h, w_cls, y = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(7, 4)), rng.integers(0, 7, 6)
    loss, gh, gw, _ = ls_xp.linear_loss_and_grad(h, w_cls, y, 0.1)
    want, g = ls_xp.loss_and_grad(h.astype(np.float64) @ w_cls.T, y, 0.1)
    assert gh.dtype == np.float32 and gw.dtype == np.float64
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    np.testing.assert_allclose(gw, g.T @ h.astype(np.float64), rtol=1e-12)


def test_half_precision_head_accumulates_in_float32(rng):
    """float16 hidden states and head: dW summed over 32 blocks in float32 (the default)
    is closer to the float64 truth than summed in float16."""
    n, d, v = 2048, 16, 64
    h, w_cls, y = rng.normal(size=(n, d)), rng.normal(size=(v, d)) * 0.3, rng.integers(0, v, n)
    h16, w16 = h.astype(np.float16), w_cls.astype(np.float16)
    _, g = ls_xp.loss_and_grad(h16.astype(np.float64) @ w16.T.astype(np.float64), y, 0.1)
    truth = g.T @ h16.astype(np.float64)

    def error(**kw):
        _, _, gw, _ = ls_xp.linear_loss_and_grad(h16, w16, y, 0.1, chunk_size=16, **kw)
        assert gw.dtype == np.float16
        return np.max(np.abs(gw.astype(np.float64) - truth)) / np.max(np.abs(truth))

    assert error() * 4 <= error(accum_dtype=np.float16)


def test_bad_accum_dtype_names_the_argument(rng):
    with pytest.raises(TypeError, match=r"accum_dtype must be a real floating dtype .* got 'float'"):
        ls_xp.linear_cross_entropy(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), accum_dtype="float")


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("fused", [False, True])
def test_aux_fields_of_none_have_the_losses_shape(rng, z_loss, fused):
    x, y = rng.normal(size=(2, 5, 4)), rng.integers(0, 4, (2, 5))
    kw = dict(shift=1, reduction="none", z_loss=z_loss, return_aux=True)
    if fused:
        loss, aux = ls_xp.linear_cross_entropy(x, rng.normal(size=(6, 4)), y, 0.1, **kw)
    else:
        loss, aux = ls_xp.cross_entropy(x, y, 0.1, **kw)
    assert loss.shape == aux.lse.shape == aux.z_loss.shape == aux.accuracy.shape == (2, 4)


@pytest.mark.parametrize("convention", ["uniform", "others"])
def test_softcap_over_logits_written_over_equals_a_copy(xb, rng, convention):
    """Where the logits may be written over, the capped logits replace them and the chain rule
    comes from row factors scaled by -1/softcap^2: the same loss and gradient as leaving them
    alone (several blocks, ignored rows, class weights, the z-loss)."""
    x, y = rng.normal(size=(23, 7)) * 4, rng.integers(0, 7, 23)
    y[::5] = -100
    w = xb.asarray(rng.uniform(0.5, 2.0, 7))
    kw = dict(weight=w, convention=convention, softcap=2.5, z_loss=1e-2, chunk_size=4, reduction="sum")
    want, want_grad = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(y), 0.1, **kw)
    logits = xb.asarray(x.copy())
    loss, grad = ls_xp.loss_and_grad(logits, xb.asarray(y), 0.1, overwrite_logits=True, **kw)
    np.testing.assert_allclose(xb.np(loss), xb.np(want), rtol=1e-14)
    np.testing.assert_allclose(xb.np(grad), xb.np(want_grad), rtol=1e-13, atol=1e-16)
    if convention == "uniform":  # (the independent formula's convention)
        want64 = _independent(x, y, 0.1, z_loss=1e-2, softcap=2.5, weight=xb.np(w), reduction="sum")
        np.testing.assert_allclose(xb.np(loss), want64, rtol=1e-12)
