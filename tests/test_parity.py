"""Parity with torch.nn.functional.cross_entropy(label_smoothing=...) on random cases."""

from __future__ import annotations

import numpy as np
import pytest

import ls_xp
from tests._cases import call, random_problem, torch_reference

pytest.importorskip("torch", reason="torch is not installed (it is the parity reference)")

TOL = {"float64": dict(rtol=1e-12, atol=1e-14), "float32": dict(rtol=2e-5, atol=2e-6)}


def _rounded(p, dtype):
    return p.logits.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("seed", range(16))
def test_loss_and_grad_match_torch(xb, fdtype, seed):
    p = random_problem(seed)
    ref_loss, ref_grad = torch_reference(p, _rounded(p, fdtype))
    if p.soft and fdtype == "float32":
        # torch sees float64 targets; ours are rounded to float32 like the logits
        p.target = p.target.astype(np.float32).astype(np.float64)
        ref_loss, ref_grad = torch_reference(p, _rounded(p, fdtype))
    loss, grad = call(ls_xp.loss_and_grad, xb, p, fdtype)
    np.testing.assert_allclose(xb.np(loss), ref_loss, **TOL[fdtype], err_msg=f"loss, {p}")
    np.testing.assert_allclose(xb.np(grad), ref_grad, **TOL[fdtype], err_msg="grad")
    # the separate entry points agree with the fused one
    np.testing.assert_array_equal(xb.np(call(ls_xp.cross_entropy, xb, p, fdtype)), xb.np(loss))
    np.testing.assert_array_equal(xb.np(call(ls_xp.cross_entropy_grad, xb, p, fdtype)), xb.np(grad))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_reduction_and_smoothing_against_torch(soft, smoothing, reduction):
    p = random_problem(99, soft=soft)
    p.smoothing, p.reduction = smoothing, reduction
    p.weight = np.linspace(0.5, 2.0, p.logits.shape[1])
    ref_loss, ref_grad = torch_reference(p)
    loss, grad = ls_xp.loss_and_grad(
        p.logits, p.target, smoothing, reduction=reduction, weight=p.weight,
        ignore_index=p.ignore_index, axis=1,
    )  # fmt: skip
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_positions_ignored_like_torch(xb, reduction):
    """mean of nothing is NaN with a zero gradient (PyTorch PR #64572); sum is 0."""
    logits = np.arange(12.0).reshape(4, 3)
    target = np.full(4, -100)
    loss, grad = ls_xp.loss_and_grad(xb.asarray(logits), xb.asarray(target), 0.1, reduction=reduction)
    import torch

    x = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(x, torch.tensor(target), label_smoothing=0.1, reduction=reduction)
    ref.sum().backward()
    np.testing.assert_array_equal(xb.np(loss), ref.detach().numpy())
    np.testing.assert_array_equal(xb.np(grad), x.grad.numpy())
    np.testing.assert_array_equal(xb.np(grad), np.zeros((4, 3)))


def test_empty_batch_like_torch(xb):
    logits = np.zeros((0, 5))
    target = np.zeros((0,), dtype=np.int64)
    loss, grad = ls_xp.loss_and_grad(xb.asarray(logits), xb.asarray(target), 0.1)
    assert np.isnan(xb.np(loss))
    assert xb.np(grad).shape == (0, 5)
    assert float(xb.np(ls_xp.cross_entropy(xb.asarray(logits), xb.asarray(target), reduction="sum"))) == 0.0


def test_masked_classes_give_finite_loss_where_torch_gives_inf():
    import torch

    logits = np.array([[0.0, 1.0, -np.inf, 2.0], [3.0, -np.inf, 1.0, 0.5]])
    target = np.array([3, 0])
    allowed = np.isfinite(logits)
    ours = ls_xp.cross_entropy(logits, target, 0.1, where=allowed)
    theirs = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(target), label_smoothing=0.1
    )
    assert np.isfinite(ours) and np.isinf(theirs.item())
    # equals the loss over the allowed classes only, with eps spread over those
    row0 = ls_xp.cross_entropy(logits[:1, [0, 1, 3]], np.array([2]), 0.1, reduction="sum")
    row1 = ls_xp.cross_entropy(logits[1:, [0, 2, 3]], np.array([0]), 0.1, reduction="sum")
    np.testing.assert_allclose(ours, (row0 + row1) / 2, rtol=1e-15)
    grad = ls_xp.cross_entropy_grad(logits, target, 0.1, where=allowed)
    assert np.all(grad[~allowed] == 0) and np.all(np.isfinite(grad))
