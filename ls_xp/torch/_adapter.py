"""How PyTorch sees the losses: the hooks the core API calls for every tensor.

Eagerly, a loss whose inputs require grad is an ``autograd.Function`` with the analytic
gradient as its backward (:mod:`ls_xp.torch._autograd`); inside ``torch.compile`` and
``torch.export`` it is the same core traced as one block without value reads, its backward
an ``autograd.Function`` (:mod:`ls_xp.torch._traced`), behind a CompositeImplicitAutograd
operator where that keeps the compiled graph cacheable (:mod:`ls_xp.torch._traced_op`),
so the compiler fuses the formula; the fused linear loss stays a custom operator there
(:mod:`ls_xp.torch._ops`: its row blocks are what keeps the logits out of memory). Without
gradients it is one call of the core. The block sizes are PyTorch's (:func:`blocked`).
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as torch_xp
import torch

from ls_xp import _linear, _plan, _validate
from ls_xp._adapters import Adapter
from ls_xp._validate import Options
from ls_xp.torch import _fused
from ls_xp.torch._autograd import _LabelSmoothingCE, _LinearCE, refuse_weight_grad, requires_grad
from ls_xp.torch._calls import Request, blocked, evaluate, evaluate_linear
from ls_xp.torch._dtensor import is_dtensor
from ls_xp.torch._ops import compiled_linear_loss
from ls_xp.torch._traced import traced_loss

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)


def as_tensor(like: Tensor, a: Any, name: str, like_name: str = "logits") -> Any:
    """Tensors pass as they are (the core checks their device); NumPy arrays and Python
    values become tensors on the device of ``like``. Plain ``isinstance`` and the torch
    namespace taken at import keep this cheap, also for torch.compile to trace."""
    if a is None or isinstance(a, torch.Tensor):
        return a
    return _validate.same_namespace(torch_xp, like.device, a, name, like=like_name)


def _float_loss(logits: Tensor) -> bool:
    """Under autocast the loss of half-precision logits is float32, value included, as
    native ``cross_entropy``'s (a loss on autocast's float32 list): the core computes in
    float32 and the loss is not rounded through the logits' dtype. The gradient keeps
    the logits' dtype."""
    return logits.dtype in _HALF and torch.is_autocast_enabled(logits.device.type)


class TorchAdapter(Adapter):
    """The losses on PyTorch tensors: autograd, compilers, autocast, PyTorch's blocks."""

    def loss(
        self,
        logits: Tensor,
        target: Any,
        smoothing: Any,
        weight: Any,
        where: Any,
        opts: Options,
        *,
        kl: bool,
    ) -> Any:
        """The loss (``(loss, aux)`` with ``opts.return_aux``): an autograd Function where an
        input requires grad, the traced formula inside compilers (:mod:`ls_xp.torch._traced`),
        the compiled training step where ``LS_XP_COMPILE`` asks for it, else the core."""
        if is_dtensor(logits):  # sharded logits: the vocabulary-parallel loss (ls_xp.torch._dtensor)
            from ls_xp.torch._dtensor import dtensor_loss

            return dtensor_loss(logits, target, smoothing, weight, where, opts, kl=kl, local_loss=self.loss)
        target, weight = as_tensor(logits, target, "target"), as_tensor(logits, weight, "weight")
        where = as_tensor(logits, where, "where")
        float_loss = _float_loss(logits)
        grad_mode = torch.is_grad_enabled()
        if grad_mode:
            refuse_weight_grad(weight)
        soft = target.dtype.is_floating_point and target.shape == logits.shape
        needs = (
            grad_mode and logits.requires_grad,
            grad_mode and soft and target.requires_grad,
            grad_mode and isinstance(smoothing, torch.Tensor) and smoothing.requires_grad,
        )
        if torch.compiler.is_compiling():  # the compiler traces the formula (every dtype)
            return traced_loss(logits, target, weight, where, smoothing, opts, kl, needs, float_loss)
        plan = _plan.plan(logits)
        opts = blocked(logits, opts, plan)
        if needs == (True, False, False) and plan == "accelerator" and _fused.wanted(logits):
            # the fused block of a training step: the traced loss, compiled with its backward
            args = (logits, target, weight, where, smoothing, opts, kl, float_loss)
            out = _fused.fused_loss(traced_loss, *args)
            if out is not None:
                return out
        if needs[0] or needs[1] or needs[2]:
            key = (kl, *needs, float_loss)
            req = _REQUESTS[key]
            out = _LabelSmoothingCE.apply(logits, target, weight, where, smoothing, opts, req, plan == "cpu")
            return (out[0], out[4]) if opts.return_aux else out[0]
        req = _LOSS_ONLY[kl, float_loss]
        res = evaluate(logits, target, smoothing, weight, where, opts, req)
        assert res.loss is not None
        return (res.loss, res.aux) if opts.return_aux else res.loss

    def values(
        self,
        logits: Tensor,
        target: Any,
        smoothing: Any,
        weight: Any,
        where: Any,
        opts: Options,
        *,
        want_loss: bool,
    ) -> tuple[Tensor | None, Tensor, Any]:
        """Loss, gradient and the statistics (``return_aux``) without recording a graph,
        with PyTorch's blocks."""
        if is_dtensor(logits):
            from ls_xp.torch._dtensor import dtensor_values

            return dtensor_values(logits, target, smoothing, weight, where, opts, with_aux=True)
        with torch.no_grad():
            res = evaluate(
                logits, target, smoothing, weight, where, blocked(logits, opts), _VALUES[want_loss]
            )
        assert res.grad is not None
        return res.loss, res.grad, res.aux

    def linear_loss(
        self,
        hidden: Tensor,
        classifier: Any,
        target: Any,
        smoothing: Any,
        bias: Any,
        weight: Any,
        opts: Options,
    ) -> Any:
        """The differentiable fused loss (``(loss, aux)`` with ``opts.return_aux``)."""
        if is_dtensor(classifier):  # a vocabulary-sharded head (ls_xp.torch._dtensor)
            from ls_xp.torch._dtensor import dtensor_linear_loss

            return dtensor_linear_loss(hidden, classifier, target, smoothing, bias, weight, opts)
        classifier, bias = (
            as_tensor(hidden, classifier, "classifier", "hidden"),
            as_tensor(hidden, bias, "bias", "hidden"),
        )
        target, weight = (
            as_tensor(hidden, target, "target", "hidden"),
            as_tensor(hidden, weight, "weight", "hidden"),
        )
        refuse_weight_grad(weight)
        grad_mode = torch.is_grad_enabled()
        needs = (
            grad_mode and requires_grad(hidden),
            grad_mode and requires_grad(classifier),
            grad_mode and requires_grad(bias),
            grad_mode and isinstance(smoothing, torch.Tensor) and requires_grad(smoothing),
        )
        if torch.compiler.is_compiling():
            return compiled_linear_loss(hidden, classifier, bias, target, weight, smoothing, opts, needs)
        if not any(needs):
            res = self.linear_values(
                hidden, classifier, target, smoothing, bias, weight, opts, want_grad=False
            )
            assert res.loss is not None
            return (res.loss, res.aux) if opts.return_aux else res.loss
        out = _LinearCE.apply(hidden, classifier, bias, target, weight, smoothing, opts, needs)
        return (out[0], out[5]) if opts.return_aux else out[0]

    def linear_values(
        self,
        hidden: Tensor,
        classifier: Any,
        target: Any,
        smoothing: Any,
        bias: Any,
        weight: Any,
        opts: Options,
        *,
        want_grad: bool = True,
    ) -> _linear.LinearResult:
        """The fused loss and its gradients, without recording a graph."""
        with torch.no_grad():
            return evaluate_linear(
                hidden, classifier, target, smoothing, bias, weight, opts, want_grad=want_grad
            )


# the requests, made once: (kl, grad, target_grad, smoothing_grad, float32 loss) for autograd
_REQUESTS = {
    (kl, g, t, e, f): Request(kl=kl, grad=g, target_grad=t, smoothing_grad=e, loss_in_compute_dtype=f)
    for kl in (False, True)
    for g in (False, True)
    for t in (False, True)
    for e in (False, True)
    for f in (False, True)
}
_LOSS_ONLY = {(kl, f): Request(kl=kl, loss_in_compute_dtype=f) for kl in (False, True) for f in (False, True)}
_VALUES = {want: Request(loss=want, grad=True) for want in (False, True)}

ADAPTER = TorchAdapter()
