"""Logit softcapping (Gemma 2): the logits become c tanh(x / c), c the softcap, before
everything else; the gradient carries d/dx c tanh(x / c) = 1 - tanh^2(x / c).

Two routes make the cap:

* the array API's (every library, and PyTorch where it is traced or compiled): tanh, whose
  passes a compiler fuses;
* PyTorch's eager CPU plan, where the block's arrays are ours: c tanh(u) = 2c sigmoid(2u) - c,
  in the logits' own buffer with PyTorch's in-place methods. Its CPU tanh takes about
  seven times its sigmoid's time per element (torch 2.13, float32), and the standard's
  functions make a fresh array per step, where a page-faulted block costs as much as the
  step itself.

Reference: Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size",
arXiv:2408.00118, 2024 (logit soft-capping).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from array_api_compat import is_torch_namespace

from ls_xp._numeric import scale_shift

Array = Any


def by_torch(xp: ModuleType, plan: str, inplace: bool) -> bool:
    """Whether the cap takes PyTorch's in-place route: its eager CPU plan, with the block's
    temporaries ours (``inplace``)."""
    return inplace and plan == "cpu" and is_torch_namespace(xp)


def argument_scale(softcap: float, torch_route: bool) -> float:
    """The factor of x in the cap's argument: 2 / c on PyTorch's route (sigmoid(2x / c)),
    else 1 / c (tanh(x / c)). A caller that can scale fewer numbers than the logits (the
    fused loss: its hidden rows and bias) passes the logits already multiplied by it."""
    return (2.0 if torch_route else 1.0) / softcap


def cap(
    xp: ModuleType, x: Array, softcap: float, *, inplace: bool, own: bool, x_scale: float, plan: str
) -> Array:
    """c tanh(x / c), c the softcap, of logits ``x`` that come multiplied by ``x_scale``
    (1: plain logits). x (1/c), within an ulp of x / c, is a product (a third of a
    quotient's time per element on a CPU); a factor 2 more or less is exact. Where the
    logits are ``own`` (they may be written over), the capped logits replace them, and
    the block keeps as many temporaries as without the softcap."""
    torch_route = by_torch(xp, plan, inplace)
    k = argument_scale(softcap, torch_route) / x_scale  # (1.0 when the caller scaled them)
    if torch_route:
        return _cap_in_place(x, softcap, k, own)
    u = x if k == 1.0 else scale_shift(xp, x, k, None, inplace=own)
    out = scale_shift(xp, xp.tanh(u), softcap, None, inplace=inplace)
    if not own:
        return out
    x[...] = out
    return x


def _cap_in_place(x: Array, softcap: float, k: float, own: bool) -> Array:
    """c tanh(u) = 2c sigmoid(2u) - c, from 2u = k x, in the buffer of ``x`` where it is
    ``own``, else in one fresh array (PyTorch tensors; a NumPy array has no ``sigmoid_``).

    PyTorch's CPU sigmoid is vectorised: a third of its expm1's time and a seventh of its
    tanh's per element (torch 2.13, float32). Its capped logits are within 3 eps c,
    absolute, of c tanh(x / c), eps the dtype's machine epsilon (1.9 and 2.1 eps c measured
    against mpmath, float32 and float64), not within a few ulps of themselves: a logit
    much smaller than the cap carries the absolute error of one of the cap's size, as if
    rounded at that scale. The ends are exact: sigmoid saturates to 0 and 1, so the cap
    gives -c and c there (and the chain rule's factor is exactly 0); 0 gives 0; NaN stays
    NaN."""
    if k != 1.0:  # (where the logits are the caller's, the product is the one fresh array)
        x, own = (x.mul_(k) if own else x * k), True
    s = x.sigmoid_() if own else x.sigmoid()
    return s.mul_(2.0 * softcap).sub_(softcap)


def chain(xp: ModuleType, g: Array, capped: Array, softcap: float, *, inplace: bool, folded: bool) -> Array:
    """d/dx of c tanh(x / c) is 1 - tanh^2 = 1 - (capped / c)^2, c the softcap.

    In place (``g`` and ``capped`` are ours, and the capped logits are not read again) the
    factor is made in the capped logits' buffer, so that the chain rule adds no block
    temporary. ``folded``: the row factors were multiplied by -1 / c^2, so ``g``
    holds -g / c^2 and three passes make the product, as c^2 (t^2 - 1) (-g / c^2) =
    g (1 - t^2), where g - g t^2 takes four; c^2 t^2 - c^2 is exactly 0 where the cap
    saturates (g - (g / c^2) c^2 t^2, in two passes with ``addcmul``, is not: 1 / c^2 is
    rounded). The product lands in the capped logits' buffer, which is the caller's
    gradient buffer where the logits were written over (its copy into it is then a copy
    onto itself, which PyTorch and NumPy skip)."""
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
