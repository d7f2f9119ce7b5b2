"""Seeded random problems: the parity sweep of ``ls-xp check`` and of the test suite.

Each problem is plain NumPy float64 data in PyTorch's layout (class axis 1) with a
random choice of every keyword: soft or index targets, extra spatial dimensions, class
weights, ignored positions, reduction, smoothing from 0 to 1, convention, a class mask,
log-probability input and the KL form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Problem:
    logits: np.ndarray  # (N, C) or (N, C, d1, ...): class axis 1
    target: np.ndarray  # int64 indices (N, d1, ...) or float64 probabilities like logits
    smoothing: float
    reduction: str = "mean"
    weight: np.ndarray | None = None
    ignore_index: int = -100
    kwargs: dict[str, Any] = field(default_factory=dict)  # convention, where, log_probs, kl

    @property
    def soft(self) -> bool:
        return self.target.shape == self.logits.shape

    @property
    def torch_comparable(self) -> bool:
        """PyTorch's native loss computes exactly this problem."""
        return not self.kwargs


def random_problem(seed: int, *, soft: bool | None = None, extras: bool = False) -> Problem:
    """A random problem; ``extras`` also draws convention, ``where``, log-probs and KL."""
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 9))
    n = int(rng.integers(1, 7))
    extra = () if rng.random() < 0.5 else tuple(int(d) for d in rng.integers(1, 4, size=rng.integers(1, 3)))
    shape = (n, num_classes, *extra)
    logits = rng.normal(scale=rng.choice([0.5, 3.0, 20.0]), size=shape)
    soft = bool(rng.random() < 0.35) if soft is None else soft
    smoothing = float(rng.choice([0.0, 1e-3, 0.1, 0.3, 0.75, 1.0]))
    reduction = str(rng.choice(["mean", "sum", "none"]))
    weight = rng.uniform(0.2, 3.0, size=num_classes) if rng.random() < 0.5 else None
    kwargs: dict[str, Any] = {}
    if extras:
        if rng.random() < 0.4:
            kwargs["convention"] = "others"
        if rng.random() < 0.3:
            kwargs["kl"] = True
        if rng.random() < 0.25:
            kwargs["log_probs"] = True
            m = logits.max(axis=1, keepdims=True)
            logits = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    if soft:
        probs = np.moveaxis(rng.dirichlet(np.ones(num_classes), size=(n, *extra)), -1, 1)
        return Problem(logits, probs, smoothing, reduction, weight, kwargs=kwargs)
    target = rng.integers(0, num_classes, size=(n, *extra))
    if extras and rng.random() < 0.3 and num_classes > 2:
        allowed = rng.random(shape) < 0.8
        np.put_along_axis(allowed, np.expand_dims(target, 1), True, axis=1)
        # keep two allowed classes per position for the "others" convention
        np.put_along_axis(allowed, np.expand_dims((target + 1) % num_classes, 1), True, axis=1)
        kwargs["where"] = allowed
    ignore_index = int(rng.choice([-100, 0, num_classes - 1, -1]))
    if ignore_index < 0:
        target = np.where(rng.random(target.shape) < 0.25, ignore_index, target)
    return Problem(logits, target, smoothing, reduction, weight, ignore_index, kwargs)


def evaluate(problem: Problem, xp: Any, dtype: Any, device: Any = None) -> tuple[Any, Any]:
    """(loss, gradient) of ``problem`` with ls_xp on namespace ``xp`` in ``dtype``."""
    import ls_xp

    p = problem
    kw = dict(p.kwargs)
    kl = kw.pop("kl", False)
    if "where" in kw:
        kw["where"] = xp.asarray(kw["where"], device=device)
    import array_api_extra as xpx

    x = xp.asarray(p.logits, dtype=dtype, device=device)
    index = xpx.default_dtype(xp, "integral", device=device)
    t = xp.asarray(p.target, dtype=dtype if p.soft else index, device=device)
    w = None if p.weight is None else xp.asarray(p.weight, dtype=dtype, device=device)
    common: dict[str, Any] = dict(reduction=p.reduction, weight=w, ignore_index=p.ignore_index, axis=1, **kw)
    loss = (ls_xp.kl_divergence if kl else ls_xp.cross_entropy)(x, t, p.smoothing, **common)
    grad = ls_xp.cross_entropy_grad(x, t, p.smoothing, **common)
    return loss, grad


def rounded(problem: Problem, round_array: Callable[[np.ndarray], np.ndarray]) -> Problem:
    """The problem with its floating inputs passed through ``round_array`` (e.g. rounded
    to a lower precision and held in float64)."""

    def r(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else round_array(a)

    target = r(problem.target) if problem.soft else problem.target
    return Problem(
        r(problem.logits),  # type: ignore[arg-type]
        target,  # type: ignore[arg-type]
        problem.smoothing,
        problem.reduction,
        r(problem.weight),
        problem.ignore_index,
        dict(problem.kwargs),
    )
