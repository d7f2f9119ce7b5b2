"""PyTorch adapter: autograd with the analytic gradient, a compiler-friendly operator, and
the ``nn.Module`` classes.

``ls_xp.cross_entropy`` (and ``kl_divergence``) route here for every tensor. Eagerly, a
loss that needs gradients is an ``autograd.Function``: the forward pass evaluates the loss
*and* the analytic gradient in one blocked pass of the core and keeps only that gradient
(and, for probability targets or a smoothing tensor that require grad, their derivatives),
not log-probabilities and temporaries. The first backward pass hands that buffer over to
autograd (scaled in place by the incoming gradient when that is not 1) and drops its own
reference, so PyTorch's accumulation into ``.grad`` takes it without a copy; a later
backward through a retained graph recomputes it from the saved logits.

Double backward (``create_graph=True``, ``gradgradcheck``, Hessian-vector products)
recomputes the gradient from the saved logits with differentiable tensor operations, so
second derivatives are exact as well. Forward mode (``torch.func.jvp``, ``jacfwd``,
``hessian``) contracts the same analytic gradient with the tangents.

Inside ``torch.compile`` and ``torch.export`` the loss is the custom operator
``ls_xp::label_smoothed_ce`` (``torch.library.custom_op``) with a shape-only fake
implementation and a registered backward, so compilers see one opaque operator and no
graph break, and exported programs carry it.

``torch.func.grad`` and ``torch.func.vmap`` are supported (the vmap rule is generated);
under them the value checks of the core are skipped (bad labels give NaN, as under
``jax.jit``). Under ``torch.autocast`` the loss is float32, as native ``cross_entropy``'s.

A gradient with respect to ``weight`` is not implemented (PyTorch raises there too).
"""

from __future__ import annotations

from typing import Any

import torch
from array_api_compat import array_namespace

from ls_xp import _checks, _core, _linear

# (also ``cross_entropy`` and ``kl_divergence``, through the module's ``__getattr__``)
__all__ = ["CrossEntropyLoss", "LabelSmoothingCrossEntropy", "LinearCrossEntropyLoss"]


def __getattr__(name: str) -> Any:
    """``ls_xp.torch.cross_entropy``, ``kl_divergence``, ``linear_cross_entropy``: the public
    functions, re-exported lazily so that this adapter imports the core only."""
    if name in ("cross_entropy", "kl_divergence", "linear_cross_entropy"):
        from ls_xp import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'ls_xp.torch' has no attribute {name!r}")


def _requires_grad(a: Any) -> bool:
    return bool(getattr(a, "requires_grad", False))


def _refuse_weight_grad(weight: Any) -> None:
    """Class weights that require grad: an error, never a silently dropped gradient."""
    if torch.is_grad_enabled() and _requires_grad(weight):
        raise NotImplementedError(
            "ls_xp: the gradient with respect to weight is not implemented (as in PyTorch); "
            "pass weight.detach()"
        )


def wants_autograd(logits: torch.Tensor, target: Any, weight: Any, smoothing: Any = None) -> bool:
    if not torch.is_grad_enabled():
        return False
    _refuse_weight_grad(weight)
    return _requires_grad(logits) or _requires_grad(target) or _requires_grad(smoothing)


class _LabelSmoothingCE(torch.autograd.Function):
    """loss = f(logits, target, smoothing); backward = the saved analytic derivatives."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        where: torch.Tensor | None,
        smoothing: Any,
        options: dict[str, Any],
        needs: tuple[bool, bool, bool],
    ) -> tuple[Any, ...]:
        res = _core._evaluate(
            logits,
            target,
            smoothing,
            want_loss=True,
            want_grad=needs[0],
            want_target_grad=needs[1],
            want_smoothing_grad=needs[2],
            weight=weight,
            where=where,
            **options,
        )
        return res.loss, res.grad, res.target_grad, res.smoothing_grad

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        logits, target, weight, where, smoothing, options, _ = inputs
        _, grad, tgrad, dsmooth = output
        ctx.options = options
        ctx.smoothing_is_tensor = isinstance(smoothing, torch.Tensor)
        ctx.has_grad, ctx.has_tgrad = grad is not None, tgrad is not None
        ctx.mark_non_differentiable(*(t for t in (grad, tgrad, dsmooth) if t is not None))
        ctx.dsmooth = dsmooth  # the size of the loss: nothing to give away or save specially
        smooth_t = smoothing if ctx.smoothing_is_tensor else None
        if ctx.smoothing_is_tensor:
            ctx.smoothing = None
        else:
            ctx.smoothing = smoothing
        big = grad if grad is not None else tgrad
        if big is None or _checks.is_concrete(big):
            # kept out of save_for_backward so that backward can give the buffers away
            ctx.buffers = (grad, tgrad)
            grad = tgrad = None
        else:  # under torch.func transforms tensors must be saved the standard way
            ctx.buffers = None
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
        res = _core._evaluate(
            logits, target, smoothing, want_loss=False, want_grad=d_logits is not None,
            want_target_grad=soft and d_target is not None, want_smoothing_grad=d_smoothing is not None,
            weight=weight, where=where, inplace=False, **ctx.options,
        )  # fmt: skip
        axis, per_row = ctx.options["axis"] % logits.ndim, ctx.options["reduction"] == "none"
        tangent = None
        for g, d in ((res.grad, d_logits), (res.target_grad, d_target)):
            if g is not None:
                term = torch.sum(g * d, dim=axis) if per_row else torch.sum(g * d)
                tangent = term if tangent is None else tangent + term
        if res.smoothing_grad is not None:
            term = res.smoothing_grad * d_smoothing
            tangent = term if tangent is None else tangent + term
        return tangent, None, None, None

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        grad_out = grad_outputs[0]  # the loss's; the other outputs are not differentiable
        if grad_out is None:
            return None, None, None, None, None, None, None
        logits, target, weight, where, smooth_t, grad, tgrad = ctx.saved_tensors
        smoothing = smooth_t if ctx.smoothing_is_tensor else ctx.smoothing
        opts = ctx.options
        differentiable = torch.is_grad_enabled()  # create_graph=True
        owned = False
        if not differentiable and ctx.buffers:
            (grad, tgrad), ctx.buffers = ctx.buffers, ()  # given away below
            owned = True
        elif (differentiable or ctx.buffers == ()) and (ctx.has_grad or ctx.has_tgrad):
            # recompute the analytic gradient: with differentiable operations under
            # create_graph, or because an earlier backward gave the buffers away
            res = _core._evaluate(
                logits,
                target,
                smoothing,
                want_loss=False,
                want_grad=ctx.has_grad,
                want_target_grad=ctx.has_tgrad,
                weight=weight,
                where=where,
                inplace=not differentiable,  # under create_graph the tensors join the graph
                **opts,
            )
            grad, tgrad = res.grad, res.target_grad
            owned = not differentiable
        scale = _broadcastable(grad_out, logits.ndim, opts["axis"], opts["reduction"])
        look = _checks.plan(logits) == "cpu"  # on an accelerator, never read the scale back
        d_smooth = None
        if ctx.dsmooth is not None:
            d_smooth = torch.sum(grad_out * ctx.dsmooth)
        return (
            _scaled(grad, scale, owned, look),
            _scaled(tgrad, scale, owned, look),
            None,
            None,
            d_smooth,
            None,
            None,
        )


def _broadcastable(grad_out: torch.Tensor, ndim: int, axis: int, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return grad_out.unsqueeze(axis % ndim)
    return grad_out


def _scaled(
    g: torch.Tensor | None, scale: torch.Tensor, owned: bool, look: bool = True
) -> torch.Tensor | None:
    """``g * scale``; in place in a buffer that is ``owned`` (ours to give away). Where the
    scale may be read (``look``: not on the accelerator plan) a scale of 1 costs nothing."""
    if g is None:
        return None
    if look and scale.ndim == 0 and not g.requires_grad and _is_one(scale):
        return g  # loss.backward(): the buffer as it is
    if owned and not scale.requires_grad:
        return g.mul_(scale if scale.dtype == g.dtype else scale.to(g.dtype))
    return g * scale


def _is_one(scale: torch.Tensor) -> bool:
    try:
        return bool(scale == 1)
    except RuntimeError:  # under torch.func transforms the value cannot be read
        return False


# ------------------------------------------------------------------ inside compilers
# torch.compile (fullgraph) and torch.export see the loss as one opaque operator with a
# fake (shape-only) implementation, so they never trace the array-API code. Its forward
# returns the loss and the analytic derivatives; its backward scales them.

_EMPTY = (0,)


def _op_scalars(smoothing: Any, opts: dict[str, Any]) -> tuple[torch.Tensor | None, float, int, int]:
    """What the operators take for smoothing, ``chunk_size`` and ``check_values``: a tensor
    smoothing or None with the float, and ints (0: the default block; -1: the plan decides)."""
    tensor_eps = isinstance(smoothing, torch.Tensor)
    check = opts.get("check_values")
    return (
        smoothing if tensor_eps else None,
        0.0 if tensor_eps else float(smoothing),
        int(opts.get("chunk_size") or 0),
        -1 if check is None else int(check),
    )


def _op_options(
    reduction: str, ignore_index: int, convention: str, chunk_size: int, check: int
) -> dict[str, Any]:
    """The core's keywords from an operator's arguments (the inverse of :func:`_op_scalars`)."""
    return {
        "reduction": reduction, "ignore_index": ignore_index, "convention": convention,
        "chunk_size": chunk_size or None, "check_values": None if check < 0 else bool(check),
    }  # fmt: skip


@torch.library.custom_op("ls_xp::label_smoothed_ce", mutates_args=())
def _ce_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    where: torch.Tensor | None,
    smoothing: torch.Tensor | None,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    options = _op_options(reduction, ignore_index, convention, chunk_size, check_values)
    res = _core._evaluate(
        logits, target, eps if smoothing is None else smoothing, weight=weight, axis=axis, where=where,
        log_probs=log_probs, kl=kl, want_grad=needs[0], want_target_grad=needs[1],
        want_smoothing_grad=needs[2], **options,
    )  # fmt: skip
    assert res.loss is not None
    outs = (res.loss, res.grad, res.target_grad, res.smoothing_grad)
    return tuple(  # type: ignore[return-value]
        logits.new_empty(_EMPTY) if o is None else o.contiguous().clone() if o is logits else o.contiguous()
        for o in outs
    )


@_ce_op.register_fake
def _ce_op_fake(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    where: torch.Tensor | None,
    smoothing: torch.Tensor | None,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ax = axis % logits.ndim
    batch = [s for i, s in enumerate(logits.shape) if i != ax]
    loss = logits.new_empty(batch if reduction == "none" else ())
    return (
        loss,
        logits.new_empty(logits.shape) if needs[0] else logits.new_empty(_EMPTY),
        target.new_empty(target.shape) if needs[1] else logits.new_empty(_EMPTY),
        logits.new_empty(loss.shape) if needs[2] else logits.new_empty(_EMPTY),
    )


def _ce_op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    _, grad, tgrad, dsmooth = output
    ctx.axis, ctx.reduction, ctx.needs = inputs[8], inputs[6], inputs[12]
    ctx.save_for_backward(grad, tgrad, dsmooth)


def _ce_op_backward(ctx: Any, grad_out: torch.Tensor, *_: Any) -> tuple[Any, ...]:
    grad, tgrad, dsmooth = ctx.saved_tensors
    return (
        grad * _broadcastable(grad_out, grad.ndim, ctx.axis, ctx.reduction) if ctx.needs[0] else None,
        tgrad * _broadcastable(grad_out, tgrad.ndim, ctx.axis, ctx.reduction) if ctx.needs[1] else None,
        None,
        None,
        torch.sum(grad_out * dsmooth) if ctx.needs[2] else None,
        *([None] * 10),
    )


torch.library.register_autograd(_ce_op, _ce_op_backward, setup_context=_ce_op_setup)


def _compiled_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    where: torch.Tensor | None,
    smoothing: Any,
    kl: bool,
    opts: dict[str, Any],
    needs: tuple[bool, bool, bool],
) -> torch.Tensor:
    """The loss as the opaque operator (under torch.compile / torch.export)."""
    smooth_t, eps, chunk, check = _op_scalars(smoothing, opts)
    return _ce_op(
        logits, target, weight, where, smooth_t, eps,
        opts.get("reduction", "mean"), int(opts.get("ignore_index", -100)), int(opts.get("axis", -1)),
        opts.get("convention", "uniform"), bool(opts.get("log_probs", False)), kl, list(needs), chunk, check,
    )[0]  # fmt: skip


def loss(
    logits: torch.Tensor,
    target: Any,
    smoothing: Any = 0.1,
    *,
    kl: bool = False,
    weight: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """The differentiable loss (called by ``ls_xp.cross_entropy`` / ``kl_divergence``)."""
    target = _as_tensor(logits, target, "target")
    weight = _as_tensor(logits, weight, "weight")
    where = _as_tensor(logits, where, "where")
    soft = target.shape == logits.shape and target.dtype.is_floating_point
    needs = (
        _requires_grad(logits),
        bool(soft and _requires_grad(target)),
        isinstance(smoothing, torch.Tensor) and _requires_grad(smoothing),
    )
    if torch.compiler.is_compiling() and not set(options) - _OP_OPTIONS:
        return _compiled_loss(logits, target, weight, where, smoothing, kl, options, needs)
    opts = {"kl": kl, **options}
    opts.setdefault("reduction", "mean")
    opts.setdefault("axis", -1)
    out, _, _, _ = _LabelSmoothingCE.apply(logits, target, weight, where, smoothing, opts, needs)
    return out


_OP_OPTIONS = {"reduction", "ignore_index", "axis", "convention", "log_probs", "chunk_size", "check_values"}


def _as_tensor(logits: torch.Tensor, a: Any, name: str) -> Any:
    """Tensors pass as they are (the core checks their device); NumPy arrays and Python
    values become tensors on the logits' device. Plain ``isinstance`` keeps this cheap
    to trace for torch.compile."""
    if a is None or isinstance(a, torch.Tensor):
        return a
    return _checks.same_namespace(array_namespace(logits), logits.device, a, name)


def value(
    logits: torch.Tensor, target: Any, smoothing: Any, *, kl: bool = False, **options: Any
) -> torch.Tensor:
    """The loss through autograd where anything needs a gradient, else straight from the core.

    Under ``torch.autocast`` the loss is float32, as native ``cross_entropy``'s (a loss on
    PyTorch's autocast-to-float32 list); the gradient keeps the logits' dtype.
    """
    options = _with_block_size(logits, options)
    if wants_autograd(logits, target, options.get("weight"), smoothing):
        out = loss(logits, target, smoothing, kl=kl, **options)
    else:
        res = _core._evaluate(logits, target, smoothing, kl=kl, want_loss=True, want_grad=False, **options)
        assert res.loss is not None
        out = res.loss
    if torch.is_autocast_enabled(logits.device.type) and out.dtype != torch.float64:
        out = out.float()
    return out


# Elements per block on the CPU plan. Every PyTorch CPU operation hands its work to the
# intra-op thread pool; with a core taken by a data loader each hand-off waits, so PyTorch
# wants fewer, larger blocks than NumPy's cache-sized ones (the core's 2^19). A block stays
# under 32 MiB of float32, glibc's largest mmap threshold: larger temporaries are mapped
# fresh (and page-faulted) for every block. Measured at 2048 x 32000 float32 on this
# 2-core machine (2 alternating pairs each), ls_xp / native time with one core busy: 1.67x
# at 2^19 elements, 1.35x at 2^21, 0.98x here; quiet 0.79x, 0.74x, 0.68x; peak memory
# 0.36x, 0.39x, 0.50x of native's. At 2048 x 131072 (quiet): 0.85x with 2^23 (32 MiB
# blocks), 0.56x here.
_CPU_BLOCK_ELEMENTS = 7 << 20


def _with_block_size(logits: torch.Tensor, options: dict[str, Any]) -> dict[str, Any]:
    """The PyTorch CPU plan's rows per block, unless the caller chose ``chunk_size``; and
    ``workers`` checked and taken out: PyTorch spreads each operation over its own
    intra-op threads, so its blocks run one after another."""
    if "workers" in options:
        _checks.check_workers(options["workers"])
        options = {k: v for k, v in options.items() if k != "workers"}
    if options.get("chunk_size") is not None or logits.ndim < 1 or _checks.plan(logits) != "cpu":
        return options
    try:
        num_classes = int(logits.shape[options.get("axis", -1)])
    except (IndexError, TypeError):  # a bad axis: the core raises the error that names it
        return options
    return {**options, "chunk_size": max(1, _CPU_BLOCK_ELEMENTS // max(num_classes, 1))}


def values(*args: Any, **kwargs: Any) -> _core.Result:
    """``_core._evaluate`` without recording a graph, with the PyTorch block size."""
    with torch.no_grad():
        return _core._evaluate(*args, **_with_block_size(args[0], kwargs))


def _check_options(
    smoothing: Any, reduction: Any, ignore_index: Any, convention: Any, chunk_size: Any
) -> None:
    """The checks ``cross_entropy`` makes on its parameters, run at construction."""
    _checks.check_smoothing(None, smoothing)
    _checks.check_choice("reduction", reduction, _checks.REDUCTIONS)
    _checks.as_int(ignore_index, "ignore_index")
    _checks.check_choice("convention", convention, _checks.CONVENTIONS)
    _checks.check_chunk_size(chunk_size)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss``, computed by ls_xp: a drop-in replacement.

    The constructor is PyTorch's, positional arguments included (``weight``,
    ``size_average``, ``ignore_index``, ``reduce``, ``reduction``, ``label_smoothing``),
    and so are ``state_dict`` (``weight`` is a buffer), ``repr`` and the class axis (dim 1
    of (N, C, d1, ...) inputs; dim 0 of an unbatched (C,) input). Code that swaps
    ``nn.CrossEntropyLoss`` for it changes nothing else. What ls_xp adds is keyword-only:

    - ``convention``: ``"uniform"`` (PyTorch's, the default) or ``"others"`` (fairseq's:
      eps is spread over the K - 1 other classes);
    - ``chunk_size``: rows per block (see :func:`ls_xp.cross_entropy`);
    - ``forward(input, target, where=None)``: an optional class mask.

    Arguments are checked at construction (PyTorch checks ``reduction`` and
    ``label_smoothing`` only at the first call). The result differs from PyTorch's only
    where ls_xp is documented to be more exact: tiny losses of confident rows, and -inf
    logits of classes without target mass (0, where PyTorch gives NaN).

    >>> crit = CrossEntropyLoss(label_smoothing=0.1)
    >>> crit(torch.arange(12.0).reshape(4, 3), torch.tensor([0, 2, 1, 2]))
    tensor(1.1826)
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        convention: str = "uniform",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        _check_options(self.label_smoothing, self.reduction, ignore_index, convention, chunk_size)
        self.convention = convention
        self.chunk_size = chunk_size

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, where: torch.Tensor | None = None
    ) -> torch.Tensor:
        return value(
            input,
            target,
            self.label_smoothing,
            reduction=self.reduction,
            weight=self.weight,
            ignore_index=self.ignore_index,
            axis=0 if input.ndim == 1 else 1,
            convention=self.convention,
            where=where,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        extras = []
        if self.convention != "uniform":
            extras.append(f"convention={self.convention!r}")
        if self.chunk_size is not None:
            extras.append(f"chunk_size={self.chunk_size}")
        return ", ".join(extras)


class LabelSmoothingCrossEntropy(torch.nn.Module):
    """Label-smoothed cross-entropy as an ``nn.Module`` with ls_xp's own argument order:
    ``ls_xp.cross_entropy`` with the keywords fixed at construction (the class axis last
    by default, like timm's and the notebook's modules). For a drop-in replacement of
    ``nn.CrossEntropyLoss`` use :class:`CrossEntropyLoss`.

    ``forward(input, target, where=None)``. ``weight`` is registered as a buffer (it moves
    with ``.to(device)``). ``kl=True`` gives the KL form (:func:`ls_xp.kl_divergence`).
    ``label_smoothing`` is accepted as PyTorch's name for ``smoothing``. Every argument is
    checked at construction.

    >>> crit = LabelSmoothingCrossEntropy(0.1)
    >>> crit(torch.arange(12.0).reshape(4, 3), torch.tensor([0, 2, 1, 2]))
    tensor(1.1826)
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        smoothing: float = 0.1,
        *,
        label_smoothing: float | None = None,
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
        if label_smoothing is not None:
            smoothing = label_smoothing
        if getattr(smoothing, "ndim", 0) != 0:
            raise TypeError(
                "smoothing must be a number here (the first positional argument is the smoothing "
                "factor, not weight); pass weight=... by keyword"
            )
        _check_options(smoothing, reduction, ignore_index, convention, chunk_size)
        _checks.as_int(axis, "axis")
        self.smoothing = float(smoothing)
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.axis = int(axis)
        self.convention = convention
        self.log_probs = _checks.as_bool(log_probs, "log_probs")
        self.kl = _checks.as_bool(kl, "kl")
        self.chunk_size = chunk_size
        self.register_buffer("weight", weight)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, where: torch.Tensor | None = None
    ) -> torch.Tensor:
        return value(
            input,
            target,
            self.smoothing,
            kl=self.kl,
            reduction=self.reduction,
            weight=self.weight,
            ignore_index=self.ignore_index,
            axis=self.axis,
            convention=self.convention,
            where=where,
            log_probs=self.log_probs,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"smoothing={self.smoothing}, reduction={self.reduction!r}, convention={self.convention!r}, "
            f"ignore_index={self.ignore_index}, axis={self.axis}"
        )


# ------------------------------------------------------------------ fused linear + loss
# ls_xp.linear_cross_entropy: the loss from hidden states and the classifier, in row
# blocks (ls_xp._linear). For "mean" and "sum" the forward pass also accumulates the three
# gradients (as Liger-Kernel does), so the backward pass only scales them by the incoming
# gradient; for "none" the backward pass runs the blocks again with the incoming
# gradient as row weights, because each row's share of the classifier's gradient must be
# weighted before it is summed.


class _LinearCE(torch.autograd.Function):
    """loss = f(hidden, classifier, bias, smoothing); backward = the analytic gradients."""

    @staticmethod
    def forward(
        hidden: torch.Tensor,
        classifier: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        smoothing: Any,
        opts: dict[str, Any],
        needs: tuple[bool, bool, bool, bool],
    ) -> tuple[Any, ...]:
        now = opts["reduction"] != "none" and any(needs[:3])
        res = _linear._evaluate_linear(
            hidden, classifier, target, smoothing, bias=bias, weight=weight, want_grad=now,
            wants=needs[:3], want_smoothing_grad=needs[3], **opts,
        )  # fmt: skip
        return res.loss, res.grad_hidden, res.grad_classifier, res.grad_bias, res.smoothing_grad

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        hidden, classifier, bias, target, weight, smoothing, opts, needs = inputs
        ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))
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
        per_row = ctx.opts["reduction"] == "none"
        grads = ctx.grads
        if grads is None and any(ctx.needs[:3]):  # "none", or a second backward (retain_graph)
            res = _linear._evaluate_linear(
                hidden, classifier, target, smoothing, bias=bias, weight=weight, want_loss=False,
                want_grad=True, wants=ctx.needs[:3], row_scale=grad_out if per_row else None, **ctx.opts,
            )  # fmt: skip
            grads = (res.grad_hidden, res.grad_classifier, res.grad_bias)
        else:
            ctx.grads = None  # given away below
        if grads is None:
            grads = (None, None, None)
        elif not per_row:
            look = _checks.plan(hidden) == "cpu"
            grads = tuple(_scaled(g, grad_out, True, look) for g in grads)  # ours: computed for this call
        d_smooth = None if ctx.dsmooth is None else torch.sum(grad_out * ctx.dsmooth)
        return (*grads, None, None, d_smooth, None, None)


def _linear_options(hidden: torch.Tensor, classifier: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The core's options for PyTorch: on the CPU plan each block's softmax in pieces of
    ``_LINEAR_SOFTMAX_ELEMENTS``, on an accelerator in one piece."""
    inner = 1 << 62
    if _checks.plan(hidden) == "cpu":
        num_classes = int(classifier.shape[0]) if getattr(classifier, "ndim", 0) == 2 else 1
        inner = max(1, _LINEAR_SOFTMAX_ELEMENTS // max(1, num_classes))
    return {"reduction": "mean", **options, "inner_chunk_size": inner}


# Elements per piece of a block's softmax in the fused loss on the CPU plan. The block of
# logits (64 MiB of float32) is already there, so the pieces are smaller than the loss's
# _CPU_BLOCK_ELEMENTS. At N = 4096, D = 256, V = 32768 float32 here (fresh processes):
# 2^21 took 1.98 s with a peak of 185 MiB beyond the inputs, 7 * 2^20 2.09 s and 281 MiB;
# with one core busy 4.64 s and 4.37 s.
_LINEAR_SOFTMAX_ELEMENTS = 1 << 21


def linear_loss(
    hidden: torch.Tensor,
    classifier: Any,
    target: Any,
    smoothing: Any = 0.1,
    *,
    bias: Any = None,
    weight: Any = None,
    **options: Any,
) -> torch.Tensor:
    """The differentiable fused loss (called by ``ls_xp.linear_cross_entropy``)."""
    tensors = [_as_tensor(hidden, a, n) for a, n in ((classifier, "classifier"), (bias, "bias"),
                                                      (target, "target"), (weight, "weight"))]  # fmt: skip
    classifier, bias, target, weight = tensors
    _refuse_weight_grad(weight)
    grad_mode = torch.is_grad_enabled()
    needs = (
        grad_mode and _requires_grad(hidden),
        grad_mode and _requires_grad(classifier),
        grad_mode and _requires_grad(bias),
        grad_mode and isinstance(smoothing, torch.Tensor) and _requires_grad(smoothing),
    )
    if torch.compiler.is_compiling():
        return _compiled_linear_loss(hidden, classifier, bias, target, weight, smoothing, options, needs)
    if not any(needs):
        res = linear_values(hidden, classifier, target, smoothing, bias=bias, weight=weight, **options)
        assert res.loss is not None
        return res.loss
    opts = _linear_options(hidden, classifier, options)
    return _LinearCE.apply(hidden, classifier, bias, target, weight, smoothing, opts, needs)[0]


# Inside torch.compile / torch.export: two opaque operators, the forward (loss, and the
# gradients for "mean" and "sum") and the row-weighted gradient for "none".


@torch.library.custom_op("ls_xp::linear_ce", mutates_args=())
def _linear_op(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: torch.Tensor | None,
    eps: float,
    reduction: str,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    res = _linear._evaluate_linear(
        hidden, classifier, target, eps if smoothing is None else smoothing, bias=bias, weight=weight,
        want_grad=reduction != "none" and any(needs[:3]), wants=(needs[0], needs[1], needs[2]),
        want_smoothing_grad=needs[3],
        **_linear_options(
            hidden, classifier, _op_options(reduction, ignore_index, convention, chunk_size, check_values)
        ),
    )  # fmt: skip
    outs = (res.loss, res.grad_hidden, res.grad_classifier, res.grad_bias, res.smoothing_grad)
    return tuple(hidden.new_empty(_EMPTY) if o is None else o.contiguous() for o in outs)  # type: ignore[return-value]


@_linear_op.register_fake
def _linear_op_fake(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: torch.Tensor | None,
    eps: float,
    reduction: str,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    loss = hidden.new_empty(target.shape if reduction == "none" else ())
    now = reduction != "none"
    return (
        loss,
        *_grad_shapes(hidden, classifier, bias, [now and n for n in needs[:3]]),
        hidden.new_empty(loss.shape) if needs[3] else hidden.new_empty(_EMPTY),
    )


def _grad_shapes(
    hidden: torch.Tensor, classifier: torch.Tensor, bias: torch.Tensor | None, needs: list[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty tensors shaped like the gradients in ``needs`` (fake implementations)."""
    like = (hidden, classifier, bias)
    return tuple(  # type: ignore[return-value]
        hidden.new_empty(a.shape if n and a is not None else _EMPTY) for a, n in zip(like, needs, strict=True)
    )


@torch.library.custom_op("ls_xp::linear_ce_grad", mutates_args=())
def _linear_grad_op(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: torch.Tensor | None,
    eps: float,
    row_scale: torch.Tensor,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    res = _linear._evaluate_linear(
        hidden, classifier, target, eps if smoothing is None else smoothing, bias=bias, weight=weight,
        want_loss=False, want_grad=True, wants=(needs[0], needs[1], needs[2]), row_scale=row_scale,
        **_linear_options(
            hidden, classifier, _op_options("none", ignore_index, convention, chunk_size, check_values)
        ),
    )  # fmt: skip
    outs = (res.grad_hidden, res.grad_classifier, res.grad_bias)
    return tuple(hidden.new_empty(_EMPTY) if o is None else o.contiguous() for o in outs)  # type: ignore[return-value]


@_linear_grad_op.register_fake
def _linear_grad_op_fake(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: torch.Tensor | None,
    eps: float,
    row_scale: torch.Tensor,
    ignore_index: int,
    convention: str,
    needs: list[bool],
    chunk_size: int,
    check_values: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _grad_shapes(hidden, classifier, bias, needs[:3])


def _linear_op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    ctx.args = inputs  # the "none" backward passes them on
    ctx.reduction, ctx.needs = inputs[7], inputs[10]
    ctx.save_for_backward(*inputs[:6], *output[1:])


def _linear_op_backward(ctx: Any, grad_out: torch.Tensor, *_: Any) -> tuple[Any, ...]:
    hidden, classifier, bias, target, weight, smoothing, gh, gw, gb, ds = ctx.saved_tensors
    needs = ctx.needs
    if ctx.reduction == "none":
        eps, _, ignore, convention, _, chunk, check = ctx.args[6:]
        gh, gw, gb = _linear_grad_op(
            hidden,
            classifier,
            bias,
            target,
            weight,
            smoothing,
            eps,
            grad_out,
            ignore,
            convention,
            needs,
            chunk,
            check,
        )
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


def _compiled_linear_loss(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: Any,
    opts: dict[str, Any],
    needs: tuple[bool, bool, bool, bool],
) -> torch.Tensor:
    """The fused loss as the opaque operator (under torch.compile / torch.export)."""
    smooth_t, eps, chunk, check = _op_scalars(smoothing, opts)
    return _linear_op(
        hidden, classifier, bias, target, weight, smooth_t, eps, opts.get("reduction", "mean"),
        int(opts.get("ignore_index", -100)), opts.get("convention", "uniform"), list(needs), chunk, check,
    )[0]  # fmt: skip


def linear_values(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> _linear.LinearResult:
    """``_linear._evaluate_linear`` without recording a graph (``linear_loss_and_grad``)."""
    with torch.no_grad():
        return _linear._evaluate_linear(
            hidden, *args, **_linear_options(hidden, args[0] if args else None, kwargs)
        )


class LinearCrossEntropyLoss(torch.nn.Module):
    """Label-smoothed cross-entropy of a classifier head, fused with the head's matmul:
    :func:`ls_xp.linear_cross_entropy` as a module. The N x V logits are never stored.

    ``LinearCrossEntropyLoss(head, ...)`` takes the model's ``nn.Linear`` head (or its
    weight, e.g. a tied embedding matrix) and computes the loss from the hidden states:
    ``forward(hidden, target)`` equals ``CrossEntropyLoss(...)(head(hidden), target)``
    for class indices. Without a head, ``forward(hidden, target, classifier, bias=None)``
    takes the classifier's weight at each call (Liger-Kernel's style). The head is only
    referenced, not registered: the loss has no parameters of its own and the model's
    ``state_dict`` and optimizer are unchanged. The other arguments are
    ``nn.CrossEntropyLoss``'s (``weight`` is the per-class weight, a buffer), plus ls_xp's
    keyword-only ``convention`` and ``chunk_size`` (rows per block).

    >>> head = torch.nn.Linear(4, 10)
    >>> crit = LinearCrossEntropyLoss(head, label_smoothing=0.1)
    >>> hidden, y = torch.randn(6, 4), torch.tensor([1, 2, 3, 4, 5, 6])
    >>> loss = crit(hidden, y)
    >>> bool(torch.allclose(loss, CrossEntropyLoss(label_smoothing=0.1)(head(hidden), y)))
    True
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        head: torch.nn.Linear | torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        convention: str = "uniform",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if head is not None and not isinstance(head, (torch.nn.Linear, torch.Tensor)):
            raise TypeError(
                f"head must be an nn.Linear, a (V, D) weight tensor or None, got {type(head).__name__}"
            )
        if isinstance(head, torch.Tensor) and head.ndim != 2:
            raise ValueError(f"head must be a (V, D) weight tensor, got shape {tuple(head.shape)}")
        _check_options(label_smoothing, reduction, ignore_index, convention, chunk_size)
        self._head = (head,)  # a reference, not a submodule: the model owns the parameters
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.convention = convention
        self.chunk_size = chunk_size
        self.register_buffer("weight", weight)

    @property
    def head(self) -> torch.nn.Linear | torch.Tensor | None:
        return self._head[0]

    def forward(
        self,
        hidden: torch.Tensor,
        target: torch.Tensor,
        classifier: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        head = self.head
        if classifier is None:
            if head is None:
                raise TypeError(
                    "no classifier: pass one to forward(hidden, target, classifier) or a head at construction"
                )
            classifier, bias = (head.weight, head.bias) if isinstance(head, torch.nn.Linear) else (head, bias)
        elif head is not None:
            raise TypeError(
                "classifier given to forward, but this loss was built with a head; pass one of the two"
            )
        return linear_loss(
            hidden, classifier, target, self.label_smoothing, bias=bias, weight=self.weight,
            ignore_index=self.ignore_index, reduction=self.reduction, convention=self.convention,
            chunk_size=self.chunk_size,
        )  # fmt: skip

    def extra_repr(self) -> str:
        head = self.head
        shape = (
            None
            if head is None
            else tuple((head.weight if isinstance(head, torch.nn.Linear) else head).shape)
        )
        extras = [f"head={shape}", f"label_smoothing={self.label_smoothing}", f"reduction={self.reduction!r}"]
        if self.convention != "uniform":
            extras.append(f"convention={self.convention!r}")
        if self.chunk_size is not None:
            extras.append(f"chunk_size={self.chunk_size}")
        return ", ".join(extras)
