"""PyTorch adapter: autograd with the analytic gradient, and an ``nn.Module``.

``ls_xp.cross_entropy`` (and ``kl_divergence``) route here when a tensor needs
gradients. The forward pass evaluates the loss *and* the analytic gradient in one blocked
pass of the core and keeps only that gradient (and, for probability targets that require
grad, the gradient for the target), not log-probabilities and temporaries. The first
backward pass hands that buffer over to autograd (scaled in place by the incoming gradient
when that is not 1) and drops its own reference, so PyTorch's accumulation into ``.grad``
takes it without a copy; a later backward through a retained graph recomputes it from the
saved logits.

Double backward (``create_graph=True``, ``gradgradcheck``, Hessian-vector products)
recomputes the gradient from the saved logits with differentiable tensor operations, so
second derivatives are exact as well.

``torch.func.grad`` and ``torch.func.vmap`` are supported (the vmap rule is generated);
under them the value checks of the core are skipped (bad labels give NaN, as under
``jax.jit``). ``torch.compile`` works: the loss runs as an opaque autograd function
between compiled graphs.

A gradient with respect to ``weight`` is not implemented (PyTorch raises there too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ls_xp import _api, _checks, _core

__all__ = ["LabelSmoothingCrossEntropy", "cross_entropy", "kl_divergence"]

cross_entropy = _api.cross_entropy
kl_divergence = _api.kl_divergence


def wants_autograd(logits: torch.Tensor, target: Any, weight: Any) -> bool:
    if not torch.is_grad_enabled():
        return False
    if weight is not None and getattr(weight, "requires_grad", False):
        raise NotImplementedError(
            "ls_xp: the gradient with respect to weight is not implemented (as in PyTorch); "
            "pass weight.detach()"
        )
    return bool(logits.requires_grad or getattr(target, "requires_grad", False))


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


class _LabelSmoothingCE(torch.autograd.Function):
    """loss = f(logits, target); backward = the saved analytic gradient."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        where: torch.Tensor | None,
        options: dict[str, Any],
        needs: tuple[bool, bool],
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        loss, grad, tgrad = _core._evaluate(
            logits,
            target,
            want_loss=True,
            want_grad=needs[0],
            want_target_grad=needs[1],
            weight=weight,
            where=where,
            **options,
        )
        return loss, grad, tgrad

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        logits, target, weight, where, options, _ = inputs
        _, grad, tgrad = output
        ctx.options = options
        ctx.has_grad, ctx.has_tgrad = grad is not None, tgrad is not None
        ctx.mark_non_differentiable(*(t for t in (grad, tgrad) if t is not None))
        if _checks.is_concrete(grad if grad is not None else tgrad):
            # kept out of save_for_backward so that backward can give the buffers away
            ctx.buffers = (grad, tgrad)
            grad = tgrad = None
        else:  # under torch.func transforms tensors must be saved the standard way
            ctx.buffers = None
        ctx.save_for_backward(logits, target, weight, where, grad, tgrad)
        ctx.set_materialize_grads(False)  # no N x K zeros for the extra outputs' gradients

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor | None, *_: Any) -> tuple[Any, ...]:
        if grad_out is None:
            return None, None, None, None, None, None
        logits, target, weight, where, grad, tgrad = ctx.saved_tensors
        opts = ctx.options
        differentiable = torch.is_grad_enabled()  # create_graph=True
        owned = False
        if not differentiable and ctx.buffers:
            (grad, tgrad), ctx.buffers = ctx.buffers, ()  # given away below
            owned = True
        elif differentiable or ctx.buffers == ():
            # recompute the analytic gradient: with differentiable operations under
            # create_graph, or because an earlier backward gave the buffers away
            _, grad, tgrad = _core._evaluate(
                logits,
                target,
                want_loss=False,
                want_grad=ctx.has_grad,
                want_target_grad=ctx.has_tgrad,
                weight=weight,
                where=where,
                inplace=not differentiable,  # under create_graph the tensors join the graph
                **opts,
            )
            owned = not differentiable
        scale = _broadcastable(grad_out, logits.ndim, opts["axis"], opts["reduction"])
        return _scaled(grad, scale, owned), _scaled(tgrad, scale, owned), None, None, None, None


def _broadcastable(grad_out: torch.Tensor, ndim: int, axis: int, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return grad_out.unsqueeze(axis % ndim)
    return grad_out


def _scaled(g: torch.Tensor | None, scale: torch.Tensor, owned: bool) -> torch.Tensor | None:
    """``g * scale``; in place in a buffer that is ``owned`` (ours to give away)."""
    if g is None:
        return None
    if scale.ndim == 0 and not g.requires_grad and _is_one(scale):
        return g  # loss.backward(): the buffer as it is
    if owned and not scale.requires_grad:
        return g.mul_(scale.to(g.dtype))
    return g * scale


def _is_one(scale: torch.Tensor) -> bool:
    try:
        return bool(scale == 1)
    except RuntimeError:  # under torch.func transforms the value cannot be read
        return False


def loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    smoothing: float = 0.1,
    *,
    kl: bool = False,
    weight: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """The differentiable loss (called by ``ls_xp.cross_entropy`` / ``kl_divergence``)."""
    soft = target.shape == logits.shape and target.dtype.is_floating_point
    needs = (bool(logits.requires_grad), bool(soft and target.requires_grad))
    opts = {"smoothing": smoothing, "kl": kl, **options}
    opts.setdefault("reduction", "mean")
    opts.setdefault("axis", -1)
    out, _, _ = _LabelSmoothingCE.apply(logits, target, weight, where, opts, needs)
    return out


class LabelSmoothingCrossEntropy(torch.nn.Module):
    """Label-smoothed cross-entropy as an ``nn.Module``: ``ls_xp.cross_entropy`` with
    the keywords fixed at construction; a drop-in for the seeds' modules and for
    ``nn.CrossEntropyLoss(label_smoothing=...)``.

    ``forward(input, target, where=None)``. ``weight`` is registered as a buffer (it moves
    with ``.to(device)``). ``kl=True`` gives the KL form (:func:`ls_xp.kl_divergence`).

    >>> crit = LabelSmoothingCrossEntropy(0.1)
    >>> crit(torch.arange(12.0).reshape(4, 3), torch.tensor([0, 2, 1, 2]))
    tensor(1.1826)
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        smoothing: float = 0.1,
        *,
        reduction: str = "mean",
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        axis: int = -1,
        convention: str = "uniform",
        log_probs: bool = False,
        kl: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.axis = axis
        self.convention = convention
        self.log_probs = log_probs
        self.kl = kl
        self.chunk_size = chunk_size
        self.register_buffer("weight", weight)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, where: torch.Tensor | None = None
    ) -> torch.Tensor:
        fn = _api.kl_divergence if self.kl else _api.cross_entropy
        return fn(
            input,
            target,
            self.smoothing,
            reduction=self.reduction,
            weight=self.weight,  # type: ignore[arg-type]
            ignore_index=self.ignore_index,
            axis=self.axis,
            convention=self.convention,  # type: ignore[arg-type]
            where=where,
            log_probs=self.log_probs,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"smoothing={self.smoothing}, reduction={self.reduction!r}, convention={self.convention!r}, "
            f"ignore_index={self.ignore_index}, axis={self.axis}"
        )
