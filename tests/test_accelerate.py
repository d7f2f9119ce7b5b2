"""Execution that fits accelerators and compilers, proven on this CPU: the accelerator plan
(forced with ``LS_XP_PLAN=accelerator``) reads no value back, PyTorch compiles and exports
the loss as one opaque operator, forward-mode AD and autocast behave like native."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ls_xp
from tests._profiling import aten_events, top_level

torch = pytest.importorskip("torch", reason="torch is not installed")

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")  # any of them: a read


def _profile(fn):
    """(top-level aten ops, host syncs) of one call, after a warm-up (see the README)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = aten_events(prof)
    top = top_level(events)
    return len(top), sum(e.name in SYNC_OPS for e in events)


def _loss_backward(x0, y, **kw):
    def run():
        x = x0.detach().requires_grad_()
        ls_xp.cross_entropy(x, y, 0.1, **kw).backward()

    return run


@pytest.mark.parametrize("shape", [(256, 1000), (2048, 3000)])
@pytest.mark.parametrize("kw", [{}, {"weight": True, "ignore_index": 1}, {"soft": True}])
def test_accelerator_plan_reads_no_value_back(monkeypatch, shape, kw):
    monkeypatch.setenv("LS_XP_PLAN", "accelerator")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(*shape, generator=g)
    y = torch.randint(0, shape[1], (shape[0],), generator=g)
    kw = dict(kw)
    if kw.pop("soft", False):
        y = torch.softmax(torch.randn(*shape, generator=g), dim=1)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(shape[1], generator=g)
    _ops, syncs = _profile(_loss_backward(x0, y, **kw))
    assert syncs == 0
    monkeypatch.setenv("LS_XP_PLAN", "cpu")
    _, cpu_syncs = _profile(_loss_backward(x0, y, **kw))
    assert cpu_syncs > 0  # the CPU plan checks values (and proves the profiler sees syncs)


def test_accelerator_plan_op_count_does_not_grow_with_the_batch(monkeypatch):
    """One block up to 2^28 elements: the launches per call are a constant."""
    monkeypatch.setenv("LS_XP_PLAN", "accelerator")
    counts = []
    for n, k in ((64, 100), (4096, 2000)):
        x0, y = torch.randn(n, k), torch.randint(0, k, (n,))
        counts.append(_profile(_loss_backward(x0, y))[0])
    assert counts[0] == counts[1]
    monkeypatch.setenv("LS_XP_PLAN", "cpu")
    x0, y = torch.randn(4096, 5000), torch.randint(0, 5000, (4096,))
    assert _profile(_loss_backward(x0, y))[0] > 2 * counts[1]  # the CPU plan's smaller blocks


def test_accelerator_plan_stays_within_its_operation_budget(monkeypatch):
    """A regression bound on the launches of one loss + backward: 51 top-level operations
    on torch 2.13 when this was written (native F.cross_entropy: 15; 101, 61, then 53,
    before the core was trimmed). An added per-call operation shows up here before it shows up on
    a GPU."""
    monkeypatch.setenv("LS_XP_PLAN", "accelerator")
    x0, y = torch.randn(256, 1000), torch.randint(0, 1000, (256,))
    ops, syncs = _profile(_loss_backward(x0, y))
    assert ops <= 51
    assert syncs == 0
    assert ops > 15  # the profiler saw the loss (native alone issues 15)


def test_accelerator_plan_equals_the_cpu_plan(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = torch.tensor(rng.normal(size=(300, 7000))), torch.tensor(rng.integers(0, 7000, 300))
    out = {}
    for plan in ("cpu", "accelerator"):
        monkeypatch.setenv("LS_XP_PLAN", plan)
        out[plan] = ls_xp.loss_and_grad(x, y, 0.1)
    torch.testing.assert_close(out["cpu"][0], out["accelerator"][0], rtol=1e-14, atol=0)
    torch.testing.assert_close(out["cpu"][1], out["accelerator"][1], rtol=1e-14, atol=1e-18)


def test_bad_labels_give_nan_on_the_accelerator_plan_unless_checked(monkeypatch):
    monkeypatch.setenv("LS_XP_PLAN", "accelerator")
    x = torch.arange(12.0).reshape(4, 3)
    y = torch.tensor([0, 5, 1, 2])
    per_row = ls_xp.cross_entropy(x, y, 0.1, reduction="none")
    assert math.isnan(per_row[1].item()) and not torch.isnan(per_row[[0, 2, 3]]).any()
    with pytest.raises(ValueError, match=r"target contains class index 5"):
        ls_xp.cross_entropy(x, y, 0.1, check_values=True)
    with pytest.raises(ValueError, match="weight must be finite and non-negative"):
        ls_xp.cross_entropy(
            x, torch.tensor([0, 1, 1, 2]), 0.1, weight=torch.tensor([1.0, -1, 1]), check_values=True
        )
    assert math.isnan(ls_xp.cross_entropy(x, y, torch.tensor(1.5), check_values=False).item())
    monkeypatch.setenv("LS_XP_PLAN", "cpu")
    assert math.isnan(ls_xp.cross_entropy(x, y, 0.1, check_values=False).item())


def test_the_plan_variable_is_checked(monkeypatch):
    monkeypatch.setenv("LS_XP_PLAN", "gpu")
    with pytest.raises(
        ValueError, match=r"LS_XP_PLAN must be one of 'auto', 'cpu', 'accelerator', got 'gpu'"
    ):
        ls_xp.cross_entropy(np.zeros((2, 3)), np.array([0, 1]))


# ----------------------------------------------------------------------------- compilers


class _Model(torch.nn.Module):
    def __init__(self, **loss_kw):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 5)
        self.loss_kw = loss_kw

    def forward(self, x, y):
        return ls_xp.cross_entropy(self.l2(torch.relu(self.l1(x))), y, 0.1, **self.loss_kw)


LOSS_KW = [{}, {"convention": "others", "reduction": "sum"}, {"ignore_index": 2, "weight": "w"}]


def _model(kw):
    torch.manual_seed(0)
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    return _Model(**kw), torch.randn(32, 8), torch.randint(0, 5, (32,))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kw", LOSS_KW)
def test_torch_compile_fullgraph_without_graph_breaks(kw):
    model, x, y = _model(kw)
    explained = torch._dynamo.explain(model)(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons
    eager = model(x, y)
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x, y)
    out.backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(model.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_compile_with_inductor():
    import shutil

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("inductor needs a C compiler on the CPU")
    model, x, y = _model({})
    eager = model(x, y)
    out = torch.compile(model, fullgraph=True)(x, y)
    torch.testing.assert_close(out, eager)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kw", LOSS_KW)
def test_torch_export_reproduces_the_loss(kw):
    model, x, y = _model(kw)
    program = torch.export.export(model, (x, y))
    # the traced formula (ls_xp.torch._traced), not the opaque operator
    assert not any("ls_xp" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(x, y), model(x, y))
    x2, y2 = torch.randn(32, 8), torch.randint(0, 5, (32,))
    torch.testing.assert_close(program.module()(x2, y2), model(x2, y2))


# ----------------------------------------------------------------------------- autodiff


# (the hessian of a vector-valued loss is left out: jacfwd and jacrev cover "none")
AD_CASES = [
    (t, kw)
    for t in ("jvp", "jacfwd", "jacrev", "hessian")
    for kw in ({}, {"reduction": "none", "convention": "uniform"}, {"reduction": "sum"})
    if not (t == "hessian" and kw.get("reduction") == "none")
]


@pytest.mark.parametrize(("transform", "kw"), AD_CASES)
def test_forward_mode_and_hessian_equal_native_autograd(transform, kw):
    from torch import func

    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 4])
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    red = kw.get("reduction", "mean")

    def ours(a):
        return ls_xp.cross_entropy(a, y, 0.1, **kw)

    def native(a):
        return torch.nn.functional.cross_entropy(a, y, label_smoothing=0.1, reduction=red)

    apply = {
        "jvp": lambda f: func.jvp(f, (x,), (v,))[1],
        "jacfwd": lambda f: func.jacfwd(f)(x),
        "jacrev": lambda f: func.jacrev(f)(x),
        "hessian": lambda f: func.hessian(f)(x),
    }[transform]
    torch.testing.assert_close(apply(ours), apply(native), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_gives_the_native_loss_dtype(dtype):
    lin = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.autocast("cpu", dtype=getattr(torch, dtype)):
        logits = lin(x)
        ours, native = ls_xp.cross_entropy(logits, y, 0.1), torch.nn.functional.cross_entropy(logits, y)
    assert logits.dtype == getattr(torch, dtype)
    assert ours.dtype == native.dtype == torch.float32
    ours.backward()
    assert lin.weight.grad is not None and lin.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("red", ["mean", "none"])
def test_fused_linear_loss_reads_no_value_back_on_the_accelerator_plan(monkeypatch, red):
    """ls_xp.linear_cross_entropy + backward: no host sync, and the operations per call do
    not grow with the rows of one block; the same values as the CPU plan."""
    monkeypatch.setenv("LS_XP_PLAN", "accelerator")
    g = torch.Generator().manual_seed(0)
    counts, grads = [], {}
    for n in (16, 512):
        h0, w0 = torch.randn(n, 32, generator=g), torch.randn(300, 32, generator=g)
        y = torch.randint(0, 300, (n,), generator=g)

        def run(h0=h0, w0=w0, y=y):
            h, w = h0.detach().requires_grad_(), w0.detach().requires_grad_()
            ls_xp.linear_cross_entropy(h, w, y, 0.1, reduction=red).sum().backward()
            return h.grad, w.grad

        ops, syncs = _profile(run)
        assert syncs == 0
        counts.append(ops)
        grads["accelerator"] = run()
    assert counts[0] == counts[1]
    monkeypatch.setenv("LS_XP_PLAN", "cpu")
    grads["cpu"] = run()
    for a, e in zip(grads["accelerator"], grads["cpu"], strict=True):
        torch.testing.assert_close(a, e)
