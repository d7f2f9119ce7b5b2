"""Train a small MLP on a synthetic 10-class problem with ls_xp's drop-in loss.

    python examples/train_torch.py          # about 3 s on a 2-core CPU

Swap ``ls_xp.torch.CrossEntropyLoss`` for ``torch.nn.CrossEntropyLoss`` and nothing else
changes; ``torch.compile(model)`` works too (the loss is one opaque operator).
"""

from __future__ import annotations

import torch

from ls_xp.torch import CrossEntropyLoss


def main(steps: int = 200) -> list[float]:
    torch.manual_seed(0)
    centers = torch.randn(10, 32) * 2
    labels = torch.randint(0, 10, (4096,))
    inputs = centers[labels] + torch.randn(4096, 32)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, 4096, (256,))
        loss = loss_fn(model(inputs[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return losses


if __name__ == "__main__":
    main()
