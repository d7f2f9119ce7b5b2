"""The target builders: the only functions that materialise dense target distributions
(the losses never need them)."""

from __future__ import annotations

import math
from typing import Any

import array_api_extra as xpx
from array_api_compat import array_namespace

from ls_xp import _plan
from ls_xp import _validate as v
from ls_xp._plan import device_of
from ls_xp._typing import Convention

Array = Any

__all__ = ["mixup_targets", "smooth_labels"]


def smooth_labels(
    labels: Array,
    num_classes: int,
    smoothing: float = 0.1,
    *,
    convention: Convention = "uniform",
    dtype: Any = None,
    axis: int = -1,
) -> Array:
    """Dense label-smoothed target distributions.

    ``labels`` are either integer class indices, which get a new class axis of length
    ``num_classes`` at ``axis``, or class probabilities / one-hot rows with
    ``num_classes`` entries along ``axis``:

    - ``convention="uniform"``: ``q = (1 - eps) onehot + eps / K`` (PyTorch, timm,
      optax ``smooth_labels``, Keras);
    - ``convention="others"``: ``1 - eps`` on the true class, ``eps / (K - 1)`` on the
      others (fairseq; the original notebook's formula); probabilities t give
      ``(1 - eps) t + eps (1 - t) / (K - 1)``.

    ``dtype`` defaults to the namespace's default floating dtype for integer labels and
    to the labels' dtype for probabilities. This is the only function that
    materialises targets; the losses never need them. Class indices outside
    ``[0, num_classes)`` raise ``ValueError`` (NaN rows where values cannot be read).

    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> ls_xp.smooth_labels(np.array([1]), 4, 0.2).tolist()
    [[0.05, 0.8500000000000001, 0.05, 0.05]]
    >>> ls_xp.smooth_labels(np.array([1]), 4, 0.3, convention="others").round(3).tolist()
    [[0.1, 0.7, 0.1, 0.1]]
    """
    xp = array_namespace(labels)
    dev = device_of(labels)
    eps = v.check_smoothing(xp, smoothing, None, dev)
    v.check_choice("convention", convention, v.CONVENTIONS)
    num_classes = v.as_int(num_classes, "num_classes")
    v.check_num_classes(num_classes, convention, "num_classes")
    k = float(num_classes)
    off = eps / k if convention == "uniform" else eps / (k - 1.0)
    if xp.isdtype(labels.dtype, "real floating"):
        ax = v.check_axis(axis, labels.ndim)
        if labels.shape[ax] != num_classes:
            raise ValueError(
                f"labels hold probabilities with {labels.shape[ax]} classes along axis {axis}, "
                f"but num_classes={num_classes}"
            )
        t = labels if dtype is None else xp.astype(labels, dtype)
        if convention == "uniform":
            return (1.0 - eps) * t + off
        return (1.0 - eps) * t + off * (1.0 - t)
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must be integer class indices or probabilities, got {labels.dtype}")
    ax = v.check_axis(axis, labels.ndim + 1)
    out_dtype = xpx.default_dtype(xp, device=dev) if dtype is None else dtype
    bad = (labels < 0) | (labels >= num_classes)
    if v.any_true(xp, bad, _plan.plan(labels) == "cpu"):
        value = v.first_value(xp, labels, bad)
        raise ValueError(f"labels contains class index {value}, outside [0, {num_classes})")
    on = 1.0 - eps + (off if convention == "uniform" else 0.0)
    safe = xp.where(bad, 0, labels)
    hot = xpx.one_hot(safe, num_classes, dtype=xp.bool, axis=ax, xp=xp)
    q = xp.where(hot, xp.asarray(on, dtype=out_dtype, device=dev), off)
    return xp.where(xp.expand_dims(bad, axis=ax), math.nan, q)


def mixup_targets(
    labels: Array,
    num_classes: int,
    lam: float = 1.0,
    smoothing: float = 0.0,
    *,
    convention: Convention = "uniform",
    dtype: Any = None,
) -> Array:
    """Mixup targets as timm builds them: ``lam * q(y) + (1 - lam) * q(flip(y))``.

    ``q`` is :func:`smooth_labels` and ``flip`` reverses the batch (axis 0): position n
    is mixed with position N-1-n (timm's ``mixup_target``). The result is a class
    probability target of shape (N, ..., K) for :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> ls_xp.mixup_targets(np.array([0, 2]), 3, lam=0.75).tolist()
    [[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]]
    """
    xp = array_namespace(labels)
    lam_value = v.as_real(lam, "lam")
    if not 0.0 <= lam_value <= 1.0:
        raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
    if labels.ndim < 1:
        raise ValueError("labels must have a batch axis to flip")
    q = smooth_labels(labels, num_classes, smoothing, convention=convention, dtype=dtype)
    return lam_value * q + (1.0 - lam_value) * xp.flip(q, axis=0)
