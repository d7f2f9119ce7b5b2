"""The modules check their arguments once, at construction, and reuse them every call; an
attribute assigned later takes effect (and is checked) at the next call."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
F = torch.nn.functional


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)


def test_options_are_built_once(monkeypatch):
    import ls_xp.torch
    from ls_xp import _validate

    crit = ls_xp.torch.CrossEntropyLoss(label_smoothing=0.1)
    calls = []
    real = _validate.options
    monkeypatch.setattr(_validate, "options", lambda **kw: calls.append(kw) or real(**kw))
    x, y = _data()
    for _ in range(3):
        crit(x.requires_grad_(), y).backward()
    assert calls == []


@pytest.mark.parametrize(
    "module", ["CrossEntropyLoss", "LabelSmoothingCrossEntropy", "LinearCrossEntropyLoss"]
)
def test_assigned_attributes_take_effect(module):
    import ls_xp.torch

    x, y = _data()
    head = torch.nn.Linear(5, 5)
    if module == "LinearCrossEntropyLoss":
        crit = ls_xp.torch.LinearCrossEntropyLoss(head, label_smoothing=0.1)
        logits = head(x)
    else:
        crit = getattr(ls_xp.torch, module)(label_smoothing=0.1)
        logits = x
    crit(x, y)
    crit.reduction = "sum"
    if module == "LabelSmoothingCrossEntropy":
        crit.smoothing = 0.3
    else:
        crit.label_smoothing = 0.3
    torch.testing.assert_close(crit(x, y), F.cross_entropy(logits, y, label_smoothing=0.3, reduction="sum"))
    crit.reduction = "avg"
    with pytest.raises(ValueError, match="reduction must be one of"):
        crit(x, y)
