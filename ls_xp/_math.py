"""The per-block formulas, written once against the array API with ``xp`` threaded through.

Notation (per row n of a block, K classes, the class axis last):

    z_c   = x_c - max_k x_k                       shifted logits, z <= 0
    l1    = log1p(sum_{c != argmax} exp(z_c))     so that  lse(x) = max(x) + l1
    -log p_c = l1 - z_c                           a sum of two non-negative numbers
    b     = eps / K ("uniform") or eps / (K - 1) ("others"), the smoothing mass of a class
    loss_n = (1 - eps) w_y (l1 - z_y) + b (S' l1 + sum'_c w_c (-z_c))
           = Q l1 - (1 - eps) w_y z_y - b sum'_c w_c z_c      (computed so; Q = 1 unweighted)
    d loss_n / d x_c   = Q p_c - w_c q_c,          Q = sum_k w_k q_k
    d loss_n / d eps   = -w_y (l1 - z_y) + (b / eps) (S' l1 + sum'_c w_c (-z_c))

where S' and sum' run over every allowed class ("uniform") or over the classes other than
y ("others"). Every factor is non-negative for every eps in [0, 1], so the loss is a sum
of non-negative numbers and keeps full relative accuracy, also for the tiny losses of
confident, correct predictions (the log1p form avoids the cancellation in lse - x_y); a
factor of 0 makes its term 0 even against a -inf logit (0 * inf = 0, :func:`weighted`).
The loss is affine in eps for fixed logits, so its eps-derivative is exact too.

Per-row quantities (labels, row factors, max, s, l1) are (n, 1) columns, so that they
broadcast against a block without a reshape. Nothing here checks its arguments: the
door (:mod:`ls_xp._validate`) and the bookkeeping (:mod:`ls_xp._evaluate`) have.

Reference: P. Blanchard, D. J. Higham, N. J. Higham, "Accurately computing the log-sum-exp
and softmax functions", IMA J. Numer. Anal. 41(4), 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from ls_xp import _softcap
from ls_xp._numeric import astype, is_zero, log_plus_one, scale_shift, weighted, xlogx
from ls_xp._picks import Picks, at, first_max, put_per_row, take_class, take_per_row
from ls_xp._plan import device_of

Array = Any


def smoothing_coefficients(
    xp: ModuleType, eps: float, num_allowed: float | Array, convention: str
) -> tuple[float | Array, float | Array]:
    """(a, b) with q = a * onehot + b on allowed classes.

    ``num_allowed`` is K, or the per-row count of allowed classes under ``where``.
    A row with too few allowed classes for the convention gets NaN coefficients.
    """
    if is_zero(eps):  # no smoothing: the one-hot, whatever the number of allowed classes
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


def _log_softmax_parts(
    xp: ModuleType, x: Array, mask: Array | None, pk: Picks, inplace: bool
) -> tuple[Array, Array, Array, Array, Any, Array]:
    """Shifted logits z = x - max, exp(z) but 0 at the maximum, and s with
    lse(x) = max + log1p(s), per row.

    s sums exp(z) over every allowed class but the first maximum (``top``), so that
    -log p_y = log1p(s) - z_y stays accurate when it is tiny. Masked classes get z = -inf.
    Returns (z, e, s, top, where top lies, the row maxima); s, top and the maxima are
    (n, 1) columns. With ``pk.by_value`` top is None and "where top lies" is the mask of
    every maximum, z = 0: e is 0 on all of them, and as exp(0) = 1 exactly,

        s = sum_{z_c < 0} exp(z_c) + (#{c : z_c = 0} - 1),

    the same sum with no loop over K to find the first maximum's column. A row with a NaN
    or +inf logit has a NaN maximum or z = NaN (inf - inf), so its s is NaN either way.
    """
    xm = x if mask is None else xp.where(mask, x, -math.inf)
    if pk.by_value:
        x_max = xp.max(xm, axis=-1, keepdims=True)
        z = xm - x_max
        tie = z == 0
        e = xp.where(tie, 0.0, xp.exp(z))
        ties = xp.sum(astype(xp, tie, z.dtype), axis=-1, keepdims=True)
        return z, e, xp.sum(e, axis=-1, keepdims=True) + (ties - 1.0), None, tie, x_max
    if pk.dense:  # (first_max: the last column in a row of NaNs)
        x_max = xp.max(xm, axis=-1, keepdims=True)
        top = first_max(xp, xm, pk, x_max)
    else:  # (some devices lack int64: the indices take the dtype of rows)
        top = first_max(xp, xm, pk)
        x_max = take_per_row(xp, xm, pk, top)
    z = xm - x_max
    top_at = at(pk, top)
    # e is 0 at the top: max - max, which is NaN where the maximum is +inf (z there is
    # inf - inf), so that such a row's s, loss and gradient are NaN, as by value
    e = put_per_row(xp, xp.exp(z), top_at, x_max - x_max, add=False, inplace=inplace)
    s = xp.sum(e, axis=-1, keepdims=True)
    return z, e, s, top, top_at, x_max


class Spec(NamedTuple):
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
    logits_are_ours: bool  # the logits may be written over (their rows get the gradient after)
    workers: int | None  # threads over row blocks (CPU plan); None: the library's default
    plan: str  # the execution plan, "cpu" or "accelerator"
    read: bool  # values may be read back (checks that raise); never on the accelerator plan
    z_loss: float = 0.0  # the weight of lse**2 in each row's loss (PaLM's z-loss)
    softcap: float | None = None  # logits become softcap * tanh(x / softcap) first
    want_aux: bool = False  # the per-row lse and first-argmax hits
    z_scale: float | Array = 1.0  # a scale of z_loss (see Request.z_scale)
    logits_scale: float = 1.0  # the logits come multiplied by it (Request.logits_scale)


class BlockOut(NamedTuple):
    row: Array  # per-row losses, (n, 1), before the row factors (the reduction's)
    eps_row: Array | None  # per-row d loss / d eps, likewise
    grad: Array | None  # gradient rows times the row factor
    target_grad: Array | None
    z_row: Array | None = None  # per-row z-loss terms, before the z factors
    lse: Array | None = None  # per-row log-sum-exp of the (softcapped) logits
    hit: Array | None = None  # 1 where the first maximum is the target class, else 0


class BlockRows(NamedTuple):
    """What the block formulas read, for the rows of one block (or of all of them)."""

    x: Array  # logits, (n, K), in the compute dtype
    y: Array | None  # class indices, (n, 1), clipped into [0, K); None for probabilities
    t: Array | None  # probability targets, (n, K); None for class indices
    valid: Array | None  # not ignored, (n, 1)
    m: Array | None  # allowed classes, (n, K)
    w: Array | None  # class weights, (K,)
    w_y: Array | None  # each row's class weight, (n, 1)
    w_sum: Array | None  # sum of the class weights
    factor: float | Array  # each row's factor in the reduction (NaN at bad rows), (n, 1)
    # the factor of the z-loss terms and of the accuracy: 1 / the number of rows counted
    # for "mean" (not their weight), 0 at ignored rows; None where neither is wanted
    factor_z: float | Array | None = None

    def rows(self, sl: slice) -> BlockRows:
        """The rows ``sl`` of every per-row field (the class weights are shared)."""

        def cut(a: Any) -> Any:
            return a if a is None or isinstance(a, float) else a[sl, ...]

        return BlockRows(
            cut(self.x),
            cut(self.y),
            cut(self.t),
            cut(self.valid),
            cut(self.m),
            self.w,
            cut(self.w_y),
            self.w_sum,
            factor := cut(self.factor),
            factor if self.factor_z is self.factor else cut(self.factor_z),
        )


def block(xp: ModuleType, sp: Spec, rows: BlockRows, pk: Picks) -> BlockOut:
    """Per-row losses, and the gradient rows times the row factors, for one block of rows.

    The losses are not yet masked or scaled (the reduction multiplies them by the row
    factors); so that an ignored row (factor 0) adds exactly 0 whatever its logits, its
    logits are replaced by 0 and its classes all allowed where ``guard_rows`` says that
    ignored rows may be present."""
    x, y, t, valid, m, w = rows.x, rows.y, rows.t, rows.valid, rows.m, rows.w
    w_y, w_sum = rows.w_y, rows.w_sum
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
    inplace = sp.inplace and not pk.dense
    # 1. softcapping (Gemma 2): every later step sees the capped logits
    fold = False  # the gradient rows come as -g / softcap^2 (see _softcap.chain)
    if sp.softcap is not None:
        own = inplace and (sp.logits_are_ours or sp.guard_rows)
        x = _softcap.cap(xp, x, sp.softcap, inplace=inplace, own=own, x_scale=sp.logits_scale, plan=sp.plan)
        fold = inplace and sp.want_grad and not sp.want_target_grad
        if fold:
            k = -1.0 / sp.softcap**2
            rows = rows._replace(
                factor=rows.factor * k, factor_z=None if rows.factor_z is None else rows.factor_z * k
            )
    ls = _LogSoftmax.of(xp, sp, x, m, pk)
    # 2. the z-loss's share of each row's softmax coefficient: d(z lse^2)/dx_c = 2 z lse p_c
    lse = None if ls.x_max is None or not (sp.z_loss or sp.want_aux) else ls.x_max + ls.l1
    z = sp.z_loss if isinstance(sp.z_scale, float) and sp.z_scale == 1.0 else sp.z_loss * sp.z_scale
    z_coef = None
    if sp.z_loss and sp.want_grad:
        assert lse is not None and rows.factor_z is not None
        z_coef = (2.0 * z) * lse * rows.factor_z
    # 3. the cross-entropy rows and their gradient
    if t is not None:
        out = _soft_block(xp, sp, ls, rows._replace(m=m), cw, k_n, pk, z_coef)
        target = first_max(xp, t if m is None else xp.where(m, t, -math.inf), pk) if sp.want_aux else None
    else:
        assert y is not None
        c = _index_coefficients(xp, sp, k_n, s_w, w_y, cw is not None)
        out = _index_block(xp, sp, ls, rows._replace(x=x), cw, c, pk, z_coef)
        target = y
    # 4. the z-loss rows, the statistics, and the softcap's chain rule 1 - tanh^2
    g = out.grad
    if sp.softcap is not None and g is not None:  # (x, the capped logits, is ours: made above)
        g = _softcap.chain(xp, g, x, sp.softcap, inplace=inplace, folded=fold)
    return out._replace(
        grad=g,
        z_row=None if not sp.z_loss or lse is None else z * (lse * lse),
        lse=lse,
        hit=None if target is None or not sp.want_aux else xp.astype(_top(xp, ls, pk) == target, sp.dtype),
    )


def _top(xp: ModuleType, ls: _LogSoftmax, pk: Picks) -> Array:
    """The first maximum's column, found here where the maxima were found by value."""
    return ls.top if ls.top is not None else first_max(xp, ls.z, pk, 0.0)


@dataclass(frozen=True)
class _LogSoftmax:
    """-log p_c = l1 - z_c with both terms non-negative, and what the gradient needs.

    With ``log_probs`` the inputs already are log p: z = x and l1 = 0.
    """

    z: Array
    z_is_ours: bool  # a fresh array that may be written in place
    l1: float | Array  # (n, 1)
    e: Array | None = None  # exp(z), 0 at the first maximum (at every one, by value)
    s: Array | None = None  # sum of e plus the ties, (n, 1)
    top: Array | None = None  # the first maximum's column index, (n, 1); None by value
    top_at: Any = None  # where it lies (_at), or the mask of every maximum (by value)
    x_max: Array | None = None  # (n, 1)

    @staticmethod
    def of(xp: ModuleType, sp: Spec, x: Array, m: Array | None, pk: Picks) -> _LogSoftmax:
        if sp.log_probs:
            return _LogSoftmax(z=x if m is None else xp.where(m, x, 0.0), z_is_ours=m is not None, l1=0.0)
        z, e, s, top, top_at, x_max = _log_softmax_parts(xp, x, m, pk, sp.inplace)
        return _LogSoftmax(z, True, xp.log1p(s), e, s, top, top_at, x_max)


def _soft_block(
    xp: ModuleType,
    sp: Spec,
    ls: _LogSoftmax,
    rows: BlockRows,
    cw: Array | None,
    k_n: Any,
    pk: Picks,
    z_coef: Array | None,
) -> BlockOut:
    """Probability targets: q = (1 - eps) t + eps/K, or (1 - eps) t + eps (1 - t)/(K - 1)."""
    eps, uniform = sp.eps, sp.convention == "uniform"
    t, m, w, factor = rows.t, rows.m, rows.w, rows.factor
    assert t is not None
    a, b = smoothing_coefficients(xp, eps, k_n, sp.convention)
    q = (1.0 - eps) * t + (b if uniform else b * (1.0 - t))
    if m is not None:
        q = xp.where(m, q, 0.0)
    wq = q if w is None else q * w  # w_c q_c: the target coefficient of every class
    nlp = ls.l1 - ls.z  # -log p
    row = xp.sum(weighted(xp, wq, nlp), axis=-1, keepdims=True)
    if sp.kl:
        row = row + xp.sum(weighted(xp, w, xlogx(xp, q)), axis=-1, keepdims=True)
    drow = None
    if sp.want_eps_grad:  # q is affine in eps: dq/deps = -t + b(1) (uniform) or b(1)(1 - t)
        _, b1 = smoothing_coefficients(xp, 1.0, k_n, sp.convention)
        dq = -t + (b1 if uniform else b1 * (1.0 - t))
        dq = dq if m is None else xp.where(m, dq, 0.0)
        wdq = dq if w is None else dq * w
        drow = xp.sum(weighted(xp, wdq, nlp), axis=-1, keepdims=True)
        if sp.kl:  # d/deps of q log q = dq (log q + 1), -inf at q = 0
            drow = drow + xp.sum(weighted(xp, wdq, log_plus_one(xp, q)), axis=-1, keepdims=True)
    r = factor
    g = tg = None
    if sp.want_grad:
        q_w = xp.sum(wq, axis=-1, keepdims=True)
        if sp.log_probs:
            g = -wq * r
        else:
            assert ls.s is not None and ls.e is not None
            norm = 1.0 + ls.s
            # (by value: the top entry's form holds at every maximum, elementwise)
            wq_top = wq if ls.top is None else take_per_row(xp, wq, pk, ls.top)
            p_coef = q_w * r if z_coef is None else q_w * r + z_coef  # the coefficient of p
            top_val = ((q_w - wq_top) * r if z_coef is None else (q_w - wq_top) * r + z_coef) - p_coef * (
                ls.s / norm
            )
            g = scale_shift(xp, ls.e, p_coef / norm, wq * r, inplace=sp.inplace and not pk.dense)
            g = put_per_row(xp, g, ls.top_at, top_val, add=False, inplace=sp.inplace)
    if sp.want_target_grad:
        # d q_c / d t_c = 1 - eps ("uniform") or 1 - eps - eps/(K-1) ("others")
        alpha = (1.0 - eps) if uniform else a
        dlt = nlp if not sp.kl else nlp + xp.log(xp.where(q > 0, q, 1.0)) + 1.0
        tg = weighted(xp, cw, dlt) * (alpha * r)
    return BlockOut(row, drow, g, tg)


class _Coef(NamedTuple):
    """A row's smoothed target in closed form: q = a onehot(y) + b on allowed classes."""

    a: float | Array
    b: float | Array  # the smoothing mass of each allowed class
    q_y: float | Array  # q at the target: a + b
    wy: float | Array  # the target's class weight (1 without weights)
    s_w: float | Array  # the weight of the allowed classes, S_w
    others: float | Array  # b (S_w - w_y): the target mass of the other classes, weighted
    q_w: float | Array  # Q = sum_c w_c q_c = q_y w_y + b (S_w - w_y)
    k_n: float | Array  # the number of allowed classes
    smoothing: bool  # eps is not a Python 0


def _index_coefficients(
    xp: ModuleType, sp: Spec, k_n: float | Array, s_w: float | Array, w_y: Array | None, weighted_: bool
) -> _Coef:
    eps, uniform = sp.eps, sp.convention == "uniform"
    a, b = smoothing_coefficients(xp, eps, k_n, sp.convention)
    q_y = (1.0 - eps) + b if uniform else 1.0 - eps
    wy = 1.0 if w_y is None else w_y
    others = b * (s_w - wy)
    q_w = q_y * wy + others if weighted_ else 1.0  # (q sums to 1 without class weights)
    return _Coef(a, b, q_y, wy, s_w, others, q_w, k_n, not is_zero(eps))


def _index_block(
    xp: ModuleType,
    sp: Spec,
    ls: _LogSoftmax,
    rows: BlockRows,
    cw: Array | None,
    c: _Coef,
    pk: Picks,
    z_coef: Array | None,
) -> BlockOut:
    """Class indices. With b the smoothing mass of each allowed class and
    Q = sum_c w_c q_c = q_y w_y + b (S_w - w_y) (1 without class weights: q sums to 1),

        loss_n = Q l1 - (1 - eps) w_y z_y - b sum'_c w_c z_c,

    where sum' runs over every allowed class ("uniform": q_y = 1 - eps + b) or over the
    classes other than y ("others": q_y = 1 - eps). As l1 >= 0 and z <= 0, every term is
    non-negative for every eps in [0, 1]: the loss keeps full relative accuracy on the
    whole range, and a factor of 0 makes its term 0 also against a -inf logit
    (0 * inf = 0). Per-row quantities are (n, 1) columns.
    """
    eps, uniform, y = sp.eps, sp.convention == "uniform", rows.y
    assert y is not None
    y_at = at(pk, y)
    # 1. z_y: y is never masked, so z_y = x_y - max. Eager arrays gather it from z (before
    #    z changes below); under a compiler (dense picks) from x, so that z, which then
    #    only feeds exp and a sum, is fused away instead of kept as a second temporary
    if pk.dense and ls.x_max is not None:
        z_y = take_per_row(xp, rows.x, pk, y) - ls.x_max
    else:
        z_y = take_per_row(xp, ls.z, pk, y)
    # 2. the loss row: Q l1 - (1 - eps) w_y z_y (l1 is finite or NaN: no 0 * inf guard) ...
    l1 = ls.l1
    row = (l1 if cw is None else c.q_w * l1) - weighted(xp, (1.0 - eps) * c.wy, z_y)
    z_sum = None  # sum'_c w_c z_c <= 0: every allowed class, or every class but y ("others")
    if c.smoothing or sp.want_eps_grad:
        z = ls.z
        if not uniform:
            z = put_per_row(xp, z, y_at, 0.0, add=False, inplace=sp.inplace and ls.z_is_ours)
        z_sum = xp.sum(z if cw is None else weighted(xp, cw, z), axis=-1, keepdims=True)
        if c.smoothing:  # ... - b sum'_c w_c z_c
            row = row - weighted(xp, c.b, z_sum)
    if sp.kl:  # ... + the negative entropy of q: q_y on y, b on the S_w - w_y other weights
        row = row + c.wy * xlogx(xp, c.q_y) + xlogx(xp, c.b) * (c.s_w - c.wy)
    # 3. d loss / d eps, from the same terms
    drow = None
    if sp.want_eps_grad:
        assert z_sum is not None
        drow = _index_eps_row(xp, sp, c, l1, z_y, z_sum)
    # 4. the gradient rows
    g = _index_grad(xp, sp, ls, y, y_at, cw, c, rows.factor, pk, z_coef) if sp.want_grad else None
    return BlockOut(row, drow, g, None)


def _index_eps_row(xp: ModuleType, sp: Spec, c: _Coef, l1: Array, z_y: Array, z_sum: Array) -> Array:
    """d loss_n / d eps. The loss is (1 - eps) T1 + b T2 with T1 = w_y (l1 - z_y),
    T2 = S' l1 - sum'_c w_c z_c (S' the weight that sum' runs over) and b affine in eps,
    so this is exact: -T1 + db T2 (plus the entropy's derivative for the KL form)."""
    _, db = smoothing_coefficients(xp, 1.0, c.k_n, sp.convention)
    wy, s_w = c.wy, c.s_w
    t1 = weighted(xp, wy, l1 - z_y)  # w_y (-log p_y)
    t2 = (s_w if sp.convention == "uniform" else s_w - wy) * l1 - z_sum
    d = weighted(xp, db, t2) - t1
    if sp.kl:
        # d (q log q) = dq (log q + 1): -inf where q = 0 and dq > 0
        dq_y = -1.0 + db if sp.convention == "uniform" else -1.0
        d = (
            d
            + weighted(xp, wy * dq_y, log_plus_one(xp, c.q_y))
            + weighted(xp, db * (s_w - wy), log_plus_one(xp, c.b))
        )
    return d


def _index_grad(
    xp: ModuleType,
    sp: Spec,
    ls: _LogSoftmax,
    y: Array,
    y_at: Any,
    cw: Array | None,
    c: _Coef,
    factor: float | Array,
    pk: Picks,
    z_coef: Array | None,
) -> Array:
    """g_c = (Q p_c - w_c q_c) r with Q = sum_k w_k q_k = q_y w_y + b (S_w - w_y).

    With log-probabilities p drops out. At the first maximum p = 1 - s/(1+s), and
    Q - w q there in closed form (b (S_w - w_y) if it is y, else q_y w_y + b (S_w - w_y -
    w_top)) keeps a confident, correct row exact. Found by value, every maximum takes
    that form (p = 1/(1+s) = 1 - s/(1+s) at each), elementwise, with no gather.
    """
    a, b, q_y, wy, s_w, others, q_w = c.a, c.b, c.q_y, c.wy, c.s_w, c.others, c.q_w
    r = factor  # per row, an array on this path
    off = None  # the b w_c r part, (n, 1) or (n, K)
    if c.smoothing:
        off = b * r if cw is None else (b * r) * cw
    neg_on = (-a * wy) * r  # minus the rest of w_y q_y r, at y
    if sp.log_probs:
        base = xp.zeros(ls.z.shape, dtype=sp.dtype, device=device_of(ls.z))
        g = base if off is None else base - off
        return put_per_row(xp, g, y_at, neg_on, add=True, inplace=sp.inplace)
    assert ls.s is not None
    q_w_r = r if cw is None else q_w * r  # (Q = 1 without weights)
    if z_coef is not None:  # the z-loss adds 2 z lse p_c: to the coefficient of p, and at the top
        q_w_r = q_w_r + z_coef
    scale = q_w_r / (1.0 + ls.s)  # Q r / (1 + s): p_c = e_c / (1 + s)
    # e Q r / (1 + s) - off, in place in e where e is ours; e is 0 at the maximum, set
    # exactly below
    g = scale_shift(xp, ls.e, scale, off, inplace=sp.inplace and not pk.dense)
    g = put_per_row(xp, g, y_at, neg_on, add=True, inplace=sp.inplace)
    if c.smoothing:
        if cw is None:
            cw_top: float | Array = 1.0
        elif ls.top is None:  # every maximum, elementwise: (K,) or (n, K)
            cw_top = cw
        elif cw.ndim == 1:
            cw_top = take_class(xp, cw, ls.top)
        else:
            cw_top = take_per_row(xp, cw, pk, ls.top)
        at_y, elsewhere = others, q_y * wy + b * (s_w - wy - cw_top)
    else:
        at_y, elsewhere = 0.0, q_y * wy
    # r is an array here, so both values of where() are (no scalar to make an array of)
    q_top_r = xp.where(y_at if ls.top is None else ls.top == y, at_y * r, elsewhere * r)
    if z_coef is not None:
        q_top_r = q_top_r + z_coef
    top_val = q_top_r - scale * ls.s  # Q r (1 - s / (1 + s)) - q_top r, exactly
    return put_per_row(xp, g, ls.top_at, top_val, add=False, inplace=sp.inplace)
