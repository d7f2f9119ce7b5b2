"""The core as the PyTorch adapter calls it: one evaluation request, and the PyTorch plan's
block sizes.

Every other module of the adapter reaches the core through here, so that what the
adapter asks of it (and how PyTorch's blocks differ from the core's defaults) is in one
place.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ls_xp import _evaluate, _linear, _plan
from ls_xp._evaluate import Request, Result
from ls_xp._validate import Options
from ls_xp.torch import _fused

Tensor = torch.Tensor

__all__ = ["Request", "Result", "blocked", "evaluate", "evaluate_linear", "softmax_rows"]


def evaluate(
    logits: Any,
    target: Any,
    smoothing: Any,
    weight: Any,
    where: Any,
    opts: Options,
    req: Request,
) -> Result:
    """One evaluation of the core; on the accelerator plan by the compiled fused block
    where ``LS_XP_COMPILE`` asks for it (:mod:`ls_xp.torch._fused`), not inside the
    caller's own compilation, which traces the core itself."""
    if (
        isinstance(logits, torch.Tensor)
        and not torch.compiler.is_compiling()
        and _fused.wanted(logits)  # (first: on the CPU by default a cheap no)
        and _plan.plan(logits) == "accelerator"
    ):
        res = _fused.fused(logits, target, smoothing, weight, where, opts, req)
        if res is not None:
            return res
    return _evaluate.evaluate(logits, target, smoothing, weight, where, opts, req)


def evaluate_linear(
    hidden: Tensor,
    classifier: Any,
    target: Any,
    smoothing: Any,
    bias: Any,
    weight: Any,
    opts: Options,
    *,
    want_loss: bool = True,
    want_grad: bool = False,
    want_smoothing_grad: bool = False,
    wants: tuple[bool, bool, bool] = (True, True, True),
    row_scale: Tensor | None = None,
) -> _linear.LinearResult:
    """The fused loss over row blocks, each block's softmax in PyTorch-CPU-sized pieces."""
    return _linear.evaluate_linear(
        hidden, classifier, target, smoothing, bias, weight, opts, want_loss=want_loss,
        want_grad=want_grad, want_smoothing_grad=want_smoothing_grad, wants=wants,
        row_scale=row_scale, inner_chunk_size=softmax_rows(hidden, classifier),
    )  # fmt: skip


_ALL_ROWS = 1 << 62


def softmax_rows(hidden: Tensor, classifier: Any) -> int:
    """Rows per piece of a fused block's softmax: on the CPU plan pieces of
    ``TORCH_LINEAR_SOFTMAX_ELEMENTS`` (the block of logits is already there), on an
    accelerator the whole block."""
    if _plan.plan(hidden) != "cpu":
        return _ALL_ROWS
    num_classes = int(classifier.shape[0]) if getattr(classifier, "ndim", 0) == 2 else 1
    return max(1, _plan.TORCH_LINEAR_SOFTMAX_ELEMENTS // max(1, num_classes))


# (Options, number of classes) -> the Options PyTorch's blocks run with: a module's
# options meet few class counts, so each call reuses one frozen object
_BLOCKED: dict[tuple[Options, int], Options] = {}


def blocked(logits: Tensor, opts: Options, plan: str | None = None) -> Options:
    """``opts`` with the PyTorch CPU plan's rows per block, unless the caller chose
    ``chunk_size``, and without ``workers``: PyTorch spreads each operation over its own
    intra-op threads, so its blocks run one after another."""
    if plan is None:
        plan = _plan.plan(logits)
    if opts.chunk_size is not None or logits.ndim < 1 or plan != "cpu":
        return opts if opts.workers is None else replace(opts, workers=None)
    try:
        num_classes = int(logits.shape[opts.axis])
    except IndexError:  # a bad axis: the core raises the error that names it
        return opts
    key = (opts, num_classes)
    out = _BLOCKED.get(key)
    if out is None:
        rows = max(1, _plan.TORCH_CPU_BLOCK_ELEMENTS // max(num_classes, 1))
        out = replace(opts, chunk_size=rows, workers=None)
        if len(_BLOCKED) < 256:
            _BLOCKED[key] = out
    return out
