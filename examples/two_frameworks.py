"""The same model trained in NumPy (``ls_xp.loss_and_grad``) and in PyTorch (autograd
through ``ls_xp.cross_entropy``) from the same start: the losses agree step by step.

    python examples/two_frameworks.py       # a few seconds on a 2-core CPU
"""

from __future__ import annotations

import numpy as np
import torch

import ls_xp


def main(steps: int = 100) -> list[tuple[float, float]]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 512)
    inputs = rng.normal(size=(10, 16))[labels] * 2 + rng.normal(size=(512, 16))
    w_np = np.zeros((16, 10))
    w_t = torch.zeros(16, 10, dtype=torch.float64, requires_grad=True)
    x_t, y_t = torch.from_numpy(inputs), torch.from_numpy(labels)
    pairs = []
    for i in range(steps):
        loss_np, grad = ls_xp.loss_and_grad(inputs @ w_np, labels, 0.1)
        w_np -= 0.5 * inputs.T @ grad
        loss_t = ls_xp.cross_entropy(x_t @ w_t, y_t, 0.1)
        loss_t.backward()
        with torch.no_grad():
            w_t -= 0.5 * w_t.grad
            w_t.grad = None
        pairs.append((float(loss_np), loss_t.item()))
        if i % 25 == 0 or i == steps - 1:
            print(f"step {i:4d}  numpy {pairs[-1][0]:.10f}  torch {pairs[-1][1]:.10f}")
    return pairs


if __name__ == "__main__":
    main()
