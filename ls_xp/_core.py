"""Label-smoothed softmax cross-entropy, written once against the Python array API standard.

Every function takes arrays of any array-API library (NumPy, PyTorch, JAX, CuPy, Dask,
array-api-strict), finds their namespace with ``array_namespace`` and computes with that
namespace only: no framework is imported here and there is no per-backend branch.

Notation (per position n, K classes, class axis moved last):

    z_c   = x_c - max_k x_k                       shifted logits, z <= 0
    L1    = log1p(sum_{c != argmax} exp(z_c))     so that  lse(x) = max(x) + L1
    -log p_c = L1 - z_c                           a sum of two non-negative numbers
    q     = a * onehot(y) + b                     smoothed target (index targets)
    loss_n = sum_c w_c q_c (L1 - z_c)
           = a w_y (L1 - z_y) + b (S_w L1 + sum_c w_c (-z_c)),   S_w = sum_c w_c
    d loss_n / d x_c = (sum_k w_k q_k) p_c - w_c q_c

with a = 1 - eps, b = eps / K ("uniform") or b = eps / (K - 1), a = 1 - eps - b ("others").
For 0 <= eps <= (K-1)/K every term above is non-negative, so the loss is a sum of
non-negative numbers and keeps full relative accuracy, also for tiny losses of confident,
correct predictions (the log1p form avoids the cancellation in lse - x_y).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Literal

import array_api_extra as xpx
from array_api_compat import array_namespace
from array_api_compat import device as get_device

from ls_xp import _checks

Array = Any
Reduction = Literal["mean", "sum", "none"]
Convention = Literal["uniform", "others"]

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "kl_divergence",
    "loss_and_grad",
    "mixup_targets",
    "smooth_labels",
]


# --------------------------------------------------------------------------------------
# small pure helpers
# --------------------------------------------------------------------------------------


def _smoothing_coefficients(
    xp: ModuleType, eps: float, num_allowed: float | Array, convention: str
) -> tuple[float | Array, float | Array]:
    """(a, b) with q = a * onehot + b on allowed classes.

    ``num_allowed`` is K, or the per-row count of allowed classes under ``where``.
    A row with too few allowed classes for the convention gets NaN coefficients.
    """
    if convention == "uniform":
        if isinstance(num_allowed, float):
            b = eps / num_allowed
        else:
            ok = num_allowed > 0
            b = xp.where(ok, eps / xp.where(ok, num_allowed, 1.0), math.nan)
        return 1.0 - eps, b
    if isinstance(num_allowed, float):
        b = eps / (num_allowed - 1.0)
    else:
        ok = num_allowed > 1
        b = xp.where(ok, eps / xp.where(ok, num_allowed - 1.0, 1.0), math.nan)
    return 1.0 - eps - b, b


def _weighted(xp: ModuleType, coef: Array | None, v: Array) -> Array:
    """``coef * v`` with the convention 0 * (+-inf) = 0 (a class with no mass adds nothing)."""
    if coef is None:
        return v
    return coef * xp.where(coef != 0, v, 0.0)


def _xlogx(xp: ModuleType, u: Array | float) -> Array | float:
    """u log u with 0 log 0 = 0."""
    if isinstance(u, float):
        return u * math.log(u) if u > 0 else 0.0
    return xp.where(u > 0, u * xp.log(xp.where(u > 0, u, 1.0)), 0.0)


def _safe_divide(xp: ModuleType, num: Array | float, den: Array | float, at_zero: float) -> Array | float:
    """num / den, with ``at_zero`` where den == 0 (and no floating-point warning)."""
    if isinstance(den, float):
        return num / den if den != 0 else num * 0.0 + at_zero
    nonzero = den != 0
    return xp.where(nonzero, num / xp.where(nonzero, den, 1.0), at_zero)


def _log_softmax_parts(xp: ModuleType, x: Array, mask: Array | None) -> tuple[Array, Array, Array]:
    """Shifted logits z = x - max, exp(z), and s with lse(x) = max + log1p(s), per row.

    s is the sum of exp(z) over every allowed class but one maximum, so that
    -log p_y = log1p(s) - z_y is accurate even when it is tiny (masked classes: z = -inf).
    """
    xm = x if mask is None else xp.where(mask, x, -math.inf)
    if x.shape[0] == 0:  # empty batch: nothing to reduce (Dask cannot take max of nothing)
        return xm, xm, xp.zeros((0, 1), dtype=x.dtype, device=get_device(x))
    z = xm - xp.max(xm, axis=-1, keepdims=True)
    e = xp.exp(z)
    top = z == 0.0
    n_top = xp.sum(xp.astype(top, x.dtype), axis=-1, keepdims=True)
    s = xp.sum(xp.where(top, 0.0, e), axis=-1, keepdims=True) + (n_top - 1.0)
    return z, e, s


def _row(xp: ModuleType, v: float | Array) -> float | Array:
    """A per-row quantity kept as (N, 1) for broadcasting, flattened to (N,)."""
    return v if isinstance(v, float) else xp.reshape(v, (-1,))


def _col(xp: ModuleType, v: float | Array) -> float | Array:
    """A per-row quantity of shape (N,) made (N, 1) to broadcast over classes."""
    return v if isinstance(v, float) else v[:, None]


# --------------------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------------------


def _class_weight(xp: ModuleType, weight: Array | None, num_classes: int, dtype: Any) -> Array | None:
    if weight is None:
        return None
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},) (one entry per class), got {tuple(weight.shape)}"
        )
    if not xp.isdtype(weight.dtype, ("real floating", "integral")):
        raise TypeError(f"weight must have a real dtype, got {weight.dtype}")
    w = xp.astype(weight, dtype, copy=False)
    bad = ~(w >= 0.0) | ~xp.isfinite(w)
    if _checks.any_true(xp, bad):
        value = _checks.first_value(xp, w, bad)
        raise ValueError(f"weight must be finite and non-negative, got an entry {value!r}")
    return w


def _class_mask(xp: ModuleType, where: Array | None, shape: tuple[int, ...], axis: int) -> Array | None:
    if where is None:
        return None
    if where.dtype != xp.bool:
        raise TypeError(f"where must be a boolean array, got dtype {where.dtype}")
    try:
        full = xp.broadcast_to(where, shape)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(
            f"where with shape {tuple(where.shape)} does not broadcast to logits shape {shape}"
        ) from exc
    return xp.reshape(xp.moveaxis(full, axis, -1), (-1, shape[axis]))


def _is_probability_target(xp: ModuleType, logits: Array, target: Array, axis: int) -> bool:
    """Tell class indices from class probabilities the way PyTorch does: by shape."""
    batch = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1 :])
    if tuple(target.shape) == tuple(logits.shape):
        if not xp.isdtype(target.dtype, "real floating"):
            raise TypeError(
                "target has the shape of logits, so it is read as class probabilities, which "
                f"must be floating point; got dtype {target.dtype}. Class indices must have "
                f"logits' shape without the class axis, {batch}"
            )
        return True
    if tuple(target.shape) != batch:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}: class indices need shape {batch} (logits without axis "
            f"{axis}), class probabilities need shape {tuple(logits.shape)}"
        )
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(
            f"class-index target must have an integer dtype, got {target.dtype} "
            "(probabilities must have the shape of logits)"
        )
    return False


# --------------------------------------------------------------------------------------
# the one evaluation
# --------------------------------------------------------------------------------------


def _evaluate(
    logits: Array,
    target: Array,
    smoothing: float,
    *,
    reduction: str,
    weight: Array | None,
    ignore_index: int,
    axis: int,
    convention: str,
    where: Array | None,
    log_probs: bool,
    kl: bool,
    want_loss: bool,
    want_grad: bool,
) -> tuple[Array | None, Array | None]:
    arrays = [a for a in (logits, target, weight, where) if a is not None]
    xp = array_namespace(*arrays)
    _checks.check_floating(xp, logits, "logits")
    if logits.ndim < 1:
        raise ValueError("logits must have at least one dimension (the class axis)")
    ax = _checks.check_axis(axis, logits.ndim)
    eps = _checks.check_smoothing(smoothing)
    _checks.check_choice("reduction", reduction, _checks.REDUCTIONS)
    _checks.check_choice("convention", convention, _checks.CONVENTIONS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    shape = tuple(logits.shape)
    num_classes = shape[ax]
    if num_classes is None or any(s is None or s != s for s in shape):  # noqa: PLR0124
        raise ValueError(f"logits must have a known shape, got {shape}")
    _checks.check_num_classes(num_classes, convention, "number of classes (logits.shape[axis])")
    soft = _is_probability_target(xp, logits, target, ax)
    if soft and ignore_index >= 0:
        raise ValueError(
            f"ignore_index={ignore_index} is not supported with class-probability targets "
            "(as in PyTorch); leave it negative"
        )

    in_dtype = logits.dtype
    dt = xp.result_type(in_dtype, xp.float32)  # float16/bfloat16 compute in float32
    dev = get_device(logits)
    batch_shape = shape[:ax] + shape[ax + 1 :]
    x = xp.reshape(xp.moveaxis(xp.astype(logits, dt, copy=False), ax, -1), (-1, num_classes))
    n_rows = x.shape[0]
    w = _class_weight(xp, weight, num_classes, dt)
    m = _class_mask(xp, where, shape, ax)

    # allowed classes per row, and the masked class weights
    if m is None:
        k_n: float | Array = float(num_classes)
        cw = w
    else:
        k_n = xp.sum(xp.astype(m, dt), axis=-1, keepdims=True)
        cw = xp.astype(m, dt) if w is None else xp.where(m, w, 0.0)
        need = 2.0 if (convention == "others" and eps > 0) else 1.0
        few = k_n < need
        if _checks.any_true(xp, few):
            raise ValueError(
                f"where leaves fewer than {int(need)} allowed class(es) in some row"
                + (' (convention="others" needs two)' if need == 2.0 else "")
            )
    s_w: float | Array = k_n if cw is None else xp.sum(cw, axis=-1, keepdims=True)
    a, b = _smoothing_coefficients(xp, eps, k_n, convention)

    # -log p_c = l1 - z_c, both terms non-negative
    if log_probs:
        z = x if m is None else xp.where(m, x, 0.0)
        l1: float | Array = 0.0
        e = s = None
    else:
        z, e, s = _log_softmax_parts(xp, x, m)
        l1 = xp.log1p(s)
    a_n, b_n, s_w_n, l1_n = (_row(xp, v) for v in (a, b, s_w, l1))

    if soft:
        t = xp.reshape(xp.moveaxis(xp.astype(target, dt, copy=False), ax, -1), (-1, num_classes))
        q = (1.0 - eps) * t + (b if convention == "uniform" else b * (1.0 - t))
        if m is not None:
            q = xp.where(m, q, 0.0)
        wq = q if w is None else q * w  # w_c q_c: the target coefficient of every class
        row = xp.sum(_weighted(xp, wq, l1 - z), axis=-1)
        if kl:
            row = row + xp.sum(_weighted(xp, w, _xlogx(xp, q)), axis=-1)
        total_weight: float | Array = float(n_rows)
    else:
        classes = xp.arange(num_classes, device=dev)
        y = xp.astype(xp.reshape(target, (-1,)), classes.dtype)
        valid = y != ignore_index
        hit = classes == y[:, None]  # compared, never materialised as a float one-hot
        bad = valid & ((y < 0) | (y >= num_classes))
        if _checks.any_true(xp, bad):
            value = _checks.first_value(xp, y, bad)
            raise ValueError(
                f"target contains class index {value}, outside [0, {num_classes}) "
                f"and not ignore_index={ignore_index}"
            )
        if m is not None:
            bad = bad | (valid & ~xp.any(hit & m, axis=-1))
            if _checks.any_true(xp, bad):
                value = _checks.first_value(xp, y, bad)
                raise ValueError(f"target class {value} is masked out by where")
        w_y: float | Array = 1.0 if w is None else xp.take(w, xp.where(valid & ~bad, y, 0), axis=0)
        nll = l1_n - xp.sum(xp.where(hit, z, 0.0), axis=-1)  # -log p_y
        row = a_n * w_y * nll
        if eps > 0.0:
            # sum_c w_c (-log p_c) = S_w l1 + sum_c w_c (-z_c)
            row = row + b_n * (s_w_n * l1_n + xp.sum(_weighted(xp, cw, -z), axis=-1))
        if kl:
            row = row + w_y * _xlogx(xp, a_n + b_n) + _xlogx(xp, b_n) * (s_w_n - w_y)
        row = xp.where(bad, math.nan, xp.where(valid, row, 0.0))
        # the "mean" denominator: sum of w[y] over non-ignored positions
        total_weight = xp.sum(xp.astype(valid, dt) if w is None else xp.where(valid, w_y, 0.0))

    loss = None
    if want_loss:
        if reduction == "none":
            loss = xp.reshape(row, batch_shape)
        elif reduction == "sum":
            loss = xp.sum(row)
        else:
            loss = _safe_divide(xp, xp.sum(row), total_weight, math.nan)
        loss = xp.astype(loss, in_dtype, copy=False)

    grad = None
    if want_grad:
        # g_c = Q p_c - w_c q_c with Q = sum_k w_k q_k; with log-probability input p drops out.
        # At a maximum (e_c = 1), p_c = 1 - s/(1+s) and g_c = (Q - w_c q_c) - Q s/(1+s), with
        # Q - w_c q_c in closed form: a confident, correct row then keeps full accuracy.
        if soft:
            q_w = xp.sum(wq, axis=-1, keepdims=True)
            rest = q_w - wq
        else:
            a_w_y = _col(xp, a_n * w_y)
            if isinstance(a_w_y, float):
                wq, rest = xp.astype(hit, dt) * a_w_y, xp.astype(~hit, dt) * a_w_y
            else:
                wq, rest = xp.where(hit, a_w_y, 0.0), xp.where(hit, 0.0, a_w_y)
            if eps > 0.0:
                wq = wq + b * (1.0 if cw is None else cw)
                rest = rest + b * (s_w - (1.0 if cw is None else cw))
            q_w = a_w_y + b * s_w
        if log_probs:
            g = -wq
        else:
            norm = 1.0 + s
            g = xp.where(e == 1.0, rest - q_w * (s / norm), q_w * (e / norm) - wq)
        if not soft:
            g = xp.where(bad[:, None], math.nan, xp.where(valid[:, None], g, 0.0))
        if reduction == "mean":
            g = g * _safe_divide(xp, 1.0, total_weight, 0.0)
        g = xp.moveaxis(xp.reshape(g, (*batch_shape, num_classes)), -1, ax)
        grad = xp.astype(g, in_dtype, copy=False)
    return loss, grad


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------

_SHARED_DOC = """
    Parameters
    ----------
    logits : array
        Unnormalised scores, real floating dtype, classes along ``axis``. float16 and
        bfloat16 are computed in float32 and the result is returned in the input dtype;
        float32 and float64 are computed in their own precision.
    target : array
        Either integer class indices with the shape of ``logits`` without the class axis,
        or class probabilities (soft / mixup / distillation targets) with the shape of
        ``logits``. As in PyTorch, the shape decides which.
    smoothing : float
        The label-smoothing factor eps in [0, 1].
    reduction : {"mean", "sum", "none"}
        PyTorch's rules. ``"none"``: one loss per position (0 at ignored positions).
        ``"sum"``: their sum. ``"mean"``: for class indices, the sum divided by
        ``sum_n w[y_n]`` over the non-ignored positions (their count without ``weight``);
        for probabilities, divided by the number of positions (weights are *not* in the
        denominator). If that denominator is 0 (every position ignored, or an empty
        batch) the mean is NaN and the gradient is zero, as in PyTorch.
    weight : array, optional
        Per-class weights of shape (K,), finite and non-negative. As in PyTorch the
        weight of class c multiplies every term of class c, so with smoothing the
        smoothing mass is weighted too (``loss_n = -sum_c w_c q_c log p_c``).
    ignore_index : int
        Positions whose class index equals it contribute 0 to the loss and the gradient
        and are left out of the ``"mean"`` denominator. Must be negative with probability
        targets (PyTorch raises there too).
    axis : int
        The class axis. ``-1`` (default) for (..., K); ``axis=1`` reproduces PyTorch's
        (N, C, d1, ...) layout.
    convention : {"uniform", "others"}
        ``"uniform"`` (PyTorch, timm, optax, Keras, Szegedy et al. 2016):
        ``q = (1 - eps) onehot(y) + eps / K``; probabilities ``t`` become
        ``(1 - eps) t + eps / K``.
        ``"others"`` (fairseq, seeds 000/001/004): ``1 - eps`` on the true class and
        ``eps / (K - 1)`` on each other class; probabilities become
        ``(1 - eps) t + eps (1 - t) / (K - 1)``, which reduces to that for one-hot ``t``.
        eps_uniform = eps_others * K / (K - 1) maps one onto the other.
    where : array of bool, optional
        Broadcastable to ``logits``; True marks an allowed class (optax's name). Masked
        classes get no target mass, leave the softmax normalisation, add nothing to the
        loss and get a zero gradient. K in the smoothing mass becomes the row's number of
        allowed classes. A class index pointing at a masked class is an error (NaN when
        values cannot be checked, e.g. under ``jax.jit``).
    log_probs : bool
        If True, ``logits`` already hold log-probabilities (e.g. from a log-softmax, or
        the log of a probability table) and are used as given: the loss is
        ``-sum_c w_c q_c logits_c`` and the gradient is taken with respect to these
        log-probabilities, as in ``torch.nn.functional.nll_loss`` and ``KLDivLoss``.

    Notes
    -----
    Non-finite logits: NaN anywhere in a row's allowed logits, or a ``+inf`` logit, makes
    that row NaN. A ``-inf`` logit is harmless where its class carries no target mass
    (masked by ``where``, weight 0, probability 0, or eps = 0 and not the target): the
    term counts as 0 (0 * log 0 = 0), where PyTorch gives NaN. If it does carry mass, the
    loss is ``+inf``. Ignored positions never contribute, whatever their logits.

    Bad values (class indices out of range, negative weights, ``where`` rows with too
    few allowed classes) raise ``ValueError`` on eager arrays. Where the values cannot
    be read (under ``jax.jit`` tracing, Dask) the affected positions give NaN instead.
"""


def _public_doc(doc: str) -> str:
    return doc.replace("    {shared}\n", _SHARED_DOC)


def loss_and_grad(
    logits: Array,
    target: Array,
    smoothing: float = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int = -100,
    axis: int = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
) -> tuple[Array, Array]:
    """Label-smoothed cross-entropy and its gradient with respect to ``logits``, in one pass.

    Returns ``(loss, grad)`` with ``grad = d loss / d logits`` of the shape of
    ``logits``. For ``reduction="none"`` the gradient is that of the sum of the
    per-position losses. The gradient is the analytic one,

        d loss_n / d x_c = (sum_k w_k q_k) softmax(x)_c - w_c q_c,

    divided by the ``"mean"`` denominator where that applies.

    {shared}
    """
    loss, grad = _evaluate(
        logits,
        target,
        smoothing,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        axis=axis,
        convention=convention,
        where=where,
        log_probs=log_probs,
        kl=False,
        want_loss=True,
        want_grad=True,
    )
    return loss, grad


def cross_entropy(
    logits: Array,
    target: Array,
    smoothing: float = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int = -100,
    axis: int = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
) -> Array:
    """Softmax cross-entropy against label-smoothed targets.

    For each position n with smoothed target distribution q (see ``convention``) and
    class weights w (all 1 by default),

        loss_n = -sum_c w_c q_c log softmax(x)_c,

    reduced over positions by ``reduction``. With ``smoothing=0`` this is the plain
    cross-entropy, equal to ``torch.nn.functional.cross_entropy``; with the uniform
    convention it equals ``cross_entropy(..., label_smoothing=smoothing)`` including
    ``weight``, ``ignore_index`` and ``reduction`` (Szegedy et al., "Rethinking the
    Inception Architecture for Computer Vision", CVPR 2016, section 7).

    The log-sum-exp is evaluated as max + log1p(sum of the other exponentials), so
    float64 results are within a few ulp of the exact value also for tiny losses.
    Integer targets are never expanded into a dense one-hot array.

    {shared}
    """
    loss, _ = _evaluate(
        logits,
        target,
        smoothing,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        axis=axis,
        convention=convention,
        where=where,
        log_probs=log_probs,
        kl=False,
        want_loss=True,
        want_grad=False,
    )
    return loss


def cross_entropy_grad(
    logits: Array,
    target: Array,
    smoothing: float = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int = -100,
    axis: int = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
) -> Array:
    """Analytic gradient of :func:`cross_entropy` with respect to ``logits``.

    ``d loss_n / d x_c = (sum_k w_k q_k) softmax(x)_c - w_c q_c`` (divided by the
    ``"mean"`` denominator); zero at ignored positions and masked classes. For
    ``reduction="none"`` it is the gradient of the sum of the per-position losses.
    It is also the gradient of :func:`kl_divergence`, which differs by a constant.

    {shared}
    """
    _, grad = _evaluate(
        logits,
        target,
        smoothing,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        axis=axis,
        convention=convention,
        where=where,
        log_probs=log_probs,
        kl=False,
        want_loss=False,
        want_grad=True,
    )
    return grad


def kl_divergence(
    logits: Array,
    target: Array,
    smoothing: float = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int = -100,
    axis: int = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
) -> Array:
    """KL(q || p) between the smoothed targets and the predicted distribution.

        loss_n = sum_c w_c q_c (log q_c - log p_c) = cross_entropy_n - (weighted) H(q),

    with 0 log 0 = 0. It differs from :func:`cross_entropy` by the entropy of q, which
    does not depend on the logits: both have the same gradient (use
    :func:`cross_entropy_grad`), and the KL form is 0 at a perfect prediction. This is the
    loss of the Annotated Transformer (``nn.KLDivLoss`` on smoothed targets, seed 004);
    with ``reduction="sum"`` it matches ``KLDivLoss(reduction="sum")``, and
    ``"mean"`` divides like :func:`cross_entropy` (PyTorch's ``"batchmean"`` for 2-D
    inputs without ignored positions), not by the number of elements.

    {shared}
    """
    loss, _ = _evaluate(
        logits,
        target,
        smoothing,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        axis=axis,
        convention=convention,
        where=where,
        log_probs=log_probs,
        kl=True,
        want_loss=True,
        want_grad=False,
    )
    return loss


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
      others (fairseq; seeds 000, 001, 004); probabilities t give
      ``(1 - eps) t + eps (1 - t) / (K - 1)``.

    ``dtype`` defaults to the namespace's default floating dtype for integer labels and
    to the labels' dtype for probabilities. This is the only function that
    materialises targets; the losses never need them. Class indices outside
    ``[0, num_classes)`` raise ``ValueError`` (NaN rows where values cannot be read).
    """
    xp = array_namespace(labels)
    eps = _checks.check_smoothing(smoothing)
    _checks.check_choice("convention", convention, _checks.CONVENTIONS)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    _checks.check_num_classes(num_classes, convention, "num_classes")
    dev = get_device(labels)
    k = float(num_classes)
    off = eps / k if convention == "uniform" else eps / (k - 1.0)
    if xp.isdtype(labels.dtype, "real floating"):
        ax = _checks.check_axis(axis, labels.ndim)
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
    ax = _checks.check_axis(axis, labels.ndim + 1)
    out_dtype = xpx.default_dtype(xp, device=dev) if dtype is None else dtype
    bad = (labels < 0) | (labels >= num_classes)
    if _checks.any_true(xp, bad):
        value = _checks.first_value(xp, labels, bad)
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
    """
    xp = array_namespace(labels)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
    if labels.ndim < 1:
        raise ValueError("labels must have a batch axis to flip")
    q = smooth_labels(labels, num_classes, smoothing, convention=convention, dtype=dtype)
    return lam * q + (1.0 - lam) * xp.flip(q, axis=0)


for _f in (loss_and_grad, cross_entropy, cross_entropy_grad, kl_divergence):
    _f.__doc__ = _public_doc(_f.__doc__ or "")
