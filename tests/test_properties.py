"""Property tests (hypothesis) on NumPy float64, the reference backend."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import ls_xp  # noqa: E402


@st.composite
def problems(draw, soft=None):
    n = draw(st.integers(1, 5))
    k = draw(st.integers(2, 7))
    x = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-50, 50)))
    is_soft = draw(st.booleans()) if soft is None else soft
    if is_soft:
        raw = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0.01, 1)))
        target = raw / raw.sum(axis=-1, keepdims=True)
    else:
        target = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    eps = draw(st.floats(0, 1))
    convention = draw(st.sampled_from(["uniform", "others"]))
    return x, target, eps, convention


def _log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(problems())
def test_zero_smoothing_is_plain_cross_entropy(prob):
    x, t, _, convention = prob
    lp = _log_softmax(x)
    plain = -np.sum(t * lp, axis=-1) if t.ndim == 2 else -lp[np.arange(len(t)), t]
    got = ls_xp.cross_entropy(x, t, 0.0, convention=convention, reduction="none")
    np.testing.assert_allclose(got, plain, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(problems(), st.floats(-1e3, 1e3))
def test_invariant_to_a_constant_per_row(prob, shift):
    x, t, eps, convention = prob
    shifts = shift * np.linspace(-1, 1, x.shape[0])[:, None]
    a_loss, a_grad = ls_xp.loss_and_grad(x, t, eps, convention=convention, reduction="none")
    b_loss, b_grad = ls_xp.loss_and_grad(x + shifts, t, eps, convention=convention, reduction="none")
    scale = 1 + np.abs(x).max() + abs(shift)
    np.testing.assert_allclose(a_loss, b_loss, rtol=1e-12, atol=1e-13 * scale)
    np.testing.assert_allclose(a_grad, b_grad, atol=1e-13 * scale)


@SETTINGS
@given(problems())
def test_unweighted_gradient_rows_sum_to_zero(prob):
    x, t, eps, convention = prob
    grad = ls_xp.cross_entropy_grad(x, t, eps, convention=convention, reduction="sum")
    # zero in exact arithmetic: p and q both sum to 1 (also the 'others' map of a soft
    # target: (1 - e) + e (K - 1) / (K - 1))
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=1e-13)


@SETTINGS
@given(problems())
def test_loss_is_at_least_the_entropy_of_the_target(prob):
    """Gibbs: CE(q, p) >= H(q), i.e. the KL form is non-negative."""
    x, t, eps, convention = prob
    ce = ls_xp.cross_entropy(x, t, eps, convention=convention, reduction="none")
    kl = ls_xp.kl_divergence(x, t, eps, convention=convention, reduction="none")
    assert np.all(kl >= -1e-12 * (1 + np.abs(ce)))
    assert np.all(ce >= kl - 1e-12 * (1 + np.abs(ce)))  # H(q) >= 0


@SETTINGS
@given(problems(soft=False), st.floats(0.01, 5))
def test_weighted_mean_is_weighted_sum_over_weight_total(prob, w0):
    x, t, eps, convention = prob
    k = x.shape[1]
    w = np.linspace(w0, 2 * w0, k)
    s = ls_xp.cross_entropy(x, t, eps, convention=convention, weight=w, reduction="sum")
    m = ls_xp.cross_entropy(x, t, eps, convention=convention, weight=w, reduction="mean")
    np.testing.assert_allclose(m, s / w[t].sum(), rtol=1e-13)
