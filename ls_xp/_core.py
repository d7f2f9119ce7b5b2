"""Label-smoothed softmax cross-entropy, written once against the Python array API standard.

Every function takes arrays of any array-API library (NumPy, PyTorch, JAX, CuPy, Dask,
array-api-strict), finds their namespace with ``array_namespace`` and computes with that
namespace only: no framework is imported here and there is no per-backend branch.

Notation (per position n, K classes, class axis moved last):

    z_c   = x_c - max_k x_k                       shifted logits, z <= 0
    L1    = log1p(sum_{c != argmax} exp(z_c))     so that  lse(x) = max(x) + L1
    -log p_c = L1 - z_c                           a sum of two non-negative numbers
    b     = eps / K ("uniform") or eps / (K - 1) ("others"), the smoothing mass of a class
    loss_n = (1 - eps) w_y (L1 - z_y) + b (S' L1 + sum'_c w_c (-z_c))
           = Q L1 - (1 - eps) w_y z_y - b sum'_c w_c z_c      (computed so; Q = 1 unweighted)
    d loss_n / d x_c   = Q p_c - w_c q_c,          Q = sum_k w_k q_k
    d loss_n / d eps   = -w_y (L1 - z_y) + (b / eps) (S' L1 + sum'_c w_c (-z_c))

where S' and sum' run over every allowed class ("uniform") or over the classes other than
y ("others"). Every factor is non-negative for every eps in [0, 1], so the loss is a sum
of non-negative numbers and keeps full relative accuracy, also for tiny losses of
confident, correct predictions (the log1p form avoids the cancellation in lse - x_y); a
factor of 0 makes its term 0 even against a -inf logit (0 * inf = 0, :func:`_weighted`).
The loss is affine in eps for fixed logits, so its eps-derivative is exact too.

The evaluation (:func:`_evaluate`) runs in three steps: checks and per-row bookkeeping
(:func:`_rows`), the block function over row blocks (:func:`_blocks`, :func:`_block`,
:func:`_index_block` / :func:`_soft_block`), and the reduction. Per-row quantities (the
labels, the row factors, max, s, L1) are (n, 1) columns throughout, so that they
broadcast against a block without a reshape (each one a launch on an accelerator). Rows
are evaluated in blocks where arrays are eager and mutable; there one entry per row (the
target class, the first maximum) is read by a gather and written by an in-place scatter.
Lazy or immutable arrays get one block and boolean masks instead, which a compiler fuses
into the elementwise passes (:class:`_Picks`). The execution plan
(:func:`ls_xp._checks.plan`) sizes the blocks and decides whether values may be read
back: never on an accelerator.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx
from array_api_compat import array_namespace, is_writeable_array
from array_api_compat import device as get_device

from ls_xp import _checks
from ls_xp._typing import Convention

Array = Any

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
    if _is_zero(eps):  # no smoothing: the one-hot, whatever the number of allowed classes
        return 1.0, 0.0
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


def _is_zero(v: float | Array) -> bool:
    """True only for a Python 0.0: an array eps (traced, or requiring grad) may be anything."""
    return isinstance(v, float) and v == 0.0


def _weighted(xp: ModuleType, coef: float | Array | None, v: float | Array) -> Any:
    """``coef * v`` with the convention 0 * (+-inf) = 0: a class or term with no target
    mass adds nothing, whatever its logit. ``None`` means 1."""
    if coef is None:
        return v
    if isinstance(coef, float):
        if coef == 1.0:
            return v
        if coef != 0.0:
            return coef * v
        return 0.0 if isinstance(v, float) else xp.zeros_like(v)
    if isinstance(v, float):  # (where() takes at most one number)
        return coef * v if math.isfinite(v) else xp.where(coef != 0, coef * v, 0.0)
    return coef * xp.where(coef != 0, v, 0.0)


def _xlogx(xp: ModuleType, u: Array | float) -> Array | float:
    """u log u with 0 log 0 = 0."""
    if isinstance(u, float):
        return u * math.log(u) if u > 0 else 0.0
    return xp.where(u > 0, u * xp.log(xp.where(u > 0, u, 1.0)), 0.0)


def _log_plus_one(xp: ModuleType, u: Array | float) -> Array | float:
    """log u + 1, the derivative of u log u: -inf at u = 0 (without a warning)."""
    if isinstance(u, float):
        return math.log(u) + 1.0 if u > 0 else -math.inf
    return xp.where(u > 0, xp.log(xp.where(u > 0, u, 1.0)) + 1.0, -math.inf)


def _safe_divide(
    xp: ModuleType, num: Array | float, den: Array | float, at_zero: float, nonzero: Array | None = None
) -> Array | float:
    """num / den, with ``at_zero`` (0 or NaN) where den == 0, and no floating-point warning.

    A zero denominator is replaced by inf (a finite num / inf = 0) or by NaN: three
    operations rather than a guarded division's four, which count as launches on an
    accelerator; two where the caller passes ``nonzero`` (``den != 0``) from an earlier
    division by the same ``den``. (A non-finite num over a zero den gives NaN either way.)"""
    if isinstance(den, float):
        return num / den if den != 0 else num * 0.0 + at_zero
    if not (at_zero == 0.0 or math.isnan(at_zero)):
        raise ValueError(f"_safe_divide: at_zero must be 0 or NaN, got {at_zero!r}")
    ok = den != 0 if nonzero is None else nonzero
    safe_den = xp.where(ok, den, math.inf if at_zero == 0.0 else math.nan)
    if isinstance(num, float) and num == 1.0:  # one operation (PyTorch's 1 / x is two)
        return xp.reciprocal(safe_den)
    return num / safe_den


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

    Per-row quantities are columns of shape (n, 1), the class indices ``cols`` too, so
    that they broadcast against the block with no reshape. On eager mutable arrays the
    entries are addressed by the index pair ``(rows, cols)`` with ``rows = arange(n)`` as a
    column: one gather or one in-place scatter each, giving or taking an (n, 1) column,
    with no flat view and no index arithmetic. ``dense`` picks with boolean masks
    ``classes == cols`` instead: for lazy or immutable arrays (JAX, Dask,
    array-api-strict), where a comparison fuses into the elementwise passes under a
    compiler and a scatter would not.
    """

    rows: Array  # (n, 1)
    classes: Array | None  # arange(K), for the dense picks
    dense: bool


def _at(pk: _Picks, cols: Array) -> Any:
    """Where the entries [i, cols[i]] lie: an index pair, or a boolean (n, K) mask."""
    return pk.classes == cols if pk.dense else (pk.rows, cols)


def _take_per_row(xp: ModuleType, a: Array, pk: _Picks, cols: Array) -> Array:
    """``a[i, cols[i]]`` for every row i, an (n, 1) column.

    Eager mutable arrays index directly with the pair (one gather; the indices are in
    range by construction, so ``take``'s wrapping of negative indices, three more
    operations on PyTorch, is not needed); the others ``take`` from the flat view (the
    standard's ``take`` wants 1-D indices; the reshapes are free under a compiler).
    """
    if not pk.dense:
        return a[pk.rows, cols]
    flat = xp.take(xp.reshape(a, (-1,)), xp.reshape(pk.rows * a.shape[-1] + cols, (-1,)))
    return xp.reshape(flat, (-1, 1))


def _take_class(xp: ModuleType, w: Array, cols: Array) -> Array:
    """``w[cols]`` of the class weights (K,) for an (n, 1) column of classes."""
    return xp.reshape(xp.take(w, xp.reshape(cols, (-1,)), axis=0), (-1, 1))


def _put_per_row(
    xp: ModuleType, g: Array, at: Any, values: float | Array, *, add: bool, inplace: bool
) -> Array:
    """``g[i, cols[i]] = values[i]`` (or ``+=``) for every row i, with ``at = _at(pk, cols)``
    and ``values`` a number or an (n, 1) column.

    In place where ``g`` is ours (``inplace``) and ``at`` is an index pair; a boolean mask
    ``at`` gives an elementwise select. An index pair is only formed for writeable arrays
    of the compute dtype (:func:`_blocks`), so the in-place write is a plain assignment:
    ``xpx.at`` would add a cast per write on PyTorch (its guard against mixed dtypes,
    which cannot occur here), one more launch on an accelerator.
    """
    if not isinstance(at, tuple):
        return xp.where(at, g + values if add else values, g)
    if inplace:
        g[at] = g[at] + values if add else values
        return g
    pos = xpx.at(g, at)  # a copy, written there
    return pos.add(values, copy=True, xp=xp) if add else pos.set(values, copy=True, xp=xp)


def _scale_shift(xp: ModuleType, a: Array, scale: Array, shift: Array | None, *, inplace: bool) -> Array:
    """``a * scale - shift``; in place in ``a`` if ``inplace`` (``a`` is ours), which saves
    two block-sized temporaries. The standard's in-place operators write in place where
    the library can (and rebind where it cannot, e.g. JAX): one operation each."""
    if not inplace:
        return a * scale if shift is None else a * scale - shift
    a *= scale
    if shift is not None:
        a -= shift
    return a


def _astype(xp: ModuleType, a: Array, dtype: Any) -> Array:
    """``astype`` only where the dtype differs (no operation at all otherwise)."""
    return a if a.dtype == dtype else xp.astype(a, dtype)


def _log_softmax_parts(
    xp: ModuleType, x: Array, mask: Array | None, pk: _Picks, inplace: bool
) -> tuple[Array, Array, Array, Array, Any, Array]:
    """Shifted logits z = x - max, exp(z) but 0 at the maximum, and s with
    lse(x) = max + log1p(s), per row.

    s sums exp(z) over every allowed class but the first maximum (``top``), so that
    -log p_y = log1p(s) - z_y stays accurate when it is tiny. Masked classes get z = -inf.
    Returns (z, e, s, top, where top lies, the row maxima); s, top and the maxima are
    (n, 1) columns.
    """
    xm = x if mask is None else xp.where(mask, x, -math.inf)
    if pk.dense:  # the first maximum without argmax, which compiles poorly (XLA on CPU)
        x_max = xp.max(xm, axis=-1, keepdims=True)
        last = xm.shape[-1] - 1  # also where a NaN row points
        top = xp.min(xp.where(xm == x_max, pk.classes, last), axis=-1, keepdims=True)
    else:  # (some devices lack int64: the indices take the dtype of rows)
        top = _astype(xp, xp.argmax(xm, axis=-1, keepdims=True), pk.rows.dtype)
        x_max = _take_per_row(xp, xm, pk, top)
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


# --------------------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------------------


def _class_weight(
    xp: ModuleType, weight: Array | None, num_classes: int, dtype: Any, read: bool
) -> Array | None:
    if weight is None:
        return None
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},) (one entry per class), got {tuple(weight.shape)}"
        )
    if not xp.isdtype(weight.dtype, ("real floating", "integral")):
        raise TypeError(f"weight must have a real dtype, got {weight.dtype}")
    w = _astype(xp, weight, dtype)
    bad = ~(w >= 0.0) | ~xp.isfinite(w)
    if _checks.any_true(xp, bad, read):
        value = _checks.first_value(xp, w, bad)
        raise ValueError(f"weight must be finite and non-negative, got an entry {value!r}")
    return w


def _class_indices(
    xp: ModuleType, y: Array, num_classes: int, ignore_index: int, read: bool
) -> tuple[Array, Array, Array]:
    """(valid, ok, safe) of class indices: not ignored; in [0, K); and the indices
    clipped into [0, K), safe to gather with. An index neither ignored nor in range
    raises where values may be ``read``; elsewhere its rows become NaN downstream.
    (Clipping finds the indices out of range and makes them safe in two operations.)"""
    valid = y != ignore_index
    safe = xp.clip(y, 0, num_classes - 1)
    ok = safe == y
    if read and _checks.any_true(xp, valid & ~ok):
        value = _checks.first_value(xp, y, valid & ~ok)
        raise ValueError(
            f"target contains class index {value}, outside [0, {num_classes}) "
            f"and not ignore_index={ignore_index}"
        )
    return valid, ok, safe


def _total_weight(xp: ModuleType, valid: Array, w_y: Array | None, dtype: Any) -> Array:
    """The ``"mean"`` denominator of class indices: sum_n w[y_n] over the rows not ignored
    (their count without weights)."""
    if w_y is not None:
        return xp.sum(xp.where(valid, w_y, 0.0))
    return xp.sum(xp.astype(valid, dtype))


def _class_mask(xp: ModuleType, where: Array | None, shape: tuple[int, ...], axis: int) -> Array | None:
    """``where`` broadcast to the logits and laid out as (N, K).

    It broadcasts like any array: a 1-D ``where`` of length K is therefore one class mask
    for every row. (optax's ``where`` in ``softmax_cross_entropy`` is the same; its
    ``safe_softmax_cross_entropy``-style per-example masks are ``ignore_index`` here.)
    """
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
# the one evaluation: checks and bookkeeping -> blocks -> assembly
# --------------------------------------------------------------------------------------


class Result(NamedTuple):
    """What one evaluation returns; fields that were not asked for are None."""

    loss: Array | None
    grad: Array | None  # d loss / d logits
    target_grad: Array | None  # d loss / d target (probability targets)
    smoothing_grad: Array | None  # d loss / d smoothing, the shape of ``loss``


@dataclass(frozen=True)
class _Spec:
    """The static settings of one evaluation."""

    eps: float | Array
    convention: str
    log_probs: bool
    kl: bool
    dtype: Any
    want_grad: bool
    want_target_grad: bool
    want_eps_grad: bool
    guard_rows: bool
    inplace: bool
    workers: int  # threads over row blocks (CPU plan)
    read: bool  # values may be read back (checks that raise); never on the accelerator plan


@dataclass(frozen=True)
class _Rows:
    """Per-row inputs of the evaluation, laid out as (N, K) / (N, 1)."""

    x: Array  # logits, classes last
    y: Array | None  # class indices as a column (N, 1), clipped into [0, K); or None
    t: Array | None  # probability targets, or None
    valid: Array | None  # not ignored, (N, 1)
    m: Array | None  # allowed classes
    w: Array | None  # class weights (K,)
    w_y: Array | None  # weight of each row's class, (N, 1)
    w_sum: Array | None
    factor: float | Array  # the reduction's factor of each row (NaN at bad rows), (N, 1)
    total_weight: float | Array  # the "mean" denominator
    nonzero: Array | None  # total_weight != 0, where it is an array
    classes: Array | None  # arange(K) where a mask needs it, else made by the blocks if needed


def _evaluate(
    logits: Array,
    target: Array,
    smoothing: Any = 0.1,
    *,
    reduction: str = "mean",
    weight: Array | None = None,
    ignore_index: Any = -100,
    axis: Any = -1,
    convention: str = "uniform",
    where: Array | None = None,
    log_probs: Any = False,
    kl: bool = False,
    want_loss: bool = True,
    want_grad: bool = False,
    want_target_grad: bool = False,
    want_smoothing_grad: bool = False,
    chunk_size: Any = None,
    workers: Any = None,
    inplace: bool = True,
    overwrite_logits: Any = False,
    check_values: Any = None,
    loss_in_compute_dtype: bool = False,
) -> Result:
    """Loss and derivatives in one blocked pass (the core of every public function).

    ``loss_in_compute_dtype`` keeps the loss (and its eps-derivative) in float32 for
    half-precision logits, for a caller that sums it further (:mod:`ls_xp._linear`)."""
    xp = array_namespace(logits)
    plan = _checks.plan(logits)
    read = plan == "cpu" if check_values is None else _checks.as_bool(check_values, "check_values")
    _checks.check_floating(xp, logits, "logits")
    if logits.ndim < 1:
        raise ValueError("logits must have at least one dimension (the class axis)")
    shape = _checks.check_known_shape(logits, "logits")
    ax = _checks.check_axis(axis, logits.ndim)
    dev = get_device(logits)
    dt = xp.result_type(logits.dtype, xp.float32)  # float16/bfloat16 compute in float32
    spec = _Spec(
        eps=_checks.check_smoothing(xp, smoothing, dt, dev, read),
        convention=_checks.check_choice("convention", convention, _checks.CONVENTIONS),
        log_probs=_checks.as_bool(log_probs, "log_probs"), kl=kl, dtype=dt, want_grad=want_grad,
        want_target_grad=want_target_grad, want_eps_grad=want_smoothing_grad, guard_rows=False,
        inplace=inplace, workers=_workers(xp, workers, plan), read=read,
    )  # fmt: skip
    _checks.check_choice("reduction", reduction, _checks.REDUCTIONS)
    ignore = _checks.as_int(ignore_index, "ignore_index")
    chunk_size = _checks.check_chunk_size(chunk_size)
    overwrite = _checks.as_bool(overwrite_logits, "overwrite_logits")
    num_classes = shape[ax]
    _checks.check_num_classes(num_classes, spec.convention, "number of classes (logits.shape[axis])")
    target, weight, where = _checks.inputs_like(xp, dev, target, weight, where)

    rows = _rows(xp, spec, logits, target, weight, where, ax, ignore, reduction)
    soft = rows.valid is None
    # ignored rows may hold non-finite logits: mask their gradient rows explicitly
    guard = rows.valid is not None and (
        not read or not _checks.is_concrete(rows.valid) or _checks.any_true(xp, ~rows.valid)
    )
    spec = replace(spec, want_target_grad=want_target_grad and soft, guard_rows=guard)
    grad_buf = None
    if want_grad and overwrite and _can_overwrite(logits, ax, dt):
        grad_buf = logits  # each block's rows are read before its gradient replaces them
    row, drow, grad, tgrad = _blocks(xp, spec, rows, _block_rows(rows.x, chunk_size, plan), grad_buf)

    batch_shape = shape[:ax] + shape[ax + 1 :]

    def _reduce(r: Array | None, at_zero: float) -> Array | None:
        """Per-row values times the row factors (class indices: 0 at ignored rows, NaN
        at bad ones, 1 / the total weight for "mean"), then reduced."""
        if r is None:
            return None
        if not isinstance(rows.factor, float):
            r = r * rows.factor
        if reduction == "none":
            out = xp.reshape(r, batch_shape)
        elif reduction == "sum":
            out = xp.sum(r)
        elif rows.nonzero is None:  # probabilities: the mean over the positions
            out = _safe_divide(xp, xp.sum(r), rows.total_weight, at_zero)
        else:  # (the factors are 0 where the total weight is 0: at_zero is 0 already)
            out = xp.sum(r) if at_zero == 0.0 else xp.where(rows.nonzero, xp.sum(r), at_zero)
        return _astype(xp, out, dt if loss_in_compute_dtype else logits.dtype)

    def _unflatten(g: Array | None, dtype: Any) -> Array | None:
        if g is None or g is logits:
            return g  # the logits were overwritten in place, as the caller allowed
        if tuple(g.shape) != (*batch_shape, num_classes):
            g = xp.reshape(g, (*batch_shape, num_classes))
        g = _move_axis(xp, g, -1, ax)
        return _astype(xp, g, dtype)

    return Result(
        loss=_reduce(row, math.nan) if want_loss else None,
        grad=_unflatten(grad, logits.dtype),
        target_grad=_unflatten(tgrad, target.dtype),
        smoothing_grad=_reduce(drow, 0.0),  # a mean over nothing: NaN loss, zero derivatives
    )


def _workers(xp: ModuleType, workers: Any, plan: str) -> int:
    """Threads over row blocks: the caller's ``workers``, else the library's default; the
    accelerator plan's few large blocks run one after another."""
    count = _checks.check_workers(workers)
    if plan != "cpu":
        return 1
    return _checks.default_workers(xp) if count is None else count


def _rows(
    xp: ModuleType,
    sp: _Spec,
    logits: Array,
    target: Array,
    weight: Array | None,
    where: Array | None,
    ax: int,
    ignore_index: int,
    reduction: str,
) -> _Rows:
    """Checks on values and the per-row bookkeeping (O(N)): valid and bad positions, the
    ``"mean"`` denominator and each row's factor."""
    shape = tuple(logits.shape)
    num_classes = shape[ax]
    dt, dev = sp.dtype, get_device(logits)
    soft = _is_probability_target(xp, logits, target, ax)
    if soft and ignore_index >= 0:
        raise ValueError(
            f"ignore_index={ignore_index} is not supported with class-probability targets "
            "(as in PyTorch); leave it negative"
        )
    x = _as_rows(xp, logits, ax)
    n_rows = x.shape[0]
    w = _class_weight(xp, weight, num_classes, dt, sp.read)
    m = _class_mask(xp, where, shape, ax)
    index_dtype = xpx.default_dtype(xp, "indexing", device=dev)
    classes = None if m is None else xp.arange(num_classes, device=dev)
    w_sum = None if w is None else xp.sum(w)
    if m is not None:
        need = 2 if sp.convention == "others" and not _is_zero(sp.eps) else 1
        few = xp.sum(xp.astype(m, index_dtype), axis=-1, dtype=index_dtype) < need
        if _checks.any_true(xp, few, sp.read):
            raise ValueError(
                f"where leaves fewer than {need} allowed class(es) in some row"
                + (' (convention="others" needs two)' if need == 2 else "")
            )
    if soft:
        t = _as_rows(xp, target, ax)
        total = float(n_rows)
        factor = 1.0 if reduction != "mean" else _safe_divide(xp, 1.0, total, 0.0)
        return _Rows(x, None, t, None, m, w, None, w_sum, factor, total, None, classes)

    y = _astype(xp, xp.reshape(target, (-1, 1)), index_dtype)  # a column, like every per-row array
    valid, ok, safe = _class_indices(xp, y, num_classes, ignore_index, sp.read)
    if m is not None:
        assert classes is not None
        ok = ok & xp.any(m & (classes == y), axis=-1, keepdims=True)
        if sp.read and _checks.any_true(xp, valid & ~ok):
            value = _checks.first_value(xp, y, valid & ~ok)
            raise ValueError(f"target class {value} is masked out by where")
    y = safe  # (ignored and bad rows are masked later)
    w_y = None if w is None else _take_class(xp, w, y)
    # each row's factor: 1 (1 / the total weight for "mean") where it counts, 0 where it
    # is ignored, NaN where its class index is bad
    total_weight: float | Array = 1.0
    nonzero = None
    if reduction == "mean":
        total_weight = _total_weight(xp, valid, w_y, dt)
        nonzero = total_weight != 0  # shared with the loss's division by the same total
        per_row = _safe_divide(xp, 1.0, total_weight, 0.0, nonzero)
    else:
        per_row = xp.astype(valid, dt)
    factor = xp.where(valid, xp.where(ok, per_row, math.nan), 0.0)
    return _Rows(x, y, None, valid, m, w, w_y, w_sum, factor, total_weight, nonzero, classes)


def _as_rows(xp: ModuleType, a: Array, ax: int) -> Array:
    """``a`` laid out as (N, K) with the classes last (a view where possible; no operation
    at all when it already is)."""
    if a.ndim == 2 and ax == 1:
        return a
    return xp.reshape(_move_axis(xp, a, ax, -1), (-1, a.shape[ax]))


def _blocks(
    xp: ModuleType, sp: _Spec, rw: _Rows, step: int, grad_buf: Array | None
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Run the block function over row blocks; per-row losses (and their derivatives in
    eps) and the (N, K) gradients, filled block by block where there is more than one."""
    n_rows, num_classes = rw.x.shape
    dt, dev = sp.dtype, get_device(rw.x)
    if n_rows == 0:  # nothing to evaluate (lazy reductions refuse empty input)
        empty = xp.zeros((0, num_classes), dtype=dt, device=dev)
        return (
            xp.zeros((0, 1), dtype=dt, device=dev),
            xp.zeros((0, 1), dtype=dt, device=dev) if sp.want_eps_grad else None,
            empty if sp.want_grad else None,
            empty if sp.want_target_grad else None,
        )
    dense = not (_scatters_in_place(xp) and _checks.is_concrete(rw.x))
    rows = xp.arange(min(step, n_rows), device=dev)[:, None]
    classes = rw.classes
    if dense and classes is None:
        classes = xp.arange(num_classes, device=dev)
    starts = range(0, n_rows, step)
    fill = len(starts) > 1 or grad_buf is not None  # several blocks fill whole arrays
    bufs: dict[str, Any] = {}
    if fill and sp.want_grad:
        bufs["grad"] = xp.empty((n_rows, num_classes), dtype=dt, device=dev) if grad_buf is None else grad_buf
    if fill and sp.want_target_grad:
        bufs["target_grad"] = xp.empty((n_rows, num_classes), dtype=dt, device=dev)

    def _sl(a: Any, sl: slice) -> Any:
        return a if a is None or isinstance(a, float) or step >= n_rows else a[sl, ...]

    def run(i: int) -> tuple[_BlockOut, Any]:
        """Block i, its gradient rows written into the buffers (in place where they are
        writeable, the only case with several threads); returns the block without them,
        and its gradient."""
        sl = slice(starts[i], min(n_rows, starts[i] + step))
        n = sl.stop - sl.start
        b = _block(
            xp, sp, _astype(xp, _sl(rw.x, sl), dt),
            y=_sl(rw.y, sl), t=None if rw.t is None else _astype(xp, _sl(rw.t, sl), dt),
            valid=_sl(rw.valid, sl), m=_sl(rw.m, sl), w=rw.w, w_y=_sl(rw.w_y, sl),
            w_sum=rw.w_sum, factor=_sl(rw.factor, sl),
            pk=_Picks(rows if n == rows.shape[0] else rows[:n, ...], classes, dense),
        )  # fmt: skip
        if not fill:
            return b, None
        for name, block in (("grad", b.grad), ("target_grad", b.target_grad)):
            if block is not None:
                bufs[name] = xpx.at(bufs[name], (sl, slice(None))).set(block)
        return b._replace(grad=None, target_grad=None), b.grad

    # threads only share buffers written in place (not lazy Dask graphs, not JAX arrays)
    shared = fill and _checks.is_concrete(rw.x) and all(is_writeable_array(buf) for buf in bufs.values())
    out = _run_blocks(run, len(starts), min(sp.workers, len(starts)) if shared else 1)
    row = out[0].row if len(out) == 1 else xp.concat([b.row for b in out])
    drow = None
    if sp.want_eps_grad:
        drow = out[0].eps_row if len(out) == 1 else xp.concat([b.eps_row for b in out])
    grad = bufs.get("grad", out[0].grad)
    tgrad = bufs.get("target_grad", out[0].target_grad)
    return row, drow, grad, tgrad


def _run_blocks(run: Callable[[int], tuple[_BlockOut, Any]], count: int, workers: int) -> list[_BlockOut]:
    """``run(i)`` for every block i, on ``workers`` threads (the caller's among them),
    each taking the next block when it is done with one; the results in block order.

    Blocks are independent and write disjoint rows, so the results do not depend on the
    threads, bit for bit. Threads help where the library runs each operation on one
    thread and releases the GIL while it computes (NumPy). Each thread keeps its previous
    block's gradient alive until the next one is written: the allocator then reuses its
    memory for the next block instead of handing the pages back to the OS and faulting
    them in again (glibc trims a free heap top; measured 0.73 s -> 0.23 s at 4096 x 32000
    float32 on NumPy).
    """
    out: list[Any] = [None] * count
    jobs = iter(range(count))
    lock = threading.Lock()
    failed = threading.Event()

    def work() -> None:
        _held = None  # the previous block's gradient, released only when the next is written
        while not failed.is_set():
            with lock:
                i = next(jobs, None)
            if i is None:
                return
            try:
                out[i], _held = run(i)
            except BaseException:
                failed.set()  # the other threads stop at their next block
                raise

    if workers <= 1:
        work()
        return out
    with concurrent.futures.ThreadPoolExecutor(workers - 1, thread_name_prefix="ls_xp") as pool:
        # each helper runs in a copy of the caller's context, so that context-local
        # settings (NumPy's errstate) hold in every block alike
        helpers = [pool.submit(contextvars.copy_context().run, work) for _ in range(workers - 1)]
        work()
        for h in helpers:
            h.result()  # (re-raises a helper's error)
    return out


# elements per block: temporaries of a block stay cache-sized (2 MiB each in float32).
# Measured at 4096 x 32000 float32 here: NumPy is flat from 2^18 to 2^19 and slower at
# 2^20. (PyTorch's CPU blocks are larger, chosen by its adapter: ls_xp.torch.)
_BLOCK_ELEMENTS = 1 << 19
# the accelerator plan: one block up to 2^28 elements (1 GiB of float32 temporaries), then
# equal blocks below that budget (8192 x 131072 float32: 4 blocks)
_ACCELERATOR_BLOCK_ELEMENTS = 1 << 28


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


def _block_rows(x: Array, chunk_size: int | None, plan: str = "cpu") -> int:
    """Rows per block. Blocks are used where arrays are ours to fill in place (NumPy,
    PyTorch, CuPy, array-api-strict); lazy or immutable arrays (Dask, JAX) are left to
    their own scheduler/compiler, in one block. The accelerator plan takes as few blocks
    as the memory budget allows: each block is a handful of launches, whatever its size."""
    n_rows, num_classes = x.shape
    if chunk_size is not None:
        return chunk_size
    if not (_checks.is_concrete(x) and is_writeable_array(x)):
        return max(n_rows, 1)
    if plan == "accelerator":
        blocks = -(-n_rows * num_classes // _ACCELERATOR_BLOCK_ELEMENTS)  # ceil
        return max(1, -(-n_rows // max(blocks, 1)))
    return max(1, _BLOCK_ELEMENTS // max(num_classes, 1))


class _BlockOut(NamedTuple):
    row: Array  # per-row losses, (n, 1), before the row factors (the reduction's)
    eps_row: Array | None  # per-row d loss / d eps, likewise
    grad: Array | None  # gradient rows times the row factor
    target_grad: Array | None


def _block(
    xp: ModuleType,
    sp: _Spec,
    x: Array,
    *,
    y: Array | None,
    t: Array | None,
    valid: Array | None,
    m: Array | None,
    w: Array | None,
    w_y: Array | None,
    w_sum: Array | None,
    factor: float | Array,
    pk: _Picks,
) -> _BlockOut:
    """Per-row losses, and the gradient rows times ``factor``, for one block of rows.

    The losses are not yet masked or scaled (the reduction multiplies them by the row
    factors); so that an ignored row (factor 0) adds exactly 0 whatever its logits, its
    logits are replaced by 0 and its classes all allowed where ``guard_rows`` says that
    ignored rows may be present."""
    num_classes = x.shape[1]
    if sp.guard_rows:
        assert valid is not None
        x = xp.where(valid, x, 0.0)
        m = m if m is None else m | ~valid
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
    ls = _LogSoftmax.of(xp, sp, x, m, pk)
    if t is not None:
        return _soft_block(xp, sp, ls, t, m, w, cw, k_n, factor, pk)
    assert y is not None
    return _index_block(xp, sp, ls, x, y, cw, w_y, k_n, s_w, factor, pk)


@dataclass(frozen=True)
class _LogSoftmax:
    """-log p_c = l1 - z_c with both terms non-negative, and what the gradient needs.

    With ``log_probs`` the inputs already are log p: z = x and l1 = 0.
    """

    z: Array
    z_is_ours: bool  # a fresh array that may be written in place
    l1: float | Array  # (n, 1)
    e: Array | None = None  # exp(z), 0 at the first maximum
    s: Array | None = None  # sum of e, (n, 1)
    top: Array | None = None  # the first maximum's column index, (n, 1)
    top_at: Any = None  # where it lies (_at)
    x_max: Array | None = None  # (n, 1)

    @staticmethod
    def of(xp: ModuleType, sp: _Spec, x: Array, m: Array | None, pk: _Picks) -> _LogSoftmax:
        if sp.log_probs:
            return _LogSoftmax(z=x if m is None else xp.where(m, x, 0.0), z_is_ours=m is not None, l1=0.0)
        z, e, s, top, top_at, x_max = _log_softmax_parts(xp, x, m, pk, sp.inplace)
        return _LogSoftmax(z, True, xp.log1p(s), e, s, top, top_at, x_max)


def _soft_block(
    xp: ModuleType,
    sp: _Spec,
    ls: _LogSoftmax,
    t: Array,
    m: Array | None,
    w: Array | None,
    cw: Array | None,
    k_n: float | Array,
    factor: float | Array,
    pk: _Picks,
) -> _BlockOut:
    """Probability targets: q = (1 - eps) t + eps/K, or (1 - eps) t + eps (1 - t)/(K - 1)."""
    eps, uniform = sp.eps, sp.convention == "uniform"
    a, b = _smoothing_coefficients(xp, eps, k_n, sp.convention)
    q = (1.0 - eps) * t + (b if uniform else b * (1.0 - t))
    if m is not None:
        q = xp.where(m, q, 0.0)
    wq = q if w is None else q * w  # w_c q_c: the target coefficient of every class
    nlp = ls.l1 - ls.z  # -log p
    row = xp.sum(_weighted(xp, wq, nlp), axis=-1, keepdims=True)
    if sp.kl:
        row = row + xp.sum(_weighted(xp, w, _xlogx(xp, q)), axis=-1, keepdims=True)
    drow = None
    if sp.want_eps_grad:  # q is affine in eps: dq/deps = -t + b(1) (uniform) or b(1)(1 - t)
        _, b1 = _smoothing_coefficients(xp, 1.0, k_n, sp.convention)
        dq = -t + (b1 if uniform else b1 * (1.0 - t))
        dq = dq if m is None else xp.where(m, dq, 0.0)
        wdq = dq if w is None else dq * w
        drow = xp.sum(_weighted(xp, wdq, nlp), axis=-1, keepdims=True)
        if sp.kl:  # d/deps of q log q = dq (log q + 1), -inf at q = 0
            drow = drow + xp.sum(_weighted(xp, wdq, _log_plus_one(xp, q)), axis=-1, keepdims=True)
    r = factor
    g = tg = None
    if sp.want_grad:
        q_w = xp.sum(wq, axis=-1, keepdims=True)
        if sp.log_probs:
            g = -wq * r
        else:
            assert ls.s is not None and ls.e is not None
            norm = 1.0 + ls.s
            wq_top = _take_per_row(xp, wq, pk, ls.top)
            top_val = ((q_w - wq_top) - q_w * (ls.s / norm)) * r
            g = _scale_shift(xp, ls.e, q_w * r / norm, wq * r, inplace=sp.inplace and not pk.dense)
            g = _put_per_row(xp, g, ls.top_at, top_val, add=False, inplace=sp.inplace)
    if sp.want_target_grad:
        # d q_c / d t_c = 1 - eps ("uniform") or 1 - eps - eps/(K-1) ("others")
        alpha = (1.0 - eps) if uniform else a
        dlt = nlp if not sp.kl else nlp + xp.log(xp.where(q > 0, q, 1.0)) + 1.0
        tg = _weighted(xp, cw, dlt) * (alpha * r)
    return _BlockOut(row, drow, g, tg)


def _index_block(
    xp: ModuleType,
    sp: _Spec,
    ls: _LogSoftmax,
    x: Array,
    y: Array,
    cw: Array | None,
    w_y: Array | None,
    k_n: float | Array,
    s_w: float | Array,
    factor: float | Array,
    pk: _Picks,
) -> _BlockOut:
    """Class indices. With b the smoothing mass of each allowed class and
    Q = sum_c w_c q_c = q_y w_y + b (S_w - w_y) (1 without class weights: q sums to 1),

        loss_n = Q l1 - (1 - eps) w_y z_y - b sum'_c w_c z_c,

    where sum' runs over every allowed class ("uniform": q_y = 1 - eps + b) or over the
    classes other than y ("others": q_y = 1 - eps). As l1 >= 0 and z <= 0, every term is
    non-negative for every eps in [0, 1]: the loss keeps full relative accuracy on the
    whole range, and a factor of 0 makes its term 0 also against a -inf logit
    (0 * inf = 0). Per-row quantities are (n, 1) columns.
    """
    eps, uniform = sp.eps, sp.convention == "uniform"
    smoothing = not _is_zero(eps)
    a, b = _smoothing_coefficients(xp, eps, k_n, sp.convention)
    q_y = (1.0 - eps) + b if uniform else 1.0 - eps
    wy = 1.0 if w_y is None else w_y
    others = b * (s_w - wy)  # b times the weight of the classes other than y
    q_w = 1.0 if cw is None else q_y * wy + others  # Q
    y_at = _at(pk, y)
    # y is never masked, so z_y = x_y - max. Eager arrays gather it from z (one operation,
    # before z changes below); under a compiler (dense picks) from x, so that z, which
    # then only feeds exp and a sum, is fused away instead of kept (XLA: 1 N x K
    # temporary instead of 2 at 2048 x 131072)
    if pk.dense and ls.x_max is not None:
        z_y = _take_per_row(xp, x, pk, y) - ls.x_max
    else:
        z_y = _take_per_row(xp, ls.z, pk, y)
    l1 = ls.l1
    # (l1 is finite or NaN, so Q l1 needs no 0 * inf guard)
    row = (l1 if cw is None else q_w * l1) - _weighted(xp, (1.0 - eps) * wy, z_y)
    z_sum = None  # sum'_c w_c z_c <= 0: every allowed class, or every class but y ("others")
    if smoothing or sp.want_eps_grad:
        z = ls.z
        if not uniform:
            z = _put_per_row(xp, z, y_at, 0.0, add=False, inplace=sp.inplace and ls.z_is_ours)
        z_sum = xp.sum(z if cw is None else _weighted(xp, cw, z), axis=-1, keepdims=True)
        if smoothing:
            row = row - _weighted(xp, b, z_sum)
    if sp.kl:  # minus the entropy of q: q_y on y, b on the S_w - w_y other weights
        row = row + wy * _xlogx(xp, q_y) + _xlogx(xp, b) * (s_w - wy)
    drow = None
    if sp.want_eps_grad:
        assert z_sum is not None
        drow = _index_eps_row(xp, sp, k_n, q_y, b, wy, s_w, l1, z_y, z_sum)
    g = None
    if sp.want_grad:
        coefs = (q_y, a, b, others, q_w)
        g = _index_grad(xp, sp, ls, y, y_at, cw, wy, coefs, s_w, factor, pk, smoothing)
    return _BlockOut(row, drow, g, None)


def _index_eps_row(
    xp: ModuleType,
    sp: _Spec,
    k_n: float | Array,
    q_y: float | Array,
    b: float | Array,
    wy: float | Array,
    s_w: float | Array,
    l1: Array,
    z_y: Array,
    z_sum: Array,
) -> Array:
    """d loss_n / d eps. The loss is (1 - eps) T1 + b T2 with T1 = w_y (l1 - z_y),
    T2 = S' l1 - sum'_c w_c z_c (S' the weight that sum' runs over) and b affine in eps,
    so this is exact: -T1 + db T2 (plus the entropy's derivative for the KL form)."""
    _, db = _smoothing_coefficients(xp, 1.0, k_n, sp.convention)
    t1 = _weighted(xp, wy, l1 - z_y)  # w_y (-log p_y)
    t2 = (s_w if sp.convention == "uniform" else s_w - wy) * l1 - z_sum
    d = _weighted(xp, db, t2) - t1
    if sp.kl:
        # d (q log q) = dq (log q + 1): -inf where q = 0 and dq > 0
        dq_y = -1.0 + db if sp.convention == "uniform" else -1.0
        d = (
            d
            + _weighted(xp, wy * dq_y, _log_plus_one(xp, q_y))
            + _weighted(xp, db * (s_w - wy), _log_plus_one(xp, b))
        )
    return d


def _index_grad(
    xp: ModuleType,
    sp: _Spec,
    ls: _LogSoftmax,
    y: Array,
    y_at: Array,
    cw: Array | None,
    wy: float | Array,
    coefs: tuple[Any, Any, Any, Any, Any],
    s_w: float | Array,
    factor: float | Array,
    pk: _Picks,
    smoothing: bool,
) -> Array:
    """g_c = (Q p_c - w_c q_c) r with Q = sum_k w_k q_k = q_y w_y + b (S_w - w_y).

    With log-probabilities p drops out. At the first maximum p = 1 - s/(1+s), and
    Q - w q there in closed form (b (S_w - w_y) if it is y, else q_y w_y + b (S_w - w_y -
    w_top)) keeps a confident, correct row exact.
    """
    # q = a onehot + b on allowed classes, q_y = a + b, others = b (S_w - w_y), q_w = Q
    q_y, a, b, others, q_w = coefs
    r = factor  # per row, an array on this path
    off = None  # the b w_c r part, (n, 1) or (n, K)
    if smoothing:
        off = b * r if cw is None else (b * r) * cw
    neg_on = (-a * wy) * r  # minus the rest of w_y q_y r, at y
    if sp.log_probs:
        base = xp.zeros(ls.z.shape, dtype=sp.dtype, device=get_device(ls.z))
        g = base if off is None else base - off
        return _put_per_row(xp, g, y_at, neg_on, add=True, inplace=sp.inplace)
    assert ls.s is not None and ls.top is not None
    q_w_r = r if cw is None else q_w * r  # (Q = 1 without weights)
    scale = q_w_r / (1.0 + ls.s)  # Q r / (1 + s): p_c = e_c / (1 + s)
    # e Q r / (1 + s) - off, in place in e where e is ours; e is 0 at the maximum, set
    # exactly below
    g = _scale_shift(xp, ls.e, scale, off, inplace=sp.inplace and not pk.dense)
    g = _put_per_row(xp, g, y_at, neg_on, add=True, inplace=sp.inplace)
    if smoothing:
        if cw is None:
            cw_top: float | Array = 1.0
        elif cw.ndim == 1:
            cw_top = _take_class(xp, cw, ls.top)
        else:
            cw_top = _take_per_row(xp, cw, pk, ls.top)
        at_y, elsewhere = others, q_y * wy + b * (s_w - wy - cw_top)
    else:
        at_y, elsewhere = 0.0, q_y * wy
    # r is an array here, so both values of where() are (no scalar to make an array of)
    q_top_r = xp.where(ls.top == y, at_y * r, elsewhere * r)
    top_val = q_top_r - scale * ls.s  # Q r (1 - s / (1 + s)) - q_top r, exactly
    return _put_per_row(xp, g, ls.top_at, top_val, add=False, inplace=sp.inplace)


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
      others (fairseq; the source notebook's formula); probabilities t give
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
    dev = get_device(labels)
    eps = _checks.check_smoothing(xp, smoothing, None, dev)
    _checks.check_choice("convention", convention, _checks.CONVENTIONS)
    num_classes = _checks.as_int(num_classes, "num_classes")
    _checks.check_num_classes(num_classes, convention, "num_classes")
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
    if _checks.any_true(xp, bad, _checks.plan(labels) == "cpu"):
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

    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> ls_xp.mixup_targets(np.array([0, 2]), 3, lam=0.75).tolist()
    [[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]]
    """
    xp = array_namespace(labels)
    lam_value = _checks.as_real(lam, "lam")
    if not 0.0 <= lam_value <= 1.0:
        raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
    if labels.ndim < 1:
        raise ValueError("labels must have a batch axis to flip")
    q = smooth_labels(labels, num_classes, smoothing, convention=convention, dtype=dtype)
    return lam_value * q + (1.0 - lam_value) * xp.flip(q, axis=0)
