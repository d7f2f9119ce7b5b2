"""Accuracy against exact (mpmath) values, in units in the last place.

The exact values are those of the inputs as the backend holds them (rounded to the test
dtype), so the errors measured here are the implementation's alone.
"""

from __future__ import annotations

import numpy as np
import pytest

import ls_xp

mpmath = pytest.importorskip("mpmath", reason="mpmath is not installed (the exact reference)")
from ls_xp._tools import exact as _exact  # noqa: E402


def _adversarial(seed: int):
    rng = np.random.default_rng(seed)
    for scale in (1.0, 30.0, 1e4):  # |logits| up to ~4e4
        yield f"normal*{scale:g}", rng.normal(size=(6, 7)) * scale, rng.integers(0, 7, 6), 0.1
    x = rng.normal(size=(6, 7))
    y = rng.integers(0, 7, 6)
    x[np.arange(6), y] += 25.0  # confident and correct: losses ~1e-11
    for eps in (0.0, 1e-12, 1e-6, 0.1):
        yield f"confident eps={eps:g}", x, y, eps
    yield "uniform rows at 1e8", np.full((3, 5), 1e8), np.array([0, 1, 4]), 0.1
    yield "shift 1e6", rng.normal(size=(4, 6)) + 1e6, rng.integers(0, 6, 4), 0.2
    yield "K=300 tiny eps", rng.normal(size=(3, 300)) * 5, rng.integers(0, 300, 3), 1e-9


CASES = list(_adversarial(7))
# ulp budgets (see the README's accuracy section for the measured values)
ULPS = {"float64": 6, "float32": 10}  # measured here: 4.0 and 7.4


def _ulp_error(got, exact, dtype):
    exact = np.asarray(exact, dtype=np.float64)
    spacing = np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
    return np.max(np.abs(np.asarray(got, dtype=np.float64) - exact) / spacing)


@pytest.mark.parametrize("convention", ["uniform", "others"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_loss_and_grad_within_a_few_ulp(xb, fdtype, case, convention):
    name, x, y, eps = case
    x = x.astype(fdtype).astype(np.float64)  # what the backend holds, exactly
    if fdtype == "float32" and name.startswith(("uniform rows at 1e8", "shift 1e6")):
        x = x - 0.0  # representable; float32 keeps only the offset (uniform rows): still exact
    for reduction in ("none", "mean"):
        ex_loss, ex_grad = _exact.evaluate(
            x.tolist(), y.tolist(), eps, reduction=reduction, convention=convention
        )
        ex_loss = np.array([float(v) for v in np.ravel(ex_loss)])
        ex_grad = np.array([[float(v) for v in row] for row in ex_grad])
        loss, grad = ls_xp.loss_and_grad(
            xb.asarray(x, fdtype), xb.asarray(y), eps, reduction=reduction, convention=convention
        )
        err = _ulp_error(xb.np(loss).ravel(), ex_loss, fdtype)
        budget = ULPS[fdtype]
        if name == "confident eps=0" and reduction == "none":
            # loss_n = sum_c exp(x_c - max) here: the rounding of x_c - max (|x| ~ 25) is
            # amplified by |x_c - max|; the condition number, not the algorithm, sets the floor
            budget = 4 * 26
        assert err <= budget, f"{name} {reduction}: loss error {err:.1f} ulp"
        gscale = np.max(np.abs(ex_grad))
        gerr = np.max(np.abs(xb.np(grad) - ex_grad)) / gscale
        assert gerr <= 8 * np.finfo(fdtype).eps, f"{name} {reduction}: gradient error {gerr:.2e} of its max"
        # (measured here: at most 4.3 eps of the largest gradient entry)


def test_more_exact_than_torch_on_confident_rows():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = np.array([[40.0, 0.0, -1.0, 2.0]])
    y = np.array([0])
    exact = float(_exact.evaluate(x.tolist(), y.tolist(), 0.0, reduction="sum")[0])
    ours = float(ls_xp.cross_entropy(x, y, 0.0, reduction="sum"))
    theirs = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(y), reduction="sum").item()
    assert abs(ours - exact) <= 4 * np.spacing(exact)
    assert theirs == 0.0 and exact > 1e-18  # torch rounds 1 + s to 1 and loses the loss


@pytest.mark.parametrize(("offset", "dtype"), [(1e6, "float32"), (1e8, "float32"), (1e8, "float64")])
def test_uniform_logits_at_large_offsets_give_log_k(xb, offset, dtype):
    """optax's stability expectation: equal logits at a huge offset give log K (to 1 ulp)."""
    k = 7
    x = np.full((3, k), offset)
    loss = ls_xp.cross_entropy(xb.asarray(x, dtype), xb.asarray([0, 3, 6]), 0.1, reduction="none")
    log_k = np.log(np.asarray(k, dtype))
    np.testing.assert_allclose(xb.np(loss), np.full(3, float(log_k)), rtol=0, atol=float(np.spacing(log_k)))
