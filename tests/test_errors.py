"""Every bad input: a clear error naming the argument and the value, on every eager backend;
NaN (never a plausible number) where values cannot be read."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ls_xp

X = np.arange(12.0).reshape(4, 3)
Y = np.array([0, 2, 1, 2])


def _ce(xb, x=X, y=Y, **kw):
    return ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), **kw)


@pytest.mark.parametrize("bad", [3, -1, 7])
def test_label_out_of_range(xb, bad):
    y = Y.copy()
    y[1] = bad
    if xb.eager:
        with pytest.raises(ValueError, match=rf"target contains class index {bad}, outside \[0, 3\)"):
            _ce(xb, y=y)
    else:  # lazy: the bad position poisons the result
        assert math.isnan(float(xb.np(_ce(xb, y=y))))
        assert np.isnan(xb.np(_ce(xb, y=y, reduction="none"))[1])


def test_negative_label_other_than_ignore_index(xb):
    y = np.array([0, -100, 1, -5])
    if xb.eager:
        with pytest.raises(ValueError, match=r"class index -5.*ignore_index=-100"):
            _ce(xb, y=y)
    # -100 alone is fine
    assert np.isfinite(xb.np(_ce(xb, y=np.array([0, -100, 1, 2]))))


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, math.nan, math.inf])
def test_smoothing_out_of_range(xb, smoothing):
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\], got"):
        _ce(xb, smoothing=smoothing)


def test_smoothing_wrong_type(xb):
    with pytest.raises(TypeError, match="smoothing must be a real number"):
        _ce(xb, smoothing="0.1")
    with pytest.raises(TypeError, match="smoothing must be a real number"):
        _ce(xb, smoothing=True)


def test_others_convention_needs_two_classes(xb):
    with pytest.raises(ValueError, match=r'convention="others".*K >= 2, got K = 1'):
        _ce(xb, x=np.zeros((4, 1)), y=np.zeros(4, dtype=int), convention="others")
    with pytest.raises(ValueError, match=r'convention="others".*K >= 2'):
        ls_xp.smooth_labels(xb.asarray(np.zeros(2, dtype=int)), 1, convention="others")
    # K = 1 is fine with the uniform convention (a trivial, zero loss)
    assert float(xb.np(_ce(xb, x=np.zeros((4, 1)), y=np.zeros(4, dtype=int)))) == 0.0


def test_non_floating_logits(xb):
    with pytest.raises(TypeError, match="logits must have a real floating dtype, got"):
        ls_xp.cross_entropy(xb.asarray(np.arange(12).reshape(4, 3)), xb.asarray(Y))


def test_label_shape_mismatch(xb):
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match logits shape \(4, 3\)"):
        _ce(xb, y=np.array([0, 1, 2]))


def test_soft_target_shape_mismatch_and_dtype(xb):
    with pytest.raises(ValueError, match=r"target shape \(4, 2\) does not match"):
        _ce(xb, y=np.full((4, 2), 0.5))
    with pytest.raises(TypeError, match="read as class probabilities, which must be floating point"):
        _ce(xb, y=np.zeros((4, 3), dtype=int))
    fix = r"must have an integer dtype, got .*; convert it, e.g. target.astype\(int\)"
    with pytest.raises(TypeError, match=fix):
        _ce(xb, y=np.array([0.0, 1.0, 2.0, 1.0]))


def test_soft_target_with_nonnegative_ignore_index(xb):
    with pytest.raises(ValueError, match="ignore_index=0 is not supported with class-probability targets"):
        _ce(xb, y=np.full((4, 3), 1 / 3), ignore_index=0)


@pytest.mark.parametrize("weight", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [[1.0, 2.0, 3.0]]])
def test_weight_wrong_length(xb, weight):
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        _ce(xb, weight=xb.asarray(np.asarray(weight)))


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_weight_negative_or_not_finite(xb, bad):
    w = xb.asarray(np.array([1.0, bad, 2.0]))
    if xb.eager:
        with pytest.raises(ValueError, match=r"weight must be finite and non-negative, got an entry"):
            _ce(xb, weight=w)


@pytest.mark.parametrize(("name", "value"), [("reduction", "avg"), ("convention", "ls"), ("reduction", None)])
def test_unknown_choice(xb, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be one of .*got {value!r}"):
        _ce(xb, **{name: value})


def test_axis_out_of_range(xb):
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        _ce(xb, axis=2)


def test_scalar_logits(xb):
    with pytest.raises(ValueError, match="at least one dimension"):
        ls_xp.cross_entropy(xb.asarray(np.float64(1.0)), xb.asarray(np.int64(0)))


def test_where_errors(xb):
    allowed = np.ones((4, 3), dtype=bool)
    allowed[1, :] = False
    if xb.eager:
        with pytest.raises(ValueError, match="where leaves fewer than 1 allowed class"):
            _ce(xb, where=xb.asarray(allowed))
        masked_target = np.ones((4, 3), dtype=bool)
        masked_target[0, 0] = False
        with pytest.raises(ValueError, match="target class 0 is masked out by where"):
            _ce(xb, where=xb.asarray(masked_target))
        one_left = np.array([[True, False, False]] * 4)
        with pytest.raises(ValueError, match=r'fewer than 2 allowed class\(es\).*"others" needs two'):
            _ce(xb, y=np.zeros(4, dtype=int), where=xb.asarray(one_left), convention="others")
    with pytest.raises(TypeError, match="where must be a boolean array"):
        _ce(xb, where=xb.asarray(np.ones((4, 3))))
    with pytest.raises(ValueError, match=r"where with shape \(2,\) does not broadcast"):
        _ce(xb, where=xb.asarray(np.ones(2, dtype=bool)))


def test_smooth_labels_errors(xb):
    if xb.eager:
        with pytest.raises(ValueError, match=r"labels contains class index 5, outside \[0, 3\)"):
            ls_xp.smooth_labels(xb.asarray(np.array([0, 5])), 3)
    else:
        out = xb.np(ls_xp.smooth_labels(xb.asarray(np.array([0, 5])), 3))
        assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[0]))
    with pytest.raises(
        ValueError, match="labels hold probabilities with 2 classes along axis -1, but num_classes=3"
    ):
        ls_xp.smooth_labels(xb.asarray(np.full((2, 2), 0.5)), 3)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        ls_xp.smooth_labels(xb.asarray(np.array([0])), 3.0)
    with pytest.raises(ValueError, match="lam must be a number in"):
        ls_xp.mixup_targets(xb.asarray(np.array([0, 1])), 3, lam=2.0)


def test_jit_out_of_range_labels_give_nan():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    jnp = jax.numpy
    f = jax.jit(lambda x, y: ls_xp.loss_and_grad(x, y, 0.1))
    for bad in (3, -1, 1000):
        loss, grad = f(jnp.asarray(X), jnp.asarray([0, bad, 1, 2]))
        assert math.isnan(float(loss))
        g = np.asarray(grad)
        assert np.all(np.isnan(g[1])) and np.all(np.isfinite(g[[0, 2, 3]]))
    per_row = jax.jit(lambda x, y: ls_xp.cross_entropy(x, y, reduction="none"))(
        jnp.asarray(X), jnp.asarray([0, 9, 1, 2])
    )
    assert np.isnan(np.asarray(per_row)[1]) and np.all(np.isfinite(np.asarray(per_row)[[0, 2, 3]]))


def test_jit_masked_target_gives_nan():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    allowed = np.ones((4, 3), dtype=bool)
    allowed[2, 1] = False
    out = jax.jit(lambda x, y, m: ls_xp.cross_entropy(x, y, where=m, reduction="none"))(X, Y, allowed)
    out = np.asarray(out)
    assert np.isnan(out[2]) and np.all(np.isfinite(out[[0, 1, 3]]))
