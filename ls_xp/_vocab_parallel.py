"""Class-sharded (vocabulary-parallel) label-smoothed cross-entropy, framework-free.

Each of R ranks holds a contiguous slice ``[offset, offset + k)`` of the K classes of
every row; the collectives are passed in (:class:`Collectives`: an all-reduce MAX and an
all-reduce SUM over the ranks), so that ``torch.distributed`` and ``jax.lax`` share one
formula. Notation as in :mod:`ls_xp._math`, with M the global row maximum and m_r the
rank's own (both (n, 1) columns):

    1. local pass (no communication), per row:
         e_c  = exp(x_c - m_r), 0 at the rank's first maximum      (kept: the gradient's buffer)
         s_r  = sum_c e_c,  zy_r = x_y - m_r (owner only),  zs_r = sum'_c w_c (x_c - m_r)
    2. MAX:  M = max_r m_r                                          (O(N) values)
    3. SUM of one stacked (n, j) array, every column O(N):
         s   : s_r where m_r == M, else exp(m_r - M) (1 + s_r)
         cnt : [m_r == M]
         zy  : zy_r + (m_r - M) on the owner                         (= z_y, two terms <= 0)
         zs  : zs_r + S'_r (m_r - M)                                 (= sum'_c w_c z_c)
         and, where they are sharded, the counts and weights of the allowed classes, w_y
    4. per row: s' = s + cnt - 1 (exp(z) summed over every class but ONE global maximum),
       l1 = log1p(s'), and the core's loss  Q l1 - (1 - eps) w_y z_y - b sum'_c w_c z_c.
    5. gradient, local: g_c = (Q p_c - w_c q_c) r with p_c = e_c exp(m_r - M) / (1 + s');
       at a rank's first maximum with m_r == M (z = 0) the core's closed form
       (Q - w_top q_top) r - Q r s' / (1 + s'), exact for every class with z = 0.

The loss keeps the core's properties: a sum of non-negative terms, the log1p form for
tiny losses, K the global class count in both conventions. The backward of the plain
loss needs no communication. Probability targets are sharded like the logits
(q = a t + b on the allowed classes: two more SUM columns, sum w t z and sum w t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple, Protocol

from array_api_compat import device as _dev

from ls_xp import _vocab_parallel_llm as llm
from ls_xp._evaluate import as_rows, class_indices, total_weight
from ls_xp._math import smoothing_coefficients
from ls_xp._numeric import astype, safe_divide, weighted, xlogx
from ls_xp._picks import Picks, at, first_max, put_per_row, take_class, take_per_row

Array = Any


class Collectives(Protocol):
    """All-reduces over the ranks that share the classes; each returns an array of the
    shape of its argument, identical on every rank."""

    def max(self, a: Array) -> Array: ...

    def sum(self, a: Array) -> Array: ...


@dataclass(frozen=True)
class Setting:
    """The static settings of one sharded evaluation (checked by the adapter)."""

    eps: float
    convention: str
    log_probs: bool
    kl: bool
    soft: bool  # probability targets, sharded like the logits
    dtype: Any  # the compute dtype
    num_classes: int  # K, the global class count
    offset: Any  # this rank's first class (an int; a traced index inside shard_map)
    reduction: str
    ignore_index: int
    sharded_weight: bool  # the class weights are this rank's slice (else the replicated K)
    read: bool  # values may be read (eager): an ignored row is guarded only where present
    z_loss: float = 0.0  # the language-model options (ls_xp._vocab_parallel_llm)
    softcap: float | None = None
    aux: bool = False  # return_aux: the statistics (one more SUM column)
    rank: Any = 0  # this rank's place in the class order (a traced index inside shard_map)
    ranks: int = 1  # R


class Rows(NamedTuple):
    """The rank's inputs as (n, k) rows and (n, 1) columns."""

    x: Array  # local logits (n, k), compute dtype
    y: Array | None  # global class indices clipped into [0, K), (n, 1)
    y_loc: Array | None  # local index of y clipped into [0, k), (n, 1)
    own: Array | None  # this rank owns y, and the row counts, (n, 1)
    t: Array | None  # local probability targets (n, k)
    valid: Array | None  # not ignored, (n, 1)
    ok: Array | None  # a class index in [0, K) (or ignored), (n, 1)
    m: Array | None  # allowed classes (n, k)
    w: Array | None  # the local class weights (k,)
    w_y: Array | None  # w[y] from replicated weights, (n, 1)
    guard: bool = False  # ignored rows present: each block replaces their logits by 0
    owned: bool = False  # x is a temporary of ours (the fused head's block): written in place
    capped: bool = False  # x holds the softcapped logits already

    def cut(self, sl: slice) -> Rows:
        """The rows ``sl`` of every per-row field (the class weights are shared)."""
        return Rows._make(a if a is None or a is self.w or isinstance(a, bool) else a[sl, ...] for a in self)

    def guarded(self, xp: ModuleType, logits: bool = True) -> Rows:
        """A block with its ignored rows harmless: logits 0 and every class allowed (so that
        they add exactly 0 whatever they hold), done block by block, not on a whole copy."""
        if not self.guard:
            return self
        assert self.valid is not None
        m = self.m if self.m is None else self.m | ~self.valid
        if not logits:
            return self._replace(m=m, guard=False)
        return self._replace(x=xp.where(self.valid, self.x, 0.0), m=m, guard=False, owned=True)


def _shifted(xp: ModuleType, rows: Rows, xm: Array, m_r: Array) -> Array:
    """z = xm - m_r (with m_r = 0 where every local class is masked: z = -inf, e = 0), in
    place where ``xm`` is a temporary (masked, guarded, or the fused head's block)."""
    shift = xp.where(m_r == -math.inf, 0.0, m_r)
    if xm is rows.x and not rows.owned:
        return xm - shift
    xm -= shift
    return xm


def prepare(
    xp: ModuleType,
    st: Setting,
    logits: Array,
    target: Array,
    weight: Array | None,
    where: Array | None,
    ax: int,
) -> Rows:
    """The rank's arrays as rows; replicated ``weight`` (K,) is sliced to the local
    classes. Value checks are the caller's (done before any collective)."""
    x = astype(xp, as_rows(xp, logits, ax), st.dtype)
    k = x.shape[1]
    m = None if where is None else as_rows(xp, where, ax)
    w_full = None if weight is None else astype(xp, weight, st.dtype)
    w = w_full if w_full is None or st.sharded_weight else w_full[st.offset : st.offset + k]
    if st.soft:
        t = astype(xp, as_rows(xp, target, ax), st.dtype)
        return Rows(x, None, None, None, t, None, None, m, w, None)
    y0 = xp.reshape(target, (-1, 1))
    valid, ok, y = class_indices(xp, y0, st.num_classes, st.ignore_index, False)
    loc = y - st.offset
    own = valid & ok & (loc >= 0) & (loc < k)
    y_loc = xp.minimum(xp.maximum(loc, 0), k - 1)
    w_y = None if w_full is None or st.sharded_weight else take_class(xp, w_full, y)
    guard = not st.read or bool(xp.any(~valid))  # ignored rows may hold anything (Rows.guarded)
    return Rows(x, y, y_loc, own, None, valid, ok, m, w, w_y, guard)


class Local(NamedTuple):
    """One rank's per-row statistics, (n, 1) columns (step 1); None where not needed."""

    m_r: Array  # the local row maximum (0 with log_probs)
    top: Array | None  # the local first maximum's column
    s_r: Array | None  # sum_c exp(x_c - m_r) but at top
    zy_r: Array | None  # x_y - m_r on the owner, else 0
    zs_r: Array | None  # sum'_c w_c (x_c - m_r) (soft: over the allowed classes)
    sw_shift: Array | float | None  # S'_r, the weight in zs_r (multiplies m_r - M)
    acc_r: Array | None  # the rank's part of the accuracy column (return_aux)
    t_max: Array | None  # probability targets' row maximum, for the MAX (return_aux)
    extra: dict[str, Array]  # further SUM columns, already final


def _masked_weights(xp: ModuleType, st: Setting, rows: Rows) -> Array | None:
    """c_w: the class weights of the allowed classes (0 elsewhere); None: all 1."""
    if rows.m is None:
        return rows.w
    return xp.astype(rows.m, st.dtype) if rows.w is None else xp.where(rows.m, rows.w, 0.0)


def _row_sum(xp: ModuleType, a: Array) -> Array:
    return xp.sum(a, axis=-1, keepdims=True)


def local_block(xp: ModuleType, st: Setting, rows: Rows, pk: Picks) -> tuple[Local, Array | None]:
    """Step 1 for a block of rows: the rank's statistics relative to its own maximum m_r,
    and e = exp(x - m_r) with 0 at the first local maximum (None with log_probs). The
    statistics of z come first, so that e may then take z's buffer where z is ours."""
    rows = llm.prepared(xp, st, rows)
    x, m = rows.x, rows.m
    cw = _masked_weights(xp, st, rows)
    xm = x if m is None else xp.where(m, x, -math.inf)
    top = None
    if st.log_probs:  # z = x (masked classes 0, as in the core), no maximum
        m_r = xp.zeros((x.shape[0], 1), dtype=st.dtype, device=_dev(x))
        z = x if m is None else xp.where(m, x, 0.0)
    else:
        m_r = xp.max(xm, axis=-1, keepdims=True)  # -inf where every local class is masked
        top = first_max(xp, xm, pk, m_r)
        z = _shifted(xp, rows, xm, m_r)
    ours = not pk.dense and (z is not x or rows.owned)
    extra: dict[str, Array] = {}
    if m is not None:
        extra["k"] = _row_sum(xp, xp.astype(m, st.dtype))
    if cw is not None:  # S_w, summed over the ranks (replicated weights too: each its slice)
        extra["sw"] = _row_sum(xp, cw) if cw.ndim == 2 else xp.broadcast_to(xp.sum(cw), m_r.shape)
    if st.soft:
        loc = _soft_local(xp, st, rows, z, cw, m_r, top, None, extra)
    else:
        loc = _index_local(xp, st, rows, z, cw, m_r, top, extra, pk, ours)
    if st.log_probs:
        return loc, None
    assert top is not None
    if st.aux:
        acc_r, t_max = llm.accuracy_local(xp, st, rows, top, pk)
        loc = loc._replace(acc_r=acc_r, t_max=t_max)
    e = put_per_row(xp, _exp(xp, z, rows.owned), at(pk, top), 0.0, add=False, inplace=not pk.dense)
    return loc._replace(s_r=_row_sum(xp, e)), e


def _exp(xp: ModuleType, z: Array, inplace: bool) -> Array:
    """exp(z), in z's own buffer where z is the fused head's block and the library has an
    in-place exp (PyTorch's ``exp_``; the standard has none): one block-sized array less.
    (Not for the unfused loss's small cache-sized blocks, where it measured no better.)"""
    exp_ = getattr(z, "exp_", None) if inplace else None
    return exp_() if callable(exp_) else xp.exp(z)


def _index_local(
    xp: ModuleType,
    st: Setting,
    rows: Rows,
    z: Array,
    cw: Array | None,
    m_r: Array,
    top: Array | None,
    extra: dict[str, Array],
    pk: Picks,
    ours: bool,
) -> Local:
    """Class indices: z_y on the owner, sum'_c w_c z_c (z is left as it was)."""
    assert rows.own is not None and rows.y_loc is not None
    y_at = at(pk, rows.y_loc)
    z_y = take_per_row(xp, z, pk, rows.y_loc)
    zy_r = xp.where(rows.own, z_y, 0.0)
    if st.sharded_weight:
        assert rows.w is not None
        extra["wy"] = xp.where(rows.own, take_class(xp, rows.w, rows.y_loc), 0.0)
    if rows.m is not None:  # the owner says whether the target is allowed
        allowed = take_per_row(xp, xp.astype(rows.m, st.dtype), pk, rows.y_loc)
        extra["y_allowed"] = xp.where(rows.own, allowed, 0.0)
    zs_r = sw_shift = None
    if st.eps != 0.0:
        zo = z
        if st.convention == "others":  # sum' leaves the target out: only its owner adjusts
            zo = _zero_at(xp, z, y_at, rows.own, inplace=ours)
        zs_r = _row_sum(xp, weighted(xp, cw, zo))
        if zo is z and st.convention == "others" and isinstance(y_at, tuple):
            put_per_row(xp, z, y_at, z_y, add=False, inplace=True)  # z_y back (e needs it)
        sw_shift = _sum_prime_weight(xp, st, rows, cw, pk)
    return Local(m_r, top, None, zy_r, zs_r, sw_shift, None, None, extra)


def _zero_at(xp: ModuleType, z: Array, y_at: Any, own: Array, inplace: bool) -> Array:
    """z with 0 at the target where this rank owns it (in place where z is a temporary)."""
    if not isinstance(y_at, tuple):
        return xp.where(y_at & own, 0.0, z)
    return put_per_row(xp, z, y_at, xp.where(own, 0.0, z[y_at]), add=False, inplace=inplace)


def _sum_prime_weight(xp: ModuleType, st: Setting, rows: Rows, cw: Array | None, pk: Picks) -> Array | float:
    """S'_r: the weight of the local classes that sum' runs over (every allowed class;
    "others": but the target)."""
    assert rows.own is not None and rows.y_loc is not None
    k = rows.x.shape[1]
    if cw is None:
        s: Array | float = float(k)
    elif cw.ndim == 1:
        s = xp.sum(cw)
    else:
        s = _row_sum(xp, cw)
    if st.convention == "uniform":
        return s
    if cw is None:
        c_y: Array | float = 1.0
    elif cw.ndim == 1:
        c_y = take_class(xp, cw, rows.y_loc)
    else:
        c_y = take_per_row(xp, cw, pk, rows.y_loc)
    return s - xp.where(rows.own, c_y, 0.0)


def _soft_local(
    xp: ModuleType,
    st: Setting,
    rows: Rows,
    z: Array,
    cw: Array | None,
    m_r: Array,
    top: Array | None,
    s_r: Array | None,
    extra: dict[str, Array],
) -> Local:
    """Probability targets: sum_c w_c t_c z_c, sum_c w_c t_c and sum_c w_c z_c over the
    allowed local classes (q = a t + b there, a and b known once the counts are)."""
    t = rows.t if rows.m is None else xp.where(rows.m, rows.t, 0.0)
    wt = t if cw is None else cw * t
    tz_r = _row_sum(xp, weighted(xp, wt, z))
    extra["tw"] = _row_sum(xp, wt)
    extra["tz"] = tz_r  # (shifted in columns())
    zs_r = _row_sum(xp, weighted(xp, cw, z)) if st.eps != 0.0 else None
    sw: Array | float = float(z.shape[1])
    if cw is not None:
        sw = _row_sum(xp, cw) if cw.ndim == 2 else xp.sum(cw)
    if st.kl:
        if rows.m is not None:
            raise NotImplementedError(
                "kl_divergence with probability targets and where= is not supported on sharded classes "
                "(the entropy needs the global count of allowed classes first); use cross_entropy, "
                "which has the same gradient"
            )
        a, b = smoothing_coefficients(xp, st.eps, float(st.num_classes), st.convention)
        assert t is not None
        q = a * t + b
        extra["ent"] = _row_sum(xp, weighted(xp, rows.w, xlogx(xp, q)))
    return Local(m_r, top, s_r, None, zs_r, sw, None, None, extra)


def columns(
    xp: ModuleType, st: Setting, loc: Local, own: Array | None, g_max: Array | float
) -> dict[str, Array]:
    """Step 3's columns for the SUM, given the global maximum M (step 2): every
    statistic re-referenced from m_r to M, each a sum of terms of one sign."""
    cols: dict[str, Array] = {}
    shift: Array | float = 0.0
    if not st.log_probs:
        assert loc.s_r is not None
        shift = loc.m_r - g_max  # <= 0; -inf where every local class is masked
        at_max = loc.m_r == g_max
        cols["s"] = xp.where(at_max, loc.s_r, xp.exp(shift) * (1.0 + loc.s_r))
        cols["cnt"] = xp.astype(at_max, st.dtype)
    if loc.zy_r is not None:
        assert own is not None
        cols["zy"] = loc.zy_r + xp.where(own, shift, 0.0) if not st.log_probs else loc.zy_r
    if loc.zs_r is not None:
        cols["zs"] = loc.zs_r + weighted(xp, loc.sw_shift, shift) if not st.log_probs else loc.zs_r
    for name, a in loc.extra.items():
        cols[name] = a + weighted(xp, loc.extra["tw"], shift) if name == "tz" and not st.log_probs else a
    return cols


def _cut_column(a: Any, sl: slice) -> Any:
    """The rows ``sl`` of a per-row column; numbers and class vectors stay."""
    return a[sl, ...] if getattr(a, "ndim", 0) == 2 else a


class Global(NamedTuple):
    """Per-row quantities after the SUM (steps 3-4), identical on every rank."""

    g_max: Array | float  # M
    s: Array | float  # s': exp(z) summed over every class but one global maximum
    l1: Array | float  # log1p(s')
    a: Array | float
    b: Array | float
    q_y: Array | float
    wy: Array | float
    s_w: Array | float
    q_w: Array | float  # Q
    row: Array  # the per-row loss, before the row factor
    factor: Array | float  # each row's factor in the reduction
    total: Array | float  # the "mean" denominator
    lse: Any = None  # M + log1p(s'), with z_loss or return_aux (ls_xp._vocab_parallel_llm)
    factor_z: Any = None  # each row's factor of the z-term and the accuracy
    hit: Any = None  # 1 where the global first maximum is the target
    count: Any = None  # the counted rows

    def cut(self, sl: slice) -> Global:
        return Global(*(_cut_column(a, sl) for a in self))


def combine(
    xp: ModuleType, st: Setting, rows: Rows, cols: dict[str, Array], g_max: Array | float, weighted_: bool
) -> Global:
    """Step 4: the loss per row from the summed columns, and the row factors."""
    if st.log_probs:
        s: Array | float = 0.0
        l1: Array | float = 0.0
    else:
        s = cols["s"] + (cols["cnt"] - 1.0)
        l1 = xp.log1p(s)
    k_n: Any = cols.get("k", float(st.num_classes))
    s_w: Any = cols.get("sw", k_n)
    a, b = smoothing_coefficients(xp, st.eps, k_n, st.convention)
    if st.soft:
        q_w = a * cols["tw"] + b * s_w
        row = q_w * l1 - weighted(xp, a, cols["tz"])
        if "zs" in cols:
            row = row - weighted(xp, b, cols["zs"])
        if st.kl:
            row = row + cols["ent"]
        n = float(rows.x.shape[0])
        factor = 1.0 if st.reduction != "mean" else safe_divide(xp, 1.0, n, 0.0)
        return Global(g_max, s, l1, a, b, 0.0, 1.0, s_w, q_w, row, factor, n)
    w_y = cols["wy"] if st.sharded_weight else rows.w_y
    wy: Any = 1.0 if w_y is None else w_y
    q_y = (1.0 - st.eps) + b if st.convention == "uniform" else 1.0 - st.eps
    q_w = q_y * wy + b * (s_w - wy) if weighted_ else 1.0  # (q sums to 1 without weights)
    row = (l1 if not weighted_ else q_w * l1) - weighted(xp, (1.0 - st.eps) * wy, cols["zy"])
    if "zs" in cols:
        row = row - weighted(xp, b, cols["zs"])
    if st.kl:
        row = row + wy * xlogx(xp, q_y) + xlogx(xp, b) * (s_w - wy)
    assert rows.valid is not None and rows.ok is not None
    ok = rows.ok if "y_allowed" not in cols else rows.ok & (cols["y_allowed"] > 0)
    total: Array | float = 1.0
    if st.reduction == "mean":
        total = total_weight(xp, rows.valid, w_y, st.dtype)
        per_row: Array | float = safe_divide(xp, 1.0, total, 0.0)
    else:
        per_row = xp.astype(rows.valid, st.dtype)
    factor = xp.where(rows.valid, xp.where(ok, per_row, math.nan), 0.0)
    return Global(g_max, s, l1, a, b, q_y, wy, s_w, q_w, row, factor, total)


def check_after_sum(xp: ModuleType, st: Setting, rows: Rows, cols: dict[str, Array]) -> None:
    """Value errors that need the global counts (raised alike on every rank: the summed
    columns are the same everywhere)."""
    if not st.read or "k" not in cols:
        return
    need = 2 if st.convention == "others" and st.eps != 0.0 else 1
    if bool(xp.any(cols["k"] < need)):
        raise ValueError(
            f"where leaves fewer than {need} allowed class(es) in some row"
            + (' (convention="others" needs two)' if need == 2 else "")
        )
    if "y_allowed" in cols:
        assert rows.valid is not None and rows.ok is not None
        bad = rows.valid & rows.ok & ~(cols["y_allowed"] > 0)
        if bool(xp.any(bad)):
            assert rows.y is not None
            value = int(rows.y[bad][0])
            raise ValueError(f"target class {value} is masked out by where")
