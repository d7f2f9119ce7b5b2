"""Random problems shared by the tests, and PyTorch's answers for them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ls_xp._tools.sweep import Problem, random_problem

__all__ = ["NumpyXB", "Problem", "call", "random_problem", "torch_reference"]


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


class NumpyXB:
    """The NumPy namespace as a minimal ``xb`` for :func:`call`: float inputs as float64,
    and no copy of arrays that already are (read-only inputs stay the caller's)."""

    from array_api_compat import numpy as xp

    device = "cpu"

    def asarray(self, a: Any, dtype: str | None = None) -> Any:
        return np.asarray(a, dtype=np.float64 if dtype else None)
