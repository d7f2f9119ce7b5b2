"""One evaluation: rows -> blocks -> reduction.

:func:`evaluate` is the core of every public loss: it lays the inputs out as (N, K)
rows, does the per-row bookkeeping (which rows count, the ``"mean"`` denominator, each
row's factor in the reduction), runs the block formulas of :mod:`ls_xp._math` over row
blocks (:mod:`ls_xp._plan` sizes them and picks the threads) and reduces the per-row
losses. Its arguments have been normalised at the door (:class:`ls_xp._validate.Options`);
what is checked here are the array arguments against each other and, where the plan
allows reading values back, their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx
from array_api_compat import array_namespace, is_writeable_array
from array_api_compat import device as get_device

from ls_xp import _math, _plan
from ls_xp import _validate as v
from ls_xp._math import BlockOut, BlockRows, Spec
from ls_xp._numeric import astype, is_zero, move_axis, safe_divide
from ls_xp._picks import Picks, scatters_in_place, take_class

Array = Any


@dataclass(frozen=True)
class Request:
    """What the caller wants from one evaluation, and how it may be computed."""

    kl: bool = False  # the KL form: the cross-entropy minus the entropy of q
    loss: bool = True
    grad: bool = False  # d loss / d logits
    target_grad: bool = False  # d loss / d target (probability targets)
    smoothing_grad: bool = False  # d loss / d smoothing
    inplace: bool = True  # block temporaries may be written in place
    loss_in_compute_dtype: bool = False  # keep a half-precision input's loss in float32


class Result(NamedTuple):
    """What one evaluation returns; fields that were not asked for are None."""

    loss: Array | None
    grad: Array | None  # d loss / d logits
    target_grad: Array | None  # d loss / d target (probability targets)
    smoothing_grad: Array | None  # d loss / d smoothing, the shape of ``loss``


@dataclass(frozen=True)
class _Rows:
    """The inputs laid out as rows, and the per-row bookkeeping."""

    block: BlockRows  # what every block reads: (N, K) and (N, 1) arrays
    classes: Array | None  # arange(K) where a mask needs it, else made by the blocks if needed
    total_weight: float | Array  # the "mean" denominator
    nonzero: Array | None  # total_weight != 0, where it is an array


def evaluate(
    logits: Array,
    target: Array,
    smoothing: Any,
    weight: Array | None,
    where: Array | None,
    opts: v.Options,
    req: Request,
) -> Result:
    """Loss and derivatives in one blocked pass (the core of every public function)."""
    xp = array_namespace(logits)
    plan = _plan.plan(logits)
    read = plan == "cpu" if opts.check_values is None else opts.check_values
    v.check_floating(xp, logits, "logits")
    if logits.ndim < 1:
        raise ValueError("logits must have at least one dimension (the class axis)")
    shape = v.check_known_shape(logits, "logits")
    ax = v.check_axis(opts.axis, logits.ndim)
    dev = get_device(logits)
    dt = xp.result_type(logits.dtype, xp.float32)  # float16/bfloat16 compute in float32
    sp = Spec(
        eps=v.check_smoothing(xp, smoothing, dt, dev, read), convention=opts.convention,
        log_probs=opts.log_probs, kl=req.kl, dtype=dt, want_grad=req.grad,
        want_target_grad=req.target_grad, want_eps_grad=req.smoothing_grad, guard_rows=False,
        inplace=req.inplace, workers=opts.workers, plan=plan, read=read,
    )  # fmt: skip
    num_classes = shape[ax]
    v.check_num_classes(num_classes, sp.convention, "number of classes (logits.shape[axis])")
    target, weight, where = v.inputs_like(xp, dev, target, weight, where)

    rows = _rows(xp, sp, logits, target, weight, where, ax, opts)
    br = rows.block
    soft = br.valid is None
    # ignored rows may hold non-finite logits: their logits are replaced in every block
    guard = br.valid is not None and (
        not read or not _plan.is_concrete(br.valid) or v.any_true(xp, ~br.valid)
    )
    sp = sp._replace(want_target_grad=req.target_grad and soft, guard_rows=guard)
    grad_buf = None
    if req.grad and opts.overwrite_logits and _plan.can_overwrite(logits, ax, dt):
        grad_buf = logits  # each block's rows are read before its gradient replaces them
    step = _plan.block_rows(br.x, opts.chunk_size, plan)
    row, drow, grad, tgrad = blocks(xp, sp, rows, step, grad_buf)

    batch_shape = shape[:ax] + shape[ax + 1 :]
    out_dtype = dt if req.loss_in_compute_dtype else logits.dtype
    reduce = _Reduction(xp, opts.reduction, br.factor, rows, batch_shape, out_dtype)

    def _unflatten(g: Array | None, dtype: Any) -> Array | None:
        if g is None or g is logits:
            return g  # the logits were overwritten in place, as the caller allowed
        if tuple(g.shape) != (*batch_shape, num_classes):
            g = xp.reshape(g, (*batch_shape, num_classes))
        return astype(xp, move_axis(xp, g, -1, ax), dtype)

    return Result(
        loss=reduce(row, math.nan) if req.loss else None,
        grad=_unflatten(grad, logits.dtype),
        target_grad=_unflatten(tgrad, target.dtype),
        smoothing_grad=reduce(drow, 0.0),  # a mean over nothing: NaN loss, zero derivatives
    )


class _Reduction(NamedTuple):
    """Per-row values times the row factors (class indices: 0 at ignored rows, NaN at bad
    ones, 1 / the total weight for "mean"), then reduced."""

    xp: ModuleType
    reduction: str
    factor: float | Array
    rows: _Rows
    batch_shape: tuple[int, ...]
    dtype: Any

    def __call__(self, r: Array | None, at_zero: float) -> Array | None:
        xp = self.xp
        if r is None:
            return None
        if not isinstance(self.factor, float):
            r = r * self.factor
        if self.reduction == "none":
            out = xp.reshape(r, self.batch_shape)
        elif self.reduction == "sum":
            out = xp.sum(r)
        elif self.rows.nonzero is None:  # probabilities: the mean over the positions
            out = safe_divide(xp, xp.sum(r), self.rows.total_weight, at_zero)
        else:  # (the factors are 0 where the total weight is 0: at_zero is 0 already)
            out = xp.sum(r) if at_zero == 0.0 else xp.where(self.rows.nonzero, xp.sum(r), at_zero)
        return astype(xp, out, self.dtype)


def class_indices(
    xp: ModuleType, y: Array, num_classes: int, ignore_index: int, read: bool
) -> tuple[Array, Array, Array]:
    """(valid, ok, safe) of class indices: not ignored; in [0, K); and the indices
    clipped into [0, K), safe to gather with. An index neither ignored nor in range
    raises where values may be ``read``; elsewhere its rows become NaN downstream.
    (Clipping both finds the indices out of range and makes them safe.)"""
    valid = y != ignore_index
    safe = xp.minimum(xp.maximum(y, 0), num_classes - 1)  # (a clip without the wrapper's checks)
    ok = safe == y
    if read and v.any_true(xp, valid & ~ok):
        value = v.first_value(xp, y, valid & ~ok)
        raise ValueError(
            f"target contains class index {value}, outside [0, {num_classes}) "
            f"and not ignore_index={ignore_index}"
        )
    return valid, ok, safe


def total_weight(xp: ModuleType, valid: Array, w_y: Array | None, dtype: Any) -> Array:
    """The ``"mean"`` denominator of class indices: sum_n w[y_n] over the rows not ignored
    (their count without weights)."""
    if w_y is not None:
        return xp.sum(xp.where(valid, w_y, 0.0))
    return xp.sum(xp.astype(valid, dtype))


def _rows(
    xp: ModuleType,
    sp: Spec,
    logits: Array,
    target: Array,
    weight: Array | None,
    where: Array | None,
    ax: int,
    opts: v.Options,
) -> _Rows:
    """Checks on values and the per-row bookkeeping (O(N)): valid and bad positions, the
    ``"mean"`` denominator and each row's factor."""
    shape = tuple(logits.shape)
    num_classes = shape[ax]
    dt, dev = sp.dtype, get_device(logits)
    soft = v.is_probability_target(xp, logits, target, ax)
    if soft and opts.ignore_index >= 0:
        raise ValueError(
            f"ignore_index={opts.ignore_index} is not supported with class-probability targets "
            "(as in PyTorch); leave it negative"
        )
    x = as_rows(xp, logits, ax)
    w = v.class_weight(xp, weight, num_classes, dt, sp.read)
    m = v.class_mask(xp, where, shape, ax)
    index_dtype = xpx.default_dtype(xp, "indexing", device=dev)
    classes = None if m is None else xp.arange(num_classes, device=dev)
    w_sum = None if w is None else xp.sum(w)
    if m is not None:
        need = 2 if sp.convention == "others" and not is_zero(sp.eps) else 1
        few = xp.sum(xp.astype(m, index_dtype), axis=-1, dtype=index_dtype) < need
        if v.any_true(xp, few, sp.read):
            raise ValueError(
                f"where leaves fewer than {need} allowed class(es) in some row"
                + (' (convention="others" needs two)' if need == 2 else "")
            )
    if soft:
        total = float(x.shape[0])
        factor = 1.0 if opts.reduction != "mean" else safe_divide(xp, 1.0, total, 0.0)
        br = BlockRows(x, None, as_rows(xp, target, ax), None, m, w, None, w_sum, factor)
        return _Rows(br, classes, total, None)

    y = astype(xp, xp.reshape(target, (-1, 1)), index_dtype)  # a column, like every per-row array
    valid, ok, safe = class_indices(xp, y, num_classes, opts.ignore_index, sp.read)
    if m is not None:
        assert classes is not None
        ok = ok & xp.any(m & (classes == y), axis=-1, keepdims=True)
        if sp.read and v.any_true(xp, valid & ~ok):
            value = v.first_value(xp, y, valid & ~ok)
            raise ValueError(f"target class {value} is masked out by where")
    w_y = None if w is None else take_class(xp, w, safe)
    # each row's factor: 1 (1 / the total weight for "mean") where it counts, 0 where it
    # is ignored, NaN where its class index is bad
    total: float | Array = 1.0
    nonzero = None
    if opts.reduction == "mean":
        total = total_weight(xp, valid, w_y, dt)
        nonzero = total != 0  # shared with the loss's division by the same total
        per_row = safe_divide(xp, 1.0, total, 0.0, nonzero)
    else:
        per_row = xp.astype(valid, dt)
    factor = xp.where(valid, xp.where(ok, per_row, math.nan), 0.0)
    br = BlockRows(x, safe, None, valid, m, w, w_y, w_sum, factor)  # (bad rows: NaN factors)
    return _Rows(br, classes, total, nonzero)


def as_rows(xp: ModuleType, a: Array, ax: int) -> Array:
    """``a`` laid out as (N, K) with the classes last (a view where possible; no operation
    at all when it already is)."""
    if a.ndim == 2 and ax == 1:
        return a
    return xp.reshape(move_axis(xp, a, ax, -1), (-1, a.shape[ax]))


def blocks(
    xp: ModuleType, sp: Spec, rw: _Rows, step: int, grad_buf: Array | None
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Run the block function over row blocks; per-row losses (and their derivatives in
    eps) and the (N, K) gradients, filled block by block where there is more than one."""
    br = rw.block
    n_rows, num_classes = br.x.shape
    dt, dev = sp.dtype, get_device(br.x)
    if n_rows == 0:  # nothing to evaluate (lazy reductions refuse empty input)
        empty = xp.zeros((0, num_classes), dtype=dt, device=dev)
        column = xp.zeros((0, 1), dtype=dt, device=dev)
        return (
            column,
            column if sp.want_eps_grad else None,
            empty if sp.want_grad else None,
            empty if sp.want_target_grad else None,
        )
    dense = not (scatters_in_place(xp) and _plan.is_concrete(br.x))
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

    def run(i: int) -> tuple[BlockOut, Any]:
        """Block i, its gradient rows written into the buffers (in place where they are
        writeable, the only case with several threads); returns the block without them,
        and its gradient (kept alive until the thread's next block is written)."""
        sl = slice(starts[i], min(n_rows, starts[i] + step))
        n = sl.stop - sl.start
        part = br if step >= n_rows else br.rows(sl)
        part = part._replace(x=astype(xp, part.x, dt), t=None if part.t is None else astype(xp, part.t, dt))
        b = _math.block(xp, sp, part, Picks(rows if n == rows.shape[0] else rows[:n, ...], classes, dense))
        if not fill:
            return b, None
        for name, block in (("grad", b.grad), ("target_grad", b.target_grad)):
            if block is not None:
                bufs[name] = xpx.at(bufs[name], (sl, slice(None))).set(block)
        return b._replace(grad=None, target_grad=None), b.grad

    # threads only share buffers written in place (not lazy Dask graphs, not JAX arrays)
    shared = fill and _plan.is_concrete(br.x) and all(is_writeable_array(buf) for buf in bufs.values())
    threads = min(_plan.workers(xp, sp.workers, sp.plan), len(starts)) if shared and len(starts) > 1 else 1
    out = _plan.run_blocks(run, len(starts), threads)
    row = out[0].row if len(out) == 1 else xp.concat([b.row for b in out])
    drow = None
    if sp.want_eps_grad:
        drow = out[0].eps_row if len(out) == 1 else xp.concat([b.eps_row for b in out])
    return row, drow, bufs.get("grad", out[0].grad), bufs.get("target_grad", out[0].target_grad)
