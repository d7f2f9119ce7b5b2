"""Compilers see the formula: under torch.compile and torch.export the loss is the traced
array-API core (an autograd.Function with the analytic backward that dynamo traces), not
an opaque operator, so Inductor fuses it. fullgraph, dynamic shapes without a recompile
per batch size, and exported training and inference programs that reproduce eager."""

from __future__ import annotations

import math

import pytest

import ls_xp

torch = pytest.importorskip("torch", reason="torch is not installed")
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

K = 7
SIZES = (8, 13, 32, 57, 100)
CASES = [
    pytest.param({}, id="mean"),
    pytest.param({"reduction": "sum"}, id="sum"),
    pytest.param({"reduction": "none"}, id="none"),
    pytest.param({"ignore_index": 3}, id="ignore_index"),
    pytest.param({"convention": "others"}, id="others"),
    pytest.param({"weight": True}, id="weight"),
    pytest.param({"where": True}, id="where"),
    pytest.param({"probs": True}, id="probabilities"),
]


def _static(case: dict) -> dict:
    """The case's static keywords (Python values: hyperparameters, not inputs)."""
    return {k: v for k, v in case.items() if k not in ("weight", "where", "probs")}


def _batch(n: int, case: dict, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Inputs of ``n`` rows: hidden states, targets and the loss's tensor keywords
    (``weight``, ``where``; None where the case has none)."""
    x = torch.randn(n, 16, generator=g)
    kw: dict = {"weight": None, "where": None}
    if case.get("probs"):
        y = torch.softmax(torch.randn(n, K, generator=g), -1)
    else:
        y = torch.randint(0, K, (n,), generator=g)
    if "ignore_index" in case:
        y[::3] = case["ignore_index"]
    if case.get("weight"):
        kw["weight"] = torch.rand(K, generator=g) + 0.1
    if case.get("where"):
        where = torch.rand(n, K, generator=g) > 0.3
        where[torch.arange(n), y] = True  # the target class is never masked out
        kw["where"] = where
    return x, y, kw


def _counter() -> CompileCounterWithBackend:
    """A fresh dynamo and a backend that counts the graphs compiled (dynamo may restart
    the analysis of the first frame once; what counts is no new graph afterwards)."""
    torch._dynamo.reset()
    return CompileCounterWithBackend("aot_eager")


@pytest.mark.parametrize("case", CASES)
def test_compiled_training_step_is_one_graph_for_every_batch_size(case):
    """Linear -> loss -> backward under fullgraph/dynamic: one frame, one compile over
    five batch sizes, loss and parameter gradients equal to eager."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, K)

    static = _static(case)

    def train(x, y, weight, where):
        return ls_xp.cross_entropy(lin(x), y, 0.1, weight=weight, where=where, **static)

    counter = _counter()
    step = torch.compile(train, backend=counter, fullgraph=True, dynamic=True)
    g, first = torch.Generator().manual_seed(1), 0
    for n in SIZES:
        x, y, kw = _batch(n, case, g)
        lin.zero_grad()
        eager = train(x, y, **kw)
        eager.sum().backward()
        want = lin.weight.grad.clone(), lin.bias.grad.clone()
        lin.zero_grad()
        got = step(x, y, **kw)
        got.sum().backward()
        torch.testing.assert_close(got, eager)
        torch.testing.assert_close((lin.weight.grad, lin.bias.grad), want)
        first = first or counter.frame_count
    assert counter.frame_count == first  # no recompile after the first batch size


@pytest.mark.parametrize("case", CASES)
def test_compiled_inference_step_is_one_graph_for_every_batch_size(case):
    """The loss of logits without grad (an evaluation step), under no_grad too."""

    static = _static(case)

    def evaluate(logits, y, weight, where):
        return ls_xp.cross_entropy(logits, y, 0.1, weight=weight, where=where, **static)

    counter = _counter()
    step = torch.compile(evaluate, backend=counter, fullgraph=True, dynamic=True)
    g, first = torch.Generator().manual_seed(2), 0
    with torch.no_grad():
        for n in SIZES:
            _, y, kw = _batch(n, case, g)
            logits = torch.randn(n, K, generator=g)
            torch._dynamo.mark_static(logits, 1)  # the classes are fixed; the batch size varies
            torch.testing.assert_close(step(logits, y, **kw), evaluate(logits, y, **kw))
            first = first or counter.frame_count
    assert counter.frame_count == first


def _aot_graphs(fn, *args) -> tuple[str, list[str]]:
    """Dynamo's graph and the aten graphs AOTAutograd makes of it (forward, backward),
    as code, for one call and its backward."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    dynamo_code: list[str] = []
    aot_code: list[str] = []

    def keep(gm, _inputs):
        aot_code.append(gm.code)
        return make_boxed_func(gm.forward)

    aot = aot_autograd(fw_compiler=keep, bw_compiler=keep)

    def backend(gm, inputs):
        dynamo_code.append(gm.code)
        return aot(gm, inputs)

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args).backward()
    return "\n".join(dynamo_code), aot_code


def test_no_graph_break_and_the_formula_is_in_the_graph():
    """Zero breaks; dynamo's graph holds the loss as one CompositeImplicitAutograd operator,
    which AOTAutograd decomposes: the forward and backward graphs the compiler fuses are
    the formula in aten operations, with no ls_xp operator left."""
    from ls_xp.torch._traced_op import NAMESPACE

    lin = torch.nn.Linear(16, K)
    x, y, _ = _batch(8, {}, torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda a, b: ls_xp.cross_entropy(lin(a), b, 0.1))(x, y)
    assert explained.graph_break_count == 0, explained.break_reasons
    dynamo_code, (forward, backward) = _aot_graphs(lambda a, b: ls_xp.cross_entropy(lin(a), b, 0.1), x, y)
    assert f"{NAMESPACE}.label_smoothed_ce" in dynamo_code
    for code in (forward, backward):
        assert "ls_xp" not in code
        assert "torch.ops.aten.exp" in code  # (the backward recomputes the softmax)
    assert "torch.ops.aten.amax" in forward


def test_the_compiled_training_step_is_cacheable():
    """AOTAutograd's cache takes the compiled step (a traced autograd.Function would make
    it bypass the cache, and every fresh process would compile the step again)."""
    from torch._dynamo.utils import counters

    lin = torch.nn.Linear(16, K)
    x, y, _ = _batch(8, {}, torch.Generator().manual_seed(5))
    torch._dynamo.reset()
    counters.clear()
    step = torch.compile(lambda a, b: ls_xp.cross_entropy(lin(a), b, 0.1), backend="inductor")
    step(x, y).backward()
    aot = dict(counters["aot_autograd"])
    assert aot.get("autograd_cache_bypass", 0) == 0, aot
    assert aot.get("autograd_cache_hit", 0) + aot.get("autograd_cache_saved", 0) == 1, aot


def test_the_operators_graph_is_a_function_of_its_arguments(monkeypatch):
    """A cache keys the operator by its arguments (and the global state it records), so the
    graph it decomposes into must not depend on anything else ls_xp reads, such as the
    forced plan in the environment."""
    lin = torch.nn.Linear(16, K)
    x, y, _ = _batch(8, {}, torch.Generator().manual_seed(6))
    graphs = []
    for forced in ("cpu", "accelerator"):
        monkeypatch.setenv("LS_XP_PLAN", forced)
        with torch._functorch.config.patch(enable_autograd_cache=False):
            graphs.append(_aot_graphs(lambda a, b: ls_xp.cross_entropy(lin(a), b, 0.1, z_loss=1e-3), x, y)[1])
    assert len(graphs[0]) == 2
    assert graphs[0] == graphs[1]


def test_the_operators_name_follows_the_sources():
    """The operator's namespace is a fingerprint of the sources and versions behind it, so
    a cached graph of another formula is never reused."""
    import pathlib
    import tempfile

    from ls_xp.torch._traced_op import fingerprint

    with tempfile.TemporaryDirectory() as d:
        root = pathlib.Path(d)
        (root / "a.py").write_text("x = 1\n")
        first = fingerprint(root, ("lib==1",))
        assert fingerprint(root, ("lib==1",)) == first
        assert fingerprint(root, ("lib==2",)) != first
        (root / "a.py").write_text("x = 2\n")
        assert fingerprint(root, ("lib==1",)) != first
        (root / "a.py").unlink()
        (root / "a.pyc").write_bytes(b"compiled")
        assert fingerprint(root, ("lib==1",)) != fingerprint(root / "empty", ("lib==1",))


def test_inductor_training_step_equals_eager_without_recompiles():
    """The real compiler (Inductor, C++ on the CPU): forward and backward, five sizes."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, K)

    def train(x, y):
        return ls_xp.cross_entropy(lin(x), y, 0.1, ignore_index=3)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    step = torch.compile(train, backend=counter, fullgraph=True, dynamic=True)
    g, first = torch.Generator().manual_seed(4), 0
    for n in SIZES:
        x, y, _ = _batch(n, {"ignore_index": 3}, g)
        lin.zero_grad()
        train(x, y).backward()
        want = lin.weight.grad.clone()
        lin.zero_grad()
        got = step(x, y)
        got.backward()
        torch.testing.assert_close(got, train(x, y))
        torch.testing.assert_close(lin.weight.grad, want)
        first = first or counter.frame_count
    assert counter.frame_count == first


class _Training(torch.nn.Module):
    def __init__(self, kw: dict) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, K)
        self.kw = kw

    def forward(self, x, y):
        return ls_xp.cross_entropy(self.lin(x), y, 0.1, **self.kw)


class _Inference(torch.nn.Module):
    def __init__(self, kw: dict) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, logits, y):
        return ls_xp.cross_entropy(logits, y, 0.1, **self.kw)


EXPORT_CASES = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"ignore_index": 3, "convention": "others"},
    {"probs": True},
]


@pytest.mark.parametrize("case", EXPORT_CASES, ids=str)
@pytest.mark.parametrize("module", [_Training, _Inference])
def test_export_reproduces_eager_on_new_shapes(module, case):
    """Exported with a dynamic batch: the program's loss on other batch sizes is eager's."""
    torch.manual_seed(0)
    model = module(_static(case))
    g = torch.Generator().manual_seed(5)
    n = torch.export.Dim("n", min=2)

    def inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = _batch(rows, case, g)
        return (x if module is _Training else torch.randn(rows, K, generator=g)), y

    program = torch.export.export(model, inputs(8), dynamic_shapes=({0: n}, {0: n}))
    assert not any("ls_xp" in str(node.target) for node in program.graph.nodes)
    for rows in (5, 21):
        a, b = inputs(rows)
        torch.testing.assert_close(program.module()(a, b), model(a, b))


STEP_CASES = [
    pytest.param({}, id="mean"),
    pytest.param({"ignore_index": 3}, id="ignore_index"),
    pytest.param({"reduction": "none"}, id="none"),
    pytest.param({"convention": "others", "reduction": "sum"}, id="others-sum"),
    pytest.param({"weight": True}, id="weight"),
    pytest.param({"z_loss": 1e-4}, id="z_loss"),
    pytest.param({"bfloat16": True}, id="bfloat16"),
]


@pytest.mark.parametrize("case", STEP_CASES)
def test_the_compiled_step_keeps_the_logits_not_the_gradient(case):
    """What Inductor generates for Linear -> loss, forward and backward (C++ on this CPU;
    its scheduler fuses the same way for Triton): the forward's one N x K buffer is the
    logits, saved with per-row statistics; the backward allocates none, writing the
    gradient in the saved logits' buffer, as native cross_entropy's does. The loops over
    a row's classes are the passes over N x K memory: two reads in the forward (the
    maximum; the exponentials' sum with the other terms: the maxima are found by value,
    so no loop looks for the first one's column), one read and write in the backward,
    three in all (native: five)."""
    import re

    from torch._inductor.utils import run_and_get_code

    n, d, k = 64, 16, 512
    g = torch.Generator().manual_seed(6)
    dtype = torch.bfloat16 if case.get("bfloat16") else torch.float32
    lin = torch.nn.Linear(d, k, bias=False).to(dtype)
    x, y = torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)
    kw = {key: v for key, v in case.items() if key not in ("weight", "bfloat16")}
    if case.get("weight"):
        kw["weight"] = torch.rand(k, generator=g) + 0.1
    if "ignore_index" in kw:
        y[::5] = kw["ignore_index"]

    def step(a, b):
        out = ls_xp.cross_entropy(lin(a), b, 0.1, **kw)
        return out.sum() if out.ndim else out

    def run():
        lin.zero_grad()
        loss = compiled(x, y)
        loss.backward()
        return loss

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    with torch._inductor.config.patch(fx_graph_cache=False):  # (generated, not loaded)
        loss, (forward, backward) = run_and_get_code(run)
    logits = rf"empty_strided_cpu\(\({n}, {k}\)"
    assert len(re.findall(logits, forward)) == 1  # the logits
    assert len(re.findall(logits, backward)) == 0  # the gradient: in the saved logits' buffer
    passes = [
        code.count(f"for(int64_t x1=static_cast<int64_t>(0L); x1<static_cast<int64_t>({k}L)")
        for code in (forward, backward)
    ]
    assert passes[0] <= 2 and passes[1] <= 1, passes
    want_grad = lin.weight.grad.clone()
    lin.zero_grad()
    want = step(x, y)
    want.backward()
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(loss, want, **tol)
    torch.testing.assert_close(want_grad, lin.weight.grad, **tol)


def _hard_rows(g: torch.Generator) -> torch.Tensor:
    """float64 logits whose rows test how the compiled formula finds the maxima by value
    (every column with z = 0, where eager code finds the first one's column): a row of
    ties, two and three maxima, one confident maximum, -inf beside a finite maximum, and
    rows whose maximum is +inf, NaN or -inf (those three give NaN rows), then plain rows."""
    x = torch.randn(14, K, generator=g, dtype=torch.float64)
    x[0] = 0.0
    x[1, [2, 5]] = x[1].max() + 1.0
    x[2, [0, 1, 6]] = 3.0
    x[3, 4] = x[3].max() + 40.0
    x[4, :3] = -math.inf
    x[5, 3] = math.inf
    x[6, 1] = math.nan
    x[7] = -math.inf
    return x


TIE_CASES = [
    pytest.param({}, id="uniform"),
    pytest.param({"convention": "others"}, id="others"),
    pytest.param({"eps": 0.0}, id="eps0"),
    pytest.param({"weight": True}, id="weight"),
    pytest.param({"where": True, "convention": "others"}, id="where"),
    pytest.param({"probs": True, "weight": True}, id="probabilities"),
    pytest.param({"z_loss": 1e-3, "softcap": 5.0, "ignore_index": 3}, id="z_loss-softcap-ignore"),
]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, on purpose
@pytest.mark.parametrize("case", TIE_CASES)
def test_compiled_maxima_by_value_equal_eager_at_ties_and_non_finite_rows(case):
    """Under the compiler the maxima are found by value (one loop over K fewer); at ties,
    a row of ties, ±inf and NaN the loss rows and the gradient equal the eager plan's,
    NaN where eager is NaN, in float64."""
    g = torch.Generator().manual_seed(11)
    x = _hard_rows(g)
    n = x.shape[0]
    _, y, kw = _batch(n, case, g)
    y = y.to(torch.float64) if case.get("probs") else y
    if case.get("probs"):
        y[2] = 0.0
        y[2, 6] = 1.0  # all its mass on one of the tied maxima
    elif "ignore_index" not in case:
        y[:4] = torch.tensor([0, 5, 1, 4])  # the targets at a maximum
    kw = {key: v.to(torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
          for key, v in kw.items() if v is not None}  # fmt: skip
    if "where" in kw:
        kw["where"][torch.arange(n), y] = True  # (the targets changed above)
        kw["where"][5] = True  # (keep the +inf row's +inf)
    eps = case.get("eps", 0.1)
    static = {k: v for k, v in _static(case).items() if k != "eps"}

    def loss(a, b):
        return ls_xp.cross_entropy(a, b, eps, reduction="none", **static, **kw)

    def run(fn):
        a = x.clone().requires_grad_()
        rows = fn(a, y)
        rows.sum().backward()
        return rows.detach(), a.grad

    want_rows, want_grad = run(loss)
    torch._dynamo.reset()
    got_rows, got_grad = run(torch.compile(loss, backend="aot_eager", fullgraph=True))
    if "softcap" not in case:  # (which caps +inf and -inf: its rows 5 and 7 have ties)
        assert torch.isnan(want_rows[[5, 7]]).all() and torch.isfinite(want_rows[8:]).all()
    torch.testing.assert_close(got_rows, want_rows, rtol=1e-12, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12, equal_nan=True)
