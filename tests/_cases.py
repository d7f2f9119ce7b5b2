"""Random problems shared by the tests, and PyTorch's answers for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Problem:
    logits: np.ndarray  # PyTorch layout: (N, C) or (N, C, d1, ...); class axis 1
    target: np.ndarray  # int64 indices (N, d1, ...) or float64 probabilities like logits
    smoothing: float
    reduction: str = "mean"
    weight: np.ndarray | None = None
    ignore_index: int = -100
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def soft(self) -> bool:
        return self.target.shape == self.logits.shape


def random_problem(seed: int, *, soft: bool | None = None) -> Problem:
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
    if soft:
        target = rng.dirichlet(np.ones(num_classes), size=(n, *extra))
        target = np.moveaxis(target, -1, 1)
        return Problem(logits, target, smoothing, reduction, weight)
    target = rng.integers(0, num_classes, size=(n, *extra))
    ignore_index = int(rng.choice([-100, 0, num_classes - 1, -1]))
    if ignore_index < 0:
        drop = rng.random(target.shape) < 0.25
        target = np.where(drop, ignore_index, target)
    return Problem(logits, target, smoothing, reduction, weight, ignore_index)


def torch_reference(p: Problem, logits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loss and autograd gradient of torch.nn.functional.cross_entropy in float64."""
    import torch

    x = torch.tensor(p.logits if logits is None else logits, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(p.target)
    w = None if p.weight is None else torch.tensor(p.weight, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(
        x, t, weight=w, ignore_index=p.ignore_index, reduction=p.reduction, label_smoothing=p.smoothing
    )
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def call(fn: Any, xb: Any, p: Problem, dtype: str, **extra: Any) -> Any:
    """Run an ls_xp function on backend ``xb`` with the problem in PyTorch layout (axis=1)."""
    target = xb.asarray(p.target, dtype) if p.soft else xb.asarray(p.target)
    weight = None if p.weight is None else xb.asarray(p.weight, dtype)
    return fn(
        xb.asarray(p.logits, dtype), target, p.smoothing, reduction=p.reduction, weight=weight,
        ignore_index=p.ignore_index, axis=1, **{**p.kwargs, **extra},
    )  # fmt: skip
