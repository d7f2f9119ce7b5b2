"""JAX adapter: a ``custom_jvp`` rule whose tangent is the analytic gradient.

``ls_xp.cross_entropy`` and ``kl_divergence`` route JAX arrays here. One JVP rule serves
forward mode (``jvp``, ``jacfwd``), reverse mode (``grad``, ``value_and_grad``, ``vjp``,
``jacrev``: JAX transposes the rule, which is linear in the tangents) and higher orders
(``hessian``: the rule itself is written in differentiable ``jax.numpy`` operations).
``jit`` and ``vmap`` trace straight through it.

The first-order tangent is ``sum(grad * d_logits)`` (+ ``sum(target_grad * d_target)``
for probability targets) with ``grad`` from the core's analytic formula; tangents with
respect to ``weight`` (rarely wanted) are obtained by differentiating the formula itself.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from array_api_compat import array_namespace, device
from jax.custom_derivatives import SymbolicZero

from ls_xp import _checks, _core

__all__ = ["loss"]


def _is_zero(t: Any) -> bool:
    return t is None or isinstance(t, SymbolicZero) or getattr(t, "dtype", None) == jax.dtypes.float0


def _options(kl: bool, options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    opts = {"kl": kl, "reduction": "mean", "axis": -1, **options}
    return tuple(sorted(opts.items()))


@partial(jax.custom_jvp, nondiff_argnums=(5,))
def _loss(
    logits: Any, target: Any, weight: Any, where: Any, smoothing: Any, opts: tuple[tuple[str, Any], ...]
) -> Any:
    return _core._evaluate(
        logits, target, smoothing, weight=weight, where=where, want_loss=True, want_grad=False, **dict(opts)
    ).loss


@partial(_loss.defjvp, symbolic_zeros=True)
def _loss_jvp(
    opts: tuple[tuple[str, Any], ...], primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Any, Any]:
    logits, target, weight, where, smoothing = primals
    d_logits, d_target, d_weight, _, d_smoothing = tangents
    o = dict(opts)
    soft = target.shape == logits.shape and jnp.issubdtype(target.dtype, jnp.floating)
    res = _core._evaluate(
        logits,
        target,
        smoothing,
        weight=weight,
        where=where,
        want_loss=True,
        want_grad=not _is_zero(d_logits),
        want_target_grad=bool(soft and not _is_zero(d_target)),
        want_smoothing_grad=not _is_zero(d_smoothing),
        **o,
    )
    loss = res.loss
    assert loss is not None
    ax = o["axis"] % logits.ndim
    per_row = o["reduction"] == "none"

    def contract(g: Any, d: Any) -> Any:
        prod = g * d
        return jnp.sum(prod, axis=ax) if per_row else jnp.sum(prod)

    tangent = jnp.zeros_like(loss)
    if res.grad is not None:
        tangent = tangent + contract(res.grad, d_logits)
    if res.target_grad is not None:
        tangent = tangent + contract(res.target_grad, d_target)
    if res.smoothing_grad is not None:  # the analytic derivative in eps, the shape of loss
        tangent = tangent + res.smoothing_grad * jnp.asarray(d_smoothing, loss.dtype)
    if weight is not None and not _is_zero(d_weight):

        def with_weight(w: Any) -> Any:
            return _core._evaluate(
                logits, target, smoothing, weight=w, where=where, want_loss=True, want_grad=False, **o
            ).loss

        tangent = tangent + jax.jvp(with_weight, (weight,), (d_weight,))[1]
    return loss, tangent


def loss(
    logits: Any,
    target: Any,
    smoothing: Any = 0.1,
    *,
    kl: bool = False,
    weight: Any = None,
    where: Any = None,
    **options: Any,
) -> Any:
    """The differentiable loss (called by ``ls_xp.cross_entropy`` / ``kl_divergence``).

    ``smoothing`` is a primal input of the rule, so ``jax.grad`` and ``jvp`` with respect
    to it are the analytic derivative, and a traced ``smoothing`` works under ``jit``.
    Python numbers are checked here, before tracing; a concrete JAX array only on the CPU
    plan (reading it back from an accelerator would be a host synchronisation).
    """
    on_cpu = _checks.plan(logits) == "cpu"
    if not isinstance(smoothing, jax.Array) or (on_cpu and _checks.is_concrete(smoothing)):
        smoothing = _checks.check_smoothing(None, smoothing)
    xp, dev = array_namespace(logits), device(logits)
    target, weight, where = _checks.inputs_like(xp, dev, target, weight, where)
    return _loss(logits, target, weight, where, smoothing, _options(kl, options))
