"""Label-smoothed cross-entropy straight from hidden states and a classifier.

    loss(H, W, y) = cross_entropy(H W^T + b, y)        H: (N, D), W: (V, D), b: (V,)

evaluated over blocks B of rows so that the N x V logits never exist. For each block

    X_B  = H_B W^T + b                  (n_B x V: the only large temporary)
    G_B  = d loss / d X_B               (the core's analytic gradient, written over X_B)
    dH_B = G_B W                        (n_B x D)
    dW  += G_B^T H_B                    (V x D, accumulated over the blocks)
    db  += sum_n G_B[n, :]              (V,)

The per-row losses and G_B come from the core of :func:`ls_xp.cross_entropy` (the
log1p form with non-negative terms, the -inf rule, both conventions), so the fused loss
equals the unfused one up to the order of the matmul's additions. Nothing here imports a
framework: the adapters (``ls_xp.torch``, ``ls_xp.jax``) call :func:`setup` and
:func:`block` from their autodiff rules, the eager loop (:func:`evaluate_linear`) serves NumPy,
CuPy, array-api-strict and Dask (one lazy block: Dask's scheduler streams its row chunks).

The "mean" denominator (sum of w_y over the rows not ignored) depends on the targets
only, so it is computed once up front and every block is evaluated as a sum; the
gradients are scaled by it at the end, on the small (N x D, V x D) arrays.

Half precision: the logits of a float16/bfloat16 head are computed in its dtype (as the
unfused ``F.linear`` would), the loss and G_B in float32, and dW and db are accumulated
across blocks in ``accum_dtype`` (float32 by default: PyTorch's and Liger-Kernel's name),
each returned in its parameter's dtype. ``hidden`` and ``classifier`` of different float
dtypes are promoted as ``hidden @ classifier.T`` promotes them.

Reference: the same fusion as Liger-Kernel's ``FusedLinearCrossEntropy`` and Wijmans et
al., "Cut Your Losses in Large-Vocabulary Language Models" (2024), here for every
array-API library and with label smoothing in both conventions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx
from array_api_compat import array_namespace, is_writeable_array

from ls_xp import _plan, _softcap
from ls_xp import _validate as v
from ls_xp._evaluate import Aux, Request, class_indices, evaluate, total_weight
from ls_xp._numeric import astype, safe_divide
from ls_xp._plan import device_of
from ls_xp._shift import scored

Array = Any

# The CPU plan's blocks are sized in bytes, not rows: the peak of the fused loss is one block
# of logits (and, for half precision, its float32 gradient), the classifier's gradient and
# what the softmax of a piece of the block keeps alive, so a byte budget bounds it whatever
# V and the dtype. 16 MiB is 128 rows of float32 at V = 32768: the (V x n_B) @ (n_B x D)
# product of the classifier's gradient runs faster with more rows, so this is a trade of
# some speed for memory (a larger chunk_size buys it back).
BLOCK_BYTES = 1 << 24
# Each block's softmax runs in pieces of at most this many bytes of logits (each piece keeps
# a few temporaries of its size alive: shifted logits, exp, softcap's tanh). 4 MiB pieces
# (32 rows at V = 32768) held 96-112 MiB at 4096 x 256 x 32768 float32 against 136 MiB with
# 8 MiB pieces, at the same speed (2026-12-01); smaller pieces cost time: every operation
# of a piece is a parallel region of its own, and at 2 MiB a piece the CPU plan ran
# 1.5-1.9x slower on a loaded 2-core machine.
SOFTMAX_BYTES = 1 << 22


class LinearResult(NamedTuple):
    """What one fused evaluation returns; fields that were not asked for are None."""

    loss: Array | None
    grad_hidden: Array | None
    grad_classifier: Array | None
    grad_bias: Array | None
    smoothing_grad: Array | None  # d loss / d smoothing, the shape of ``loss``
    aux: Aux | None = None


@dataclass(frozen=True)
class Problem:
    """A checked fused problem, rows flattened: what every block needs."""

    xp: ModuleType
    hidden: Array  # (N, D), the caller's dtype
    classifier: Array  # (V, D), in the logits' dtype (promoted once if the dtypes differ)
    bias: Array | None  # (V,)
    target: Array  # (N,) class indices (shifted, with ignore_index at the end, for ``shift``)
    weight: Array | None  # (V,)
    eps: float | Array
    reduction: str
    ignore_index: int
    convention: str
    total: float | Array  # the "mean" denominator (1 for the other reductions)
    batch_shape: tuple[int, ...]
    read: bool
    plan: str
    opts: v.Options = v.DEFAULT_OPTIONS  # z_loss, softcap, return_aux, shift
    count: float | Array = 1.0  # the number of counted rows (the z-loss's "mean" denominator)
    accum: Any = None  # the dtype dW and db are accumulated in
    dtypes: tuple[Any, Any, Any] = (None, None, None)  # hidden's, classifier's, bias's


def setup(
    hidden: Array,
    classifier: Array,
    target: Array,
    smoothing: Any,
    bias: Array | None,
    weight: Array | None,
    opts: v.Options,
) -> Problem:
    """Check the arguments (shapes, dtypes, and label and weight values where they may be
    read) and compute the "mean" denominator."""
    xp = array_namespace(hidden)
    dev = device_of(hidden)
    plan = _plan.plan(hidden)
    read = plan == "cpu" if opts.check_values is None else opts.check_values
    v.check_floating(xp, hidden, "hidden")
    classifier = v.same_namespace(xp, dev, classifier, "classifier", like="hidden")
    bias = v.same_namespace(xp, dev, bias, "bias", like="hidden")
    target = v.same_namespace(xp, dev, target, "target", like="hidden")
    weight = v.same_namespace(xp, dev, weight, "weight", like="hidden")
    h_shape, num_classes = _check_shapes(xp, hidden, classifier, bias, target)
    dtypes = (hidden.dtype, classifier.dtype, None if bias is None else bias.dtype)
    logits_dtype = xp.result_type(*(d for d in dtypes if d is not None))
    classifier, bias = (None if a is None else astype(xp, a, logits_dtype) for a in (classifier, bias))
    convention, reduction, ignore = opts.convention, opts.reduction, opts.ignore_index
    v.check_num_classes(num_classes, convention, "number of classes (classifier.shape[0])")
    dt = xp.result_type(logits_dtype, xp.float32)
    eps = v.check_smoothing(xp, smoothing, dt, dev, read)
    w = v.class_weight(xp, weight, num_classes, dt, read)
    if opts.shift:
        target = _shifted(xp, target, h_shape, opts)
    y = xp.reshape(target, (-1,))
    valid, _, safe = class_indices(xp, y, num_classes, ignore, read)
    total: float | Array = 1.0
    if reduction == "mean":  # a bad index counts with its clipped class: its loss is NaN anyway
        total = total_weight(xp, valid, None if w is None else xp.take(w, safe, axis=0), dt)
    count = total if w is None or not (opts.z_loss or opts.return_aux) else total_weight(xp, valid, None, dt)
    return Problem(
        xp, xp.reshape(hidden, (-1, h_shape[-1])), classifier, bias, y, w, eps, reduction, ignore,
        convention, total, h_shape[:-1], read, plan, opts, count,
        v.check_accum_dtype(xp, opts.accum_dtype, dt), dtypes,
    )  # fmt: skip


def _shifted(xp: ModuleType, target: Array, h_shape: tuple[int, ...], opts: v.Options) -> Array:
    """The targets of the causal shift: target t + shift at position t, ``ignore_index``
    at the last ``shift`` positions (the hidden states are not copied)."""
    if len(h_shape) < 3 or tuple(target.shape) != h_shape[:-1]:
        raise ValueError(
            f"shift={opts.shift} needs hidden of shape (..., T, D) and target (..., T); got "
            f"{h_shape} and {tuple(target.shape)}"
        )
    if opts.shift >= h_shape[-2]:
        raise ValueError(f"shift={opts.shift} must be smaller than the sequence length {h_shape[-2]}")
    pad = xp.full(
        (*h_shape[:-2], opts.shift), opts.ignore_index, dtype=target.dtype, device=device_of(target)
    )
    return xp.concat([target[..., opts.shift :], pad], axis=-1)


def _check_shapes(
    xp: ModuleType, hidden: Array, classifier: Array, bias: Array | None, target: Array
) -> tuple[tuple[int, ...], int]:
    """hidden (..., D), classifier (V, D), bias (V,), target ``hidden.shape[:-1]`` of
    integers, real floating dtypes: the shape of ``hidden`` and V, or an error naming the
    argument."""
    h_shape = v.check_known_shape(hidden, "hidden")
    if len(h_shape) < 1:
        raise ValueError("hidden must have at least one dimension (the features), got a 0-d array")
    if classifier.ndim != 2 or classifier.shape[1] != h_shape[-1]:
        raise ValueError(
            f"classifier must have shape (V, {h_shape[-1]}) (nn.Linear.weight's layout: one row per "
            f"class, hidden.shape[-1] columns), got {tuple(classifier.shape)}"
        )
    num_classes = int(classifier.shape[0])
    for name, a in (("classifier", classifier), ("bias", bias)):
        if a is not None and not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{name} must have a real floating dtype, got {a.dtype}")
    if bias is not None and tuple(bias.shape) != (num_classes,):
        raise ValueError(f"bias must have shape ({num_classes},) (one per class), got {tuple(bias.shape)}")
    if tuple(target.shape) != h_shape[:-1] or not xp.isdtype(target.dtype, "integral"):
        raise ValueError(
            f"target must hold integer class indices of shape {h_shape[:-1]} (hidden.shape[:-1]), got "
            f"shape {tuple(target.shape)} and dtype {target.dtype}; probability targets are not "
            "supported here: use cross_entropy(hidden @ classifier.T, target)"
        )
    return h_shape, num_classes


class BlockOut(NamedTuple):
    row: Array  # per-row losses (n_B,)
    eps_row: Array | None  # per-row d loss / d eps
    grad_hidden: Array | None  # (n_B, D)
    grad_classifier: Array | None  # this block's part of dW (V, D), in the accumulation dtype
    grad_bias: Array | None  # this block's part of db (V,), likewise
    aux: Aux | None = None  # per-row statistics (lse, z-terms, hits), ``return_aux``


def block(
    p: Problem,
    hidden: Array,
    target: Array,
    *,
    want_grad: bool,
    want_smoothing_grad: bool,
    wants: tuple[bool, bool, bool] = (True, True, True),
    row_scale: Array | None = None,
    chunk_size: int | None = None,
    grad_classifier: Array | None = None,
) -> BlockOut:
    """One block of rows: its logits, the core's per-row losses and logit gradient (of
    the sum of the rows, times ``row_scale`` if given), and the products for the
    gradients in ``wants`` (hidden, classifier, bias). Given ``grad_classifier``, an
    eager accumulator, the block's G^T H is added into it in slices of classes (a
    V x D temporary per block would be as large as the accumulator itself)."""
    xp = p.xp
    hidden = astype(xp, hidden, p.classifier.dtype)
    # 1. the block's logits, in the head's dtype. A softcap c starts with x / c (2x / c on
    #    PyTorch's CPU route), and (h / c) W^T + b / c is that product in D + 1 products a
    #    row instead of V (not in half precision: h / c rounded to it would add its
    #    rounding to every logit)
    o = p.opts
    scale = 1.0
    if o.softcap is not None and _itemsize(xp, p.classifier.dtype) >= 4:
        torch_route = _softcap.by_torch(xp, p.plan, _plan.is_concrete(hidden))
        scale = _softcap.argument_scale(o.softcap, torch_route)
    logits = (hidden * scale if scale != 1.0 else hidden) @ xp.matrix_transpose(p.classifier)
    if p.bias is not None:
        logits = logits + (p.bias * scale if scale != 1.0 else p.bias)
    # 2. its rows summed (finish applies the "mean" factor); the gradient may replace the
    #    block's logits, which are ours, and stays in float32 where dW is summed in float32
    #    The labels were checked in setup; where values may be read (the CPU plan) the core
    #    reads them again per piece, so that pieces without ignored rows skip the row guard
    #    (a where() over the piece: one more pass and one more temporary)
    opts = v.Options(
        reduction="none", ignore_index=p.ignore_index, convention=p.convention,
        chunk_size=softmax_rows(p, chunk_size), overwrite_logits=True, check_values=p.read,
        z_loss=o.z_loss, softcap=o.softcap, return_aux=o.return_aux,
    )  # fmt: skip
    wide = p.accum is not None and p.accum != logits.dtype
    # (total weight over counted rows; 0 where no row counts, as the plain loss gives)
    z_scale = 1.0 if p.reduction != "mean" or p.total is p.count else safe_divide(p.xp, p.total, p.count, 0.0)
    req = Request(
        grad=want_grad, smoothing_grad=want_smoothing_grad, loss_in_compute_dtype=True,
        grad_in_compute_dtype=wide, z_scale=z_scale, logits_scale=scale,
    )  # fmt: skip
    res = evaluate(logits, target, p.eps, p.weight, None, opts, req)
    assert res.loss is not None
    g = res.grad  # in the buffer of ``logits`` where that is writeable
    del logits
    if g is None:
        return BlockOut(res.loss, res.smoothing_grad, None, None, None, res.aux)
    # 3. the products: dH_B = G_B W, dW += G_B^T H_B, db += sum_n G_B
    s = None if row_scale is None else row_scale[:, None]
    gh = gw = gb = None
    if wants[0]:  # scale the (n_B x D) factors, never the (n_B x V) gradient
        gh = astype(xp, g, p.classifier.dtype) @ p.classifier
        gh = gh if s is None else gh * s
    if wants[1]:
        h = hidden if s is None else hidden * s
        g_acc, h_acc = (astype(xp, g, p.accum), astype(xp, h, p.accum)) if wide else (g, h)
        if grad_classifier is None:
            gw = xp.matrix_transpose(g_acc) @ h_acc
        else:  # one product on an accelerator (each slice would be two more launches)
            gw = _add_gram(xp, grad_classifier, g_acc, h_acc, whole=p.plan == "accelerator")
    if wants[2] and p.bias is not None:
        g_acc = astype(xp, g, p.accum) if wide else g
        gb = xp.sum(g_acc, axis=0) if row_scale is None else xp.reshape(row_scale[None, :] @ g_acc, (-1,))
    return BlockOut(res.loss, res.smoothing_grad, gh, gw, gb, res.aux)


def _add_gram(xp: ModuleType, total: Array, g: Array, h: Array, whole: bool = False) -> Array:
    """``total + g^T h`` in place, class slice by class slice: the temporary product is one
    slice of :data:`ls_xp._plan.GRAM_ELEMENTS` and the matmuls stay large."""
    num_classes, dim = total.shape
    step = num_classes if whole else max(1, _plan.GRAM_ELEMENTS // max(dim, 1))
    for lo in range(0, num_classes, step):
        sl = slice(lo, min(num_classes, lo + step))
        total = xpx.at(total, (sl, slice(None))).add(xp.matrix_transpose(g[:, sl]) @ h)
    return total


def block_rows(p: Problem, chunk_size: int | None = None) -> int:
    """Rows per block: ``chunk_size``, else :data:`BLOCK_BYTES` of logits and gradient on
    the CPU plan (:data:`ls_xp._plan.LINEAR_ACCELERATOR_BLOCK_ELEMENTS` logits on the
    accelerator plan), at least one row. Lazy arrays (Dask) take one block: their own
    chunks are the blocks."""
    if chunk_size is not None:
        return chunk_size
    if not _plan.is_concrete(p.hidden):
        return max(p.hidden.shape[0], 1)
    return default_block_rows(p.classifier.shape[0], _plan.plan(p.hidden), _row_bytes(p))


def default_block_rows(num_classes: int, plan: str = "cpu", row_bytes: int | None = None) -> int:
    """Rows per block of ``num_classes`` logits; ``row_bytes``: the bytes one row of the
    block holds (4 per class, float32's, if not given)."""
    if plan == "accelerator":  # a fixed number of launches per block: the larger the better
        return max(1, _plan.LINEAR_ACCELERATOR_BLOCK_ELEMENTS // max(num_classes, 1))
    return max(1, BLOCK_BYTES // max(row_bytes or 4 * num_classes, 1))


def softmax_rows(p: Problem, rows: int | None) -> int | None:
    """Rows per piece of a block's softmax: ``rows`` (the adapter's choice; None: the
    core's) and at most :data:`SOFTMAX_BYTES` of logits and gradient on the CPU plan."""
    if p.plan == "accelerator":
        return rows
    most = max(1, SOFTMAX_BYTES // _row_bytes(p))
    return most if rows is None else max(1, min(rows, most))


def _itemsize(xp: ModuleType, dtype: Any) -> int:
    return xp.finfo(dtype).bits // 8


def _row_bytes(p: Problem) -> int:
    """The bytes of one row of a block: its logits, and a float32 gradient beside them
    when the logits are narrower (the core's gradient cannot replace them then)."""
    size = _itemsize(p.xp, p.classifier.dtype)
    return max(1, p.classifier.shape[0]) * (size + (4 if size < 4 else 0))


def evaluate_linear(
    hidden: Array,
    classifier: Array,
    target: Array,
    smoothing: Any,
    bias: Array | None,
    weight: Array | None,
    opts: v.Options,
    *,
    want_loss: bool = True,
    want_grad: bool = False,
    want_smoothing_grad: bool = False,
    wants: tuple[bool, bool, bool] = (True, True, True),
    row_scale: Array | None = None,
    inner_chunk_size: int | None = None,
) -> LinearResult:
    """The fused loss and gradients by an eager loop over row blocks (every library but
    JAX, whose adapter runs :func:`block` in ``lax.scan``). ``row_scale`` (N,) weights the
    rows of the gradients: the cotangent of ``reduction="none"``."""
    p = setup(hidden, classifier, target, smoothing, bias, weight, opts)
    xp, dev = p.xp, device_of(p.hidden)
    n_rows, dim = p.hidden.shape
    step = block_rows(p, opts.chunk_size)
    scale = None if row_scale is None else xp.reshape(astype(xp, row_scale, p.classifier.dtype), (-1,))
    parts: list[BlockOut] = []
    gh = gw = gb = None
    for lo in range(0, n_rows, step):
        sl = slice(lo, min(n_rows, lo + step))
        one = step >= n_rows
        if gw is None and want_grad and wants[1] and not one:  # the accumulator
            gw = xp.zeros(p.classifier.shape, dtype=p.accum, device=dev)
        b = block(
            p, p.hidden if one else p.hidden[sl, ...], p.target if one else p.target[sl],
            want_grad=want_grad, want_smoothing_grad=want_smoothing_grad, wants=wants,
            row_scale=scale if scale is None or one else scale[sl], chunk_size=inner_chunk_size,
            grad_classifier=gw,
        )  # fmt: skip
        gw = b.grad_classifier
        if one:
            gh, gb = b.grad_hidden, b.grad_bias
        else:
            if b.grad_hidden is not None:
                if gh is None:
                    gh = xp.empty((n_rows, dim), dtype=b.grad_hidden.dtype, device=dev)
                gh = xpx.at(gh, (sl, slice(None))).set(b.grad_hidden)
            gb = _accumulate(xp, gb, b.grad_bias)
        parts.append(b._replace(grad_hidden=None, grad_classifier=None, grad_bias=None))
        del b  # nothing of this block outlives it
    if n_rows == 0:  # no block ran: zero gradients, no rows
        like = (p.hidden, p.classifier, p.bias)
        gh, gw, gb = (
            xp.zeros(a.shape, dtype=a.dtype, device=dev) if want_grad and want and a is not None else None
            for a, want in zip(like, wants, strict=True)
        )
    row, eps_row, aux_rows = _joined(p, parts, want_smoothing_grad)
    return finish(p, row, eps_row, gh, gw, gb, want_loss, aux_rows)


def _joined(
    p: Problem, parts: list[BlockOut], want_smoothing_grad: bool
) -> tuple[Array, Array | None, Aux | None]:
    """The blocks' per-row values, joined."""
    xp, dev = p.xp, device_of(p.hidden)
    if not parts:
        empty = xp.zeros((0,), dtype=xp.result_type(p.classifier.dtype, xp.float32), device=dev)
        aux = Aux(empty, empty, empty, empty) if p.opts.return_aux else None
        return empty, empty if want_smoothing_grad else None, aux

    def cat(arrays: list[Array]) -> Array:
        return arrays[0] if len(arrays) == 1 else xp.concat(arrays)

    row = cat([b.row for b in parts])
    eps_row = cat([b.eps_row for b in parts]) if want_smoothing_grad else None
    aux = None
    if p.opts.return_aux:
        fields = [b.aux for b in parts]
        assert all(a is not None for a in fields)
        lse, z_rows, hits = (cat([getattr(a, f) for a in fields]) for f in ("lse", "z_loss", "accuracy"))
        aux = Aux(lse, z_rows, hits, p.count)  # (the count is the problem's, not the blocks')
    return row, eps_row, aux


def _accumulate(xp: ModuleType, total: Array | None, part: Array | None) -> Array | None:
    """``total + part``, in place where ``total`` is writeable (no V x D copy per block)."""
    if total is None or part is None:
        return part if total is None else total
    return xpx.at(total)[...].add(part, xp=xp)


def finish(
    p: Problem,
    row: Array,
    eps_row: Array | None,
    grad_hidden: Array | None,
    grad_classifier: Array | None,
    grad_bias: Array | None,
    want_loss: bool = True,
    aux_rows: Aux | None = None,
) -> LinearResult:
    """The reduction of the per-row losses (and eps-derivatives, and statistics), and the
    gradients scaled by the "mean" factor, shaped like their arrays and in their dtypes."""
    xp = p.xp
    out_dtype = p.classifier.dtype  # the logits' dtype: hidden's and the head's, promoted
    # the factor of the summed rows; every row ignored: NaN loss, zero gradients (PyTorch's).
    # The zero test of the denominator is shared by both divisions by it, as in the core.
    nonzero = None if isinstance(p.total, float) else p.total != 0
    unit = safe_divide(xp, 1.0, p.total, 0.0, nonzero) if p.reduction == "mean" else 1.0

    def _reduce(r: Array | None, at_zero: float) -> Array | None:
        if r is None:
            return None
        if p.reduction == "none":
            out = xp.reshape(r, p.batch_shape)
        elif p.reduction == "sum":
            out = xp.sum(r)
        elif at_zero == 0.0:  # sum / denominator; zero derivatives when it is 0
            out = xp.sum(r) * unit
        else:  # the loss: NaN when the denominator is 0
            out = safe_divide(xp, xp.sum(r), p.total, at_zero, nonzero)
        return astype(xp, out, out_dtype)

    def _scaled(g: Array | None, dtype: Any) -> Array | None:
        """The gradient times the "mean" factor, in place where it can be (every gradient
        here is a fresh array of ours, the classifier's as large as the classifier: a
        scaled copy would be the largest array of the call)."""
        if g is None:
            return None
        in_place = bool(is_writeable_array(g))  # (a bool: no narrowing of g's type)
        if p.reduction == "mean" and in_place:
            g *= unit
        elif p.reduction == "mean":
            g = g * unit
        return astype(xp, g, p.classifier.dtype if dtype is None else dtype)

    if grad_hidden is not None:
        grad_hidden = xp.reshape(grad_hidden, (*p.batch_shape, p.hidden.shape[1]))
    res = LinearResult(
        _reduce(row, math.nan) if want_loss else None,
        _scaled(grad_hidden, p.dtypes[0]),
        _scaled(grad_classifier, p.dtypes[1]),
        _scaled(grad_bias, p.dtypes[2]),
        _reduce(eps_row, 0.0),
        None if aux_rows is None else _aux(p, aux_rows, _reduce),
    )
    return res if not p.opts.shift else scored(res, p.opts.shift, p.reduction == "none")


def _aux(p: Problem, rows: Aux, reduce: Any) -> Aux:
    """The statistics: lse per position, the z-term reduced as the loss, the accuracy over
    the counted rows (its "mean" over their number), and their number."""
    xp = p.xp
    accuracy = xp.sum(rows.accuracy) if p.reduction != "none" else xp.reshape(rows.accuracy, p.batch_shape)
    if p.reduction == "mean":
        accuracy = safe_divide(xp, accuracy, p.count, math.nan)
    index_dtype = xpx.default_dtype(xp, "indexing", device=device_of(p.hidden))
    count = xp.astype(xp.asarray(p.count, device=device_of(p.hidden)), index_dtype)
    return Aux(xp.reshape(rows.lse, p.batch_shape), reduce(rows.z_loss, 0.0), accuracy, count)
