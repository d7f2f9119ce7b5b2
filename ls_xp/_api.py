"""The public functions: their signatures and documentation, validation at the door,
and the dispatch to the adapter of the logits' library (:mod:`ls_xp._dispatch`).

Each function normalises its scalar keywords once into an :class:`ls_xp._validate.Options`
and joins NumPy inputs to the library of the other arrays (:func:`ls_xp._validate.join_library`);
the adapter does the rest. No framework is imported here.
"""

from __future__ import annotations

from typing import Any, Literal, overload

from ls_xp import _docstrings
from ls_xp._dispatch import loss as _loss
from ls_xp._evaluate import Aux
from ls_xp._typing import ArrayT, Convention, Reduction
from ls_xp._validate import options

Array = Any  # targets, weights and masks: arrays of the logits' library, NumPy or Python values

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "kl_divergence",
    "linear_cross_entropy",
    "linear_loss_and_grad",
    "loss_and_grad",
]


@overload
def cross_entropy(
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
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[False] = False,
) -> ArrayT: ...


@overload
def cross_entropy(
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
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[True],
) -> tuple[ArrayT, Aux]: ...


def cross_entropy(
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
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
) -> ArrayT | tuple[ArrayT, Aux]:
    """Softmax cross-entropy against label-smoothed targets.

    For each position n with smoothed target distribution q (see ``convention``) and
    class weights w (all 1 by default),

        loss_n = -sum_c w_c q_c log softmax(x)_c,

    reduced over positions by ``reduction``. With ``smoothing=0`` this is the plain
    cross-entropy, equal to ``torch.nn.functional.cross_entropy``; with the uniform
    convention it equals ``cross_entropy(..., label_smoothing=smoothing)`` including
    ``weight``, ``ignore_index`` and ``reduction``. Integer targets are never expanded
    into a dense one-hot array. PyTorch tensors and JAX arrays are differentiable with
    respect to ``logits``, probability ``target`` and ``smoothing``.

    {shared}

    Returns
    -------
    loss : array
        A 0-d array for ``"mean"`` and ``"sum"`` (a NumPy scalar on NumPy), one loss per
        position for ``"none"``; the library, device and dtype of ``logits``.
    {raises}
    {notes}
    {references}
    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> x, y = np.arange(12.0).reshape(4, 3), np.array([0, 2, 1, 2])
    >>> float(ls_xp.cross_entropy(x, y, 0.1))  # the notebook's value
    1.1826059644443803
    >>> ls_xp.cross_entropy(x, y, 0.1, reduction="none").round(4)
    array([2.3076, 0.5076, 1.4076, 0.5076])
    >>> float(ls_xp.cross_entropy(x, y, 0.1, convention="others")) > float(ls_xp.cross_entropy(x, y, 0.1))
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
        check_values=check_values,
        z_loss=z_loss,
        softcap=softcap,
        shift=shift,
        return_aux=return_aux,
    )
    return _loss(logits, target, smoothing, weight, where, opts, kl=False)


@overload
def kl_divergence(
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
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[False] = False,
) -> ArrayT: ...


@overload
def kl_divergence(
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
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: Literal[True],
) -> tuple[ArrayT, Aux]: ...


def kl_divergence(
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
    check_values: bool | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
) -> ArrayT | tuple[ArrayT, Aux]:
    """KL(q || p) between the smoothed targets and the predicted distribution.

        loss_n = sum_c w_c q_c (log q_c - log p_c) = cross_entropy_n - (weighted) H(q),

    with 0 log 0 = 0. It differs from :func:`cross_entropy` by the entropy of q, which
    does not depend on the logits: both have the same gradient (use
    :func:`cross_entropy_grad`), and the KL form is 0 at a perfect prediction. This is the
    loss of the Annotated Transformer (``nn.KLDivLoss`` on smoothed targets); with
    ``reduction="sum"`` it matches ``KLDivLoss(reduction="sum")``, and ``"mean"`` divides
    like :func:`cross_entropy` (PyTorch's ``"batchmean"`` for 2-D inputs without ignored
    positions), not by the number of elements.

    {shared}

    Returns
    -------
    loss : array
        As :func:`cross_entropy` returns it.
    {raises}
    {notes}
    {references}
    Examples
    --------
    >>> import numpy as np, ls_xp
    >>> q = ls_xp.smooth_labels(np.array([1]), 3, 0.3)  # the perfect prediction
    >>> abs(float(ls_xp.kl_divergence(np.log(q), np.array([1]), 0.3, log_probs=True))) < 1e-15
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
        check_values=check_values,
        z_loss=z_loss,
        softcap=softcap,
        shift=shift,
        return_aux=return_aux,
    )
    return _loss(logits, target, smoothing, weight, where, opts, kl=True)


for _f in (cross_entropy, kl_divergence):
    _f.__doc__ = _docstrings.public_doc(_f.__doc__ or "")


# the other public functions, so that this module holds every one of them
from ls_xp._api_grad import cross_entropy_grad, loss_and_grad  # noqa: E402
from ls_xp._api_linear import linear_cross_entropy, linear_loss_and_grad  # noqa: E402
