"""Vocabulary-parallel loss on ``torch.distributed`` process groups (Megatron's way).

Each rank of ``group`` holds a contiguous slice of the classes, in rank order; slices
may differ in size. The formula is :mod:`ls_xp._vocab_parallel`'s, with the collectives
``all_reduce(MAX)`` and ``all_reduce(SUM)`` of the group; the backward is local.

Before any collective every rank checks its own arguments and then joins one small
all-gather of (rows, classes, the range of its target values, the length of its
weights, whether its own checks failed): every rank then raises the same kind of error
from the same gathered facts, so a mistake on one rank never leaves the others waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import array_api_compat.torch as torch_xp
import torch
import torch.distributed as dist

from ls_xp import _validate as v
from ls_xp import _vocab_parallel as vp
from ls_xp import _vocab_parallel_run as vpr
from ls_xp._evaluate import Aux, Result
from ls_xp._numeric import move_axis
from ls_xp._plan import block_rows
from ls_xp._shift import Shift, scored

Tensor = torch.Tensor

__all__ = ["GroupCollectives", "vocab_parallel_cross_entropy"]


class GroupCollectives:
    """All-reduce MAX and SUM over a process group; ``calls`` counts them (and the
    elements they move), for tests and benchmarks."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.calls: list[tuple[str, int]] = []

    def max(self, a: Tensor) -> Tensor:
        return self._reduce(a, dist.ReduceOp.MAX, "max")

    def sum(self, a: Tensor) -> Tensor:
        return self._reduce(a, dist.ReduceOp.SUM, "sum")

    def _reduce(self, a: Tensor, op: Any, name: str) -> Tensor:
        out = a.detach().clone().contiguous()  # (the caller keeps its own a: O(N) copy)
        dist.all_reduce(out, op=op, group=self.group)
        self.calls.append((name, out.numel()))
        return out


COUNTER: list[GroupCollectives] = []  # the collectives of the last calls, when tests ask


@dataclass(frozen=True)
class Layout:
    """What the all-gather of shapes establishes, the same on every rank."""

    rank: int
    offset: int
    num_classes: int  # K
    sizes: tuple[int, ...]  # every rank's class count
    sharded_weight: bool
    eps: float  # the smoothing, checked with the other local arguments


_FIELDS = 6  # rows, classes, min target, max target, weight length, local error


def _local_facts(
    logits: Tensor, target: Tensor, weight: Tensor | None, ax: int, opts: v.Options, soft: bool
) -> list[int]:
    """This rank's facts for the all-gather (target values read here: one host sync)."""
    k = int(logits.shape[ax])
    n = logits.numel() // max(k, 1)
    lo, hi = 0, -1
    if not soft and target.numel():
        y = target.reshape(-1)
        y = y[y != opts.ignore_index]
        if y.numel():
            lo, hi = int(y.min()), int(y.max())
    return [n, k, lo, hi, -1 if weight is None else int(weight.shape[0]), 0]


def _check_local(
    logits: Tensor, target: Tensor, weight: Tensor | None, where: Tensor | None, ax: int, soft: bool
) -> None:
    """Every check that needs no other rank: dtypes and local shapes (and the smoothing,
    checked by the caller in the same place)."""
    v.check_floating(torch_xp, logits, "local_logits")
    batch = tuple(logits.shape[:ax]) + tuple(logits.shape[ax + 1 :])
    if soft:
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError("probability targets must have the shape of local_logits (sharded like them)")
    elif target.dtype.is_floating_point or tuple(target.shape) != batch:
        raise ValueError(
            f"target must hold the (replicated) class indices of shape {batch} (local_logits' shape "
            f"without the class axis), got shape {tuple(target.shape)} and dtype {target.dtype}"
        )
    if where is not None and (where.dtype != torch.bool or tuple(where.shape) != tuple(logits.shape)):
        raise ValueError(
            f"where must be a boolean mask of local_logits' shape {tuple(logits.shape)} (sharded with "
            f"the classes), got shape {tuple(where.shape)} and dtype {where.dtype}"
        )
    if weight is not None:
        if weight.ndim != 1 or weight.requires_grad:
            raise ValueError("weight must be a 1-d tensor that does not require grad")
        v.class_weight(torch_xp, weight, int(weight.shape[0]), torch.float64, True)


def layout(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    where: Tensor | None,
    ax: int,
    opts: v.Options,
    group: Any,
    soft: bool,
    smoothing: Any = 0.0,
    pending: BaseException | None = None,
) -> Layout:
    """The local checks (and a ``pending`` error of the caller's own), then the one
    all-gather of facts, then the checks that need every rank's: the same decision on
    every rank."""
    error: BaseException | None = None
    eps = 0.0
    try:
        if pending is not None:
            raise pending
        if isinstance(smoothing, Tensor) and smoothing.requires_grad:
            raise ValueError("smoothing must be a number here (its derivative is not implemented on shards)")
        eps = float(v.check_smoothing(None, smoothing))
        _check_local(logits, target, weight, where, ax, soft)
        facts = _local_facts(logits, target, weight, ax, opts, soft)
    except (TypeError, ValueError) as exc:
        error, facts = exc, [0] * (_FIELDS - 1) + [1]
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    mine = torch.tensor(facts, dtype=torch.int64, device=logits.device)
    every = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(every, mine, group=group)
    table = [[int(a) for a in t.tolist()] for t in every]
    if error is not None:
        raise error
    failed = [r for r in range(size) if table[r][5]]
    if failed:
        raise ValueError(
            f"vocab_parallel_cross_entropy: rank(s) {failed} rejected their arguments (see the error "
            f"there); rank {rank} stops too, before any collective"
        )
    return _global_checks(table, rank, opts, soft, eps)


def _global_checks(table: list[list[int]], rank: int, opts: v.Options, soft: bool, eps: float) -> Layout:
    rows = [t[0] for t in table]
    sizes = tuple(t[1] for t in table)
    for r, n in enumerate(rows):
        if n != rows[0]:
            raise ValueError(
                f"local_logits on rank {r} has {n} rows (positions) but rank 0 has {rows[0]}: every rank "
                "must hold the same positions, each with its own slice of the classes"
            )
    k_total = sum(sizes)
    v.check_num_classes(k_total, opts.convention, "number of classes (summed over the ranks)")
    lo = min((t[2] for t in table if t[3] >= t[2]), default=0)
    hi = max((t[3] for t in table), default=-1)
    if not soft and (lo < 0 or hi >= k_total):
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"target contains class index {bad}, outside [0, {k_total}) (the classes of all "
            f"{len(sizes)} ranks together) and not ignore_index={opts.ignore_index}"
        )
    lengths = [t[4] for t in table]
    sharded = all(w == k for w, k in zip(lengths, sizes, strict=True)) and len(set(sizes)) > 0
    if lengths[0] >= 0 and not (sharded or all(w == k_total for w in lengths)):
        raise ValueError(
            f"weight has lengths {lengths} on the ranks: give every rank either the whole ({k_total},) "
            f"weight (replicated) or its own slice of {list(sizes)} classes (sharded like the logits)"
        )
    sharded = sharded and lengths[0] >= 0 and not all(w == k_total for w in lengths)
    offset = sum(sizes[:rank])
    return Layout(rank, offset, k_total, sizes, sharded, eps)


def setting(
    logits: Tensor, lay: Layout, eps: float, opts: v.Options, kl: bool, soft: bool, read: bool
) -> vp.Setting:
    """The static settings of this rank's evaluation."""
    dt = torch.promote_types(logits.dtype, torch.float32)
    return vp.Setting(
        eps=eps, convention=opts.convention, log_probs=opts.log_probs, kl=kl, soft=soft, dtype=dt,
        num_classes=lay.num_classes, offset=lay.offset, reduction=opts.reduction,
        ignore_index=opts.ignore_index, sharded_weight=lay.sharded_weight, read=read,
        z_loss=opts.z_loss, softcap=opts.softcap, aux=opts.return_aux, rank=lay.rank, ranks=len(lay.sizes),
    )  # fmt: skip


class _VocabParallelCE(torch.autograd.Function):
    """The loss; its backward is the gradient computed in the forward pass (no collective)."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        rows: vp.Rows,
        st: vp.Setting,
        coll: vp.Collectives,
        ax: int,
        step: int,
        want: bool,
        aux: list[Aux | None],
    ) -> Tensor:
        stats, g = vpr.evaluate(torch_xp, st, rows, coll, want_grad=want, step=step, dense=False)
        batch = tuple(logits.shape[:ax]) + tuple(logits.shape[ax + 1 :])
        ctx.grad = None if g is None else _as_logits(g, logits, ax)
        ctx.none = st.reduction == "none"
        ctx.used = False
        ctx.ax = ax
        loss, aux[:] = _reduced(st, rows, stats, batch, logits.dtype)
        return loss

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        up = grad_outputs[0]
        g = ctx.grad
        if g is None:
            return None, None, None, None, None, None, None, None
        if ctx.used:
            raise RuntimeError(
                "vocab-parallel loss: a second backward through the same loss is not supported (its "
                "gradient buffer was handed over to the first); compute the loss again"
            )
        ctx.used, ctx.grad = True, None  # scaled in place and handed over: autograd takes it, no copy
        g.mul_((up.unsqueeze(ctx.ax) if ctx.none else up).to(g.dtype))
        return g, None, None, None, None, None, None, None


def _reduced(st: vp.Setting, rows: vp.Rows, stats: Any, batch: Any, dtype: Any) -> tuple[Tensor, list[Any]]:
    """The reduced loss and the statistics (a one-item list of them, or of None)."""
    loss, aux = vpr.reduce_rows(torch_xp, st, rows, stats.glob, batch, dtype)
    return loss, [None if aux is None else Aux(*(a.detach() for a in aux))]


def _as_logits(g: Tensor, logits: Tensor, ax: int) -> Tensor:
    """A (n, k) gradient in the layout and dtype of the local logits."""
    shape = list(logits.shape)
    k = shape.pop(ax)
    g = move_axis(torch_xp, g.reshape(*shape, k), -1, ax)
    return g.to(logits.dtype)


def _prepare(
    logits: Tensor,
    target: Any,
    smoothing: Any,
    weight: Any,
    where: Any,
    opts: v.Options,
    group: Any,
    kl: bool,
) -> tuple[vp.Setting, vp.Rows, int, Layout]:
    """Arguments as tensors, every check, the layout, the rows (with ``shift``: the
    targets shifted, as the unsharded loss does)."""
    v.check_logits(logits, "local_logits")
    target, weight, where = v.inputs_like(torch_xp, logits.device, target, weight, where)
    ax = v.check_axis(opts.axis, logits.ndim)
    target, pending = shifted_target(logits, target, ax, opts)
    soft = target.dtype.is_floating_point and tuple(target.shape) == tuple(logits.shape)
    if soft and opts.ignore_index >= 0 and pending is None:
        pending = ValueError(f"ignore_index={opts.ignore_index} is not supported with probability targets")
    lay = layout(logits, target, weight, where, ax, opts, group, soft, smoothing, pending)
    read = opts.check_values is not False and logits.device.type == "cpu"
    st = setting(logits, lay, lay.eps, opts, kl, soft, read)
    with torch.no_grad():
        rows = vp.prepare(torch_xp, st, logits.detach(), target, weight, where, ax)
    return st, rows, ax, lay


def shifted_target(logits: Tensor, target: Tensor, ax: int, opts: v.Options) -> tuple[Tensor, Any]:
    """The class indices shifted by ``opts.shift`` (:class:`ls_xp._shift.Shift`), and the
    error to raise on every rank (through :func:`layout`) where the shift is wrong here."""
    if not opts.shift:
        return target, None
    try:
        sh = Shift.of(torch_xp, logits, target, None, ax, opts)
        if sh.soft:
            raise ValueError(
                "shift with probability targets is not supported on sharded classes; slice them "
                "(logits[..., :T - shift, :] against target[..., shift:, :]) or pass class indices"
            )
    except ValueError as exc:
        return target, exc
    return sh.target, None


def scored_outputs(loss: Tensor, aux: Aux | None, opts: v.Options) -> Any:
    """``loss`` (``(loss, aux)`` with ``return_aux``) over the scored positions."""
    out: Any = loss
    if opts.shift:
        res = scored(Result(loss, None, None, None, aux), opts.shift, opts.reduction == "none")
        out, aux = res.loss, res.aux
    return (out, aux) if opts.return_aux else out


def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Any,
    smoothing: float = 0.1,
    *,
    group: Any = None,
    reduction: str = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    axis: int = -1,
    convention: str = "uniform",
    where: Any = None,
    log_probs: bool = False,
    chunk_size: int | None = None,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
) -> Any:
    """Label-smoothed cross-entropy of logits whose classes are split over ``group``.

    Each rank passes its contiguous slice of the classes (rank 0 the first ones, sizes
    may differ) and the same ``target``; every rank gets the same loss, equal to
    ``ls_xp.cross_entropy`` of the whole logits, and ``loss.backward()`` gives each rank
    the gradient of its own slice, with no communication. Forward: one all-gather of a
    few integers per rank (the checks), one all-reduce MAX and one all-reduce SUM of
    O(rows) values; none with ``log_probs`` but the SUM.

    ``weight`` is either the whole (K,) vector on every rank or each rank's slice;
    ``where`` and probability ``target`` are sharded like the logits; the other keywords
    are :func:`ls_xp.cross_entropy`'s, with K the global class count in both
    conventions, the language-model ones included (``z_loss``, ``softcap``, ``shift`` for
    class indices, ``return_aux``: ``(loss, aux)``, the statistics the same on every
    rank). ``group`` is a ``torch.distributed`` process group (None: the default).
    """
    opts = v.options(
        reduction=reduction, ignore_index=ignore_index, axis=axis, convention=convention,
        log_probs=log_probs, chunk_size=chunk_size, check_values=check_values, z_loss=z_loss,
        softcap=softcap, shift=shift, return_aux=return_aux,
    )  # fmt: skip
    return sharded_loss(local_logits, target, smoothing, weight, where, opts, group, kl=False)


def sharded_loss(
    logits: Tensor,
    target: Any,
    smoothing: Any,
    weight: Any,
    where: Any,
    opts: v.Options,
    group: Any,
    *,
    kl: bool,
) -> Any:
    """The loss (``kl``: the KL form) with autograd, for the function and DTensor;
    ``(loss, aux)`` with ``opts.return_aux``."""
    st, rows, ax, _ = _prepare(logits, target, smoothing, weight, where, opts, group, kl)
    coll = GroupCollectives(group)
    COUNTER[:] = [coll]
    step = block_rows(rows.x, opts.chunk_size, "cpu" if logits.device.type == "cpu" else "accelerator")
    aux: list[Aux | None] = [None]
    if torch.is_grad_enabled() and logits.requires_grad:
        out: Tensor = _VocabParallelCE.apply(logits, rows, st, coll, ax, step, True, aux)
    else:
        with torch.no_grad():
            out = _VocabParallelCE.forward(_NoCtx(), logits, rows, st, coll, ax, step, False, aux)
    return scored_outputs(out, aux[0], opts)


def sharded_values(
    logits: Tensor, target: Any, smoothing: Any, weight: Any, where: Any, opts: v.Options, group: Any
) -> tuple[Any, Tensor, Aux | None]:
    """The loss, the local gradient as plain tensors and the statistics (``loss_and_grad``)."""
    st, rows, ax, _ = _prepare(logits, target, smoothing, weight, where, opts, group, False)
    coll = GroupCollectives(group)
    COUNTER[:] = [coll]
    step = block_rows(rows.x, opts.chunk_size, "cpu" if logits.device.type == "cpu" else "accelerator")
    stats, g = vpr.evaluate(torch_xp, st, rows, coll, want_grad=True, step=step, dense=False)
    batch = tuple(logits.shape[:ax]) + tuple(logits.shape[ax + 1 :])
    assert g is not None
    loss, aux = _reduced(st, rows, stats, batch, logits.dtype)
    out = scored_outputs(loss, aux[0], replace(opts, return_aux=True))
    return out[0], _as_logits(g, logits, ax), out[1]


class _NoCtx:
    """A stand-in for autograd's context when nothing requires grad."""
