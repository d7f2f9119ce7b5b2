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
from array_api_compat import is_torch_namespace, is_writeable_array

from ls_xp import _math, _plan
from ls_xp import _validate as v
from ls_xp._labels import (  # (class_indices, total_weight: the fused and parallel losses import them here)
    checked_indices,
    class_indices,  # noqa: F401
    row_factors,
    total_weight,  # noqa: F401
)
from ls_xp._math import BlockOut, BlockRows, Spec
from ls_xp._numeric import astype, is_zero, move_axis, safe_divide
from ls_xp._picks import Picks, scatters_in_place, take_class
from ls_xp._plan import device_of
from ls_xp._shift import Shift

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
    grad_in_compute_dtype: bool = False  # ... and its gradient (for a caller that sums it further)
    # a scale of the z-loss terms' factors: the fused loss evaluates blocks as sums and divides
    # by the weighted "mean" denominator at the end, so its z-terms come scaled by total / count
    z_scale: float | Array = 1.0
    # the incoming gradient of the losses (the shape of the "none" losses, or 0-d), which
    # the logits' gradient is multiplied by (only the logits' gradient is then wanted): it
    # is folded into the row factors, so that a compiler sees it enter the gradient at the
    # first operation over the classes, and saves the logits and per-row statistics for
    # the backward pass rather than a finished N x K gradient (:mod:`ls_xp.torch._traced`)
    grad_scale: Array | None = None
    # the logits come multiplied by this (with a softcap: the fused loss scales its hidden
    # rows and bias by the cap's argument factor, D + 1 products a row, not V, and the
    # core skips its first step, x / c; see _softcap.argument_scale)
    logits_scale: float = 1.0


class Aux(NamedTuple):
    """Statistics of the same pass as the loss (``return_aux=True``); none carries a gradient.

    Attributes
    ----------
    lse : array
        The log-sum-exp of each position's (softcapped) logits, the shape of the
        per-position losses; 0 at ignored positions.
    z_loss : array
        The z-loss term, ``z_loss * lse**2`` summed over the counted positions and reduced
        as the loss is (``"mean"``: divided by their number, also with class weights).
    accuracy : array
        Whether each position's first argmax is its target class (for probability
        targets: the target's first argmax): the fraction of the counted positions for
        ``"mean"``, their number for ``"sum"``, 1 or 0 per position for ``"none"`` (0 at
        ignored positions).
    count : array
        The number of counted (not ignored) positions, a 0-d integer array: the
        normaliser across micro-batches and ranks (HF's ``num_items_in_batch``).
    """

    lse: Array
    z_loss: Array
    accuracy: Array
    count: Array


class Result(NamedTuple):
    """What one evaluation returns; fields that were not asked for are None."""

    loss: Array | None
    grad: Array | None  # d loss / d logits
    target_grad: Array | None  # d loss / d target (probability targets)
    smoothing_grad: Array | None  # d loss / d smoothing, the shape of ``loss``
    aux: Aux | None = None


@dataclass(frozen=True)
class _Rows:
    """The inputs laid out as rows, and the per-row bookkeeping."""

    block: BlockRows  # what every block reads: (N, K) and (N, 1) arrays
    classes: Array | None  # arange(K) where a mask needs it, else made by the blocks if needed
    total_weight: float | Array  # the "mean" denominator
    nonzero: Array | None  # total_weight != 0, where it is an array
    count: float | Array  # the number of counted rows (the z-loss's "mean" denominator)
    ignored: bool | None = None  # whether a row is ignored, where the label check found out


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
    xp = _plan.namespace(logits)
    plan = _plan.plan(logits)
    read = plan == "cpu" if opts.check_values is None else opts.check_values
    v.check_floating(xp, logits, "logits")
    if logits.ndim < 1:
        raise ValueError("logits must have at least one dimension (the class axis)")
    shape = v.check_known_shape(logits, "logits")
    ax = v.check_axis(opts.axis, logits.ndim)
    dev = device_of(logits)
    dt = _plan.compute_dtype(xp, logits.dtype)  # float16/bfloat16 compute in float32
    sp = Spec(
        eps=v.check_smoothing(xp, smoothing, dt, dev, read), convention=opts.convention,
        log_probs=opts.log_probs, kl=req.kl, dtype=dt, want_grad=req.grad,
        want_target_grad=req.target_grad, want_eps_grad=req.smoothing_grad, guard_rows=False,
        inplace=req.inplace, logits_are_ours=False, workers=opts.workers, plan=plan, read=read,
        z_loss=opts.z_loss, softcap=opts.softcap, want_aux=opts.return_aux, z_scale=req.z_scale,
        logits_scale=req.logits_scale if opts.softcap is not None else 1.0,
    )  # fmt: skip
    v.check_num_classes(shape[ax], sp.convention, "number of classes (logits.shape[axis])")
    target, weight, where = v.inputs_like(xp, dev, target, weight, where)
    shifted = None
    if opts.shift:
        shifted = Shift.of(xp, logits, target, where, ax, opts)
        logits, target, where = shifted.logits, shifted.target, shifted.where

    rows = _rows(xp, sp, logits, target, weight, where, ax, opts)
    if req.grad_scale is not None:
        scale = req.grad_scale
        if shifted is not None and scale.ndim:
            scale = shifted.per_row(xp, scale)
        rows = _scaled(xp, rows, scale, sp.dtype)
    br = rows.block
    # ignored rows may hold non-finite logits: their logits are replaced in every block
    # (where the label check found whether there are any, it is not asked again)
    guard = br.valid is not None and (
        rows.ignored
        if rows.ignored is not None
        else not read or not _plan.is_concrete(br.valid) or v.any_true(xp, ~br.valid)
    )
    if guard or (req.target_grad and br.valid is not None):  # (else the Spec stands as it is)
        sp = sp._replace(want_target_grad=req.target_grad and br.valid is None, guard_rows=guard)
    grad_buf = None
    if req.grad and opts.overwrite_logits and shifted is None and _plan.can_overwrite(logits, ax, dt):
        grad_buf = logits  # each block's rows are read before its gradient replaces them
        sp = sp._replace(logits_are_ours=True)
    out = blocks(xp, sp, rows, _plan.block_rows(br.x, opts.chunk_size, plan), grad_buf)
    res = _assemble(xp, out, rows, logits, target, ax, opts, req)
    return res if shifted is None else shifted.restore(xp, res, opts)


def _scaled(xp: ModuleType, rows: _Rows, scale: Array, dt: Any) -> _Rows:
    """The row factors times the incoming gradient ``scale`` (one per row, or 0-d)."""
    s = xp.reshape(astype(xp, scale, dt), (-1, 1) if scale.ndim else ())
    br = rows.block
    fz = br.factor_z
    factor = br.factor * s
    block = br._replace(factor=factor, factor_z=factor if fz is br.factor else None if fz is None else fz * s)
    return _Rows(block, rows.classes, rows.total_weight, rows.nonzero, rows.count, rows.ignored)


def _assemble(
    xp: ModuleType,
    out: _Blocks,
    rows: _Rows,
    logits: Array,
    target: Array,
    ax: int,
    opts: v.Options,
    req: Request,
) -> Result:
    """The reductions of the per-row values, the gradients in the logits' layout and dtype,
    and the statistics."""
    shape = tuple(logits.shape)
    batch_shape, num_classes = shape[:ax] + shape[ax + 1 :], shape[ax]
    compute = _plan.compute_dtype(xp, logits.dtype)  # float16/bfloat16 computed in float32
    dt = compute if req.loss_in_compute_dtype else logits.dtype
    factor, factor_z = rows.block.factor, rows.block.factor_z

    def reduce(r: Array | None, at_zero: float) -> Array | None:
        return _reduce(xp, opts.reduction, factor, rows, batch_shape, dt, r, at_zero)

    def reduce_z(r: Array | None, at_zero: float) -> Array | None:
        return _reduce(xp, opts.reduction, factor_z, rows, batch_shape, dt, r, at_zero)

    def _unflatten(g: Array | None, dtype: Any) -> Array | None:
        if g is None or g is logits:
            return g  # the logits were overwritten in place, as the caller allowed
        if tuple(g.shape) != (*batch_shape, num_classes):
            g = xp.reshape(g, (*batch_shape, num_classes))
        return astype(xp, move_axis(xp, g, -1, ax), dtype)

    loss = reduce(out.row, math.nan) if req.loss else None
    z_term = None if out.z_row is None else reduce_z(out.z_row, 0.0)
    if loss is not None and z_term is not None:
        loss = loss + z_term
    aux = None
    if opts.return_aux:
        assert out.lse is not None and out.hit is not None
        valid = rows.block.valid
        lse = out.lse if valid is None else xp.where(valid, out.lse, 0.0)
        accuracy = reduce_z(out.hit, 0.0)
        assert accuracy is not None
        if opts.reduction == "mean":  # the fraction of no position: NaN
            if isinstance(rows.count, float):
                accuracy = accuracy if rows.count else accuracy * math.nan
            else:
                accuracy = xp.where(rows.count != 0, accuracy, math.nan)
        shape_z = batch_shape if opts.reduction == "none" else ()
        zero = xp.zeros(shape_z, dtype=dt, device=device_of(logits))
        aux = Aux(
            lse=astype(xp, xp.reshape(lse, batch_shape), dt),
            z_loss=zero if z_term is None else z_term,
            accuracy=accuracy,
            count=_count(xp, rows, logits),
        )
    return Result(
        loss=loss,
        grad=_unflatten(out.grad, compute if req.grad_in_compute_dtype else logits.dtype),
        target_grad=_unflatten(out.target_grad, target.dtype),
        smoothing_grad=reduce(out.eps_row, 0.0),  # a mean over nothing: NaN loss, zero derivatives
        aux=aux,
    )


def _count(xp: ModuleType, rows: _Rows, logits: Array) -> Array:
    index_dtype = _plan.index_dtype(xp, device_of(logits))
    if isinstance(rows.count, float):
        return xp.asarray(int(rows.count), dtype=index_dtype, device=device_of(logits))
    return xp.astype(rows.count, index_dtype)


def _reduce(
    xp: ModuleType,
    reduction: str,
    factor: float | Array | None,
    rows: _Rows,
    batch_shape: tuple[int, ...],
    dtype: Any,
    r: Array | None,
    at_zero: float,
) -> Array | None:
    """Per-row values ``r`` times the row factors (class indices: 0 at ignored rows, NaN at
    bad ones, 1 / the total weight for "mean"), then reduced."""
    if r is None:
        return None
    if not (isinstance(factor, float) or type(factor).__name__ == "SymFloat"):
        r = r * factor  # (per-row factors; a number, also a traced one, is one divisor)
    if reduction == "none":
        out = xp.reshape(r, batch_shape)
    elif reduction == "sum":
        out = xp.sum(r)
    elif rows.nonzero is None:  # probabilities: the mean over the positions
        out = safe_divide(xp, xp.sum(r), rows.total_weight, at_zero)
    else:  # (the factors are 0 where the total weight is 0: at_zero is 0 already)
        out = xp.sum(r) if at_zero == 0.0 else xp.where(rows.nonzero, xp.sum(r), at_zero)
    return astype(xp, out, dtype)


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
    dt, dev = sp.dtype, device_of(logits)
    soft = v.is_probability_target(xp, logits, target, ax)
    if soft and opts.ignore_index >= 0:
        raise ValueError(
            f"ignore_index={opts.ignore_index} is not supported with class-probability targets "
            "(as in PyTorch); leave it negative"
        )
    x = as_rows(xp, logits, ax)
    w = v.class_weight(xp, weight, num_classes, dt, sp.read)
    m = v.class_mask(xp, where, shape, ax)
    index_dtype = _plan.index_dtype(xp, dev)
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
        total = float(x.shape[0]) if isinstance(x.shape[0], int) else x.shape[0]  # (symbolic: >= 2, kept)
        factor = 1.0 if opts.reduction != "mean" else 1.0 / total if total else 0.0
        br = BlockRows(x, None, as_rows(xp, target, ax), None, m, w, None, w_sum, factor, factor)
        return _Rows(br, classes, total, None, total)
    return _index_rows(xp, sp, x, target, m, w, w_sum, classes, opts)


def _index_rows(
    xp: ModuleType,
    sp: Spec,
    x: Array,
    target: Array,
    m: Array | None,
    w: Array | None,
    w_sum: Array | None,
    classes: Array | None,
    opts: v.Options,
) -> _Rows:
    """The bookkeeping of class indices: which rows count, and each row's factor."""
    num_classes, dt = x.shape[1], sp.dtype
    index_dtype = _plan.index_dtype(xp, device_of(x))
    y = astype(xp, xp.reshape(target, (-1, 1)), index_dtype)  # a column, like every per-row array
    valid, ok, safe, ignored = checked_indices(xp, y, num_classes, opts.ignore_index, sp.read)
    if m is not None:
        assert classes is not None
        allowed = xp.any(m & (classes == y), axis=-1, keepdims=True)
        ok = allowed if ok is None else ok & allowed
        if sp.read and v.any_true(xp, valid & ~ok):
            value = v.first_value(xp, y, valid & ~ok)
            raise ValueError(f"target class {value} is masked out by where")
    w_y = None if w is None else take_class(xp, w, safe)
    total, nonzero, factor = row_factors(xp, opts.reduction, valid, ok, ignored, w_y, dt, device_of(x))
    # the z-loss and the accuracy count rows, not their weights: 1 / the number of counted
    # rows for "mean" (Liger-Kernel's z-loss); without weights that is the same factor
    factor_z: Array | None = factor
    count: float | Array = 0.0
    if sp.z_loss or sp.want_aux:
        count = xp.sum(xp.astype(valid, dt))
        if opts.reduction == "mean" and w is not None:
            per_count = safe_divide(xp, 1.0, count, 0.0)
            factor_z = xp.where(valid, per_count if ok is None else xp.where(ok, per_count, math.nan), 0.0)
    br = BlockRows(x, safe, None, valid, m, w, w_y, w_sum, factor, factor_z)  # (bad rows: NaN factors)
    return _Rows(br, classes, total, nonzero, count, ignored)


def as_rows(xp: ModuleType, a: Array, ax: int) -> Array:
    """``a`` laid out as (N, K) with the classes last (a view where possible; no operation
    at all when it already is)."""
    if a.ndim == 2 and ax == 1:
        return a
    return xp.reshape(move_axis(xp, a, ax, -1), (-1, a.shape[ax]))


class _Blocks(NamedTuple):
    """The blocks' results joined: (N, 1) per-row values and (N, K) gradients."""

    row: Array
    eps_row: Array | None
    grad: Array | None
    target_grad: Array | None
    z_row: Array | None
    lse: Array | None
    hit: Array | None


_ROW_COLUMNS: dict[int, Array] = {}


def _row_column(xp: ModuleType, n: int, device: Any) -> Array:
    """``arange(n)`` as an (n, 1) column, the row half of the index pairs: kept for NumPy,
    read-only (it is only ever an index), for the few small sizes a program calls with."""
    if _plan.kind_of_namespace(xp) != "numpy" or n > 4096 or _plan.compiling():
        return xp.arange(n, device=device)[:, None]
    rows = _ROW_COLUMNS.get(n)
    if rows is None:
        rows = xp.arange(n, device=device)[:, None]
        rows.flags.writeable = False  # (NumPy's own flag: no caller can write into it)
        if len(_ROW_COLUMNS) >= 64:
            _ROW_COLUMNS.clear()
        _ROW_COLUMNS[n] = rows
    return rows


def blocks(xp: ModuleType, sp: Spec, rw: _Rows, step: int, grad_buf: Array | None) -> _Blocks:
    """Run the block function over row blocks; per-row losses (and their derivatives in
    eps) and the (N, K) gradients, filled block by block where there is more than one."""
    br = rw.block
    n_rows, num_classes = br.x.shape
    dt, dev = sp.dtype, device_of(br.x)
    if n_rows == 0:  # nothing to evaluate (lazy reductions refuse empty input)
        empty = xp.zeros((0, num_classes), dtype=dt, device=dev)
        column = xp.zeros((0, 1), dtype=dt, device=dev)
        return _Blocks(
            column, column if sp.want_eps_grad else None, empty if sp.want_grad else None,
            empty if sp.want_target_grad else None, column if sp.z_loss else None,
            column if sp.want_aux else None, column if sp.want_aux else None,
        )  # fmt: skip
    dense = not (scatters_in_place(xp) and _plan.is_concrete(br.x))
    gathers = dense and is_torch_namespace(xp)
    rows = _row_column(xp, min(step, n_rows), dev)
    classes = rw.classes
    if dense and classes is None:
        classes = xp.arange(num_classes, device=dev)
    starts = range(0, n_rows, step) if step < n_rows else (0,)  # (one block: no guard on n_rows)
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
        if part.x.dtype != dt or (part.t is not None and part.t.dtype != dt):
            part = part._replace(
                x=astype(xp, part.x, dt), t=None if part.t is None else astype(xp, part.t, dt)
            )
        picks = Picks(rows if n == rows.shape[0] else rows[:n, ...], classes, dense, gathers)
        b = _math.block(xp, sp, part, picks)
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
    return _joined(xp, out, bufs)


def _joined(xp: ModuleType, out: list[BlockOut], bufs: dict[str, Any]) -> _Blocks:
    """The blocks' per-row values joined, and their gradients (filled into ``bufs`` where
    there were several blocks)."""
    if len(out) == 1:  # (one block: its rows are all the rows)
        b = out[0]
        return _Blocks(
            b.row, b.eps_row, bufs.get("grad", b.grad), bufs.get("target_grad", b.target_grad),
            b.z_row, b.lse, b.hit,
        )  # fmt: skip

    def _rows_of(field: str) -> Array | None:
        parts = [getattr(b, field) for b in out]
        return parts[0] if parts[0] is None else xp.concat(parts)

    return _Blocks(
        _rows_of("row"), _rows_of("eps_row"), bufs.get("grad", out[0].grad),
        bufs.get("target_grad", out[0].target_grad), _rows_of("z_row"), _rows_of("lse"), _rows_of("hit"),
    )  # fmt: skip
