"""The shared sections of the public docstrings (NumPy style), written once and filled
into each function's docstring by :func:`public_doc`.

The parameter entries are short: the full rules of each shared parameter are stated once,
in the user guide's parameters page (``docs/parameters.md``). Each entry ends with
``See "NAME" in the parameters guide.``, which reads as plain text in ``help()`` and which
the documentation build turns into a link to that parameter's section."""

from __future__ import annotations

# the language-model keywords, shared by the loss and the fused linear functions
LLM_DOC = """
    z_loss : float
        Adds ``z_loss * lse**2`` per counted position (PaLM's z-loss, lse of the
        softcapped logits); under ``"mean"`` divided by the number of counted positions,
        also with class weights (Liger-Kernel's definition). Default 0. See "z_loss" in
        the parameters guide.
    softcap : float, optional
        Logits become ``softcap * tanh(logits / softcap)`` before everything else (Gemma
        2); an error with ``log_probs=True``. See "softcap" in the parameters guide.
    shift : int
        With the classes last, position t is scored against target t + shift along the
        axis before them, without copying (``shift=1``: the causal-LM loss); ``"none"``
        returns the ``T - shift`` scored positions. See "shift" in the parameters guide.
    return_aux : bool
        Also return an :class:`ls_xp.Aux` of the same pass (lse, z-loss term, accuracy,
        count; no gradient): ``(loss, aux)``, ``((loss, aux), grad)`` from the gradient
        functions. See "return_aux" in the parameters guide.
"""

SHARED_DOC = """
    Parameters
    ----------
    logits : array
        Unnormalised scores of a real floating dtype, classes along ``axis``; they decide
        the library and device of the result. See "logits" in the parameters guide.
    target : array
        Integer class indices (the shape of ``logits`` without the class axis) or class
        probabilities (the shape of ``logits``). See "target" in the parameters guide.
    smoothing : float or 0-d array
        The label-smoothing factor eps in [0, 1]; may be traced or require grad. See
        "smoothing" in the parameters guide.
    reduction : {"mean", "sum", "none"}
        PyTorch's rules; a ``"mean"`` over no position is NaN. See "reduction" in the
        parameters guide.
    weight : array, optional
        Per-class weights (K,), finite and non-negative, multiplying every term of their
        class. See "weight" in the parameters guide.
    ignore_index : int
        Class index whose positions contribute nothing (default -100). See
        "ignore_index" in the parameters guide.
    axis : int
        The class axis: -1 for (..., K), 1 for PyTorch's (N, C, d1, ...). See "axis" in
        the parameters guide.
    convention : {"uniform", "others"}
        ``"uniform"``: eps / K on every class; ``"others"``: eps / (K - 1) on each other
        class. See "convention" in the parameters guide.
    where : array of bool, optional
        Broadcastable to ``logits``; True marks an allowed class (optax's name). See
        "where" in the parameters guide.
    log_probs : bool
        If True, ``logits`` are log-probabilities, used as given. See "log_probs" in the
        parameters guide.
    chunk_size : int, optional
        Rows per block; the default depends on the library and device. Results do not
        depend on it beyond the last bit. See "chunk_size" in the parameters guide.
    workers : int, optional
        Threads for row blocks on the CPU (SciPy's convention); the results are the same
        bit for bit. See "workers" in the parameters guide.
    check_values : bool, optional
        Whether values are read back to raise on bad ones; by default yes on host arrays,
        no on accelerators (NaN there). See "check_values" in the parameters guide.
    {llm}
"""


NOTES_DOC = """
    Notes
    -----
    A NaN or ``+inf`` logit makes its row NaN; a ``-inf`` logit is harmless where its
    class carries no target mass (0 log 0 = 0) and gives ``+inf`` where it does. Ignored
    positions never contribute. See "non-finite" in the parameters guide.
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
        naming it and the value. Where values are not read (see ``check_values``) the
        affected positions are NaN instead. See "bad-input" in the parameters guide.
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
        that of an embedding matrix tied to the output. Same library and device as
        ``hidden``; another float dtype is promoted with it, as ``hidden @ classifier.T``
        promotes them.
    target : array
        Integer class indices of shape ``hidden.shape[:-1]``. (Probability targets
        would need an N x V array, which this function exists to avoid: use
        :func:`cross_entropy` on the logits for them.)
    smoothing : float or 0-d array
        The label-smoothing factor eps in [0, 1]; may be traced or require grad. See
        "smoothing" in the parameters guide.
    bias : array, optional
        The classifier's bias, shape (V,).
    reduction, weight, ignore_index, convention, check_values
        As in :func:`cross_entropy`, with per-class weights of shape (V,). See
        "reduction" in the parameters guide.
    chunk_size : int, optional
        Rows per block; by default about 2**24 logits a block on the CPU, 2**22 in JAX's
        scan and 2**26 on an accelerator. See "chunk_size" in the parameters guide.
    {llm}
    accum_dtype : dtype, optional
        The dtype in which the classifier's and bias's gradients are summed across
        blocks; default float32 for float16/bfloat16 parameters (PyTorch's and
        Liger-Kernel's name), their own dtype otherwise. Each gradient is returned in its
        input's dtype.
"""


SHARED_DOC = SHARED_DOC.replace("    {llm}\n", LLM_DOC)
LINEAR_DOC = LINEAR_DOC.replace("    {llm}\n", LLM_DOC)


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
