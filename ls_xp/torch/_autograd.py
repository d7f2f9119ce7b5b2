"""The eager autograd Functions: the loss and the fused linear loss, each with the
analytic gradient as its backward.

Forward evaluates the loss *and* the analytic derivatives in one blocked pass of the core
and keeps only those derivatives, not log-probabilities and temporaries. The first
backward hands that buffer to autograd (scaled in place by the incoming gradient when it
is not 1) and drops its own reference, so PyTorch's accumulation into ``.grad`` takes it
without a copy; a later backward through a retained graph recomputes it from the saved
inputs. Under ``create_graph=True`` the recomputation uses differentiable operations, so
second derivatives are exact too.
"""

from __future__ import annotations

from typing import Any

import torch

from ls_xp import _plan
from ls_xp._validate import Options
from ls_xp.torch._calls import Request, evaluate, evaluate_linear

try:  # (a private helper of torch.autograd.Function.apply; without it the standard path runs)
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
except ImportError:  # pragma: no cover
    _unwrap_dead_wrappers = None  # type: ignore[assignment]

Tensor = torch.Tensor


def requires_grad(a: Any) -> bool:
    return bool(getattr(a, "requires_grad", False))


def refuse_weight_grad(weight: Any) -> None:
    """Class weights that require grad: an error, never a silently dropped gradient."""
    if requires_grad(weight) and torch.is_grad_enabled():
        raise NotImplementedError(
            "ls_xp: the gradient with respect to weight is not implemented (as in PyTorch); "
            "pass weight.detach()"
        )


def broadcastable(
    grad_out: Tensor, ndim: int, axis: int, reduction: str, shift: int = 0, front: bool = False
) -> Tensor:
    """The incoming gradient shaped to scale an (N, K)-like gradient: per-row losses get
    their class axis back. With a causal ``shift`` the per-position losses are the scored
    positions only: zeros stand for the others (at the end for the logits' gradient, at
    the ``front`` for the gradient of probability targets, which are scored from ``shift`` on)."""
    if reduction != "none":
        return grad_out
    if shift:
        grad_out = torch.nn.functional.pad(grad_out, (shift, 0) if front else (0, shift))
    return grad_out.unsqueeze(axis % ndim)


def scaled(g: Tensor | None, scale: Tensor, owned: bool, look: bool = True) -> Tensor | None:
    """``g * scale``; in place in a buffer that is ``owned`` (ours to give away). Where the
    scale may be read (``look``: not on the accelerator plan, which never reads a value
    back) a scale of 1 costs nothing."""
    if g is None:
        return None
    if look and scale.ndim == 0 and not g.requires_grad and _is_one(scale):
        return g  # loss.backward(): the buffer as it is
    if owned and not scale.requires_grad:
        return g.mul_(scale if scale.dtype == g.dtype else scale.to(g.dtype))
    return g * scale


def _is_one(scale: Tensor) -> bool:
    try:
        return scale.item() == 1  # (one read, no comparison kernel)
    except RuntimeError:  # under torch.func transforms the value cannot be read
        return False


class _Function(torch.autograd.Function):
    """An autograd Function whose ``apply`` takes every argument positionally.

    ``Function.apply`` binds the arguments to ``forward``'s signature (``inspect.signature``,
    to fill in defaults) at every call, about a tenth of a small loss's time; ours are all
    given, so outside ``torch.func`` transforms the binding is skipped. Under the
    transforms the standard path runs."""

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs or _unwrap_dead_wrappers is None or torch._C._are_functorch_transforms_active():
            return super().apply(*args, **kwargs)
        return super(torch.autograd.Function, cls).apply(*_unwrap_dead_wrappers(args))  # type: ignore[misc]


class _LabelSmoothingCE(_Function):
    """loss = f(logits, target, smoothing); backward = the saved analytic derivatives.

    ``req`` says which derivatives the forward pass computes (those of the inputs that
    require grad) and whether the loss stays float32 (autocast)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        where: Tensor | None,
        smoothing: Any,
        opts: Options,
        req: Request,
        look: bool,
    ) -> tuple[Any, ...]:
        res = evaluate(logits, target, smoothing, weight, where, opts, req)
        return res.loss, res.grad, res.target_grad, res.smoothing_grad, res.aux

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        logits, target, weight, where, smoothing, opts, req, look = inputs
        _, grad, tgrad, dsmooth, _aux = output  # (the statistics are not differentiable)
        ctx.opts, ctx.req, ctx.look = opts, req, look
        ctx.has_grad, ctx.has_tgrad = grad is not None, tgrad is not None
        ctx.smoothing_is_tensor = isinstance(smoothing, torch.Tensor)
        ctx.mark_non_differentiable(*(t for t in (grad, tgrad, dsmooth) if t is not None))
        ctx.dsmooth = dsmooth  # the size of the loss: nothing to give away or save specially
        ctx.smoothing = None if ctx.smoothing_is_tensor else smoothing
        big = grad if grad is not None else tgrad
        if big is None or _plan.is_concrete(big):
            # kept out of save_for_backward so that backward can give the buffers away
            ctx.buffers = (grad, tgrad)
            grad = tgrad = None
        else:  # under torch.func transforms tensors must be saved the standard way
            ctx.buffers = None
        smooth_t = smoothing if ctx.smoothing_is_tensor else None
        ctx.save_for_backward(logits, target, weight, where, smooth_t, grad, tgrad)
        ctx.set_materialize_grads(False)  # no N x K zeros for the extra outputs' gradients
        ctx.forward_inputs = (logits, target, weight, where, smoothing)  # for jvp (forward mode)

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> tuple[Any, ...]:
        """Forward mode (torch.func.jvp, jacfwd, hessian): the tangent of the loss is the
        analytic gradient contracted with the tangents of the inputs."""
        d_logits, d_target, _, _, d_smoothing = tangents[:5]
        logits, target, weight, where, smoothing = ctx.forward_inputs
        soft = target.shape == logits.shape and target.dtype.is_floating_point
        req = Request(
            kl=ctx.req.kl, loss=False, grad=d_logits is not None,
            target_grad=soft and d_target is not None, smoothing_grad=d_smoothing is not None,
            inplace=False, loss_in_compute_dtype=ctx.req.loss_in_compute_dtype,
        )  # fmt: skip
        res = evaluate(logits, target, smoothing, weight, where, ctx.opts, req)
        axis, per_row, shift = ctx.opts.axis % logits.ndim, ctx.opts.reduction == "none", ctx.opts.shift
        tangent = None
        for g, d, front in ((res.grad, d_logits, False), (res.target_grad, d_target, True)):
            if g is not None:
                term = torch.sum(g * d, dim=axis) if per_row else torch.sum(g * d)
                if per_row and shift:  # the scored positions: logits t, targets t + shift
                    term = term[..., shift:] if front else term[..., : term.shape[-1] - shift]
                tangent = term if tangent is None else tangent + term
        if res.smoothing_grad is not None:
            term = res.smoothing_grad * d_smoothing
            tangent = term if tangent is None else tangent + term
        return tangent, None, None, None, None

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        grad_out = grad_outputs[0]  # the loss's; the other outputs are not differentiable
        if grad_out is None:
            return None, None, None, None, None, None, None, None
        grad, tgrad, owned = _gradients(ctx)
        logits = ctx.saved_tensors[0]
        opts = ctx.opts
        scale = broadcastable(grad_out, logits.ndim, opts.axis, opts.reduction, opts.shift)
        t_scale = scale
        if opts.shift and opts.reduction == "none" and tgrad is not None:
            t_scale = broadcastable(grad_out, logits.ndim, opts.axis, opts.reduction, opts.shift, front=True)
        look = ctx.look  # (the CPU plan: on an accelerator, never read the scale back)
        d_smooth = None if ctx.dsmooth is None else torch.sum(grad_out * ctx.dsmooth)
        return (
            scaled(grad, scale, owned, look),
            scaled(tgrad, t_scale, owned, look),
            None,
            None,
            d_smooth,
            None,
            None,
            None,
        )


def _gradients(ctx: Any) -> tuple[Tensor | None, Tensor | None, bool]:
    """The saved analytic gradients, and whether they are ours to give away: the buffers
    of the forward pass at the first backward, else recomputed (with differentiable
    operations under create_graph, or because an earlier backward gave them away)."""
    logits, target, weight, where, smooth_t, grad, tgrad = ctx.saved_tensors
    differentiable = torch.is_grad_enabled()  # create_graph=True
    if not differentiable and ctx.buffers:
        (grad, tgrad), ctx.buffers = ctx.buffers, ()  # given away by the caller
        return grad, tgrad, True
    has_grad, has_tgrad = ctx.has_grad, ctx.has_tgrad
    if (differentiable or ctx.buffers == ()) and (has_grad or has_tgrad):
        smoothing = smooth_t if ctx.smoothing_is_tensor else ctx.smoothing
        req = Request(
            kl=ctx.req.kl, loss=False, grad=has_grad, target_grad=has_tgrad,
            inplace=not differentiable,  # under create_graph the tensors join the graph
        )  # fmt: skip
        res = evaluate(logits, target, smoothing, weight, where, ctx.opts, req)
        return res.grad, res.target_grad, not differentiable
    return grad, tgrad, False


# ------------------------------------------------------------------ fused linear + loss
# For "mean" and "sum" the forward pass also accumulates the three gradients (as
# Liger-Kernel does), so the backward pass only scales them by the incoming gradient; for
# "none" the backward pass runs the blocks again with the incoming gradient as row
# weights, because each row's share of the classifier's gradient must be weighted before
# it is summed.


class _LinearCE(_Function):
    """loss = f(hidden, classifier, bias, smoothing); backward = the analytic gradients.
    ``needs``: which of hidden, classifier, bias and smoothing require grad."""

    @staticmethod
    def forward(
        hidden: Tensor,
        classifier: Tensor,
        bias: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        smoothing: Any,
        opts: Options,
        needs: tuple[bool, bool, bool, bool],
    ) -> tuple[Any, ...]:
        now = opts.reduction != "none" and any(needs[:3])
        res = evaluate_linear(
            hidden, classifier, target, smoothing, bias, weight, opts, want_grad=now,
            wants=needs[:3], want_smoothing_grad=needs[3],
        )  # fmt: skip
        return res.loss, res.grad_hidden, res.grad_classifier, res.grad_bias, res.smoothing_grad, res.aux

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        hidden, classifier, bias, target, weight, smoothing, opts, needs = inputs
        # (the statistics, output 5, are no tensor and not differentiable)
        ctx.mark_non_differentiable(*(t for t in output[1:5] if t is not None))
        ctx.opts, ctx.needs = opts, needs
        # the gradients stay off save_for_backward so that backward can give them away
        ctx.grads = output[1:4] if output[1:4] != (None, None, None) else None
        ctx.dsmooth = output[4]
        tensor_eps = isinstance(smoothing, torch.Tensor)
        ctx.smoothing = None if tensor_eps else smoothing
        ctx.save_for_backward(hidden, classifier, bias, target, weight, smoothing if tensor_eps else None)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        grad_out = grad_outputs[0]
        if grad_out is None:
            return (None,) * 8
        if torch.is_grad_enabled():
            raise RuntimeError(
                "ls_xp.linear_cross_entropy has no double backward (create_graph=True, also used by "
                "torch.func.grad); use ls_xp.cross_entropy(hidden @ classifier.T + bias, target) there"
            )
        hidden, classifier, bias, target, weight, smooth_t = ctx.saved_tensors
        smoothing = smooth_t if ctx.smoothing is None else ctx.smoothing
        per_row = ctx.opts.reduction == "none"
        grads = ctx.grads
        if grads is None and any(ctx.needs[:3]):  # "none", or a second backward (retain_graph)
            row_scale = grad_out if per_row else None
            if row_scale is not None and ctx.opts.shift:  # scored positions; the last shift weigh 0
                row_scale = torch.nn.functional.pad(row_scale, (0, ctx.opts.shift))
            res = evaluate_linear(
                hidden, classifier, target, smoothing, bias, weight, ctx.opts, want_loss=False,
                want_grad=True, wants=ctx.needs[:3], row_scale=row_scale,
            )  # fmt: skip
            grads = (res.grad_hidden, res.grad_classifier, res.grad_bias)
        else:
            ctx.grads = None  # given away below
        if grads is None:
            grads = (None, None, None)
        elif not per_row:
            look = _plan.plan(hidden) == "cpu"
            grads = tuple(scaled(g, grad_out, True, look) for g in grads)  # ours: computed for this call
        d_smooth = None if ctx.dsmooth is None else torch.sum(grad_out * ctx.dsmooth)
        return (*grads, None, None, d_smooth, None, None)
