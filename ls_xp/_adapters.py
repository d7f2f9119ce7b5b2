"""How each array library sees the losses: one interface, one implementation per library.

The public functions (:mod:`ls_xp._api`) validate their arguments into an
:class:`ls_xp._validate.Options` and hand everything to the adapter of the logits'
library. :class:`Adapter` itself is the generic adapter, for libraries without autodiff
(NumPy, CuPy, Dask, array-api-strict): it calls the core. PyTorch's
(:mod:`ls_xp.torch._adapter`) adds autograd, what compilers trace and its block sizes;
JAX's (:mod:`ls_xp.jax._adapter`) the ``custom_jvp`` rule and the scanned fused loss.
:func:`ls_xp._api.adapter_for` picks one. No framework is imported here: an
array is recognised by ``isinstance`` against a library that is already imported (an
array of a library that was never imported cannot exist).
"""

from __future__ import annotations

import sys
from typing import Any

from ls_xp._evaluate import Request, evaluate
from ls_xp._linear import LinearResult, evaluate_linear
from ls_xp._validate import Options

Array = Any


class Adapter:
    """The hooks the public functions call. This base class is the generic adapter: the
    core, with no autodiff graph."""

    def loss(
        self, logits: Array, target: Any, smoothing: Any, weight: Any, where: Any, opts: Options, *, kl: bool
    ) -> Array:
        """The loss (``cross_entropy``, or ``kl_divergence`` with ``kl``); ``(loss, aux)``
        with ``opts.return_aux``."""
        res = evaluate(logits, target, smoothing, weight, where, opts, _LOSS[kl])
        return (res.loss, res.aux) if opts.return_aux else res.loss

    def values(
        self,
        logits: Array,
        target: Any,
        smoothing: Any,
        weight: Any,
        where: Any,
        opts: Options,
        *,
        want_loss: bool,
    ) -> tuple[Array | None, Array, Any]:
        """The loss (if ``want_loss``), its analytic gradient and the statistics (with
        ``opts.return_aux``, else None), as plain values."""
        res = evaluate(logits, target, smoothing, weight, where, opts, _VALUES[want_loss])
        return res.loss, res.grad, res.aux

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
        """The fused linear loss; ``(loss, aux)`` with ``opts.return_aux``."""
        res = evaluate_linear(hidden, classifier, target, smoothing, bias, weight, opts)
        return (res.loss, res.aux) if opts.return_aux else res.loss

    def linear_values(
        self,
        hidden: Array,
        classifier: Any,
        target: Any,
        smoothing: Any,
        bias: Any,
        weight: Any,
        opts: Options,
    ) -> LinearResult:
        """The fused linear loss and its gradients, as plain values."""
        return evaluate_linear(hidden, classifier, target, smoothing, bias, weight, opts, want_grad=True)


GENERIC = Adapter()
# the requests of the generic adapter, made once (a small loss is mostly call overhead)
_LOSS = {kl: Request(kl=kl) for kl in (False, True)}
_VALUES = {want: Request(loss=want, grad=True) for want in (False, True)}


def _instance_of(x: Any, module: str, cls: str) -> bool:
    """``isinstance(x, module.cls)`` without importing the module. (Cheap for torch.compile
    to trace.)"""
    mod = sys.modules.get(module)
    return mod is not None and isinstance(x, getattr(mod, cls))


def is_torch_array(x: Any) -> bool:
    return _instance_of(x, "torch", "Tensor")


def is_jax_array(x: Any) -> bool:
    return _instance_of(x, "jax", "Array") or _instance_of(x, "jax.core", "Tracer")
