"""Small elementwise helpers of the formulas, each with the convention it keeps (0 * inf = 0,
0 log 0 = 0, a division by zero that gives 0 or NaN without a warning)."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

Array = Any


def is_zero(v: float | Array) -> bool:
    """True only for a Python 0.0: an array eps (traced, or requiring grad) may be anything."""
    return isinstance(v, float) and v == 0.0


def weighted(xp: ModuleType, coef: float | Array | None, v: float | Array) -> Any:
    """``coef * v`` with the convention 0 * (+-inf) = 0: a class or term with no target
    mass adds nothing, whatever its logit. ``None`` means 1."""
    if coef is None:
        return v
    if isinstance(coef, float):
        if coef == 1.0:
            return v
        if coef != 0.0:
            return coef * v
        return 0.0 if isinstance(v, float) else xp.zeros_like(v)
    if isinstance(v, float):  # (where() takes at most one number)
        return coef * v if math.isfinite(v) else xp.where(coef != 0, coef * v, 0.0)
    return coef * xp.where(coef != 0, v, 0.0)


def xlogx(xp: ModuleType, u: Array | float) -> Array | float:
    """u log u with 0 log 0 = 0."""
    if isinstance(u, float):
        return u * math.log(u) if u > 0 else 0.0
    return xp.where(u > 0, u * xp.log(xp.where(u > 0, u, 1.0)), 0.0)


def log_plus_one(xp: ModuleType, u: Array | float) -> Array | float:
    """log u + 1, the derivative of u log u: -inf at u = 0 (without a warning)."""
    if isinstance(u, float):
        return math.log(u) + 1.0 if u > 0 else -math.inf
    return xp.where(u > 0, xp.log(xp.where(u > 0, u, 1.0)) + 1.0, -math.inf)


def safe_divide(
    xp: ModuleType, num: Array | float, den: Array | float, at_zero: float, nonzero: Array | None = None
) -> Array | float:
    """num / den, with ``at_zero`` (0 or NaN) where den == 0, and no floating-point warning.

    A zero denominator is replaced by inf (a finite num / inf = 0) or by NaN, rather than
    guarding the division on both sides; a caller that divides twice by the same ``den``
    passes ``nonzero`` (``den != 0``) to share the test. (A non-finite num over a zero den
    gives NaN either way.)"""
    if isinstance(den, (int, float)) or type(den).__name__ == "SymInt":  # (also a traced row count)
        return num / den if den != 0 else num * 0.0 + at_zero
    if not (at_zero == 0.0 or math.isnan(at_zero)):
        raise ValueError(f"_safe_divide: at_zero must be 0 or NaN, got {at_zero!r}")
    ok = den != 0 if nonzero is None else nonzero
    safe_den = xp.where(ok, den, math.inf if at_zero == 0.0 else math.nan)
    if isinstance(num, float) and num == 1.0:  # (PyTorch's 1 / x is a division and a fill)
        return xp.reciprocal(safe_den)
    return num / safe_den


def astype(xp: ModuleType, a: Array, dtype: Any) -> Array:
    """``astype`` only where the dtype differs."""
    return a if a.dtype == dtype else xp.astype(a, dtype)


def move_axis(xp: ModuleType, a: Array, source: int, destination: int) -> Array:
    """``moveaxis``, skipped when it would not move anything."""
    if source % a.ndim == destination % a.ndim:
        return a
    return xp.moveaxis(a, source, destination)


def scale_shift(xp: ModuleType, a: Array, scale: Any, shift: Array | None, *, inplace: bool) -> Array:
    """``a * scale - shift``; in place in ``a`` if ``inplace`` (``a`` is ours), which saves
    two block-sized temporaries. The standard's in-place operators write in place where
    the library can (and rebind where it cannot, e.g. JAX)."""
    if not inplace:
        return a * scale if shift is None else a * scale - shift
    a *= scale
    if shift is not None:
        a -= shift
    return a
