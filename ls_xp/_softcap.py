"""Logit softcapping (Gemma 2): the logits become c tanh(x / c), c the softcap, before
everything else; the gradient carries d/dx c tanh(x / c) = 1 - tanh^2(x / c).

Reference: Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size",
arXiv:2408.00118, 2024 (logit soft-capping).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from array_api_compat import is_torch_namespace

from ls_xp._numeric import scale_shift

Array = Any

# tanh(u) = 1 to the last bit of float64 beyond this (1 - tanh(20) = 8.5e-18)
_SATURATED = 20.0


def cap(
    xp: ModuleType, x: Array, softcap: float, *, inplace: bool, own: bool, scaled: bool, plan: str
) -> Array:
    """c tanh(x / c), c the softcap; ``scaled``: ``x`` is x / c already. x (1/c), within an
    ulp of x / c, is a product (a third of a quotient's time per element on a CPU). Where
    the logits are ``own`` (they may be written over), the capped logits replace them:
    tanh's fresh array is freed at once, and the block keeps as many temporaries as without
    the softcap."""
    u = x if scaled else scale_shift(xp, x, 1.0 / softcap, None, inplace=own)
    by_expm1 = inplace and plan == "cpu" and is_torch_namespace(xp)
    t = tanh_by_expm1(xp, u) if by_expm1 else xp.tanh(u)
    out = scale_shift(xp, t, softcap, None, inplace=inplace)
    if not own:
        return out
    x[...] = out
    return x


def tanh_by_expm1(xp: ModuleType, u: Array) -> Array:
    """tanh(u) = e / (e + 2) with e = expm1(2u), a fresh array.

    PyTorch's CPU tanh takes about three times its exp's time per element (torch 2.13,
    float32 and float64); this quotient takes 0.6x tanh's, in five passes. It is accurate
    to a few ulps relative on the whole line: expm1 keeps small u exact (e ~ 2u, no
    cancellation, unlike 1 - 2 / (exp(2u) + 1)), e + 2 >= 1, and u is clipped where tanh
    is 1 in float64 (e would overflow to inf / inf). -inf gives -1; NaN stays NaN."""
    e = xp.clip(u, max=_SATURATED)  # (NaN stays NaN)
    e += e
    e = xp.expm1(e)
    e /= e + 2.0
    return e


def chain(xp: ModuleType, g: Array, capped: Array, softcap: float, *, inplace: bool, folded: bool) -> Array:
    """d/dx of c tanh(x / c) is 1 - tanh^2 = 1 - (capped / c)^2, c the softcap.

    In place (``g`` and ``capped`` are ours, and the capped logits are not read again) the
    factor is made in the capped logits' buffer, so that the chain rule adds no block
    temporary. ``folded``: the row factors were multiplied by -1 / c^2, so ``g``
    holds -g / c^2 and three passes make the product, as c^2 (t^2 - 1) (-g / c^2) =
    g (1 - t^2), where g - g t^2 takes four; the product lands in the capped logits'
    buffer, which is the caller's gradient buffer where the logits were written over (its
    copy into it is then a copy onto itself, which PyTorch and NumPy skip)."""
    if not inplace:
        t = capped * (1.0 / softcap)
        return g * (1.0 - t * t)
    if folded:
        capped *= capped
        capped -= softcap * softcap
        capped *= g
        return capped
    capped *= 1.0 / softcap
    capped *= capped
    capped *= g
    g -= capped
    return g
