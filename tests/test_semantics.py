"""The conventions, the KL form, log-probability input, class masks and targets, each
checked against a direct dense formula, plus finite differences for the gradient."""

from __future__ import annotations

import numpy as np
import pytest

import ls_xp
from tests._cases import NumpyXB, call, random_problem


def _log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def _dense_q(y, k, eps, convention):
    onehot = np.eye(k)[y]
    if convention == "uniform":
        return (1 - eps) * onehot + eps / k
    return np.where(onehot == 1, 1 - eps, eps / (k - 1))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.6, 1.0])
def test_others_convention_against_its_formula(xb, fdtype, rng, eps):
    x = rng.normal(size=(5, 6)) * 3
    y = rng.integers(0, 6, 5)
    w = rng.uniform(0.5, 2, 6)
    q = _dense_q(y, 6, eps, "others")
    rows = -np.sum(w * q * _log_softmax(x.astype(fdtype).astype(float)), axis=-1)
    got = ls_xp.cross_entropy(xb.asarray(x, fdtype), xb.asarray(y), eps, convention="others",
                              weight=xb.asarray(w, fdtype), reduction="none")  # fmt: skip
    tol = 1e-12 if fdtype == "float64" else 2e-5
    np.testing.assert_allclose(xb.np(got), rows, rtol=tol)
    # and fairseq's form: (1 - eps - eps/(K-1)) nll + eps/(K-1) sum_c (-lp_c), unweighted
    lp = _log_softmax(x.astype(fdtype).astype(float))
    nll = -lp[np.arange(5), y]
    fairseq = (1 - eps - eps / 5) * nll + eps / 5 * np.sum(-lp, axis=-1)
    got = ls_xp.cross_entropy(
        xb.asarray(x, fdtype), xb.asarray(y), eps, convention="others", reduction="none"
    )
    np.testing.assert_allclose(xb.np(got), fairseq, rtol=tol, atol=tol)


def test_convention_mapping(xb, rng):
    """eps under 'others' equals eps * K / (K-1) under 'uniform'."""
    x, y, k = rng.normal(size=(4, 5)), rng.integers(0, 5, 4), 5
    a = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), 0.2, convention="others")
    b = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), 0.2 * k / (k - 1), convention="uniform")
    np.testing.assert_allclose(xb.np(a), xb.np(b), rtol=1e-14)


@pytest.mark.parametrize("convention", ["uniform", "others"])
def test_smooth_labels_dense_and_from_probabilities(xb, fdtype, convention):
    y = np.array([[0, 2], [1, 1]])
    q = ls_xp.smooth_labels(xb.asarray(y), 3, 0.3, convention=convention, dtype=xb.dtype(fdtype))
    expected = _dense_q(y, 3, 0.3, convention)
    np.testing.assert_allclose(xb.np(q), expected, rtol=1e-7 if fdtype == "float32" else 1e-15)
    assert xb.np(q).shape == (2, 2, 3)
    q1 = ls_xp.smooth_labels(xb.asarray(y), 3, 0.3, convention=convention, axis=1, dtype=xb.dtype("float64"))
    np.testing.assert_allclose(xb.np(q1), np.moveaxis(expected, -1, 1), rtol=1e-15)
    onehot = np.eye(3)[y]
    qp = ls_xp.smooth_labels(xb.asarray(onehot, fdtype), 3, 0.3, convention=convention)
    np.testing.assert_allclose(xb.np(qp), expected, rtol=1e-6 if fdtype == "float32" else 1e-15)
    np.testing.assert_allclose(xb.np(q).sum(axis=-1), 1.0, rtol=1e-6)


def test_smooth_labels_default_dtype(xb):
    """The namespace's default floating dtype (float32 for torch, float64 for NumPy)."""
    import array_api_extra as xpx

    q = ls_xp.smooth_labels(xb.asarray(np.array([0, 1])), 2)
    assert q.dtype == xpx.default_dtype(xb.xp, device=xb.device)
    probs = xb.asarray(np.array([[0.0, 1.0]]), "float32")
    assert ls_xp.smooth_labels(probs, 2).dtype == xb.dtype("float32")


def test_mixup_targets_like_timm(xb):
    y = np.array([0, 2, 1, 1])
    lam, eps, k = 0.7, 0.1, 3
    off, on = eps / k, 1 - eps + eps / k
    y1 = np.full((4, k), off)
    y1[np.arange(4), y] = on
    expected = lam * y1 + (1 - lam) * y1[::-1]
    got = ls_xp.mixup_targets(xb.asarray(y), k, lam, eps, dtype=xb.dtype("float64"))
    np.testing.assert_allclose(xb.np(got), expected, rtol=1e-15)


def test_soft_targets_uniform_and_others(xb, rng):
    x = rng.normal(size=(4, 5))
    t = rng.dirichlet(np.ones(5), size=4)
    lp = _log_softmax(x)
    for convention, q in (("uniform", 0.9 * t + 0.1 / 5), ("others", 0.9 * t + 0.1 * (1 - t) / 4)):
        got = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(t), 0.1, convention=convention, reduction="none")
        np.testing.assert_allclose(xb.np(got), -np.sum(q * lp, axis=-1), rtol=1e-13)
    # one-hot probabilities give the same as the indices
    y = rng.integers(0, 5, 4)
    for convention in ("uniform", "others"):
        a = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(np.eye(5)[y]), 0.1, convention=convention)
        b = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(y), 0.1, convention=convention)
        np.testing.assert_allclose(xb.np(a[0]), xb.np(b[0]), rtol=1e-14)
        np.testing.assert_allclose(xb.np(a[1]), xb.np(b[1]), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("soft", [False, True])
def test_kl_is_ce_minus_entropy(xb, rng, soft):
    x = rng.normal(size=(4, 5))
    t = rng.dirichlet(np.ones(5), size=4) if soft else rng.integers(0, 5, 4)
    w = rng.uniform(0.5, 2, 5)
    for convention in ("uniform", "others"):
        q = (
            (0.8 * t + 0.2 / 5 if convention == "uniform" else 0.8 * t + 0.2 * (1 - t) / 4)
            if soft
            else _dense_q(t, 5, 0.2, convention)
        )
        neg_entropy = np.sum(w * q * np.log(q), axis=-1)
        kw = dict(convention=convention, reduction="none", weight=xb.asarray(w))
        ce = xb.np(ls_xp.cross_entropy(xb.asarray(x), xb.asarray(t), 0.2, **kw))
        kl = xb.np(ls_xp.kl_divergence(xb.asarray(x), xb.asarray(t), 0.2, **kw))
        np.testing.assert_allclose(kl, ce + neg_entropy, rtol=1e-12)
        assert np.all(kl >= 0)


def test_kl_matches_torch_kldivloss_sum():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(3, 5)), np.array([2, 1, 0])
    q = _dense_q(y, 5, 0.1, "others")
    lp = torch.log_softmax(torch.tensor(x), -1)
    ref = torch.nn.KLDivLoss(reduction="sum")(lp, torch.tensor(q)).item()
    ours = ls_xp.kl_divergence(x, y, 0.1, convention="others", reduction="sum")
    np.testing.assert_allclose(ours, ref, rtol=1e-13)
    # same through log-probability input
    ours_lp = ls_xp.kl_divergence(lp.numpy(), y, 0.1, convention="others", reduction="sum", log_probs=True)
    np.testing.assert_allclose(ours_lp, ref, rtol=1e-13)


def test_log_probs_input_matches_nll_loss(xb, rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = rng.normal(size=(6, 4))
    y = np.array([0, 3, -100, 1, 2, 2])
    lp = _log_softmax(x)
    for eps in (0.0, 0.2):
        loss, grad = ls_xp.loss_and_grad(xb.asarray(lp), xb.asarray(y), eps, log_probs=True)
        np.testing.assert_allclose(xb.np(loss), float(ls_xp.cross_entropy(x, y, eps)), rtol=1e-14)
        t = torch.tensor(lp, requires_grad=True)
        nll = torch.nn.functional.nll_loss(t, torch.tensor(y))
        smooth = -t.sum(-1)[torch.tensor(y) != -100].sum() / 5
        ref = (1 - eps) * nll + eps / 4 * smooth
        ref.backward()
        np.testing.assert_allclose(xb.np(grad), t.grad.numpy(), rtol=1e-14, atol=1e-17)


def test_where_mask_equals_dropping_the_classes(xb, rng):
    x = rng.normal(size=(3, 6))
    allowed = np.array([[1, 1, 0, 1, 1, 1], [0, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=bool)
    y = np.array([3, 2, 5])
    w = rng.uniform(0.5, 2, 6)
    loss, grad = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(y), 0.3, where=xb.asarray(allowed),
                                     reduction="none", weight=xb.asarray(w))  # fmt: skip
    for n in range(3):
        keep = np.flatnonzero(allowed[n])
        yn = np.array([int(np.flatnonzero(keep == y[n])[0])])
        ln, gn = ls_xp.loss_and_grad(x[n : n + 1, keep], yn, 0.3, reduction="none", weight=w[keep])
        np.testing.assert_allclose(xb.np(loss)[n], ln[0], rtol=1e-14)
        np.testing.assert_allclose(xb.np(grad)[n, keep], gn[0], rtol=1e-13, atol=1e-17)
        assert np.all(xb.np(grad)[n, ~allowed[n]] == 0)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_single_allowed_class_without_smoothing_is_a_certain_prediction(xb, weighted):
    """eps = 0 needs one allowed class, also under convention="others": that row's loss and
    gradient are 0 (the gradient was NaN when the coefficients were NaN for any eps)."""
    x = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]])
    where = np.array([[False, True, False], [True, True, True]])
    w = xb.asarray(np.array([1.0, 2.0, 3.0])) if weighted else None
    loss, grad = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray([1, 0]), 0.0, convention="others",
                                     where=xb.asarray(where), weight=w, reduction="none")  # fmt: skip
    np.testing.assert_array_equal(xb.np(loss)[0], 0.0)
    np.testing.assert_array_equal(xb.np(grad)[0], 0.0)
    # the other row, all classes allowed, as plain cross-entropy (its class has weight 1)
    ref_loss, ref_grad = ls_xp.loss_and_grad(x[1:], np.array([0]), 0.0, reduction="none")
    np.testing.assert_allclose(xb.np(loss)[1], ref_loss[0], rtol=1e-14)
    np.testing.assert_allclose(xb.np(grad)[1], ref_grad[0], rtol=1e-13)


def test_where_broadcasts_over_the_batch(xb, rng):
    x = rng.normal(size=(4, 5))
    allowed = np.array([True, True, False, True, True])
    a = ls_xp.cross_entropy(xb.asarray(x), xb.asarray([0, 1, 3, 4]), where=xb.asarray(allowed))
    b = ls_xp.cross_entropy(
        xb.asarray(x), xb.asarray([0, 1, 3, 4]), where=xb.asarray(np.tile(allowed, (4, 1)))
    )
    np.testing.assert_array_equal(xb.np(a), xb.np(b))


def test_neg_inf_logits_without_target_mass_are_harmless(xb):
    x = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]])
    y = np.array([0, 1])
    # eps = 0: the -inf classes carry no mass
    loss, grad = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(y), 0.0)
    assert np.isfinite(xb.np(loss)) and np.all(np.isfinite(xb.np(grad)))
    # eps > 0 puts mass there: +inf, as it should be
    assert np.isposinf(xb.np(ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), 0.1)))
    # zero weight on those classes: finite again (PyTorch gives NaN: 0 * inf)
    w = xb.asarray(np.array([1.0, 1.0, 0.0]))
    x2 = np.array([[0.0, 1.0, -np.inf]])
    assert np.isfinite(xb.np(ls_xp.cross_entropy(xb.asarray(x2), xb.asarray([0]), 0.1, weight=w)))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, on purpose
def test_nan_and_pos_inf_logits_give_nan_rows(xb):
    x = np.array([[0.0, np.nan, 1.0], [2.0, np.inf, 0.0], [1.0, 2.0, 3.0]])
    rows = xb.np(ls_xp.cross_entropy(xb.asarray(x), xb.asarray([0, 1, 2]), 0.1, reduction="none"))
    assert np.isnan(rows[0]) and np.isnan(rows[1]) and np.isfinite(rows[2])
    # their gradient rows too (a row whose maximum is +inf once had a finite one)
    for eps in (0.0, 0.1):
        grad = xb.np(ls_xp.loss_and_grad(xb.asarray(x), xb.asarray([0, 1, 2]), eps)[1])
        assert np.all(np.isnan(grad[:2])) and np.all(np.isfinite(grad[2])), (eps, grad)
    # an ignored row never contributes, whatever its logits
    ok = ls_xp.cross_entropy(xb.asarray(x), xb.asarray([-100, -100, 2]), 0.1)
    assert np.isfinite(xb.np(ok))


@pytest.mark.parametrize("seed", range(6))
def test_gradient_against_finite_differences(seed):
    p = random_problem(100 + seed)
    p.logits = p.logits[:3] / 3
    p.target = p.target[:3]

    def f(z):
        q = p.logits
        p.logits = z
        try:
            return float(np.sum(call(ls_xp.cross_entropy, NumpyXB(), p, "float64")))
        finally:
            p.logits = q

    grad = call(ls_xp.cross_entropy_grad, NumpyXB(), p, "float64")
    h = 1e-6
    fd = np.zeros_like(p.logits)
    for idx in np.ndindex(p.logits.shape):
        e = np.zeros_like(p.logits)
        e[idx] = h
        fd[idx] = (f(p.logits + e) - f(p.logits - e)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_class_axis_one_equals_moving_the_axis(xb, rng):
    x = rng.normal(size=(2, 4, 3, 5))  # (N, C, d1, d2)
    y = rng.integers(0, 4, (2, 3, 5))
    a_loss, a_grad = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(y), 0.1, axis=1, reduction="none")
    b_loss, b_grad = ls_xp.loss_and_grad(
        xb.asarray(np.moveaxis(x, 1, -1)), xb.asarray(y), 0.1, reduction="none"
    )
    np.testing.assert_allclose(xb.np(a_loss), xb.np(b_loss), rtol=1e-15)
    np.testing.assert_allclose(xb.np(a_grad), np.moveaxis(xb.np(b_grad), -1, 1), rtol=1e-15)
    assert xb.np(a_loss).shape == (2, 3, 5) and xb.np(a_grad).shape == x.shape
