"""Softmax regression in plain NumPy with ``ls_xp.loss_and_grad``: the loss and its
analytic gradient in one pass, no autodiff framework.

The data are scikit-learn's handwritten digits (1797 images of 8 x 8 pixels) when
scikit-learn is installed, otherwise ten synthetic Gaussian clusters.

    python examples/train_numpy.py          # under a second on a 2-core CPU
"""

from __future__ import annotations

import numpy as np

import ls_xp


def load() -> tuple[np.ndarray, np.ndarray, str]:
    """(inputs, labels, name): the digits, standardised, or a synthetic stand-in."""
    try:
        from sklearn.datasets import load_digits  # pyright: ignore[reportMissingImports]
    except ImportError:
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(10, 32)) * 2
        labels = rng.integers(0, 10, 4096)
        return centers[labels] + rng.normal(size=(4096, 32)), labels, "synthetic clusters"
    digits = load_digits()
    x = digits.data.astype(np.float64)
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8), digits.target, "scikit-learn digits"


def main(steps: int = 200) -> list[float]:
    inputs, labels, name = load()
    print(f"data: {name}, {inputs.shape[0]} examples, {inputs.shape[1]} features")
    rng = np.random.default_rng(0)
    w, b = np.zeros((inputs.shape[1], 10)), np.zeros(10)
    losses = []
    for i in range(steps):
        idx = rng.integers(0, inputs.shape[0], 256)
        x = inputs[idx]
        loss, grad = ls_xp.loss_and_grad(x @ w + b, labels[idx], 0.1)  # grad = d loss / d logits
        w -= 0.1 * x.T @ grad
        b -= 0.1 * grad.sum(axis=0)
        losses.append(float(loss))
        if i % 50 == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {float(loss):.4f}")
    # the same step without the logits: ls_xp.linear_loss_and_grad(x, w.T, y, 0.1, bias=b)
    # returns the loss and the gradients of x, w.T and b directly
    return losses


if __name__ == "__main__":
    main()
