"""Inside ``torch.compile`` and ``torch.export``: the fused linear loss as opaque custom operators.

The loss of logits is traced instead (:mod:`ls_xp.torch._traced`), so that the compiler
fuses its formula; ``ls_xp::label_smoothed_ce`` stays registered so that programs
exported with it still load and run. The fused linear loss
keeps its operators: its row blocks are what keeps the N x K logits out of memory, which
a traced single block would give up.

``ls_xp::label_smoothed_ce`` and ``ls_xp::linear_ce`` (with ``ls_xp::linear_ce_grad``, the
row-weighted backward of ``reduction="none"``) are ``torch.library.custom_op``s with
shape-only fake implementations and registered backwards, so compilers see one operator
and no graph break, never trace the array-API code, and exported programs carry them. A
schema takes flat scalars only, so the options travel as their fields; chunk_size 0 means
"the adapter's block size", check_values -1 "the plan decides". The block sizes are
chosen inside the operators, at run time, from the real tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from ls_xp._validate import Options
from ls_xp.torch._autograd import broadcastable
from ls_xp.torch._calls import Request, blocked, evaluate, evaluate_linear

Tensor = torch.Tensor

_EMPTY = (0,)  # the shape of an output that was not asked for


def _options(
    reduction: str,
    ignore_index: int,
    axis: int,
    convention: str,
    log_probs: bool,
    chunk_size: int,
    check: int,
    extra: tuple[float, float, int] = (0.0, 0.0, 0),
) -> Options:
    """The options from an operator's flat arguments (the inverse of :func:`_flat`);
    ``extra`` is (z_loss, softcap or 0, shift)."""
    z_loss, softcap, shift = extra
    return Options(
        reduction=reduction, ignore_index=ignore_index, axis=axis, convention=convention,
        log_probs=log_probs, chunk_size=chunk_size or None, check_values=None if check < 0 else bool(check),
        z_loss=z_loss, softcap=softcap or None, shift=shift,
    )  # fmt: skip


def _flat(smoothing: Any, opts: Options) -> tuple[Tensor | None, float, int, int]:
    """What the operators take for smoothing, chunk_size and check_values: a tensor
    smoothing or None with the float, and ints."""
    tensor_eps = isinstance(smoothing, torch.Tensor)
    return (
        smoothing if tensor_eps else None,
        0.0 if tensor_eps else float(smoothing),
        opts.chunk_size or 0,
        -1 if opts.check_values is None else int(opts.check_values),
    )


def _outputs(like: Tensor, outs: tuple[Tensor | None, ...]) -> tuple[Tensor, ...]:
    """An operator's outputs: contiguous, never aliasing an input, empty where not asked for."""
    return tuple(
        like.new_empty(_EMPTY) if o is None else o.contiguous().clone() if o is like else o.contiguous()
        for o in outs
    )


@torch.library.custom_op("ls_xp::label_smoothed_ce", mutates_args=())
def _ce_op(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    where: Tensor | None,
    smoothing: Tensor | None,
    eps: float,
    reduction: str,
    ignore_index: int,
    axis: int,
    convention: str,
    log_probs: bool,
    kl: bool,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
    float_loss: bool,
    z_loss: float,
    softcap: float,
    shift: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    extra = (z_loss, softcap, shift)
    opts = _options(reduction, ignore_index, axis, convention, log_probs, chunk_size, check_values, extra)
    req = Request(
        kl=kl, grad=needs[0], target_grad=needs[1], smoothing_grad=needs[2], loss_in_compute_dtype=float_loss
    )
    res = evaluate(
        logits, target, eps if smoothing is None else smoothing, weight, where, blocked(logits, opts), req
    )
    assert res.loss is not None
    return _outputs(logits, (res.loss, res.grad, res.target_grad, res.smoothing_grad))  # type: ignore[return-value]


@_ce_op.register_fake
def _ce_op_fake(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    where: Tensor | None,
    smoothing: Tensor | None,
    eps: float,
    reduction: str,
    ignore_index: int,
    axis: int,
    convention: str,
    log_probs: bool,
    kl: bool,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
    float_loss: bool,
    z_loss: float,
    softcap: float,
    shift: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ax = axis % logits.ndim
    batch = [s for i, s in enumerate(logits.shape) if i != ax]
    if shift and batch:  # "none": the scored positions only
        batch[-1] = batch[-1] - shift
    dtype = torch.promote_types(logits.dtype, torch.float32) if float_loss else logits.dtype
    loss = logits.new_empty(batch if reduction == "none" else (), dtype=dtype)
    return (
        loss,
        logits.new_empty(logits.shape) if needs[0] else logits.new_empty(_EMPTY),
        target.new_empty(target.shape) if needs[1] else logits.new_empty(_EMPTY),
        logits.new_empty(loss.shape, dtype=dtype) if needs[2] else logits.new_empty(_EMPTY),
    )


def _ce_op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    _, grad, tgrad, dsmooth = output
    ctx.axis, ctx.reduction, ctx.needs, ctx.shift = inputs[8], inputs[6], inputs[12], inputs[18]
    ctx.save_for_backward(grad, tgrad, dsmooth)


def _times(ctx: Any, g: Tensor, grad_out: Tensor, front: bool) -> Tensor:
    scale = broadcastable(grad_out, g.ndim, ctx.axis, ctx.reduction, ctx.shift, front)
    return g * (scale if scale.dtype == g.dtype else scale.to(g.dtype))


def _ce_op_backward(ctx: Any, grad_out: Tensor, *_: Any) -> tuple[Any, ...]:
    grad, tgrad, dsmooth = ctx.saved_tensors
    return (
        _times(ctx, grad, grad_out, False) if ctx.needs[0] else None,
        _times(ctx, tgrad, grad_out, True) if ctx.needs[1] else None,
        None,
        None,
        torch.sum(grad_out * dsmooth) if ctx.needs[2] else None,
        *([None] * 14),
    )


torch.library.register_autograd(_ce_op, _ce_op_backward, setup_context=_ce_op_setup)


# ------------------------------------------------------------------ fused linear + loss
# Two operators: the forward (the loss, and the gradients for "mean" and "sum") and the
# row-weighted gradient for "none".


@torch.library.custom_op("ls_xp::linear_ce", mutates_args=())
def _linear_op(
    hidden: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    smoothing: Tensor | None,
    eps: float,
    reduction: str,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    opts = _options(reduction, ignore_index, -1, convention, False, chunk_size, check_values)
    res = evaluate_linear(
        hidden, classifier, target, eps if smoothing is None else smoothing, bias, weight, opts,
        want_grad=reduction != "none" and any(needs[:3]), wants=(needs[0], needs[1], needs[2]),
        want_smoothing_grad=needs[3],
    )  # fmt: skip
    outs = (res.loss, res.grad_hidden, res.grad_classifier, res.grad_bias, res.smoothing_grad)
    return tuple(hidden.new_empty(_EMPTY) if o is None else o.contiguous() for o in outs)  # type: ignore[return-value]


@_linear_op.register_fake
def _linear_op_fake(
    hidden: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    smoothing: Tensor | None,
    eps: float,
    reduction: str,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    loss = hidden.new_empty(target.shape if reduction == "none" else ())
    now = reduction != "none"
    return (
        loss,
        *_grad_shapes(hidden, classifier, bias, [now and n for n in needs[:3]]),
        hidden.new_empty(loss.shape) if needs[3] else hidden.new_empty(_EMPTY),
    )


def _grad_shapes(
    hidden: Tensor, classifier: Tensor, bias: Tensor | None, needs: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Empty tensors shaped like the gradients in ``needs`` (fake implementations)."""
    like = (hidden, classifier, bias)
    return tuple(  # type: ignore[return-value]
        hidden.new_empty(a.shape if n and a is not None else _EMPTY) for a, n in zip(like, needs, strict=True)
    )


@torch.library.custom_op("ls_xp::linear_ce_grad", mutates_args=())
def _linear_grad_op(
    hidden: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    smoothing: Tensor | None,
    eps: float,
    row_scale: Tensor,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[Tensor, Tensor, Tensor]:
    opts = _options("none", ignore_index, -1, convention, False, chunk_size, check_values)
    res = evaluate_linear(
        hidden, classifier, target, eps if smoothing is None else smoothing, bias, weight, opts,
        want_loss=False, want_grad=True, wants=(needs[0], needs[1], needs[2]), row_scale=row_scale,
    )  # fmt: skip
    outs = (res.grad_hidden, res.grad_classifier, res.grad_bias)
    return tuple(hidden.new_empty(_EMPTY) if o is None else o.contiguous() for o in outs)  # type: ignore[return-value]


@_linear_grad_op.register_fake
def _linear_grad_op_fake(
    hidden: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    smoothing: Tensor | None,
    eps: float,
    row_scale: Tensor,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[Tensor, Tensor, Tensor]:
    return _grad_shapes(hidden, classifier, bias, needs[:3])


def _linear_op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    ctx.args = inputs  # the "none" backward passes them on
    ctx.reduction, ctx.needs = inputs[7], inputs[10]
    ctx.save_for_backward(*inputs[:6], *output[1:])


def _linear_op_backward(ctx: Any, grad_out: Tensor, *_: Any) -> tuple[Any, ...]:
    hidden, classifier, bias, target, weight, smoothing, gh, gw, gb, ds = ctx.saved_tensors
    needs = ctx.needs
    if ctx.reduction == "none":
        eps, _, ignore, convention, _, chunk, check = ctx.args[6:]
        gh, gw, gb = _linear_grad_op(
            hidden, classifier, bias, target, weight, smoothing, eps, grad_out, ignore, convention,
            needs, chunk, check,
        )  # fmt: skip
    else:
        gh, gw, gb = gh * grad_out, gw * grad_out, gb * grad_out
    return (
        gh if needs[0] else None,
        gw if needs[1] else None,
        gb if needs[2] and bias is not None else None,
        None,
        None,
        torch.sum(grad_out * ds) if needs[3] else None,
        *([None] * 7),
    )


torch.library.register_autograd(_linear_op, _linear_op_backward, setup_context=_linear_op_setup)


def compiled_linear_loss(
    hidden: Tensor,
    classifier: Tensor,
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    smoothing: Any,
    opts: Options,
    needs: tuple[bool, bool, bool, bool],
) -> Tensor:
    """The fused loss as the opaque operator (under torch.compile / torch.export)."""
    if opts.z_loss or opts.softcap is not None or opts.shift or opts.return_aux:
        raise NotImplementedError(
            "ls_xp: z_loss, softcap, shift and return_aux of the fused linear loss are not supported "
            "inside torch.compile / torch.export"
        )
    smooth_t, eps, chunk, check = _flat(smoothing, opts)
    return _linear_op(
        hidden, classifier, bias, target, weight, smooth_t, eps, opts.reduction, opts.ignore_index,
        opts.convention, list(needs), chunk, check,
    )[0]  # fmt: skip
