"""The public fused linear losses: cross-entropy straight from hidden states and a
classifier, validated at the door and dispatched to the adapter of the inputs' library."""

from __future__ import annotations

from typing import Any, Literal, overload

from ls_xp import _docstrings
from ls_xp._dispatch import adapter_for
from ls_xp._evaluate import Aux
from ls_xp._typing import ArrayT, Convention, Reduction
from ls_xp._validate import join_library, options

Array = Any

__all__ = ["linear_cross_entropy", "linear_loss_and_grad"]


@overload
def linear_cross_entropy(
    hidden: ArrayT,
    classifier: Array,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    bias: Array | None = None,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    convention: Convention = "uniform",
    chunk_size: int | Any | None = None,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[False] = False,
    accum_dtype: Any = None,
) -> ArrayT: ...


@overload
def linear_cross_entropy(
    hidden: ArrayT,
    classifier: Array,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    bias: Array | None = None,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    convention: Convention = "uniform",
    chunk_size: int | Any | None = None,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[True],
    accum_dtype: Any = None,
) -> tuple[ArrayT, Aux]: ...


def linear_cross_entropy(
    hidden: ArrayT,
    classifier: Array,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    bias: Array | None = None,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    convention: Convention = "uniform",
    chunk_size: int | Any | None = None,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
    accum_dtype: Any = None,
) -> ArrayT | tuple[ArrayT, Aux]:
    """Label-smoothed cross-entropy of a linear classifier's output, without its logits.

    The loss of ``cross_entropy(hidden @ classifier.T + bias, target, smoothing, ...)``,

        loss_n = -sum_c w_c q_c log softmax(W h_n + b)_c,

    evaluated over blocks of rows: each block's logits are made, turned into losses and
    (where a gradient is wanted) into their share of the three gradients, and dropped.
    The N x V logits and their gradient never exist; the largest temporary is one block
    of logits. Same semantics and exactness as :func:`cross_entropy` for class-index
    targets. PyTorch tensors are differentiable with respect to ``hidden``,
    ``classifier``, ``bias`` and ``smoothing`` (the analytic rule, also under
    ``torch.compile``), JAX arrays likewise (``grad``, ``jit``, ``vmap``; the blocks run
    in ``lax.scan``). This is the fusion of Liger-Kernel's fused linear cross-entropy and
    of Cut Cross-Entropy, written once for every array-API library.
    {linear}
    Returns
    -------
    loss : array
        As :func:`cross_entropy` returns it (one loss per position of ``target`` for
        ``"none"``).

    Raises
    ------
    TypeError
        A parameter of the wrong kind, arrays of two different libraries, or a
        non-floating ``classifier``,
        naming the argument.
    ValueError
        A shape that does not fit (``classifier`` not (V, D), ``target`` not
        ``hidden.shape[:-1]``), a class index out of range, smoothing outside [0, 1],
        naming the argument and the value (NaN instead where values are not read).

    References
    ----------
    E. Wijmans, B. Huval, A. Hertzberg, V. Koltun, P. Kraehenbuehl, "Cut Your Losses in
    Large-Vocabulary Language Models", ICLR 2025 (arXiv:2411.09009).

    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> rng = np.random.default_rng(0)
    >>> h, W, y = rng.normal(size=(6, 4)), rng.normal(size=(10, 4)), np.array([1, 2, 3, 4, 5, 6])
    >>> fused = ls_xp.linear_cross_entropy(h, W, y, 0.1)
    >>> bool(np.isclose(fused, ls_xp.cross_entropy(h @ W.T, y, 0.1), rtol=1e-14))
    True
    """
    opts = options(
        reduction=reduction,
        ignore_index=ignore_index,
        convention=convention,
        chunk_size=chunk_size,
        check_values=check_values,
        z_loss=z_loss,
        softcap=softcap,
        shift=shift,
        return_aux=return_aux,
        accum_dtype=accum_dtype,
    )
    h: Any = join_library(hidden, classifier, target, bias, weight, name="hidden")
    return adapter_for(h).linear_loss(h, classifier, target, smoothing, bias, weight, opts)


@overload
def linear_loss_and_grad(
    hidden: ArrayT,
    classifier: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    bias: ArrayT | None = None,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    convention: Convention = "uniform",
    chunk_size: int | Any | None = None,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[False] = False,
    accum_dtype: Any = None,
) -> tuple[ArrayT, ArrayT, ArrayT, ArrayT | None]: ...


@overload
def linear_loss_and_grad(
    hidden: ArrayT,
    classifier: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    bias: ArrayT | None = None,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    convention: Convention = "uniform",
    chunk_size: int | Any | None = None,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[True],
    accum_dtype: Any = None,
) -> tuple[tuple[ArrayT, Aux], ArrayT, ArrayT, ArrayT | None]: ...


def linear_loss_and_grad(
    hidden: ArrayT,
    classifier: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    bias: ArrayT | None = None,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    convention: Convention = "uniform",
    chunk_size: int | Any | None = None,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
    accum_dtype: Any = None,
) -> tuple[ArrayT, ArrayT, ArrayT, ArrayT | None] | tuple[tuple[ArrayT, Aux], ArrayT, ArrayT, ArrayT | None]:
    """:func:`linear_cross_entropy` and its gradients, in one blocked pass.

    With G the analytic gradient of the loss with respect to the (never stored) logits,

        grad_hidden = G W,   grad_classifier = G^T H,   grad_bias = sum_n G_n,

    accumulated block by block. For ``reduction="none"`` they are the gradients of the
    sum of the per-position losses. For NumPy, CuPy, Dask and array-api-strict, which
    have no autodiff; PyTorch and JAX users get the same through their own ``backward``
    / ``grad``.
    {linear}
    Returns
    -------
    loss : array
        As :func:`linear_cross_entropy` returns it.
    grad_hidden : array
        The shape and dtype of ``hidden``.
    grad_classifier : array
        (V, D), the dtype of ``classifier``.
    grad_bias : array or None
        (V,), or None without ``bias``.

    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> rng = np.random.default_rng(0)
    >>> h, W, y = rng.normal(size=(6, 4)), rng.normal(size=(10, 4)), np.array([1, 2, 3, 4, 5, 6])
    >>> loss, g_h, g_W, g_b = ls_xp.linear_loss_and_grad(h, W, y, 0.1)
    >>> _, g = ls_xp.loss_and_grad(h @ W.T, y, 0.1)
    >>> bool(np.allclose(g_h, g @ W) and np.allclose(g_W, g.T @ h)), g_b is None
    (True, True)
    """
    opts = options(
        reduction=reduction,
        ignore_index=ignore_index,
        convention=convention,
        chunk_size=chunk_size,
        check_values=check_values,
        z_loss=z_loss,
        softcap=softcap,
        shift=shift,
        return_aux=return_aux,
        accum_dtype=accum_dtype,
    )
    h: Any = join_library(hidden, classifier, target, bias, weight, name="hidden")
    res = adapter_for(h).linear_values(h, classifier, target, smoothing, bias, weight, opts)
    loss: Any = (res.loss, res.aux) if return_aux else res.loss
    out: Any = (loss, res.grad_hidden, res.grad_classifier, res.grad_bias)
    return out


for _f in (linear_cross_entropy, linear_loss_and_grad):
    _f.__doc__ = _docstrings.public_doc(_f.__doc__ or "")
