"""Inside ``torch.compile`` and ``torch.export``: the loss as traced array-API code.

The compiler sees the formula itself, so Inductor fuses the loss and its gradient with
the user's graph: the same core (:func:`ls_xp._evaluate.evaluate`) runs on the traced
tensors as one block, without reading a value back (``check_values=False``), and the
analytic backward is an ``autograd.Function`` that dynamo traces too. Under
``torch.compile`` the commonest losses reach dynamo as one CompositeImplicitAutograd
operator instead, which AOTAutograd decomposes into the same evaluation and Function and
whose compiled graph its cache takes (:mod:`ls_xp.torch._traced_op` says why).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from importlib.machinery import ModuleSpec
from typing import Any

import torch

from ls_xp._validate import Options
from ls_xp.torch import _traced_op
from ls_xp.torch._autograd import broadcastable
from ls_xp.torch._calls import Request, evaluate
from ls_xp.torch._ops import _options

Tensor = torch.Tensor


def _allow_array_api_compat_caches() -> None:
    """array-api-compat's ``lru_cache``-d helpers are pure predicates of a type (is this a
    torch tensor class, ...): dynamo traces the wrapped functions, which is exact, and is
    told so (as PyTorch does for einops) rather than warning at every compile."""
    try:
        from array_api_compat.common import _helpers
        from torch._dynamo.utils import (
            allow_lru_cache_wrapper_trace_without_warning,
            is_lru_cache_wrapped_function,
        )
    except ImportError:  # pragma: no cover (another PyTorch or array-api-compat: warnings only)
        return
    from ls_xp._picks import scatters_in_place  # (cached per namespace: as pure)

    for obj in (*vars(_helpers).values(), scatters_in_place):
        if is_lru_cache_wrapped_function(obj):
            allow_lru_cache_wrapper_trace_without_warning(obj)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then`` once the module ``name`` has been imported, and is gone (a post-import
    hook): the finder removes itself at the import and wraps the loader the other finders
    return for it."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = None if spec is None else spec.loader
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        run, then = loader.exec_module, self.then

        def exec_module(module: types.ModuleType) -> None:
            run(module)
            then()

        loader.exec_module = exec_module  # type: ignore[method-assign]  # (its own loader)
        return spec


# Dynamo is imported by the first torch.compile, not here: importing it costs an eager
# program some 70 MiB and a second; the helpers are registered when it is imported
if "torch._dynamo.utils" in sys.modules:
    _allow_array_api_compat_caches()
else:
    sys.meta_path.insert(0, _AfterImport("torch._dynamo.utils", _allow_array_api_compat_caches))


def _traced_options(opts: Options) -> Options:
    """One block (traced tensors are not concrete: the core makes all rows one block, with
    no guard on the number of rows) and no value read back."""
    return replace(opts, chunk_size=None, workers=None, check_values=False)


class _TracedCE(torch.autograd.Function):
    """The loss and its analytic gradients, traced by dynamo: forward computes both, the
    backward scales the saved gradients by the incoming one."""

    @staticmethod
    def forward(
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        where: Tensor | None,
        smoothing: Any,
        opts: Options,
        req: Request,
    ) -> tuple[Any, ...]:
        res = evaluate(logits, target, smoothing, weight, where, opts, req)
        return res.loss, res.grad, res.target_grad, res.smoothing_grad

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        logits, _, _, _, _, opts, _ = inputs
        _, grad, tgrad, dsmooth = output
        ctx.mark_non_differentiable(*(t for t in (grad, tgrad, dsmooth) if t is not None))
        ctx.ndim, ctx.axis, ctx.reduction, ctx.shift = logits.ndim, opts.axis, opts.reduction, opts.shift
        ctx.has = (grad is not None, tgrad is not None, dsmooth is not None)
        ctx.save_for_backward(*(t for t in (grad, tgrad, dsmooth) if t is not None))

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        grad_out = grad_outputs[0]
        saved = list(ctx.saved_tensors)
        grad = saved.pop(0) if ctx.has[0] else None
        tgrad = saved.pop(0) if ctx.has[1] else None
        dsmooth = saved.pop(0) if ctx.has[2] else None
        args = (ctx.ndim, ctx.axis, ctx.reduction, ctx.shift)
        return (
            None if grad is None else grad * broadcastable(grad_out, *args).to(grad.dtype),
            None if tgrad is None else tgrad * broadcastable(grad_out, *args, front=True).to(tgrad.dtype),
            None,
            None,
            None if dsmooth is None else torch.sum(grad_out * dsmooth),
            None,
            None,
        )


class _TracedRecomputeCE(torch.autograd.Function):
    """The loss; its backward recomputes the logits' gradient from the saved logits in one
    traced evaluation, scaled by the incoming gradient. Under the compiler the forward
    writes no N x K array (it reads the logits) and the backward writes one, which
    Inductor may put in the saved logits' buffer (donated once the backward has read it)."""

    @staticmethod
    def forward(
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        where: Tensor | None,
        smoothing: Any,
        opts: Options,
        req: Request,
    ) -> Any:
        return evaluate(logits, target, smoothing, weight, where, opts, req).loss

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        logits, target, weight, where, smoothing, opts, req = inputs
        ctx.opts, ctx.req, ctx.smoothing = opts, req, smoothing
        ctx.save_for_backward(logits, target, weight, where)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        grad_out = grad_outputs[0]
        logits, target, weight, where = ctx.saved_tensors
        opts, req = ctx.opts, ctx.req
        # the incoming gradient enters as the rows' factor (not as a product with the
        # finished gradient), so that no N x K array of the backward is free of it: the
        # compiler's partitioner then saves the logits and per-row statistics rather than
        # moving the whole gradient into the forward pass, where it and the logits would
        # both be live, and writes the gradient in the logits' buffer
        grad_req = Request(kl=req.kl, loss=False, grad=True, inplace=False, grad_scale=grad_out)
        grad = evaluate(logits, target, ctx.smoothing, weight, where, opts, grad_req).grad
        assert grad is not None
        return grad, None, None, None, None, None, None


def _loss(
    logits: Tensor, target: Tensor, weight: Tensor | None, where: Tensor | None, smoothing: Any,
    opts: Options, req: Request, grad: bool,
) -> Tensor:  # fmt: skip
    """The commonest losses: through the recomputing Function where the logits need a
    gradient (``grad``), else one evaluation; ``req`` asks for the loss only."""
    if grad:
        out: Tensor = _TracedRecomputeCE.apply(logits, target, weight, where, smoothing, opts, req)
        return out
    res = evaluate(logits, target, smoothing, weight, where, opts, req)
    assert res.loss is not None
    return res.loss


def _op_kernel(
    logits: Tensor, target: Tensor, weight: Tensor | None, where: Tensor | None, eps: float,
    reduction: str, ignore_index: int, axis: int, convention: str, log_probs: bool,
    z_loss: float, softcap: float, shift: int, kl: bool, float_loss: bool,
) -> Tensor:  # fmt: skip
    """The operator's decomposition: :func:`_loss` of the options from their fields."""
    opts = _options(reduction, ignore_index, axis, convention, log_probs, 0, 0, (z_loss, softcap, shift))
    req = Request(kl=kl, inplace=False, loss_in_compute_dtype=float_loss)
    grad = torch.is_grad_enabled() and logits.requires_grad
    return _loss(logits, target, weight, where, eps, opts, req, grad)


_OP = _traced_op.define(
    "label_smoothed_ce",
    "(Tensor logits, Tensor target, Tensor? weight, Tensor? where, float eps, str reduction, "
    "int ignore_index, int axis, str convention, bool log_probs, float z_loss, float softcap, "
    "int shift, bool kl, bool float_loss) -> Tensor",
    _op_kernel,
)


def traced_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    where: Tensor | None,
    smoothing: Any,
    opts: Options,
    kl: bool,
    needs: tuple[bool, bool, bool],
    float_loss: bool,
) -> Tensor:
    """The loss as code the compiler traces (under torch.compile / torch.export): the
    operator where it applies, else the Functions."""
    if opts.return_aux:
        raise NotImplementedError(
            "ls_xp: return_aux=True is not supported inside torch.compile / torch.export"
        )
    # only the logits may need a gradient, and the smoothing is a number: the commonest
    # losses, one operator, chosen before anything else is built (dynamo traces all of it)
    common = needs[1:] == (False, False) and not isinstance(smoothing, torch.Tensor)
    if common and not opts.overwrite_logits and not torch.compiler.is_exporting():
        return _OP(
            logits, target, weight, where, float(smoothing), opts.reduction, opts.ignore_index,
            opts.axis, opts.convention, opts.log_probs, opts.z_loss, opts.softcap or 0.0,
            opts.shift, kl, float_loss,
        )  # fmt: skip
    opts = _traced_options(opts)
    req = Request(
        kl=kl, grad=needs[0], target_grad=needs[1], smoothing_grad=needs[2],
        inplace=False, loss_in_compute_dtype=float_loss,
    )  # fmt: skip
    if common or not any(needs):
        return _loss(logits, target, weight, where, smoothing, opts, replace(req, grad=False), needs[0])
    return _TracedCE.apply(logits, target, weight, where, smoothing, opts, req)[0]
