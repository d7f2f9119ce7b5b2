"""The shared sections of the public docstrings (NumPy style), written once and filled
into each function's docstring by :func:`public_doc`."""

from __future__ import annotations

SHARED_DOC = """
    Parameters
    ----------
    logits : array
        Unnormalised scores, real floating dtype, classes along ``axis``. float16 and
        bfloat16 are computed in float32 and the result is returned in the input dtype;
        float32 and float64 are computed in their own precision.
    target : array
        Either integer class indices with the shape of ``logits`` without the class axis,
        or class probabilities (soft / mixup / distillation targets) with the shape of
        ``logits``. As in PyTorch, the shape decides which.
    smoothing : float or 0-d array
        The label-smoothing factor eps in [0, 1]: a Python or NumPy number, or a 0-d
        array of the logits' library, also traced (``jax.jit``) or requiring grad
        (PyTorch); the loss is then differentiable with respect to it.
    reduction : {"mean", "sum", "none"}
        PyTorch's rules. ``"none"``: one loss per position (0 at ignored positions).
        ``"sum"``: their sum. ``"mean"``: for class indices, the sum divided by
        ``sum_n w[y_n]`` over the non-ignored positions (their count without ``weight``);
        for probabilities, divided by the number of positions (weights are *not* in the
        denominator). If that denominator is 0 (every position ignored, or an empty
        batch) the mean is NaN and the gradient is zero, as in PyTorch.
    weight : array, optional
        Per-class weights of shape (K,), finite and non-negative. As in PyTorch the
        weight of class c multiplies every term of class c, so with smoothing the
        smoothing mass is weighted too (``loss_n = -sum_c w_c q_c log p_c``).
    ignore_index : int
        Positions whose class index equals it contribute 0 to the loss and the gradient
        and are left out of the ``"mean"`` denominator. Must be negative with probability
        targets (PyTorch raises there too).
    axis : int
        The class axis. ``-1`` (default) for (..., K); ``axis=1`` reproduces PyTorch's
        (N, C, d1, ...) layout.
    convention : {"uniform", "others"}
        ``"uniform"`` (PyTorch, timm, optax, Keras, Szegedy et al. 2016):
        ``q = (1 - eps) onehot(y) + eps / K``; probabilities ``t`` become
        ``(1 - eps) t + eps / K``.
        ``"others"`` (fairseq, the source notebook's formula): ``1 - eps`` on the true class and
        ``eps / (K - 1)`` on each other class; probabilities become
        ``(1 - eps) t + eps (1 - t) / (K - 1)``, which reduces to that for one-hot ``t``.
        eps_uniform = eps_others * K / (K - 1) maps one onto the other.
    where : array of bool, optional
        Broadcastable to ``logits``; True marks an allowed class (optax's name). Masked
        classes get no target mass, leave the softmax normalisation, add nothing to the
        loss and get a zero gradient. K in the smoothing mass becomes the row's number of
        allowed classes. A class index pointing at a masked class is an error (NaN when
        values cannot be checked, e.g. under ``jax.jit``).
    log_probs : bool
        If True, ``logits`` already hold log-probabilities (e.g. from a log-softmax, or
        the log of a probability table) and are used as given: the loss is
        ``-sum_c w_c q_c logits_c`` and the gradient is taken with respect to these
        log-probabilities, as in ``torch.nn.functional.nll_loss`` and ``KLDivLoss``.
    chunk_size : int, optional
        Rows per block. The loss and gradient are evaluated over blocks of rows so that
        temporaries stay small. The default: on the CPU, cache-sized blocks of about
        2**19 elements (7 * 2**20 for PyTorch) for arrays that can be filled in place
        (NumPy, PyTorch, array-api-strict); on an accelerator, one block up to 2**28
        elements; one block for lazy or immutable arrays (JAX, Dask). Results do not
        depend on it beyond the last bit of the summed reductions.
    workers : int, optional
        Threads that evaluate row blocks side by side on the CPU, SciPy's ``workers``: a
        negative value counts back from the CPUs this process may use (-1: all of them).
        ``None`` (default): every available CPU for libraries that run each operation on
        one thread (NumPy, array-api-strict); 1 otherwise. It has no effect (it is only
        checked) where there are no blocks to share out: PyTorch, which spreads each
        operation over its own intra-op threads (``torch.set_num_threads``), JAX and Dask
        (one block), the accelerator plan and inputs of a single block. The results are
        the same bit for bit whatever the value.
    check_values : bool, optional
        Whether array *values* are read to raise on bad ones (class indices out of range,
        negative weights, ``where`` rows without an allowed class, smoothing out of range).
        ``None`` (default): on host arrays yes; on accelerators (CUDA, MPS, XPU, CuPy, JAX
        GPU) no, because reading a value back is a host synchronisation that stalls the
        device queue and breaks CUDA-graph capture; there the affected positions give NaN,
        as under ``jax.jit``. ``True`` reads them anyway (one synchronisation per check),
        ``False`` never does. Values that cannot be read (traced, Dask) always give NaN.
"""


NOTES_DOC = """
    Notes
    -----
    Non-finite logits: NaN anywhere in a row's allowed logits, or a ``+inf`` logit, makes
    that row NaN. A ``-inf`` logit is harmless where its class carries no target mass
    (masked by ``where``, weight 0, probability 0, or eps = 0 and not the target): the
    term counts as 0 (0 * log 0 = 0), where PyTorch gives NaN. If it does carry mass, the
    loss is ``+inf``. Ignored positions never contribute, whatever their logits.

    Bad values (class indices out of range, negative weights, ``where`` rows with too
    few allowed classes) raise ``ValueError`` on eager arrays. Where the values cannot
    be read (under ``jax.jit`` tracing, Dask) the affected positions give NaN instead.
"""


RAISES_DOC = """
    Raises
    ------
    TypeError
        A parameter of the wrong kind (non-floating logits, a float ``ignore_index``, a
        string flag, an array of another library than the logits'), naming it.
    ValueError
        A bad value (class index out of range, smoothing outside [0, 1], a negative
        weight, a shape that matches neither target form, an array on another device),
        naming it and the value. Not raised where values are not read (see
        ``check_values``): the affected positions are NaN instead.
"""


REFERENCES_DOC = """
    References
    ----------
    C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens, Z. Wojna, "Rethinking the Inception
    Architecture for Computer Vision", CVPR 2016, section 7 (label smoothing).
    P. Blanchard, D. J. Higham, N. J. Higham, "Accurately computing the log-sum-exp and
    softmax functions", IMA J. Numer. Anal. 41(4), 2021 (the log1p form used here).
"""


LINEAR_DOC = """
    Parameters
    ----------
    hidden : array
        Hidden states of shape (..., D), real floating dtype: the input of the
        classifier layer (one row per position; any leading batch dimensions).
    classifier : array
        The classifier's weight, shape (V, D): ``torch.nn.Linear.weight``'s layout, and
        that of an embedding matrix tied to the output. Same library, device and dtype
        as ``hidden``.
    target : array
        Integer class indices of shape ``hidden.shape[:-1]``. (Probability targets
        would need an N x V array, which this function exists to avoid: use
        :func:`cross_entropy` on the logits for them.)
    smoothing : float or 0-d array
        The label-smoothing factor eps in [0, 1], as in :func:`cross_entropy` (also traced
        or requiring grad).
    bias : array, optional
        The classifier's bias, shape (V,).
    reduction, weight, ignore_index, convention, check_values
        As in :func:`cross_entropy`: PyTorch's reductions, per-class weights (V,), the
        ignored class index, ``"uniform"`` or ``"others"`` smoothing, reading values to
        raise on bad ones.
    chunk_size : int, optional
        Rows per block. The default takes blocks of about 2**22 logits (16 MiB in
        float32): 128 rows at V = 32768. A lazy array (Dask) is one block, streamed in
        its own row chunks. Results do not depend on it beyond the order of additions.
"""


def public_doc(doc: str) -> str:
    """Fill the shared sections into a public docstring (NumPy style)."""
    for key, text in (
        ("{shared}", SHARED_DOC),
        ("{raises}", RAISES_DOC),
        ("{notes}", NOTES_DOC),
        ("{references}", REFERENCES_DOC),
        ("{linear}", LINEAR_DOC),
    ):
        doc = doc.replace(f"    {key}\n", text)
    return doc
