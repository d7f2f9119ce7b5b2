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

from ls_xp import _checks, _core, _linear

__all__ = ["linear_loss", "linear_values", "loss"]


def _is_zero(t: Any) -> bool:
    return t is None or isinstance(t, SymbolicZero) or getattr(t, "dtype", None) == jax.dtypes.float0


def _checked_smoothing(x: Any, smoothing: Any) -> Any:
    """Python numbers are checked here, before tracing (a float); a concrete JAX array only on
    the CPU plan (reading it back from an accelerator would be a host synchronisation)."""
    if not isinstance(smoothing, jax.Array) or (_checks.plan(x) == "cpu" and _checks.is_concrete(smoothing)):
        return _checks.check_smoothing(None, smoothing)
    return smoothing


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
    smoothing = _checked_smoothing(logits, smoothing)
    xp, dev = array_namespace(logits), device(logits)
    target, weight, where = _checks.inputs_like(xp, dev, target, weight, where)
    return _loss(logits, target, weight, where, smoothing, _options(kl, options))


# ------------------------------------------------------------------ fused linear + loss
# ls_xp.linear_cross_entropy for JAX arrays: the row blocks of ls_xp._linear run in
# lax.scan, so XLA holds one block of logits at a time, never N x V. The rule is a
# custom_vjp: for "mean" and "sum" its forward pass accumulates the three gradients (one
# pass over the blocks), for "none" its backward pass runs the blocks again with the
# cotangent as row weights. Class weights, when given, get their cotangent by
# differentiating the blocked loss itself (rematerialised block by block).


# Elements of one scanned block of logits on the CPU: XLA holds a few arrays of a block
# (logits, their exponentials, the gradient, the classifier's gradient carried across
# blocks). At N = 4096, D = 256, V = 32768 float32 here, peak memory beyond the inputs was
# 201 MiB with 2^22, 233 MiB with 2^23 and 319 MiB with 2^24, at the same time (1.61 s).
_SCAN_BLOCK_ELEMENTS = 1 << 22


def _run(
    hidden: Any,
    classifier: Any,
    bias: Any,
    target: Any,
    weight: Any,
    smoothing: Any,
    opts: tuple[tuple[str, Any], ...],
    *,
    want_loss: bool = True,
    want_grad: bool = False,
    want_smoothing_grad: bool = False,
    row_scale: Any = None,
    remat: bool = False,
) -> _linear.LinearResult:
    """The fused evaluation with its row blocks in ``lax.scan``."""
    o = dict(opts)
    eps = o.pop("smoothing") if smoothing is None else smoothing
    step = o.pop("chunk_size")
    p = _linear._setup(hidden, classifier, target, eps, bias=bias, weight=weight, **o)
    n, d = p.hidden.shape
    if step is None and _checks.plan(hidden) == "cpu":
        rows = max(1, _SCAN_BLOCK_ELEMENTS // max(1, p.classifier.shape[0]))
    elif step is None:
        rows = _linear.default_block_rows(p.classifier.shape[0], "accelerator")
    else:
        rows = _linear.block_rows(p, step)
    step = max(1, min(rows, n))
    blocks = max(1, -(-n // step))
    pad = blocks * step - n
    h = jnp.pad(p.hidden, ((0, pad), (0, 0))).reshape(blocks, step, d)
    y = jnp.pad(p.target, (0, pad), constant_values=p.ignore_index).reshape(blocks, step)  # ignored rows
    s = None if row_scale is None else jnp.pad(jnp.reshape(row_scale, (-1,)), (0, pad)).reshape(blocks, step)
    dt = jnp.result_type(hidden.dtype, jnp.float32)  # the classifier's gradient is summed in it

    def body(carry: Any, xs: Any) -> tuple[Any, Any]:
        h_b, y_b, s_b = xs
        b = _linear._block(p, h_b, y_b, want_grad=want_grad, want_smoothing_grad=want_smoothing_grad,
                           row_scale=s_b)  # fmt: skip
        gw, gb = carry
        if b.grad_classifier is not None:
            gw = gw + b.grad_classifier.astype(dt)
        if b.grad_bias is not None:
            gb = gb + b.grad_bias.astype(dt)
        return (gw, gb), (b.row, b.eps_row, b.grad_hidden)

    init = (jnp.zeros(p.classifier.shape, dt), None if bias is None else jnp.zeros(bias.shape, dt))
    if not want_grad:
        init = (jnp.zeros((), dt), None)
    (gw, gb), (rows, eps_rows, gh) = jax.lax.scan(jax.checkpoint(body) if remat else body, init, (h, y, s))
    rows = rows.reshape(-1)[:n]
    eps_rows = None if eps_rows is None else eps_rows.reshape(-1)[:n]
    if not want_grad:
        return _linear.finish(p, rows, eps_rows, None, None, None, want_loss)
    gb = None if gb is None else gb.astype(hidden.dtype)
    return _linear.finish(p, rows, eps_rows, gh.reshape(-1, d)[:n], gw.astype(hidden.dtype), gb, want_loss)


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _linear_loss(
    hidden: Any, classifier: Any, bias: Any, target: Any, weight: Any, smoothing: Any, opts: Any
) -> Any:
    return _run(hidden, classifier, bias, target, weight, smoothing, opts).loss


def _linear_fwd(
    hidden: Any, classifier: Any, bias: Any, target: Any, weight: Any, smoothing: Any, opts: Any
) -> tuple[Any, Any]:
    now = dict(opts)["reduction"] != "none"
    res = _run(hidden, classifier, bias, target, weight, smoothing, opts, want_grad=now,
               want_smoothing_grad=smoothing is not None)  # fmt: skip
    grads = (res.grad_hidden, res.grad_classifier, res.grad_bias) if now else None
    return res.loss, (hidden, classifier, bias, target, weight, smoothing, grads, res.smoothing_grad)


def _linear_bwd(opts: Any, residuals: Any, ct: Any) -> tuple[Any, ...]:
    hidden, classifier, bias, target, weight, smoothing, grads, d_smooth = residuals
    if grads is None:  # "none": the cotangent weights the rows
        res = _run(hidden, classifier, bias, target, weight, smoothing, opts, want_loss=False,
                   want_grad=True, row_scale=ct)  # fmt: skip
        grads = (res.grad_hidden, res.grad_classifier, res.grad_bias)
    else:
        grads = tuple(None if g is None else g * ct.astype(g.dtype) for g in grads)
    d_weight = None
    if weight is not None:

        def with_weight(w: Any) -> Any:
            return _run(hidden, classifier, bias, target, w, smoothing, opts, remat=True).loss

        d_weight = jax.vjp(with_weight, weight)[1](ct)[0]
    d_eps = None if smoothing is None else jnp.sum(ct * d_smooth).astype(jnp.result_type(smoothing))
    return (*grads, None, d_weight, d_eps)


_linear_loss.defvjp(_linear_fwd, _linear_bwd)


def _linear_args(
    hidden: Any, classifier: Any, bias: Any, target: Any, weight: Any, smoothing: Any, options: dict[str, Any]
) -> tuple[Any, ...]:
    """Arrays converted to JAX's, smoothing checked (as in :func:`loss`) and the static
    options as a hashable tuple; a Python-number smoothing is static too."""
    smoothing = _checked_smoothing(hidden, smoothing)
    xp, dev = array_namespace(hidden), device(hidden)
    classifier, bias, target, weight = (
        _checks.same_namespace(xp, dev, a, name, like="hidden")
        for a, name in ((classifier, "classifier"), (bias, "bias"), (target, "target"), (weight, "weight"))
    )
    static = {"reduction": "mean", "ignore_index": -100, "convention": "uniform", "chunk_size": None,
              "check_values": None, **options}  # fmt: skip
    if isinstance(smoothing, float):
        static["smoothing"], smoothing = smoothing, None
    return hidden, classifier, bias, target, weight, smoothing, tuple(sorted(static.items()))


def linear_loss(
    hidden: Any,
    classifier: Any,
    target: Any,
    smoothing: Any = 0.1,
    *,
    bias: Any = None,
    weight: Any = None,
    **options: Any,
) -> Any:
    """The differentiable fused loss (called by ``ls_xp.linear_cross_entropy``)."""
    args = _linear_args(hidden, classifier, bias, target, weight, smoothing, options)
    return _linear_loss(*args)


def linear_values(
    hidden: Any,
    classifier: Any,
    target: Any,
    smoothing: Any = 0.1,
    *,
    bias: Any = None,
    weight: Any = None,
    want_grad: bool = True,
    **options: Any,
) -> _linear.LinearResult:
    """Loss and gradients in one scan (``ls_xp.linear_loss_and_grad`` on JAX arrays)."""
    args = _linear_args(hidden, classifier, bias, target, weight, smoothing, options)
    return _run(*args, want_grad=want_grad)
