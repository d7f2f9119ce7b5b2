"""How JAX sees the losses: a ``custom_jvp`` rule whose tangent is the analytic gradient,
and the fused linear loss with its row blocks in ``lax.scan``.

The first-order tangent is ``sum(grad * d_logits)`` (+ ``sum(target_grad * d_target)``
for probability targets, + ``d loss/d eps * d_eps``) with the derivatives from the core's
analytic formulas; the tangent with respect to ``weight`` (rarely wanted) comes from
differentiating the formula itself. Under ``jit`` on a CPU the rule evaluates the logits
in rematerialised row blocks (:mod:`ls_xp.jax._blocks`), so that reverse mode keeps no
N x K array but the gradient it returns.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from array_api_compat import array_namespace, device
from jax.custom_derivatives import SymbolicZero

from ls_xp import _linear, _plan, _validate
from ls_xp._adapters import Adapter
from ls_xp._evaluate import Aux, Request, evaluate
from ls_xp._validate import Options
from ls_xp.jax import _blocks

Array = Any


def _is_zero(t: Any) -> bool:
    return t is None or isinstance(t, SymbolicZero) or getattr(t, "dtype", None) == jax.dtypes.float0


def _checked_smoothing(x: Any, smoothing: Any) -> Any:
    """Python numbers are checked here, before tracing (a float); a concrete JAX array only on
    the CPU plan (reading it back from an accelerator would be a host synchronisation)."""
    if not isinstance(smoothing, jax.Array) or (_plan.plan(x) == "cpu" and _plan.is_concrete(smoothing)):
        return _validate.check_smoothing(None, smoothing)
    return smoothing


@partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def _loss(
    logits: Array, target: Array, weight: Array, where: Array, smoothing: Any, opts: Options, kl: bool
) -> Array:
    lay = _blocks.layout(logits, target, weight, where, opts)
    if lay is not None:
        return _blocks.evaluate_blocks(logits, target, weight, where, smoothing, opts, kl, lay)[0]
    return evaluate(logits, target, smoothing, weight, where, opts, Request(kl=kl)).loss


@partial(_loss.defjvp, symbolic_zeros=True)
def _loss_jvp(
    opts: Options, kl: bool, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Any, Any]:
    logits, target, weight, where, smoothing = primals
    # a primal may reach the rule as the NumPy array it was traced from (jax.jvp of NumPy
    # primals, as jax.test_util.check_grads makes them): the core sees one library
    logits, target = jnp.asarray(logits), jnp.asarray(target)
    d_logits, d_target, d_weight, _, d_smoothing = tangents
    soft = target.shape == logits.shape and jnp.issubdtype(target.dtype, jnp.floating)
    lay = _blocks.layout(logits, target, weight, where, opts)
    if lay is not None and (weight is None or _is_zero(d_weight)):  # (see _blocks: no N x K residual)
        given = (
            None if _is_zero(d_logits) else d_logits,
            None if not soft or _is_zero(d_target) else d_target,
            None if _is_zero(d_smoothing) else d_smoothing,
        )
        return _blocks.evaluate_blocks(logits, target, weight, where, smoothing, opts, kl, lay, given)
    req = Request(
        kl=kl, grad=not _is_zero(d_logits), target_grad=bool(soft and not _is_zero(d_target)),
        smoothing_grad=not _is_zero(d_smoothing),
    )  # fmt: skip
    res = evaluate(logits, target, smoothing, weight, where, opts, req)
    loss = res.loss
    assert loss is not None
    ax = opts.axis % logits.ndim
    per_row, shift = opts.reduction == "none", opts.shift

    def contract(g: Any, d: Any, front: bool) -> Any:
        prod = g * d
        if not per_row:
            return jnp.sum(prod)
        term = jnp.sum(prod, axis=ax)
        if shift:  # the scored positions: logits t against targets t + shift
            term = term[..., shift:] if front else term[..., : term.shape[-1] - shift]
        return term

    tangent = jnp.zeros_like(loss)
    if res.grad is not None:
        tangent = tangent + contract(res.grad, d_logits, False)
    if res.target_grad is not None:
        tangent = tangent + contract(res.target_grad, d_target, True)
    if res.smoothing_grad is not None:  # the analytic derivative in eps, the shape of loss
        tangent = tangent + res.smoothing_grad * jnp.asarray(d_smoothing, loss.dtype)
    if weight is not None and not _is_zero(d_weight):

        def with_weight(w: Any) -> Any:
            return evaluate(logits, target, smoothing, w, where, opts, Request(kl=kl)).loss

        tangent = tangent + jax.jvp(with_weight, (weight,), (d_weight,))[1]
    return loss, tangent


# ------------------------------------------------------------------ fused linear + loss
# The rule is a custom_vjp: for "mean" and "sum" its forward pass accumulates the three
# gradients (one pass over the blocks), for "none" its backward pass runs the blocks again
# with the cotangent as row weights. Class weights, when given, get their cotangent by
# differentiating the blocked loss itself (rematerialised block by block). Its static
# argument is (options, smoothing) where the smoothing is a Python number, else
# (options, None) and the smoothing is an array input.

_Static = tuple[Options, "float | None"]


def _scan_rows(p: _linear.Problem, chunk_size: int | None) -> int:
    """Rows per scanned block: on the CPU ``JAX_SCAN_BLOCK_ELEMENTS`` logits (XLA keeps a
    few arrays of a block live), else the fused loss's own block sizes."""
    if chunk_size is None and _plan.plan(p.hidden) == "cpu":
        return max(1, _plan.JAX_SCAN_BLOCK_ELEMENTS // max(1, p.classifier.shape[0]))
    if chunk_size is None:
        return _linear.default_block_rows(p.classifier.shape[0], "accelerator")
    return _linear.block_rows(p, chunk_size)


def _run(
    hidden: Array,
    classifier: Array,
    bias: Array,
    target: Array,
    weight: Array,
    smoothing: Any,
    static: _Static,
    *,
    want_loss: bool = True,
    want_grad: bool = False,
    want_smoothing_grad: bool = False,
    row_scale: Any = None,
    remat: bool = False,
) -> _linear.LinearResult:
    """The fused evaluation with its row blocks in ``lax.scan``: hidden rows and targets
    padded to whole blocks (the padding rows ignored), the classifier's gradient carried."""
    opts, static_eps = static
    eps = static_eps if smoothing is None else smoothing
    p = _linear.setup(hidden, classifier, target, eps, bias, weight, opts)
    n, d = p.hidden.shape
    step = max(1, min(_scan_rows(p, opts.chunk_size), n))
    blocks = max(1, -(-n // step))
    pad = blocks * step - n
    h = jnp.pad(p.hidden, ((0, pad), (0, 0))).reshape(blocks, step, d)
    y = jnp.pad(p.target, (0, pad), constant_values=p.ignore_index).reshape(blocks, step)  # ignored rows
    s = None if row_scale is None else jnp.pad(jnp.reshape(row_scale, (-1,)), (0, pad)).reshape(blocks, step)
    acc = p.accum  # the dtype dW and db are summed in across the blocks

    def body(carry: Any, xs: Any) -> tuple[Any, Any]:
        h_b, y_b, s_b = xs
        b = _linear.block(p, h_b, y_b, want_grad=want_grad, want_smoothing_grad=want_smoothing_grad,
                          row_scale=s_b)  # fmt: skip
        gw, gb = carry
        if b.grad_classifier is not None:
            gw = gw + b.grad_classifier.astype(acc)
        if b.grad_bias is not None:
            gb = gb + b.grad_bias.astype(acc)
        aux = None if b.aux is None else (b.aux.lse, b.aux.z_loss, b.aux.accuracy)
        return (gw, gb), (b.row, b.eps_row, b.grad_hidden, aux)

    init = (jnp.zeros(p.classifier.shape, acc), None if bias is None else jnp.zeros(bias.shape, acc))
    if not want_grad:
        init = (jnp.zeros((), acc), None)
    scan = jax.checkpoint(body) if remat else body
    (gw, gb), (rows, eps_rows, gh, aux) = jax.lax.scan(scan, init, (h, y, s))

    def joined(a: Any) -> Any:  # the blocks' rows, without the padding
        return None if a is None else a.reshape(-1)[:n]

    aux_rows = None
    if aux is not None:
        lse, z_rows, hits = (joined(a) for a in aux)
        aux_rows = Aux(lse, z_rows, hits, p.count)  # (the count is the problem's, not the blocks')
    if not want_grad:
        return _linear.finish(p, joined(rows), joined(eps_rows), None, None, None, want_loss, aux_rows)
    gh = gh.reshape(-1, d)[:n]
    return _linear.finish(p, joined(rows), joined(eps_rows), gh, gw, gb, want_loss, aux_rows)


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def _linear_loss(
    hidden: Array,
    classifier: Array,
    bias: Array,
    target: Array,
    weight: Array,
    smoothing: Any,
    static: _Static,
) -> Array:
    return _run(hidden, classifier, bias, target, weight, smoothing, static).loss


def _linear_fwd(
    hidden: Array,
    classifier: Array,
    bias: Array,
    target: Array,
    weight: Array,
    smoothing: Any,
    static: _Static,
) -> tuple[Any, Any]:
    now = static[0].reduction != "none"
    res = _run(hidden, classifier, bias, target, weight, smoothing, static, want_grad=now,
               want_smoothing_grad=smoothing is not None)  # fmt: skip
    grads = (res.grad_hidden, res.grad_classifier, res.grad_bias) if now else None
    return res.loss, (hidden, classifier, bias, target, weight, smoothing, grads, res.smoothing_grad)


def _linear_bwd(static: _Static, residuals: Any, ct: Any) -> tuple[Any, ...]:
    hidden, classifier, bias, target, weight, smoothing, grads, d_smooth = residuals
    if grads is None:  # "none": the cotangent weights the rows
        shift, row_ct = static[0].shift, ct
        if shift:  # the scored positions' cotangent; the last shift positions weigh nothing
            row_ct = jnp.pad(ct, [(0, 0)] * (ct.ndim - 1) + [(0, shift)])
        res = _run(hidden, classifier, bias, target, weight, smoothing, static, want_loss=False,
                   want_grad=True, row_scale=row_ct)  # fmt: skip
        grads = (res.grad_hidden, res.grad_classifier, res.grad_bias)
    else:
        grads = tuple(None if g is None else g * ct.astype(g.dtype) for g in grads)
    d_weight = None
    if weight is not None:

        def with_weight(w: Any) -> Any:
            return _run(hidden, classifier, bias, target, w, smoothing, static, remat=True).loss

        d_weight = jax.vjp(with_weight, weight)[1](ct)[0]
    d_eps = None if smoothing is None else jnp.sum(ct * d_smooth).astype(jnp.result_type(smoothing))
    return (*grads, None, d_weight, d_eps)


_linear_loss.defvjp(_linear_fwd, _linear_bwd)


def _linear_args(
    hidden: Array, classifier: Any, bias: Any, target: Any, weight: Any, smoothing: Any, opts: Options
) -> tuple[Any, ...]:
    """Arrays converted to JAX's, smoothing checked (as for the loss) and the static
    argument: a Python-number smoothing is static too."""
    smoothing = _checked_smoothing(hidden, smoothing)
    xp, dev = array_namespace(hidden), device(hidden)
    classifier, bias, target, weight = (
        _validate.same_namespace(xp, dev, a, name, like="hidden")
        for a, name in ((classifier, "classifier"), (bias, "bias"), (target, "target"), (weight, "weight"))
    )
    static: _Static = (opts, None)
    if isinstance(smoothing, float):
        static, smoothing = (opts, smoothing), None
    return hidden, classifier, bias, target, weight, smoothing, static


class JaxAdapter(Adapter):
    """The losses on JAX arrays: the ``custom_jvp`` rule, and the scanned fused loss."""

    def loss(
        self, logits: Array, target: Any, smoothing: Any, weight: Any, where: Any, opts: Options, *, kl: bool
    ) -> Array:
        """The differentiable loss. ``smoothing`` is a primal input of the rule, so
        ``jax.grad`` and ``jvp`` with respect to it are the analytic derivative, and a
        traced ``smoothing`` works under ``jit``."""
        smoothing = _checked_smoothing(logits, smoothing)
        xp, dev = array_namespace(logits), device(logits)
        target, weight, where = _validate.inputs_like(xp, dev, target, weight, where)
        if not opts.return_aux:
            return _loss(logits, target, weight, where, smoothing, opts, kl)
        # the statistics carry no gradient: evaluated beside the rule (XLA shares the
        # common work under jit)
        loss = _loss(logits, target, weight, where, smoothing, replace(opts, return_aux=False), kl)
        aux = evaluate(logits, target, smoothing, weight, where, opts, Request(kl=kl, loss=False)).aux
        return loss, jax.lax.stop_gradient(aux)

    def linear_loss(
        self,
        hidden: Array,
        classifier: Any,
        target: Any,
        smoothing: Any,
        bias: Any,
        weight: Any,
        opts: Options,
    ) -> Array:
        """The differentiable fused loss (``(loss, aux)`` with ``opts.return_aux``)."""
        if not opts.return_aux:
            return _linear_loss(*_linear_args(hidden, classifier, bias, target, weight, smoothing, opts))
        # the statistics carry no gradient: a scan of their own beside the rule
        plain = replace(opts, return_aux=False)
        loss = _linear_loss(*_linear_args(hidden, classifier, bias, target, weight, smoothing, plain))
        aux = _run(
            *_linear_args(hidden, classifier, bias, target, weight, smoothing, opts), want_loss=False
        ).aux
        return loss, jax.lax.stop_gradient(aux)

    def linear_values(
        self,
        hidden: Array,
        classifier: Any,
        target: Any,
        smoothing: Any,
        bias: Any,
        weight: Any,
        opts: Options,
    ) -> _linear.LinearResult:
        """Loss and gradients in one scan (``ls_xp.linear_loss_and_grad`` on JAX arrays)."""
        args = _linear_args(hidden, classifier, bias, target, weight, smoothing, opts)
        return _run(*args, want_grad=True)


ADAPTER = JaxAdapter()
