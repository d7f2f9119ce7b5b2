"""The language-model options of the class-sharded loss: softcap, z-loss, statistics.

Each is the unsharded loss's (:mod:`ls_xp._math`, :mod:`ls_xp._evaluate`), computed from
the shard's classes and the collectives the plain loss already makes:

- ``softcap``: elementwise, so each rank caps its own classes before its maximum; the
  gradient's chain rule ``1 - (capped / softcap)^2`` is local too.
- ``z_loss``: ``lse = M + log1p(s')`` is known on every rank after the SUM; each row adds
  ``z lse^2`` (times the z factor: 1 / the number of counted rows for ``"mean"``) and the
  gradient ``2 z lse p_c`` joins the coefficient of p. No further communication.
- ``return_aux``: lse, the z-term and the count are per row already; the accuracy (is the
  *global* first maximum the target?) adds one SUM column. Class indices: the owner of y
  adds 1 if y is its first maximum and that maximum is M; every rank before the owner
  (in class order) adds 2 if its maximum is M. The row is a hit iff the sum is 1.
  Probability targets (the target's argmax is sharded too): the target's row maximum
  joins the MAX, and each rank r writes, in column r of an (n, R) block of the SUM, the
  code 1 [its maximum is M] + 2 [its target maximum is the global one] + 4 [both, at the
  same class]; the row is a hit iff the first non-zero code is 7.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import array_api_extra as xpx

from ls_xp._evaluate import Aux
from ls_xp._numeric import astype, safe_divide
from ls_xp._picks import Picks, first_max
from ls_xp._plan import device_of

Array = Any


def prepared(xp: ModuleType, st: Any, rows: Any) -> Any:
    """A block's rows with ignored rows harmless and, with ``softcap``, the logits capped
    (a fresh array, ours: later steps write it in place)."""
    rows = rows.guarded(xp)
    if st.softcap is None or rows.capped:
        return rows
    x = xp.tanh(rows.x / st.softcap)
    x *= st.softcap
    return rows._replace(x=x, owned=True, capped=True)


def softcap_chain(xp: ModuleType, st: Any, g: Array, rows: Any, inplace: bool) -> Array:
    """The gradient with respect to the caller's logits: times 1 - (capped / softcap)^2,
    the capped logits recomputed from ``rows.x`` unless it holds them already."""
    if st.softcap is None:
        return g
    rows = rows.guarded(xp)
    capped = rows.x if rows.capped else xp.tanh(rows.x / st.softcap) * st.softcap
    t = capped / st.softcap
    if not inplace:
        return g * (1.0 - t * t)
    t *= t
    t *= g
    g -= t
    return g


def z_coefficient(st: Any, glob: Any) -> Array | float:
    """2 z lse r_z: the z-loss's share of the coefficient of p_c (0 without z-loss)."""
    if not st.z_loss:
        return 0.0
    return (2.0 * st.z_loss) * glob.lse * glob.factor_z


def accuracy_local(xp: ModuleType, st: Any, rows: Any, top: Array, pk: Picks) -> tuple[Array, Array | None]:
    """The rank's part of the accuracy column (see the module docstring), before M is
    known: class indices 1 (owner, y is its first maximum) or 2 (a rank before the
    owner), else 0; probability targets [the first maxima of x and t are one class], and
    the target's row maximum for the MAX."""
    if st.soft:
        t = rows.t if rows.m is None else xp.where(rows.m, rows.t, -math.inf)
        t_max = xp.max(t, axis=-1, keepdims=True)
        same = first_max(xp, t, pk, t_max) == top
        return xp.astype(same, st.dtype), t_max
    k = rows.x.shape[1]
    before = rows.valid & rows.ok & (rows.y - st.offset >= k)
    hit = rows.own & (top == rows.y_loc)
    return xp.astype(hit, st.dtype) + 2.0 * xp.astype(before, st.dtype), None  # (never both)


def accuracy_column(xp: ModuleType, st: Any, loc: Any, g_max: Array, t_glob: Array | None) -> Array:
    """The SUM column(s) of the accuracy, given M (and the target's global maximum)."""
    at_max = loc.m_r == g_max
    if not st.soft:
        return xp.where(at_max, loc.acc_r, 0.0)
    t_top = loc.t_max == t_glob
    code = xp.astype(at_max, st.dtype) + 2.0 * xp.astype(t_top, st.dtype)
    code = code + 4.0 * xp.astype(at_max & t_top & (loc.acc_r > 0), st.dtype)
    ranks = xp.arange(st.ranks, device=device_of(code))
    return xp.where(ranks == st.rank, code, 0.0)  # (n, R): this rank's code in its column


def hits(xp: ModuleType, st: Any, summed: Array) -> Array:
    """1 where the row's global first maximum is its target, else 0, from the summed
    column(s)."""
    if not st.soft:
        return xp.astype(summed == 1.0, st.dtype)
    ranks = xp.arange(st.ranks, device=device_of(summed))
    first = xp.min(xp.where(summed != 0.0, ranks, st.ranks), axis=-1, keepdims=True)
    code = xp.sum(xp.where(ranks == first, summed, 0.0), axis=-1, keepdims=True)
    return xp.astype(code == 7.0, st.dtype)


def finish(xp: ModuleType, st: Any, rows: Any, glob: Any, cols: dict[str, Array]) -> Any:
    """The Global statistics with lse, the z factors, the hits and the count."""
    if not (st.z_loss or st.aux):
        return glob
    lse = glob.g_max + glob.l1
    if st.soft:
        count: Any = float(rows.x.shape[0])
        factor_z = glob.factor
    else:
        count = xp.sum(xp.astype(rows.valid, st.dtype))
        factor_z = glob.factor
        if st.reduction == "mean" and rows.w is not None:  # rows, not their weights
            ok = rows.ok if "y_allowed" not in cols else rows.ok & (cols["y_allowed"] > 0)
            factor_z = xp.where(rows.valid, xp.where(ok, safe_divide(xp, 1.0, count, 0.0), math.nan), 0.0)
    hit = hits(xp, st, cols["hit"]) if "hit" in cols else None
    return glob._replace(lse=lse, factor_z=factor_z, hit=hit, count=count)


def outputs(
    xp: ModuleType, st: Any, rows: Any, glob: Any, batch_shape: tuple[int, ...], dtype: Any
) -> tuple[Array, Aux | None]:
    """The reduced loss (the z-term included) and, with ``return_aux``, the statistics."""
    r = glob.row * glob.factor
    z_row = None if not st.z_loss else (st.z_loss * (glob.lse * glob.lse)) * glob.factor_z
    if st.reduction == "none":
        loss = r if z_row is None else r + z_row
        loss = xp.reshape(loss, batch_shape)
    else:
        loss = xp.sum(r)
        if st.reduction == "mean" and not st.soft:
            loss = xp.where(glob.total != 0, loss, math.nan)
        loss = loss if z_row is None else loss + xp.sum(z_row)
    loss = astype(xp, loss, dtype)
    if not st.aux:
        return loss, None
    return loss, _aux(xp, st, rows, glob, z_row, batch_shape, dtype)


def _aux(
    xp: ModuleType, st: Any, rows: Any, glob: Any, z_row: Array | None, batch_shape: Any, dtype: Any
) -> Aux:
    dev = device_of(glob.row)
    lse = glob.lse if rows.valid is None or st.soft else xp.where(rows.valid, glob.lse, 0.0)
    hit = glob.hit * glob.factor_z
    per_row = st.reduction == "none"
    if per_row:
        acc, z = xp.reshape(hit, batch_shape), None if z_row is None else xp.reshape(z_row, batch_shape)
    else:
        acc, z = xp.sum(hit), None if z_row is None else xp.sum(z_row)
        if st.reduction == "mean" and isinstance(glob.count, float):  # (no position: NaN)
            acc = acc if glob.count else acc * math.nan
        elif st.reduction == "mean":
            acc = xp.where(glob.count != 0, acc, math.nan)
    if z is None:
        z = xp.zeros(batch_shape if per_row else (), dtype=dtype, device=dev)
    index = xpx.default_dtype(xp, "indexing", device=dev)
    count = glob.count if not isinstance(glob.count, float) else xp.asarray(glob.count, device=dev)
    return Aux(
        lse=astype(xp, xp.reshape(lse, batch_shape), dtype),
        z_loss=astype(xp, z, dtype),
        accuracy=astype(xp, acc, dtype),
        count=xp.astype(count, index),
    )
