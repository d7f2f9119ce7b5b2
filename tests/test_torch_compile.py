"""Compilers see the loss's formula (the traced core; the fused linear loss stays one
operator): compiling a model with it emits no warning, and an exported inference program
(inputs without grad) reproduces the eager values."""

from __future__ import annotations

import warnings

import pytest

import ls_xp

torch = pytest.importorskip("torch", reason="torch is not installed")


class _Functional(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 5)

    def forward(self, x, y):
        return ls_xp.cross_entropy(self.lin(x), y, 0.1)


class _Module(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import ls_xp.torch

        self.lin = torch.nn.Linear(8, 5)
        self.crit = ls_xp.torch.CrossEntropyLoss(label_smoothing=0.1)

    def forward(self, x, y):
        return self.crit(self.lin(x), y)


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import ls_xp.torch

        self.lin = torch.nn.Linear(8, 5)
        self.crit = ls_xp.torch.LinearCrossEntropyLoss(self.lin, label_smoothing=0.1)

    def forward(self, x, y):
        return self.crit(x, y)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 8, generator=g), torch.randint(0, 5, (32,), generator=g)


@pytest.mark.parametrize(
    "model",
    [
        _Functional,
        _Module,
        _Linear,
    ],
)
def test_compiling_a_model_with_the_loss_emits_no_warning(model):
    torch.manual_seed(0)
    m = model()
    x, y = _data()
    eager = m(x, y)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(m, backend="aot_eager", fullgraph=True)(x, y)
        out.backward()
    assert [str(w.message)[:200] for w in caught] == []
    torch.testing.assert_close(out, eager)


class _Inference(torch.nn.Module):
    def forward(self, logits, target):
        return ls_xp.cross_entropy(logits, target, 0.1)


@pytest.mark.parametrize("kw", [{}, {"reduction": "none"}, {"ignore_index": 2, "convention": "others"}])
def test_export_of_an_inference_module_reproduces_the_eager_loss(kw):
    class Inference(torch.nn.Module):
        def forward(self, logits, target):
            return ls_xp.cross_entropy(logits, target, 0.1, **kw)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 7, generator=g), torch.randint(0, 7, (16,), generator=g)
    model = Inference()
    program = torch.export.export(model, (x, y))
    # the traced formula (ls_xp.torch._traced), not an opaque operator
    assert not any("ls_xp" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(x, y), model(x, y))
    x2, y2 = torch.randn(16, 7, generator=g), torch.randint(0, 7, (16,), generator=g)
    torch.testing.assert_close(program.module()(x2, y2), model(x2, y2))


def test_compiled_inference_reads_no_value():
    """Under torch.compile without gradients the loss is the operator too: no graph break."""
    _, y = _data()
    explained = torch._dynamo.explain(_Inference())(torch.randn(32, 5), y)
    assert explained.graph_break_count == 0, explained.break_reasons


_FRESH = """
import sys, warnings
import torch, ls_xp
x, y = torch.randn(6, 5, requires_grad=True), torch.tensor([0, 1, 2, 3, 4, 0])
ls_xp.cross_entropy(x, y, 0.1).backward()
print("dynamo imported by an eager call:", "torch._dynamo" in sys.modules)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    f = torch.compile(lambda a, b: ls_xp.cross_entropy(a, b, 0.1), backend="aot_eager", fullgraph=True)
    f(x, y).backward()
print("warnings:", [str(w.message)[:80] for w in caught])
"""


def test_eager_use_does_not_import_dynamo_and_a_later_compile_does_not_warn():
    """In a fresh interpreter: an eager loss and backward leave ``torch._dynamo`` (some
    70 MiB and a second of imports) unimported; a compile afterwards (dynamo imported then)
    traces array-api-compat's cached helpers without a warning."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FRESH], check=False, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "dynamo imported by an eager call: False" in out.stdout
    assert "warnings: []" in out.stdout, out.stdout


def test_the_former_operator_of_the_loss_still_runs():
    """``ls_xp::label_smoothed_ce`` stays registered for programs exported with it: called
    as they call it, its loss and gradient are the eager loss's."""
    import ls_xp.torch  # (registers the operators)

    g = torch.Generator().manual_seed(2)
    x0, y = torch.randn(6, 5, dtype=torch.float64, generator=g), torch.tensor([0, 1, 2, 3, 4, -100])
    x = x0.clone().requires_grad_()
    flat = (0.1, "mean", -100, -1, "uniform", False, False, [True, False, False], 0, -1, False, 0.0, 0.0, 0)
    loss = torch.ops.ls_xp.label_smoothed_ce(x, y, None, None, None, *flat)[0]
    loss.backward()
    want_x = x0.clone().requires_grad_()
    want = ls_xp.cross_entropy(want_x, y, 0.1)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, want_x.grad, rtol=1e-12, atol=1e-12)
