"""The public gradient functions, for libraries without autodiff (and for everyone who
wants the loss and its gradient in one pass)."""

from __future__ import annotations

from typing import Any, Literal, overload

from ls_xp import _docstrings
from ls_xp._dispatch import values as _values
from ls_xp._evaluate import Aux
from ls_xp._typing import ArrayT, Convention, Reduction
from ls_xp._validate import options

Array = Any

__all__ = ["cross_entropy_grad", "loss_and_grad"]


@overload
def loss_and_grad(
    logits: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    axis: int | Any = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
    chunk_size: int | Any | None = None,
    workers: int | Any | None = None,
    overwrite_logits: bool = False,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[False] = False,
) -> tuple[ArrayT, ArrayT]: ...


@overload
def loss_and_grad(
    logits: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    axis: int | Any = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
    chunk_size: int | Any | None = None,
    workers: int | Any | None = None,
    overwrite_logits: bool = False,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[True],
) -> tuple[tuple[ArrayT, Aux], ArrayT]: ...


def loss_and_grad(
    logits: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    axis: int | Any = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
    chunk_size: int | Any | None = None,
    workers: int | Any | None = None,
    overwrite_logits: bool = False,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
) -> tuple[ArrayT, ArrayT] | tuple[tuple[ArrayT, Aux], ArrayT]:
    """Label-smoothed cross-entropy and its gradient with respect to ``logits``, in one pass.

    The gradient is the analytic one,

        d loss_n / d x_c = (sum_k w_k q_k) softmax(x)_c - w_c q_c,

    divided by the ``"mean"`` denominator where that applies. For ``reduction="none"`` it
    is the gradient of the sum of the per-position losses.

    {shared}
    overwrite_logits : bool
        Allow the gradient to be written into the ``logits`` buffer itself (Liger-Kernel
        style), block by block, saving the memory of a separate gradient. Done only where
        it is possible: a concrete, writeable 2-D array with the classes last and a
        float32/float64 dtype (NumPy, PyTorch, CuPy); otherwise a new array is returned as
        usual, so test ``grad is logits`` if it matters. Afterwards ``logits`` holds the
        gradient: never use it where the logits are still needed (e.g. a tensor that
        autograd saved for another backward pass).

    Returns
    -------
    loss : array
        As :func:`cross_entropy` returns it.
    grad : array
        ``d loss / d logits``, the shape and dtype of ``logits``.
    {raises}
    {notes}
    {references}
    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> loss, grad = ls_xp.loss_and_grad(np.arange(12.0).reshape(4, 3), np.array([0, 2, 1, 2]), 0.1)
    >>> round(float(loss), 4), grad.shape
    (1.1826, (4, 3))
    >>> bool(np.allclose(grad.sum(axis=-1), 0.0))  # softmax minus a distribution, per row
    True
    """
    opts = options(
        reduction=reduction,
        ignore_index=ignore_index,
        axis=axis,
        convention=convention,
        log_probs=log_probs,
        chunk_size=chunk_size,
        workers=workers,
        overwrite_logits=overwrite_logits,
        check_values=check_values,
        z_loss=z_loss,
        softcap=softcap,
        shift=shift,
        return_aux=return_aux,
    )
    loss, grad = _values(logits, target, smoothing, weight, where, opts, want_loss=True)
    return loss, grad


@overload
def cross_entropy_grad(
    logits: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    axis: int | Any = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
    chunk_size: int | Any | None = None,
    workers: int | Any | None = None,
    overwrite_logits: bool = False,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[False] = False,
) -> ArrayT: ...


@overload
def cross_entropy_grad(
    logits: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    axis: int | Any = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
    chunk_size: int | Any | None = None,
    workers: int | Any | None = None,
    overwrite_logits: bool = False,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[True],
) -> tuple[ArrayT, Aux]: ...


def cross_entropy_grad(
    logits: ArrayT,
    target: Array,
    smoothing: float | Any = 0.1,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | Any = -100,
    axis: int | Any = -1,
    convention: Convention = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
    chunk_size: int | Any | None = None,
    workers: int | Any | None = None,
    overwrite_logits: bool = False,
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
) -> ArrayT | tuple[ArrayT, Aux]:
    """Analytic gradient of :func:`cross_entropy` with respect to ``logits``.

    ``d loss_n / d x_c = (sum_k w_k q_k) softmax(x)_c - w_c q_c`` (divided by the
    ``"mean"`` denominator); zero at ignored positions and masked classes. For
    ``reduction="none"`` it is the gradient of the sum of the per-position losses.
    It is also the gradient of :func:`kl_divergence`, which differs by a constant.

    {shared}
    overwrite_logits : bool
        Allow the gradient to be written into the ``logits`` buffer itself (Liger-Kernel
        style); see :func:`loss_and_grad`.

    Returns
    -------
    grad : array
        ``d loss / d logits``, the shape and dtype of ``logits``.
    {raises}
    {notes}
    {references}
    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> g = ls_xp.cross_entropy_grad(np.array([[0.0, 0.0]]), np.array([0]), 0.0)
    >>> g.tolist()  # softmax minus one-hot
    [[-0.5, 0.5]]
    """
    opts = options(
        reduction=reduction,
        ignore_index=ignore_index,
        axis=axis,
        convention=convention,
        log_probs=log_probs,
        chunk_size=chunk_size,
        workers=workers,
        overwrite_logits=overwrite_logits,
        check_values=check_values,
        z_loss=z_loss,
        softcap=softcap,
        shift=shift,
        return_aux=return_aux,
    )
    out, grad = _values(logits, target, smoothing, weight, where, opts, want_loss=False)
    return (grad, out[1]) if return_aux else grad


for _f in (loss_and_grad, cross_entropy_grad):
    _f.__doc__ = _docstrings.public_doc(_f.__doc__ or "")
