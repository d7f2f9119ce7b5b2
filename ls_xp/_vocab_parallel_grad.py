"""The gradient pass of the class-sharded loss (step 5 of :mod:`ls_xp._vocab_parallel`):
local once the global statistics are known, with the closed form at a rank's first
maximum, and the fused head's recomputation of ``e``."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from array_api_compat import device as _dev

from ls_xp import _vocab_parallel_llm as llm
from ls_xp._picks import Picks, at, put_per_row, take_class, take_per_row
from ls_xp._vocab_parallel import Global, Local, Rows, Setting, _exp, _masked_weights, _shifted

Array = Any


def grad_block(
    xp: ModuleType, st: Setting, e: Array | None, rows: Rows, loc: Local, glob: Global, pk: Picks
) -> Array:
    """Step 5, local: g_c = (Q p_c - w_c q_c) r for a block, in place in ``e`` where it
    is writeable; the closed form at a first maximum with z = 0. The z-loss adds
    2 z lse r_z to the coefficient of p; the softcap's chain rule comes last."""
    raw, rows = rows, rows.guarded(xp, logits=False)
    cw = _masked_weights(xp, st, rows)
    r = glob.factor
    neg_on: Array | float = 0.0
    if st.soft:
        assert rows.t is not None
        q = glob.a * rows.t + glob.b
        q = q if rows.m is None else xp.where(rows.m, q, 0.0)
        wq_r = (q if rows.w is None else q * rows.w) * r
        if e is None:  # log-probabilities: p drops out
            return -wq_r
        q_r = glob.q_w * r
        top_q = take_per_row(xp, wq_r, pk, loc.top)  # w_top q_top r
        at_q, below_q = q_r - top_q, top_q
        off: Array | float = wq_r
    else:
        assert rows.own is not None and rows.y_loc is not None
        q_r = r if cw is None else glob.q_w * r
        neg_on = xp.where(rows.own, (-glob.a * glob.wy) * r, 0.0)  # minus the rest of w_y q_y r, at y
        off = 0.0 if st.eps == 0.0 else (glob.b * r if cw is None else (glob.b * r) * cw)
        if e is None:
            base = xp.zeros(rows.x.shape, dtype=st.dtype, device=_dev(rows.x)) - off
            return put_per_row(xp, base, at(pk, rows.y_loc), neg_on, add=True, inplace=not pk.dense)
        at_q, below_q = _index_top(xp, st, rows, loc, glob, cw, neg_on, pk)
    assert e is not None and loc.top is not None
    if st.z_loss:
        z_coef = llm.z_coefficient(st, glob)
        q_r, at_q = q_r + z_coef, at_q + z_coef
    inv = 1.0 / (1.0 + glob.s)
    scale = xp.exp(loc.m_r - glob.g_max) * (q_r * inv)  # Q r p_c / e_c
    if pk.dense:
        g = e * scale - off
    else:  # in place: e is this block's buffer
        g = e
        g *= scale
        g -= off
    if rows.y_loc is not None:
        g = put_per_row(xp, g, at(pk, rows.y_loc), neg_on, add=True, inplace=not pk.dense)
    top_val = xp.where(loc.m_r == glob.g_max, at_q - (q_r * inv) * glob.s, scale - below_q)
    g = put_per_row(xp, g, at(pk, loc.top), top_val, add=False, inplace=not pk.dense)
    return llm.softcap_chain(xp, st, g, raw, inplace=not pk.dense)


def _index_top(
    xp: ModuleType,
    st: Setting,
    rows: Rows,
    loc: Local,
    glob: Global,
    cw: Array | None,
    neg_on: Array,
    pk: Picks,
) -> tuple[Array, Array]:
    """At the rank's first maximum: (Q - w_top q_top) r in closed form (the value where
    z = 0 there), and w_top q_top r as g subtracts it elsewhere."""
    assert rows.own is not None and rows.y_loc is not None and loc.top is not None
    r, b, wy, s_w = glob.factor, glob.b, glob.wy, glob.s_w
    y_top = rows.own & (loc.top == rows.y_loc)
    if cw is None:
        cw_top: Array | float = 1.0
    elif cw.ndim == 1:
        cw_top = take_class(xp, cw, loc.top)
    else:
        cw_top = take_per_row(xp, cw, pk, loc.top)
    if st.eps != 0.0:
        at_y, elsewhere = b * (s_w - wy), glob.q_y * wy + b * (s_w - wy - cw_top)
        off_top = (b * r) * cw_top
    else:
        at_y, elsewhere, off_top = 0.0 * r, glob.q_y * wy, 0.0 * r
    at_q = xp.where(y_top, at_y * r, elsewhere * r)
    below_q = off_top - xp.where(y_top, neg_on, 0.0)
    return at_q, below_q


def exp_block(xp: ModuleType, st: Setting, rows: Rows, m_r: Array, top: Array, pk: Picks) -> Array:
    """e = exp(x - m_r) with 0 at the first local maximum (the fused head recomputes it)."""
    rows = llm.prepared(xp, st, rows)
    xm = rows.x if rows.m is None else xp.where(rows.m, rows.x, -math.inf)
    z = _shifted(xp, rows, xm, m_r)
    e = _exp(xp, z, rows.owned and not pk.dense)
    return put_per_row(xp, e, at(pk, top), 0.0, add=False, inplace=not pk.dense)
