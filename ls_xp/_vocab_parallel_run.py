"""The blocked driver of the class-sharded loss: local statistics over row blocks, the
two collectives, the gradient pass (:mod:`ls_xp._vocab_parallel` has the formulas).

PyTorch evaluates row blocks of its cache-sized length, keeping ``e = exp(x - m_r)`` of
every block in the gradient's buffer between the collectives, so the only (n, k) arrays
alive are the logits, that buffer and one block's temporaries; JAX evaluates one block
and lets XLA fuse it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx

from ls_xp import _vocab_parallel_llm as llm
from ls_xp._evaluate import Aux
from ls_xp._picks import Picks
from ls_xp._plan import device_of
from ls_xp._vocab_parallel import (
    Collectives,
    Global,
    Local,
    Rows,
    Setting,
    check_after_sum,
    columns,
    combine,
    local_block,
)
from ls_xp._vocab_parallel_grad import grad_block

Array = Any


class Stats(NamedTuple):
    """What the backward and the gradient pass need: the per-row statistics."""

    loc: Local
    glob: Global


def statistics(xp: ModuleType, st: Setting, rows: Rows, locals_: list[Local], coll: Collectives) -> Stats:
    """Steps 2-4 for the rank's rows, from the blocks' local statistics: one MAX (none
    with log-probabilities) and one SUM of a stacked (n, j) array. The statistics of
    ``return_aux`` join them (the target's maximum the MAX, the accuracy the SUM)."""
    loc = _concat_locals(xp, locals_)
    g_max: Array | float = 0.0
    t_glob = None
    if loc.t_max is not None:  # probability targets' accuracy: their maximum too
        both = coll.max(xp.concat([loc.m_r, loc.t_max], axis=1))
        g_max, t_glob = both[:, :1], both[:, 1:]
    elif not st.log_probs:
        g_max = coll.max(loc.m_r)
    cols = columns(xp, st, loc, rows.own, g_max)
    if loc.acc_r is not None:
        cols["hit"] = llm.accuracy_column(xp, st, loc, g_max, t_glob)
    names = list(cols)
    summed = coll.sum(xp.concat([cols[n] for n in names], axis=1))
    got, i = {}, 0
    for n in names:
        got[n], i = summed[:, i : i + cols[n].shape[1]], i + cols[n].shape[1]
    check_after_sum(xp, st, rows, got)
    weighted_ = rows.w is not None or rows.m is not None
    return Stats(loc, llm.finish(xp, st, rows, combine(xp, st, rows, got, g_max, weighted_), got))


def _concat_locals(xp: ModuleType, parts: list[Local]) -> Local:
    if len(parts) == 1:
        return parts[0]

    def cat(vals: list[Any]) -> Any:
        if vals[0] is None or isinstance(vals[0], float):
            return vals[0]
        return xp.concat(vals, axis=0) if getattr(vals[0], "ndim", 0) == 2 else vals[0]

    fields = [cat([getattr(p, f) for p in parts]) for f in Local._fields if f != "extra"]
    extra = {k: xp.concat([p.extra[k] for p in parts], axis=0) for k in parts[0].extra}
    return Local._make([*fields, extra])


def hold(xp: ModuleType, held: dict[str, Any], loc: Local, sl: slice, n: int) -> None:
    """A block's per-row statistics copied into whole (n, 1) columns, allocated at the
    first block. The blocks' own small arrays are then freed with the block, so no
    long-lived small array sits between the block temporaries on the heap (which would
    keep the allocator from reusing their memory: the peak grew by hundreds of MiB)."""
    values = {f: getattr(loc, f) for f in Local._fields if f != "extra"}
    values.update({"extra." + k: a for k, a in loc.extra.items()})
    for name, a in values.items():
        if getattr(a, "ndim", 0) != 2:
            held[name] = a  # a number, or a statistic of the class weights
            continue
        if name not in held:
            held[name] = xp.empty((n, a.shape[1]), dtype=a.dtype, device=device_of(a))
        held[name] = xpx.at(held[name], (sl, slice(None))).set(a)


def held_local(held: dict[str, Any]) -> Local:
    extra = {k[len("extra.") :]: a for k, a in held.items() if k.startswith("extra.")}
    return Local._make([*(held[f] for f in Local._fields if f != "extra"), extra])


def local_cut(loc: Local, sl: slice) -> Local:
    """The rows ``sl`` of the per-row statistics."""

    def cut(a: Any) -> Any:
        return a[sl, ...] if getattr(a, "ndim", 0) == 2 else a

    return Local._make([*(cut(getattr(loc, f)) for f in Local._fields if f != "extra"), {}])


def reduce_rows(
    xp: ModuleType, st: Setting, rows: Rows, glob: Global, batch_shape: tuple[int, ...], dtype: Any
) -> tuple[Array, Aux | None]:
    """The per-row losses times their factors, reduced (the z-terms included), in
    ``dtype``; and the statistics of ``return_aux`` (else None)."""
    return llm.outputs(xp, st, rows, glob, batch_shape, dtype)


def picks(xp: ModuleType, n: int, k: int, dense: bool, device: Any) -> Picks:
    """Index pairs on eager mutable arrays, boolean masks elsewhere (see :mod:`ls_xp._picks`)."""
    rows = xp.arange(n, device=device)[:, None]
    return Picks(rows, xp.arange(k, device=device) if dense else None, dense)


def evaluate(
    xp: ModuleType, st: Setting, rows: Rows, coll: Collectives, *, want_grad: bool, step: int, dense: bool
) -> tuple[Stats, Array | None]:
    """Steps 1-5 over row blocks of ``step`` rows: the statistics and, if wanted, the
    local gradient (n, k) of the reduced loss (of the sum of the rows for "none")."""
    n, k = rows.x.shape
    dev = device_of(rows.x)
    step = max(1, min(step, n))
    starts = list(range(0, n, step)) or [0]
    grad = None
    if want_grad and len(starts) > 1 and not st.log_probs:
        grad = xp.empty((n, k), dtype=st.dtype, device=dev)
    parts: list[Local] = []
    held: dict[str, Any] = {}  # the blocks' statistics, written into (n, 1) columns
    es: list[Array | None] = []  # each block's e, where there is no whole buffer
    for lo in starts:
        sl = slice(lo, min(n, lo + step))
        blk = rows if len(starts) == 1 else rows.cut(sl)
        loc, e = local_block(xp, st, blk, picks(xp, sl.stop - sl.start, k, dense, dev))
        if len(starts) == 1 or dense:
            parts.append(loc)
        else:
            hold(xp, held, loc, sl, n)
        if grad is not None and e is not None:
            grad = xpx.at(grad, (sl, slice(None))).set(e)
        es.append(e if grad is None and want_grad else None)
        del loc, e
    if held:
        parts.append(held_local(held))
    stats = statistics(xp, st, rows, parts, coll)
    if not want_grad:
        return stats, None
    outs = []
    one = len(starts) == 1
    for i, lo in enumerate(starts):
        sl = slice(lo, min(n, lo + step))
        e = es[i] if grad is None else grad[sl, ...]
        blk, loc, glob = (
            (rows, stats.loc, stats.glob)
            if one
            else (rows.cut(sl), local_cut(stats.loc, sl), stats.glob.cut(sl))
        )
        g = grad_block(xp, st, e, blk, loc, glob, picks(xp, sl.stop - sl.start, k, dense, dev))
        if grad is not None and dense:  # (a new array: written back)
            grad = xpx.at(grad, (sl, slice(None))).set(g)
        outs.append(g)
    if grad is not None:
        return stats, grad
    return stats, outs[0] if one else xp.concat(outs, axis=0)
