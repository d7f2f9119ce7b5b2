"""The eager accelerator plan's fused block (``LS_XP_COMPILE``, :mod:`ls_xp.torch._fused`),
forced on this CPU with ``LS_XP_PLAN=accelerator``: Inductor compiles the core's
evaluation once per layout, with no recompile per batch size; loss and gradient equal the
eager plan's; a loss and backward is a few top-level operations and no host sync; the
generated code is one kernel; and the semantic suite runs through it.

Inductor compiles C++ on this CPU (seconds per layout), so the semantic suite traces the
same graphs with the ``aot_eager`` backend (dynamo and AOTAutograd, no code generated),
and Inductor itself compiles the cases below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ls_xp
from tests._profiling import aten_events, top_level

torch = pytest.importorskip("torch", reason="torch is not installed")
from ls_xp.torch import _fused  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LS_XP_PLAN", "accelerator")
    monkeypatch.setenv("LS_XP_COMPILE", "1")


def _profile(run) -> tuple[int, int]:
    """(top-level aten ops, host syncs) of one call, after a warm-up (the measuring notes)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = aten_events(prof)
    top = top_level(events)
    return len(top), sum(e.name in SYNC_OPS for e in events)


def _loss_and_grad(
    x0: torch.Tensor, y: torch.Tensor, eps: float = 0.1, **kw
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x0.detach().requires_grad_()
    loss = ls_xp.cross_entropy(x, y, eps, **kw)
    loss.backward()
    assert x.grad is not None
    return loss.detach(), x.grad


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(2, 3)
    for value, on in (("0", False), ("off", False), ("1", True), ("ON", True), ("", False), ("auto", False)):
        monkeypatch.setenv("LS_XP_COMPILE", value)
        assert _fused.wanted(x) is on  # auto: CUDA only
    monkeypatch.delenv("LS_XP_COMPILE")
    assert _fused.switch() == "0"  # off unless asked for (not yet measured on a GPU)
    monkeypatch.setenv("LS_XP_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="LS_XP_COMPILE"):
        _fused.wanted(x)


def test_where_no_compiler_works_the_eager_block_runs(fused, monkeypatch) -> None:
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(_fused, "BACKEND", broken)
    monkeypatch.setattr(_fused, "_warned", [False])
    monkeypatch.setattr(_fused, "_BROKEN", set())
    monkeypatch.setattr(_fused, "_FAILED", set())
    x0, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        got = _loss_and_grad(x0, y, 0.3)
    assert any(
        key[0] == "step" and key[-3] == "number" and key[3] == (torch.float64, 2) for key in _fused._FAILED
    )
    assert "cpu" in _fused._BROKEN  # (no further attempt on this device)
    monkeypatch.setenv("LS_XP_COMPILE", "0")
    torch.testing.assert_close(got, _loss_and_grad(x0, y, 0.3), rtol=0, atol=0)


def test_one_kernel_few_operations_no_sync_and_the_eager_values(fused, monkeypatch) -> None:
    """256 x 1000 float32: the generated code, the profiler's counts, the eager plan's loss
    and gradient, no recompile for other batch sizes; then float64."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(256, 1000, generator=g), torch.randint(0, 1000, (256,), generator=g)
    monkeypatch.setattr(_fused, "BACKEND", "inductor")
    with torch._inductor.config.patch(fx_graph_cache=False):  # (the code is generated, not loaded)
        (loss, grad), codes = run_and_get_code(_loss_and_grad, x0, y)
    # a training step: the traced loss compiled with its backward, one kernel each
    forward, backward = codes
    for code in codes:
        assert len(re.findall(r"^(cpp_fused\w*) = ", code, re.M)) == 1
    # their loops over the classes of a row (x1), the passes over N x K memory: the
    # forward reads the logits twice (the maximum and the target's logit; the exponentials'
    # sum, the count of maxima and the smoothing sum: the maxima are found by value), the
    # backward reads them and writes the gradient once, and no N x K array is written in
    # the forward
    assert forward.count("for(int64_t x1=") <= 2 and backward.count("for(int64_t x1=") <= 1
    assert not re.search(r"empty_strided_cpu\(\(256, 1000\)", forward)
    ops, syncs = _profile(lambda: _loss_and_grad(x0, y))
    assert ops <= 15 and syncs == 0
    graphs = counters["stats"]["unique_graphs"]
    for n, eps in ((300, 0.1), (77, 0.1), (256, 0.25)):  # other batch sizes and smoothings: the same kernel
        _loss_and_grad(x0[:n], y[:n], eps)
    assert counters["stats"]["unique_graphs"] == graphs
    monkeypatch.setenv("LS_XP_COMPILE", "0")
    ref = _loss_and_grad(x0, y)
    torch.testing.assert_close(loss, ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref[1], rtol=1e-6, atol=1e-6)
    x64 = x0.double()
    ref = _loss_and_grad(x64, y)
    monkeypatch.setenv("LS_XP_COMPILE", "1")
    got = _loss_and_grad(x64, y)
    assert got[1].dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    ops, syncs = _profile(lambda: _loss_and_grad(x64, y))
    assert ops <= 15 and syncs == 0


def _case(name: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    if name == "probabilities, class axis 1":
        x = torch.randn(3, 11, 5, generator=g)
        return x, torch.softmax(torch.randn(3, 11, 5, generator=g), dim=1), {"axis": 1}
    x, y = torch.randn(40, 11, generator=g), torch.randint(0, 11, (40,), generator=g)
    y[::4] = 3
    kw = {"weight": torch.rand(11, generator=g) + 0.1, "ignore_index": 3, "reduction": "none"}
    if name == "where, others":
        where = torch.rand(40, 11, generator=g) > 0.3
        where[torch.arange(40), y] = True
        kw = {"where": where, "convention": "others", "reduction": "sum"}
    return x, y, kw


CASES = ["weight, ignore_index, none", "where, others", "probabilities, class axis 1"]


@pytest.mark.parametrize("name", CASES)
def test_inductor_equals_the_eager_plan(fused, monkeypatch, name: str) -> None:
    x0, y, kw = _case(name, torch.Generator().manual_seed(1))
    x0 = x0.double()
    y = y.double() if y.is_floating_point() else y

    def values() -> tuple[torch.Tensor, torch.Tensor]:
        x = x0.detach().requires_grad_()
        loss = ls_xp.cross_entropy(x, y, 0.1, **kw)
        loss.sum().backward()
        assert x.grad is not None
        return loss.detach(), x.grad

    got = values()
    assert any(key[0] == "step" and key[-2].axis == kw.get("axis", -1) for key in _fused._COMPILED)
    monkeypatch.setenv("LS_XP_COMPILE", "0")
    torch.testing.assert_close(got, values(), rtol=1e-12, atol=1e-12)


# a representative part of the suite (the conventions, class masks, non-finite logits, the
# class axis, log-probabilities, both dtypes), and all of it among the slow tests
SEMANTIC_PART = "float32 or class_axis or neg_inf or nan_and or single_allowed or log_probs or where_mask"


@pytest.mark.parametrize(
    "part", [pytest.param(SEMANTIC_PART, id="part"), pytest.param("", id="all", marks=pytest.mark.slow)]
)
def test_the_semantic_suite_through_the_fused_block(part: str) -> None:
    """tests/test_semantics.py on PyTorch under the forced accelerator plan, every
    evaluation by the compiled block (traced by dynamo and AOTAutograd): no fallback, and
    the layouts were compiled."""
    select = "torch/cpu+accelerator-plan" + (f" and ({part})" if part else "")
    script = (
        "import sys, pytest\n"
        "from ls_xp.torch import _fused\n"
        "_fused.BACKEND = 'aot_eager'\n"
        "code = pytest.main(['-q', '-p', 'no:cacheprovider', '-W', 'error::RuntimeWarning',\n"
        f"                    'tests/test_semantics.py', '-k', {select!r}])\n"
        "assert _fused._COMPILED and not _fused._FAILED, (len(_fused._COMPILED), _fused._FAILED)\n"
        "sys.exit(int(code))\n"
    )
    env = {**os.environ, "LS_XP_COMPILE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
    assert done.returncode == 0, tail
    assert re.search(r"\d+ passed", done.stdout), tail
