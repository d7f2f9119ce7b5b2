"""PyTorch: autograd with the analytic gradient, a compiler-friendly operator, and the
``nn.Module`` classes.

``ls_xp.cross_entropy`` (and ``kl_divergence``, ``linear_cross_entropy``) route every
tensor to this package's adapter. Eagerly, a loss that needs gradients is an
``autograd.Function``: the forward pass evaluates the loss *and* the analytic gradient in
one blocked pass of the core and keeps only that gradient (and, for probability targets
or a smoothing tensor that require grad, their derivatives), not log-probabilities and
temporaries. The first backward pass hands that buffer over to autograd, so PyTorch's
accumulation into ``.grad`` takes it without a copy; a later backward through a retained
graph recomputes it from the saved logits.

Double backward (``create_graph=True``, ``gradgradcheck``, Hessian-vector products)
recomputes the gradient from the saved logits with differentiable tensor operations, so
second derivatives are exact as well. Forward mode (``torch.func.jvp``, ``jacfwd``,
``hessian``) contracts the same analytic gradient with the tangents.

Inside ``torch.compile`` and ``torch.export`` the loss is the traced formula, with no
graph break, and its backward an ``autograd.Function``, written so that the compiled step
keeps the logits (not a finished gradient) for the backward; under ``torch.compile`` the
commonest losses reach dynamo as one CompositeImplicitAutograd operator that AOTAutograd
decomposes into that formula, so that its cache takes the compiled step; the
fused linear loss is the custom operator ``ls_xp::linear_ce`` (``torch.library.custom_op``
with a shape-only fake implementation and a registered backward), which exported
programs carry.

``torch.func.grad`` and ``torch.func.vmap`` are supported (the vmap rule is generated);
under them the value checks of the core are skipped (bad labels give NaN, as under
``jax.jit``). Under ``torch.autocast`` the loss is float32, as native ``cross_entropy``'s,
and so is its value: half-precision logits are evaluated in float32 and the loss is not
rounded through their dtype.

A gradient with respect to ``weight`` is not implemented (PyTorch raises there too).

Layout: ``_modules`` (the public classes), ``_adapter`` (the hooks the core API calls),
``_autograd`` (the eager Functions), ``_traced`` (the loss inside compilers) and
``_traced_op`` (its CompositeImplicitAutograd operator under ``torch.compile``), ``_ops``
(the custom operators), ``_calls`` (the core as the adapter calls it, and PyTorch's block
sizes), ``_fused`` (the accelerator plan's compiled block, ``LS_XP_COMPILE``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ls_xp.torch._modules import CrossEntropyLoss, LabelSmoothingCrossEntropy, LinearCrossEntropyLoss

if TYPE_CHECKING:  # (imported lazily at run time: see ``__getattr__``)
    from ls_xp.torch._parallel import vocab_parallel_cross_entropy
    from ls_xp.torch._parallel_linear import vocab_parallel_linear_cross_entropy

# (also ``cross_entropy``, ``kl_divergence`` and ``linear_cross_entropy``, through ``__getattr__``)
__all__ = [
    "CrossEntropyLoss",
    "LabelSmoothingCrossEntropy",
    "LinearCrossEntropyLoss",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
_PARALLEL = ("vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy")  # (ls_xp.torch._parallel)

for _cls in (CrossEntropyLoss, LabelSmoothingCrossEntropy, LinearCrossEntropyLoss):
    _cls.__module__ = __name__  # their public home (doctests, docs, pickles name it)
del _cls


def __getattr__(name: str) -> Any:
    """``ls_xp.torch.cross_entropy``, ``kl_divergence``, ``linear_cross_entropy``: the public
    functions, re-exported lazily so that this package imports the core only."""
    if name in ("cross_entropy", "kl_divergence", "linear_cross_entropy"):
        from ls_xp import _api

        return getattr(_api, name)
    if name in _PARALLEL:  # class-sharded logits over torch.distributed (imported on first use)
        from ls_xp.torch import _parallel, _parallel_linear

        return getattr(_parallel if name == _PARALLEL[0] else _parallel_linear, name)
    raise AttributeError(f"module 'ls_xp.torch' has no attribute {name!r}")
