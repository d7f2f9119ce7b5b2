"""Under ``torch.autocast`` the loss of half-precision logits is native's: float32, and its
value (not a float32 result rounded through bfloat16); the gradient keeps the logits' dtype."""

from __future__ import annotations

import pytest

import ls_xp

torch = pytest.importorskip("torch", reason="torch is not installed")
F = torch.nn.functional


def _autocast_logits(dtype, seed=0, n=64, d=32, k=1000):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))  # large logits: bf16 rounding shows
    x, y = torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)
    return lin, x, y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_autocast_loss_equals_native_value(dtype, smoothing, reduction):
    lin, x, y = _autocast_logits(dtype)
    with torch.autocast("cpu", dtype=dtype):
        logits = lin(x)
        ours = ls_xp.cross_entropy(logits, y, smoothing, reduction=reduction)
        native = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction=reduction)
    assert logits.dtype == dtype
    assert ours.dtype == native.dtype == torch.float32
    torch.testing.assert_close(ours, native, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_autocast_backward_equals_native(dtype, smoothing):
    lin, x, y = _autocast_logits(dtype)
    grads = {}
    for name, fn in (("ours", ls_xp.cross_entropy), ("native", None)):
        lin.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            logits = lin(x)
            logits.retain_grad()
            if fn is None:
                loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
            else:
                loss = fn(logits, y, smoothing)
        loss.backward()
        assert logits.grad.dtype == dtype  # the gradient keeps the logits' dtype
        grads[name] = (loss.detach(), logits.grad, lin.weight.grad.clone())
    torch.testing.assert_close(grads["ours"][0], grads["native"][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(grads["ours"][1], grads["native"][1])  # the dtype's tolerance
    torch.testing.assert_close(grads["ours"][2], grads["native"][2], rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("module", ["CrossEntropyLoss", "LabelSmoothingCrossEntropy"])
def test_autocast_modules_equal_native(module):
    import ls_xp.torch as lxt

    lin, x, y = _autocast_logits(torch.bfloat16)
    crit = getattr(lxt, module)(label_smoothing=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        ours, native = crit(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, native, rtol=1e-6, atol=0)


def test_autocast_under_compile_equals_native():
    lin, x, y = _autocast_logits(torch.bfloat16)

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ls_xp.cross_entropy(lin(x), y, 0.1)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = F.cross_entropy(lin(x), y, label_smoothing=0.1)
    torch._dynamo.reset()
    out = torch.compile(step, backend="aot_eager", fullgraph=True)(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, native, rtol=1e-6, atol=0)
    out.backward()
    assert lin.weight.grad is not None and lin.weight.grad.dtype == torch.float32


def test_half_logits_without_autocast_keep_their_dtype():
    x, y = torch.randn(8, 5, dtype=torch.bfloat16), torch.randint(0, 5, (8,))
    assert ls_xp.cross_entropy(x, y, 0.1).dtype == torch.bfloat16
