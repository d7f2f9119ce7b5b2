"""The bookkeeping of class-index targets: which rows are ignored, which labels are in
range (checked where values may be read), the "mean" denominator and each row's factor
in the reduction. :mod:`ls_xp._evaluate` runs it; the fused and the vocabulary-parallel
losses reuse :func:`class_indices` and :func:`total_weight`.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from ls_xp import _plan
from ls_xp import _validate as v
from ls_xp._numeric import safe_divide

Array = Any


def class_indices(
    xp: ModuleType, y: Array, num_classes: int, ignore_index: int, read: bool
) -> tuple[Array, Array, Array]:
    """(valid, ok, safe) of class indices: not ignored; in [0, K); and the indices
    clipped into [0, K), safe to gather with. An index neither ignored nor in range
    raises where values may be ``read``; elsewhere its rows become NaN downstream.
    (Clipping both finds the indices out of range and makes them safe.)"""
    valid, ok, safe, _ = checked_indices(xp, y, num_classes, ignore_index, read)
    return valid, (safe == y if ok is None else ok), safe


def checked_indices(
    xp: ModuleType, y: Array, num_classes: int, ignore_index: int, read: bool
) -> tuple[Array, Array | None, Array, bool | None]:
    """:func:`class_indices`, with ``ok`` None where every row that is not ignored is in
    range, and whether any row is ignored where that was found on the way (else None).

    Where values are read, the row minimum and maximum decide: all in range (the common
    case), the indices are their own clipped values; else the ignored rows are replaced
    by their clipped value (``ignore_index`` clipped) and the range is asked again. Both
    give exactly the clipped indices, in fewer operations than clipping and comparing."""
    valid = y != ignore_index
    # (valid, not y: under jax.jit every operation gives a tracer, also on concrete labels)
    if read and y.shape[0] and _plan.is_concrete(valid):
        lo, hi = _min_max(xp, y)
        if lo >= 0 and hi < num_classes:
            return valid, None, y, None if lo <= ignore_index <= hi else False
        if not 0 <= ignore_index < num_classes:  # out-of-range labels: ignored, or an error
            fill = min(max(ignore_index, 0), num_classes - 1)
            safe = xp.where(valid, y, fill)
            lo, hi = _min_max(xp, safe)
            if lo >= 0 and hi < num_classes:  # (then some row is ignored: one was out of range)
                return valid, None, safe, True
    return _clipped_indices(xp, y, valid, num_classes, ignore_index, read)


def _min_max(xp: ModuleType, a: Array) -> tuple[int, int]:
    """The least and the greatest of the integers ``a``, read back (NumPy's own methods,
    without the dispatch of ``np.min``, where ``a`` is a NumPy array)."""
    if _plan.kind(a) == "numpy":
        return int(a.min()), int(a.max())
    return int(xp.min(a)), int(xp.max(a))


def _clipped_indices(
    xp: ModuleType, y: Array, valid: Array, num_classes: int, ignore_index: int, read: bool
) -> tuple[Array, Array, Array, None]:
    safe = xp.clip(y, 0, num_classes - 1)
    ok = safe == y
    if read and v.any_true(xp, valid & ~ok):
        value = v.first_value(xp, y, valid & ~ok)
        raise ValueError(
            f"target contains class index {value}, outside [0, {num_classes}) "
            f"and not ignore_index={ignore_index}"
        )
    return valid, ok, safe, None


def total_weight(xp: ModuleType, valid: Array, w_y: Array | None, dtype: Any) -> Array:
    """The ``"mean"`` denominator of class indices: sum_n w[y_n] over the rows not ignored
    (their count without weights)."""
    if w_y is not None:
        return xp.sum(xp.where(valid, w_y, 0.0))
    return xp.sum(xp.astype(valid, dtype))


# up to this many rows, a count of them in float32 is exact, and 1 / count rounded from
# float64 into float32 is the float32 reciprocal (no double rounding: the binary digits of
# 1 / n have no run of 24 equal digits for n <= 2^24)
_EXACT_COUNT = 1 << 24


def row_factors(
    xp: ModuleType,
    reduction: str,
    valid: Array,
    ok: Array | None,
    ignored: bool | None,
    w_y: Array | None,
    dt: Any,
    dev: Any,
) -> tuple[float | Array, Array | None, Array]:
    """The "mean" denominator, whether it is nonzero (an array, for "mean"), and each row's
    factor: 1 (1 / the total weight for "mean") where it counts, 0 where it is ignored,
    NaN where its class index is bad (``ok`` None: none is). New arrays are made on
    ``dev``, the logits' (:func:`ls_xp._plan.device_of`): the labels may be placed
    otherwise (one device beside sharded logits)."""
    n = valid.shape[0]
    if ignored is False and ok is None and w_y is None and 0 < n <= _EXACT_COUNT:
        # every row counts, with weight 1: the general case below, bit for bit, in two
        # operations instead of six (the denominator is n, its reciprocal rounded once)
        if reduction == "mean":
            nonzero = xp.ones((), dtype=xp.bool, device=dev)
            return float(n), nonzero, xp.full((n, 1), 1.0 / n, dtype=dt, device=dev)
        return 1.0, None, xp.ones((n, 1), dtype=dt, device=dev)
    total: float | Array = 1.0
    nonzero = None
    if reduction == "mean":
        total = total_weight(xp, valid, w_y, dt)
        nonzero = total != 0  # shared with the loss's division by the same total
        per_row = safe_divide(xp, 1.0, total, 0.0, nonzero)
    else:
        per_row = xp.astype(valid, dt)
    factor = xp.where(valid, per_row if ok is None else xp.where(ok, per_row, math.nan), 0.0)
    return total, nonzero, factor
