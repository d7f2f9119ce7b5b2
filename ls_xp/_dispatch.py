"""The dispatch of the public functions to the adapter of the logits' library."""

from __future__ import annotations

from typing import Any

from ls_xp import _plan
from ls_xp._adapters import GENERIC, Adapter, is_jax_array, is_torch_array
from ls_xp._validate import Options, join_library


def adapter_for(x: Any) -> Adapter:
    """The adapter of the library of ``x`` (imported the first time it is needed)."""
    if _plan.kind(x) == "numpy":  # (the generic adapter, without asking the other libraries)
        return GENERIC
    if is_torch_array(x):
        from ls_xp.torch._adapter import ADAPTER as TORCH

        return TORCH
    if is_jax_array(x):
        from ls_xp.jax._adapter import ADAPTER as JAX

        return JAX
    return GENERIC


def loss(logits: Any, target: Any, smoothing: Any, weight: Any, where: Any, opts: Options, kl: bool) -> Any:
    logits = join_library(logits, target, weight, where, smoothing)
    return adapter_for(logits).loss(logits, target, smoothing, weight, where, opts, kl=kl)


def values(
    logits: Any, target: Any, smoothing: Any, weight: Any, where: Any, opts: Options, want_loss: bool
) -> tuple[Any, Any]:
    """Loss and analytic gradient as plain values (no autodiff graph is recorded);
    ``((loss, aux), grad)`` with ``return_aux``."""
    logits = join_library(logits, target, weight, where, smoothing)
    out = adapter_for(logits).values(logits, target, smoothing, weight, where, opts, want_loss=want_loss)
    if not opts.return_aux:
        return out[0], out[1]
    return (out[0], out[2]), out[1]  # ((loss, aux), grad), as jax.value_and_grad(has_aux=True)
