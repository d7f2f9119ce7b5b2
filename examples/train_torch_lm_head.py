"""Train a tiny next-token model whose loss never materialises the logits.

A token embedding, one hidden layer and a vocabulary head tied to the embedding (as in
GPT-2) learn a synthetic language in which each token is followed by one of three
successors. ``ls_xp.torch.LinearCrossEntropyLoss`` takes the head's weight and computes
the label-smoothed loss from the hidden states in row blocks; gradients reach the hidden
states and the (tied) weight.

    python examples/train_torch_lm_head.py          # a few seconds on a 2-core CPU
"""

from __future__ import annotations

import torch

import ls_xp
from ls_xp.torch import LinearCrossEntropyLoss

VOCAB, DIM = 1000, 64


class TinyLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.mix = torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.GELU())

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mix(self.embed(tokens))


def main(steps: int = 200) -> list[float]:
    torch.manual_seed(0)
    successors = torch.randint(0, VOCAB, (VOCAB, 3))  # the synthetic language
    model = TinyLM()
    # the head is the embedding matrix itself (tied weights), shape (VOCAB, DIM)
    loss_fn = LinearCrossEntropyLoss(model.embed.weight, label_smoothing=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for step in range(steps):
        tokens = torch.randint(0, VOCAB, (32, 16))  # 32 sequences of 16 tokens
        nxt = successors[tokens, torch.randint(0, 3, tokens.shape)]
        loss = loss_fn(model.hidden(tokens), nxt)  # no (512, 1000) logits are stored
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    with torch.no_grad():  # the same number as the loss of the materialised logits
        h = model.hidden(tokens)
        unfused = ls_xp.cross_entropy(h @ model.embed.weight.T, nxt, 0.1)
        print(f"fused {loss_fn(h, nxt).item():.6f}  unfused {unfused.item():.6f}")
    return losses


if __name__ == "__main__":
    main()
