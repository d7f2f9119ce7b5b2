"""The public functions: their signatures and documentation, validation at the door,
and the dispatch to the adapter of the logits' library (:mod:`ls_xp._adapters`).

Each function normalises its scalar keywords once into an :class:`ls_xp._validate.Options`
and joins NumPy inputs to the library of the other arrays (:func:`ls_xp._validate.join_library`);
the adapter does the rest. No framework is imported here.
"""

from __future__ import annotations

from typing import Any

from ls_xp import _docstrings
from ls_xp._adapters import GENERIC, Adapter, is_jax_array, is_torch_array
from ls_xp._typing import ArrayT, Convention, Reduction
from ls_xp._validate import Options, join_library, options

Array = Any  # targets, weights and masks: arrays of the logits' library, NumPy or Python values

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "kl_divergence",
    "linear_cross_entropy",
    "linear_loss_and_grad",
    "loss_and_grad",
]


def adapter_for(x: Any) -> Adapter:
    """The adapter of the library of ``x`` (imported the first time it is needed)."""
    if is_torch_array(x):
        from ls_xp.torch._adapter import ADAPTER as TORCH

        return TORCH
    if is_jax_array(x):
        from ls_xp.jax._adapter import ADAPTER as JAX

        return JAX
    return GENERIC


def _loss(logits: Any, target: Any, smoothing: Any, weight: Any, where: Any, opts: Options, kl: bool) -> Any:
    logits = join_library(logits, target, weight, where, smoothing)
    return adapter_for(logits).loss(logits, target, smoothing, weight, where, opts, kl=kl)


def _values(
    logits: Any, target: Any, smoothing: Any, weight: Any, where: Any, opts: Options, want_loss: bool
) -> tuple[Any, Any]:
    """Loss and analytic gradient as plain values (no autodiff graph is recorded)."""
    logits = join_library(logits, target, weight, where, smoothing)
    return adapter_for(logits).values(logits, target, smoothing, weight, where, opts, want_loss=want_loss)


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
) -> tuple[ArrayT, ArrayT]:
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
    )
    loss, grad = _values(logits, target, smoothing, weight, where, opts, want_loss=True)
    return loss, grad


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
) -> ArrayT:
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
    )
    return _loss(logits, target, smoothing, weight, where, opts, kl=False)


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
) -> ArrayT:
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
    )
    _, grad = _values(logits, target, smoothing, weight, where, opts, want_loss=False)
    return grad


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
) -> ArrayT:
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
    )
    return _loss(logits, target, smoothing, weight, where, opts, kl=True)


for _f in (loss_and_grad, cross_entropy, cross_entropy_grad, kl_divergence):
    _f.__doc__ = _docstrings.public_doc(_f.__doc__ or "")


# ------------------------------------------------------------------ fused linear + loss


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
) -> ArrayT:
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
        A parameter of the wrong kind, or arrays of different libraries or dtypes,
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
    )
    h: Any = join_library(hidden, classifier, target, bias, weight, name="hidden")
    return adapter_for(h).linear_loss(h, classifier, target, smoothing, bias, weight, opts)


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
) -> tuple[ArrayT, ArrayT, ArrayT, ArrayT | None]:
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
    )
    h: Any = join_library(hidden, classifier, target, bias, weight, name="hidden")
    res = adapter_for(h).linear_values(h, classifier, target, smoothing, bias, weight, opts)
    out: Any = (res.loss, res.grad_hidden, res.grad_classifier, res.grad_bias)
    return out


for _f in (linear_cross_entropy, linear_loss_and_grad):
    _f.__doc__ = _docstrings.public_doc(_f.__doc__ or "")
