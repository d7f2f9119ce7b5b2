"""The ``nn.Module`` classes: ``CrossEntropyLoss`` (a drop-in ``nn.CrossEntropyLoss``),
``LabelSmoothingCrossEntropy`` (ls_xp's argument order) and ``LinearCrossEntropyLoss``
(the fused head + loss).

Each checks its arguments at construction and keeps them as one :class:`Options`, built
again only when an attribute it was built from is assigned; a call then goes straight to
the adapter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ls_xp import _validate
from ls_xp._validate import Options
from ls_xp.torch._adapter import ADAPTER

Tensor = torch.Tensor


class _Options:
    """The mixin that keeps a module's options: ``_make_options`` builds them from the
    attributes named in ``_OPTION_ATTRS``; assigning one of those drops them."""

    _OPTION_ATTRS: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self._OPTION_ATTRS:
            self.__dict__.pop("_ls_xp_options", None)

    def _options(self) -> Any:
        opts = self.__dict__.get("_ls_xp_options")
        if opts is None:
            opts = self.__dict__["_ls_xp_options"] = self._make_options()
        return opts

    def _make_options(self) -> Any:  # pragma: no cover (every module defines it)
        raise NotImplementedError


_LLM_DEFAULTS: dict[str, Any] = {"z_loss": 0.0, "softcap": None, "shift": 0, "return_aux": False}


def _llm(module: Any) -> dict[str, Any]:
    """The language-model keywords of a module (z_loss, softcap, shift, return_aux)."""
    return {k: getattr(module, k, d) for k, d in _LLM_DEFAULTS.items()}


class CrossEntropyLoss(_Options, torch.nn.CrossEntropyLoss):
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

    >>> import torch
    >>> from ls_xp.torch import CrossEntropyLoss
    >>> crit = CrossEntropyLoss(label_smoothing=0.1)
    >>> crit(torch.arange(12.0).reshape(4, 3), torch.tensor([0, 2, 1, 2]))
    tensor(1.1826)
    """

    _OPTION_ATTRS = frozenset({"reduction", "ignore_index", "label_smoothing", "convention", "chunk_size"})

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        convention: str = "uniform",
        chunk_size: int | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        shift: int = 0,
        return_aux: bool = False,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.convention = convention
        self.chunk_size = chunk_size
        self.z_loss, self.softcap, self.shift, self.return_aux = z_loss, softcap, shift, return_aux
        self._options()  # checked now

    def _make_options(self) -> tuple[Options, Options]:
        """The options for batched inputs (classes at dim 1) and for an unbatched one."""
        _validate.check_smoothing(None, self.label_smoothing)
        opts = _validate.options(
            reduction=self.reduction, ignore_index=self.ignore_index, axis=1,
            convention=self.convention, chunk_size=self.chunk_size, **_llm(self),
        )  # fmt: skip
        return opts, replace(opts, axis=0)

    def forward(self, input: Tensor, target: Tensor, where: Tensor | None = None) -> Tensor:
        opts = self._options()[input.ndim == 1]
        return ADAPTER.loss(input, target, self.label_smoothing, self.weight, where, opts, kl=False)

    def extra_repr(self) -> str:
        extras = []
        if self.convention != "uniform":
            extras.append(f"convention={self.convention!r}")
        if self.chunk_size is not None:
            extras.append(f"chunk_size={self.chunk_size}")
        extras += [f"{k}={v!r}" for k, v in _llm(self).items() if v != _LLM_DEFAULTS[k]]
        return ", ".join(extras)


class LabelSmoothingCrossEntropy(_Options, torch.nn.Module):
    """Label-smoothed cross-entropy as an ``nn.Module`` with ls_xp's own argument order:
    ``ls_xp.cross_entropy`` with the keywords fixed at construction (the class axis last
    by default, like timm's and the notebook's modules). For a drop-in replacement of
    ``nn.CrossEntropyLoss`` use :class:`CrossEntropyLoss`.

    ``forward(input, target, where=None)``. ``weight`` is registered as a buffer (it moves
    with ``.to(device)``). ``kl=True`` gives the KL form (:func:`ls_xp.kl_divergence`).
    ``label_smoothing`` is accepted as PyTorch's name for ``smoothing``. Every argument is
    checked at construction.

    >>> import torch
    >>> from ls_xp.torch import LabelSmoothingCrossEntropy
    >>> crit = LabelSmoothingCrossEntropy(0.1)
    >>> crit(torch.arange(12.0).reshape(4, 3), torch.tensor([0, 2, 1, 2]))
    tensor(1.1826)
    """

    weight: Tensor | None
    _OPTION_ATTRS = frozenset(
        {"reduction", "ignore_index", "axis", "convention", "log_probs", "chunk_size", "smoothing"}
    )

    def __init__(
        self,
        smoothing: float = 0.1,
        *,
        label_smoothing: float | None = None,
        reduction: str = "mean",
        weight: Tensor | None = None,
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
        _validate.check_smoothing(None, smoothing)
        opts = _validate.options(
            reduction=reduction, ignore_index=ignore_index, axis=axis, convention=convention,
            log_probs=log_probs, chunk_size=chunk_size,
        )  # fmt: skip
        self.smoothing = float(smoothing)
        self.reduction = opts.reduction
        self.ignore_index = opts.ignore_index
        self.axis = opts.axis
        self.convention = opts.convention
        self.log_probs = opts.log_probs
        self.kl = _validate.as_bool(kl, "kl")
        self.chunk_size = opts.chunk_size
        self.register_buffer("weight", weight)
        self.__dict__["_ls_xp_options"] = opts

    def _make_options(self) -> Options:
        _validate.check_smoothing(None, self.smoothing)
        return _validate.options(
            reduction=self.reduction, ignore_index=self.ignore_index, axis=self.axis,
            convention=self.convention, log_probs=self.log_probs, chunk_size=self.chunk_size,
        )  # fmt: skip

    def forward(self, input: Tensor, target: Tensor, where: Tensor | None = None) -> Tensor:
        return ADAPTER.loss(input, target, self.smoothing, self.weight, where, self._options(), kl=self.kl)

    def extra_repr(self) -> str:
        return (
            f"smoothing={self.smoothing}, reduction={self.reduction!r}, convention={self.convention!r}, "
            f"ignore_index={self.ignore_index}, axis={self.axis}"
        )


class LinearCrossEntropyLoss(_Options, torch.nn.Module):
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

    >>> import torch
    >>> from ls_xp.torch import CrossEntropyLoss, LinearCrossEntropyLoss
    >>> head = torch.nn.Linear(4, 10)
    >>> crit = LinearCrossEntropyLoss(head, label_smoothing=0.1)
    >>> hidden, y = torch.randn(6, 4), torch.tensor([1, 2, 3, 4, 5, 6])
    >>> loss = crit(hidden, y)
    >>> bool(torch.allclose(loss, CrossEntropyLoss(label_smoothing=0.1)(head(hidden), y)))
    True
    """

    weight: Tensor | None
    _OPTION_ATTRS = frozenset({"reduction", "ignore_index", "label_smoothing", "convention", "chunk_size"})

    def __init__(
        self,
        head: torch.nn.Linear | Tensor | None = None,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        convention: str = "uniform",
        chunk_size: int | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        shift: int = 0,
        return_aux: bool = False,
    ) -> None:
        super().__init__()
        if head is not None and not isinstance(head, (torch.nn.Linear, torch.Tensor)):
            raise TypeError(
                f"head must be an nn.Linear, a (V, D) weight tensor or None, got {type(head).__name__}"
            )
        if isinstance(head, torch.Tensor) and head.ndim != 2:
            raise ValueError(f"head must be a (V, D) weight tensor, got shape {tuple(head.shape)}")
        _validate.check_smoothing(None, label_smoothing)
        opts = _validate.options(
            reduction=reduction, ignore_index=ignore_index, convention=convention, chunk_size=chunk_size,
            z_loss=z_loss, softcap=softcap, shift=shift, return_aux=return_aux,
        )  # fmt: skip
        self._head = (head,)  # a reference, not a submodule: the model owns the parameters
        self.ignore_index = opts.ignore_index
        self.reduction = opts.reduction
        self.label_smoothing = float(label_smoothing)
        self.convention = opts.convention
        self.chunk_size = opts.chunk_size
        self.z_loss, self.softcap, self.shift, self.return_aux = z_loss, softcap, shift, return_aux
        self.register_buffer("weight", weight)
        self.__dict__["_ls_xp_options"] = opts

    def _make_options(self) -> Options:
        _validate.check_smoothing(None, self.label_smoothing)
        return _validate.options(
            reduction=self.reduction, ignore_index=self.ignore_index, convention=self.convention,
            chunk_size=self.chunk_size, **_llm(self),
        )  # fmt: skip

    @property
    def head(self) -> torch.nn.Linear | Tensor | None:
        return self._head[0]

    def forward(
        self, hidden: Tensor, target: Tensor, classifier: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
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
        return ADAPTER.linear_loss(
            hidden, classifier, target, self.label_smoothing, bias, self.weight, self._options()
        )

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
        extras += [f"{k}={v!r}" for k, v in _llm(self).items() if v != _LLM_DEFAULTS[k]]
        return ", ".join(extras)
