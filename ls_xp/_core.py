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

Rows are evaluated in blocks (temporaries stay cache-sized) where arrays are eager and
mutable; there one entry per row (the target class, the first maximum) is read by a gather
and written by an in-place scatter. Lazy or immutable arrays get one block and boolean
masks instead, which a compiler fuses into the elementwise passes (:class:`_Picks`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import array_api_extra as xpx
from array_api_compat import array_namespace, is_writeable_array
from array_api_compat import device as get_device

from ls_xp import _checks

Array = Any
Reduction = Literal["mean", "sum", "none"]
Convention = Literal["uniform", "others"]

__all__ = ["mixup_targets", "smooth_labels"]


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


@functools.cache
def _scatters_in_place(xp: ModuleType) -> bool:
    """Whether ``xpx.at`` writes through integer-array indices in place in this namespace.

    True for NumPy, PyTorch, CuPy and Dask; False for JAX (immutable arrays) and
    array-api-strict (the standard does not require integer-array *assignment*). Where it
    is False, one entry per row is picked with a boolean mask instead (see :class:`_Picks`).
    """
    probe = xp.zeros(2)
    try:
        xpx.at(probe, xp.asarray([1])).set(1.0, copy=None)
    except (IndexError, TypeError, NotImplementedError, ValueError):
        return False
    return is_writeable_array(probe)


@dataclass(frozen=True)
class _Picks:
    """How a block of shape (n, K) reads and writes one entry per row, ``[i, cols[i]]``.

    ``offsets`` (``arange(n) * K``) turns columns into flat indices of the (n*K,) view,
    used for gathers and, on eager mutable arrays, for in-place scatters. ``dense`` picks
    with boolean masks ``classes == cols[:, None]`` instead: for lazy or immutable arrays
    (JAX, Dask, array-api-strict), where a comparison fuses into the elementwise passes
    under a compiler and a scatter would not.
    """

    offsets: Array
    classes: Array
    dense: bool


def _at(pk: _Picks, cols: Array) -> Array:
    """Where the entries [i, cols[i]] lie: flat indices, or a boolean (n, K) mask."""
    return pk.classes == cols[:, None] if pk.dense else pk.offsets + cols


def _take_per_row(xp: ModuleType, a: Array, pk: _Picks, cols: Array) -> Array:
    """``a[i, cols[i]]`` for every row i, shape (n,)."""
    return xp.take(xp.reshape(a, (-1,)), pk.offsets + cols)


def _put_per_row(
    xp: ModuleType, g: Array, at: Array, values: float | Array, *, add: bool, inplace: bool
) -> Array:
    """``g[i, cols[i]] = values[i]`` (or ``+=``) for every row i, with ``at = _at(pk, cols)``.

    In place where ``g`` is ours (``inplace``) and ``at`` holds indices; a boolean mask
    ``at`` gives an elementwise select.
    """
    if at.ndim == 2:
        v = _col(xp, values)
        return xp.where(at, g + v if add else v, g)
    n, num_classes = g.shape
    pos = xpx.at(xp.reshape(g, (-1,)), at)
    copy = None if inplace else True
    flat = pos.add(values, copy=copy, xp=xp) if add else pos.set(values, copy=copy, xp=xp)
    return xp.reshape(flat, (n, num_classes))


def _scale_shift(xp: ModuleType, a: Array, scale: Array, shift: Array | None, *, inplace: bool) -> Array:
    """``a * scale - shift``; in place in ``a`` if ``inplace`` (``a`` is ours), which saves
    two block-sized temporaries."""
    if not inplace:
        return a * scale if shift is None else a * scale - shift
    out = xpx.at(a)[...].multiply(scale, copy=None, xp=xp)
    return out if shift is None else xpx.at(out)[...].subtract(shift, copy=None, xp=xp)


def _log_softmax_parts(
    xp: ModuleType, x: Array, mask: Array | None, pk: _Picks, inplace: bool
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Shifted logits z = x - max, exp(z) but 0 at the maximum, and s with
    lse(x) = max + log1p(s), per row.

    s sums exp(z) over every allowed class but the first maximum (``top``), so that
    -log p_y = log1p(s) - z_y stays accurate when it is tiny. Masked classes get z = -inf.
    Returns (z, e, s, top, where top lies, the row maxima as a column).
    """
    xm = x if mask is None else xp.where(mask, x, -math.inf)
    if pk.dense:  # the first maximum without argmax, which compiles poorly (XLA on CPU)
        x_max = xp.max(xm, axis=-1, keepdims=True)
        last = xm.shape[-1] - 1  # also where a NaN row points
        top = xp.min(xp.where(xm == x_max, pk.classes, last), axis=-1)
    else:
        top = xp.astype(xp.argmax(xm, axis=-1), pk.offsets.dtype, copy=False)  # some devices lack int64
        x_max = _take_per_row(xp, xm, pk, top)[:, None]
    z = xm - x_max
    top_at = _at(pk, top)
    e = _put_per_row(xp, xp.exp(z), top_at, 0.0, add=False, inplace=inplace)
    s = xp.sum(e, axis=-1, keepdims=True)
    return z, e, s, top, top_at, x_max


def _move_axis(xp: ModuleType, a: Array, source: int, destination: int) -> Array:
    """``moveaxis``, skipped when it would not move anything."""
    if source % a.ndim == destination % a.ndim:
        return a
    return xp.moveaxis(a, source, destination)


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
    return xp.reshape(_move_axis(xp, full, axis, -1), (-1, shape[axis]))


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
    want_target_grad: bool = False,
    chunk_size: int | None = None,
    inplace: bool = True,
    overwrite_logits: bool = False,
) -> tuple[Array | None, Array | None, Array | None]:
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

    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int (rows per block) or None, got {chunk_size!r}")

    in_dtype = logits.dtype
    dt = xp.result_type(in_dtype, xp.float32)  # float16/bfloat16 compute in float32
    dev = get_device(logits)
    batch_shape = shape[:ax] + shape[ax + 1 :]
    x = xp.reshape(_move_axis(xp, logits, ax, -1), (-1, num_classes))  # a view where possible
    n_rows = x.shape[0]
    w = _class_weight(xp, weight, num_classes, dt)
    m = _class_mask(xp, where, shape, ax)
    classes = xp.arange(num_classes, device=dev)
    if m is not None:
        need = 2 if (convention == "others" and eps > 0) else 1
        few = xp.sum(xp.astype(m, classes.dtype), axis=-1, dtype=classes.dtype) < need
        if _checks.any_true(xp, few):
            raise ValueError(
                f"where leaves fewer than {need} allowed class(es) in some row"
                + (' (convention="others" needs two)' if need == 2 else "")
            )

    # per-row bookkeeping (O(N)): valid / bad positions, the "mean" denominator, row factors
    if soft:
        t = xp.reshape(_move_axis(xp, target, ax, -1), (-1, num_classes))
        y = valid = bad = None
        total_weight: float | Array = float(n_rows)
        factor: float | Array = 1.0 if reduction != "mean" else _safe_divide(xp, 1.0, total_weight, 0.0)
        guard_rows = False
    else:
        t = None
        y = xp.astype(xp.reshape(target, (-1,)), classes.dtype)
        valid = y != ignore_index
        bad = valid & ((y < 0) | (y >= num_classes))
        if _checks.any_true(xp, bad):
            value = _checks.first_value(xp, y, bad)
            raise ValueError(
                f"target contains class index {value}, outside [0, {num_classes}) "
                f"and not ignore_index={ignore_index}"
            )
        if m is not None:
            bad = bad | (valid & ~xp.any(m & (classes == y[:, None]), axis=-1))
            if _checks.any_true(xp, bad):
                value = _checks.first_value(xp, y, bad)
                raise ValueError(f"target class {value} is masked out by where")
        y = xp.where(valid & ~bad, y, 0)  # safe to gather with
        w_y = None if w is None else xp.take(w, y, axis=0)
        total_weight = xp.sum(xp.astype(valid, dt) if w_y is None else xp.where(valid, w_y, 0.0))
        unit = _safe_divide(xp, 1.0, total_weight, 0.0) if reduction == "mean" else 1.0
        factor = xp.where(bad, math.nan, xp.astype(valid, dt) * unit)
        # ignored rows may hold non-finite logits: mask their gradient rows explicitly
        guard_rows = not _checks.is_concrete(valid) or _checks.any_true(xp, ~valid)

    spec = _Spec(
        eps=eps, convention=convention, log_probs=log_probs, kl=kl, dtype=dt,
        want_grad=want_grad, want_target_grad=want_target_grad and soft, guard_rows=guard_rows,
        inplace=inplace,
    )  # fmt: skip
    w_sum = None if w is None else xp.sum(w)

    def _fill(buf: Array | None, sl: slice, block: Array | None) -> Array | None:
        """Write a block's rows into ``buf`` (allocated on first use), in place if possible."""
        if block is None:
            return buf
        if buf is None:
            buf = xp.empty((n_rows, num_classes), dtype=dt, device=dev)
        return xpx.at(buf, (sl, slice(None))).set(block)

    rows, grads, tgrads = [], [], []
    step = _block_rows(x, chunk_size)
    dense = not (_scatters_in_place(xp) and _checks.is_concrete(x))
    offsets = xp.arange(min(step, n_rows), device=dev) * num_classes
    grad_buf = tgrad_buf = None
    if want_grad and overwrite_logits and _can_overwrite(logits, ax, dt):
        grad_buf = logits  # each block's rows are read before its gradient replaces them
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        sl = slice(lo, hi)
        row, g, tg = _block(
            xp, spec, xp.astype(x[sl, ...], dt, copy=False),
            y=None if y is None else y[sl], t=None if t is None else xp.astype(t[sl, ...], dt, copy=False),
            valid=None if valid is None else valid[sl], bad=None if bad is None else bad[sl],
            m=None if m is None else m[sl, ...], w=w, w_y=None if soft or w_y is None else w_y[sl],
            w_sum=w_sum, factor=factor if isinstance(factor, float) else factor[sl],
            pk=_Picks(offsets[: hi - lo], classes, dense),
        )  # fmt: skip
        rows.append(row)
        if step >= n_rows and grad_buf is None:  # one block: no assembly
            grads.append(g)
            tgrads.append(tg)
            continue
        grad_buf = _fill(grad_buf, sl, g)
        tgrad_buf = _fill(tgrad_buf, sl, tg)
    if not rows:  # an empty batch: nothing to evaluate (lazy reductions refuse empty input)
        rows.append(xp.zeros((0,), dtype=dt, device=dev))
        grads.append(xp.zeros((0, num_classes), dtype=dt, device=dev) if want_grad else None)
        tgrads.append(xp.zeros((0, num_classes), dtype=dt, device=dev) if spec.want_target_grad else None)
    row = rows[0] if len(rows) == 1 else xp.concat(rows)

    loss = None
    if want_loss:
        if reduction == "none":
            loss = xp.reshape(row, batch_shape)
        elif reduction == "sum":
            loss = xp.sum(row)
        else:
            loss = _safe_divide(xp, xp.sum(row), total_weight, math.nan)
        loss = xp.astype(loss, in_dtype, copy=False)

    def _unflatten(g: Array | None, dtype: Any) -> Array | None:
        if g is None:
            return None
        return xp.astype(
            _move_axis(xp, xp.reshape(g, (*batch_shape, num_classes)), -1, ax), dtype, copy=False
        )

    if grad_buf is logits:
        grad = logits  # overwritten in place, as the caller allowed
    else:
        grad = _unflatten(grads[0] if grad_buf is None and grads else grad_buf, in_dtype)
    tgrad = _unflatten(tgrads[0] if tgrad_buf is None and tgrads else tgrad_buf, target.dtype)
    return loss, grad, tgrad


@dataclass(frozen=True)
class _Spec:
    """The static settings of one evaluation."""

    eps: float
    convention: str
    log_probs: bool
    kl: bool
    dtype: Any
    want_grad: bool
    want_target_grad: bool
    guard_rows: bool
    inplace: bool


# elements per block: temporaries of a block stay cache-sized (2 MiB each in float32).
# Measured at 4096 x 32000 float32 here: NumPy is flat from 2^18 to 2^19 and slower at
# 2^20; PyTorch, which pays a thread hand-off per operation, is 20% faster at 2^19.
_BLOCK_ELEMENTS = 1 << 19


def _can_overwrite(logits: Array, axis: int, dtype: Any) -> bool:
    """The gradient can go into the logits' own buffer: a concrete, writeable 2-D array
    with the classes last, already in the compute dtype."""
    return (
        logits.ndim == 2
        and axis == 1
        and logits.dtype == dtype
        and _checks.is_concrete(logits)
        and is_writeable_array(logits)
    )


def _block_rows(x: Array, chunk_size: int | None) -> int:
    """Rows per block. Blocks are used where arrays are ours to fill in place (NumPy,
    PyTorch, CuPy, array-api-strict); lazy or immutable arrays (Dask, JAX) are left to
    their own scheduler/compiler, in one block."""
    n_rows, num_classes = x.shape
    if chunk_size is not None:
        return chunk_size
    if not (_checks.is_concrete(x) and is_writeable_array(x)):
        return max(n_rows, 1)
    return max(1, _BLOCK_ELEMENTS // max(num_classes, 1))


def _block(
    xp: ModuleType,
    sp: _Spec,
    x: Array,
    *,
    y: Array | None,
    t: Array | None,
    valid: Array | None,
    bad: Array | None,
    m: Array | None,
    w: Array | None,
    w_y: Array | None,
    w_sum: Array | None,
    factor: float | Array,
    pk: _Picks,
) -> tuple[Array, Array | None, Array | None]:
    """Per-row losses, and the gradient rows times ``factor``, for one block of rows."""
    num_classes = x.shape[1]
    eps = sp.eps
    # allowed classes per row and the (masked) class weights cw; S_w = sum_c cw_c
    if m is None:
        k_n: float | Array = float(num_classes)
        cw = w
        s_w: float | Array = k_n if w_sum is None else w_sum
    else:
        mf = xp.astype(m, sp.dtype)
        k_n = xp.sum(mf, axis=-1, keepdims=True)
        cw = mf if w is None else xp.where(m, w, 0.0)
        s_w = xp.sum(cw, axis=-1, keepdims=True)
    a, b = _smoothing_coefficients(xp, eps, k_n, sp.convention)
    a_n, b_n, s_w_n = (_row(xp, v) for v in (a, b, s_w))

    # -log p_c = l1 - z_c, both terms non-negative
    if sp.log_probs:
        z = x if m is None else xp.where(m, x, 0.0)
        l1: float | Array = 0.0
        e = s = top = top_at = x_max = None
    else:
        z, e, s, top, top_at, x_max = _log_softmax_parts(xp, x, m, pk, sp.inplace)
        l1 = xp.log1p(s)
    l1_n = _row(xp, l1)
    r = _col(xp, factor)
    g = tg = None

    if t is not None:
        q = (1.0 - eps) * t + (b if sp.convention == "uniform" else b * (1.0 - t))
        if m is not None:
            q = xp.where(m, q, 0.0)
        wq = q if w is None else q * w  # w_c q_c: the target coefficient of every class
        nlp = l1 - z  # -log p
        row = xp.sum(_weighted(xp, wq, nlp), axis=-1)
        if sp.kl:
            row = row + xp.sum(_weighted(xp, w, _xlogx(xp, q)), axis=-1)
        if sp.want_grad:
            q_w = xp.sum(wq, axis=-1, keepdims=True)
            if sp.log_probs:
                g = -wq * r
            else:
                norm = 1.0 + s
                wq_top = _take_per_row(xp, wq, pk, top)[:, None]
                top_val = ((q_w - wq_top) - q_w * (s / norm)) * r
                g = _scale_shift(xp, e, q_w * r / norm, wq * r, inplace=sp.inplace and not pk.dense)
                g = _put_per_row(xp, g, top_at, _row(xp, top_val), add=False, inplace=sp.inplace)
        if sp.want_target_grad:
            # d q_c / d t_c = 1 - eps ("uniform") or 1 - eps - eps/(K-1) ("others")
            alpha = (1.0 - eps) if sp.convention == "uniform" else a
            dlt = nlp if not sp.kl else nlp + xp.log(xp.where(q > 0, q, 1.0)) + 1.0
            tg = _weighted(xp, cw, dlt) * (alpha * r)
        return row, g, tg

    wy = 1.0 if w_y is None else w_y
    x_y = _take_per_row(xp, x, pk, y)  # from the input: y is never masked
    z_y = x_y if x_max is None else x_y - _row(xp, x_max)
    row = a_n * wy * (l1_n - z_y)
    if eps > 0.0:
        # sum_c w_c (-log p_c) = S_w l1 + sum_c w_c (-z_c)
        smooth = -xp.sum(z, axis=-1) if cw is None else xp.sum(_weighted(xp, cw, -z), axis=-1)
        row = row + b_n * (s_w_n * l1_n + smooth)
    if sp.kl:
        row = row + wy * _xlogx(xp, a_n + b_n) + _xlogx(xp, b_n) * (s_w_n - wy)
    row = xp.where(bad, math.nan, xp.where(valid, row, 0.0))
    if sp.want_grad:
        # g_c = Q p_c - w_c q_c, Q = sum_k w_k q_k = a w_y + b S_w; with log-probabilities
        # p drops out. At the maximum, p = 1 - s/(1+s) and Q - w q in closed form keep a
        # confident, correct row exact.
        a_w_y = _col(xp, a_n * wy)
        on = a_w_y * r  # r is an array on this path
        off = None if eps == 0.0 else b * r * (1.0 if cw is None else cw)  # the b w_c q r part
        if sp.log_probs:
            base = xp.zeros(x.shape, dtype=sp.dtype, device=get_device(x))
            g = base if off is None else base - off
        else:
            q_w_r = (a_w_y + b * s_w) * r
            norm = 1.0 + s
            # e q_w r / (1 + s) - off, in place in e where e is ours; e is 0 at the
            # maximum, set exactly below
            g = _scale_shift(xp, e, q_w_r / norm, off, inplace=sp.inplace and not pk.dense)
        g = _put_per_row(xp, g, _at(pk, y), -_row(xp, on), add=True, inplace=sp.inplace)
        if not sp.log_probs:
            top_val = xp.where((top == y)[:, None], 0.0, on) - q_w_r * (s / norm)
            if eps > 0.0:
                if cw is None:
                    cw_top: float | Array = 1.0
                elif cw.ndim == 1:
                    cw_top = xp.take(cw, top)[:, None]
                else:
                    cw_top = _take_per_row(xp, cw, pk, top)[:, None]
                top_val = top_val + (b * (s_w - cw_top)) * r
            g = _put_per_row(xp, g, top_at, _row(xp, top_val), add=False, inplace=sp.inplace)
        if sp.guard_rows:
            g = xp.where(valid[:, None], g, 0.0)
    return row, g, None


# --------------------------------------------------------------------------------------
# target builders (the only functions that materialise targets)
# --------------------------------------------------------------------------------------


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
