"""Softmax regression in plain NumPy with ``ls_xp.loss_and_grad``: the loss and its
analytic gradient in one pass, no autodiff framework.

    python examples/train_numpy.py          # under a second on a 2-core CPU
"""

from __future__ import annotations

import numpy as np

import ls_xp


def main(steps: int = 200) -> list[float]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 32)) * 2
    labels = rng.integers(0, 10, 4096)
    inputs = centers[labels] + rng.normal(size=(4096, 32))
    w, b = np.zeros((32, 10)), np.zeros(10)
    losses = []
    for i in range(steps):
        idx = rng.integers(0, 4096, 256)
        x = inputs[idx]
        loss, grad = ls_xp.loss_and_grad(x @ w + b, labels[idx], 0.1)  # grad = d loss / d logits
        w -= 0.1 * x.T @ grad
        b -= 0.1 * grad.sum(axis=0)
        losses.append(float(loss))
        if i % 50 == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {float(loss):.4f}")
    return losses


if __name__ == "__main__":
    main()
