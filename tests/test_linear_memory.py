"""The fused linear loss's memory: rows per block from a byte budget, and the peak of the
eager loop (NumPy, measured with tracemalloc, which sees NumPy's buffers) bounded by the
block, not by the logits. The operations the softcap adds over the logits
(PyTorch's profiler). Structural checks only: no timing."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import ls_xp
from ls_xp import _linear, _plan
from ls_xp import _validate as v
from tests._profiling import aten_events, top_level

OPTS = {"z_loss": 1e-4, "softcap": 30.0, "return_aux": True}


def _problem(n: int, d: int, k: int, dtype: type = np.float32) -> _linear.Problem:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((k, d)).astype(dtype)
    y = rng.integers(0, k, n)
    return _linear.setup(h, w, y, 0.1, None, None, v.DEFAULT_OPTIONS)


def test_rows_per_block_come_from_the_byte_budget() -> None:
    # 16 MiB of float32 logits at V = 32768 is 128 rows; float64 halves them
    assert _linear.default_block_rows(32768, "cpu") == _linear.BLOCK_BYTES // (4 * 32768)
    assert _linear.block_rows(_problem(8, 4, 32768)) == _linear.BLOCK_BYTES // (4 * 32768)
    assert _linear.block_rows(_problem(8, 4, 32768, np.float64)) == _linear.BLOCK_BYTES // (8 * 32768)
    # a half-precision block holds its logits and a float32 gradient: 6 bytes a class
    assert _linear.default_block_rows(32768, "cpu", 6 * 32768) == _linear.BLOCK_BYTES // (6 * 32768)
    # at least one row; the accelerator plan keeps its element budget
    assert _linear.default_block_rows(1 << 30, "cpu") == 1
    rows = _plan.LINEAR_ACCELERATOR_BLOCK_ELEMENTS // 32768
    assert _linear.default_block_rows(32768, "accelerator") == rows
    assert _linear.block_rows(_problem(8, 4, 100), chunk_size=7) == 7  # the caller's choice wins


def test_softmax_pieces_are_capped_in_bytes() -> None:
    p = _problem(8, 4, 32768)
    most = _linear.SOFTMAX_BYTES // (4 * 32768)
    assert _linear.softmax_rows(p, None) == most
    assert _linear.softmax_rows(p, 1 << 40) == most  # an adapter's larger pieces are cut
    assert _linear.softmax_rows(p, 3) == 3


def _peak(fn: object) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Blocks of 16 rows of V = 2048 float32 logits (128 KiB), pieces of the same size and
    class slices of the classifier's gradient of 64 KiB; returns the block bytes."""
    monkeypatch.setattr(_linear, "BLOCK_BYTES", 16 * 2048 * 4)
    monkeypatch.setattr(_linear, "SOFTMAX_BYTES", 16 * 2048 * 4)
    monkeypatch.setattr(_plan, "GRAM_ELEMENTS", 1 << 14)
    monkeypatch.setenv("LS_XP_PLAN", "cpu")
    return 16 * 2048 * 4


def _inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    n, d, k = 512, 256, 2048  # logits 4 MiB, classifier 2 MiB, hidden 512 KiB
    h = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((k, d), dtype=np.float32) / np.float32(16.0)
    return h, w, rng.integers(0, k, n)


def test_peak_is_the_gradients_and_a_few_blocks(small_blocks: int) -> None:
    h, w, y = _inputs()
    ls_xp.linear_loss_and_grad(h, w, y, 0.1)  # warm-up: lazy imports are no part of the peak
    peak = _peak(lambda: ls_xp.linear_loss_and_grad(h, w, y, 0.1))
    grads = h.nbytes + w.nbytes  # the results: d hidden and d classifier
    logits = h.shape[0] * w.shape[0] * 4
    # the results, and a few blocks' temporaries; the "mean" factor scales the classifier's
    # gradient in place (a scaled copy would add w.nbytes = 16 blocks)
    assert peak <= grads + 8 * small_blocks, (peak, grads, small_blocks)
    assert peak < grads + logits / 2


def test_options_add_at_most_one_piece(small_blocks: int) -> None:
    h, w, y = _inputs()
    for opts in ({}, OPTS):
        ls_xp.linear_loss_and_grad(h, w, y, 0.1, **opts)
    plain = _peak(lambda: ls_xp.linear_loss_and_grad(h, w, y, 0.1))
    with_opts = _peak(lambda: ls_xp.linear_loss_and_grad(h, w, y, 0.1, **OPTS))
    # the softcap keeps its capped logits (one piece; its derivative factor is made in
    # their buffer); the z-loss and the statistics are O(rows)
    assert with_opts <= plain + 1.5 * small_blocks, (with_opts, plain, small_blocks)


def test_small_blocks_give_the_same_result(small_blocks: int) -> None:
    h, w, y = _inputs()
    loss, gh, gw, _ = ls_xp.linear_loss_and_grad(h.astype(np.float64), w.astype(np.float64), y, 0.1)
    ref, g = ls_xp.loss_and_grad(h.astype(np.float64) @ w.astype(np.float64).T, y, 0.1)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(gw, g.T @ h.astype(np.float64), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(gh, g @ w.astype(np.float64), rtol=1e-9, atol=1e-15)


def test_softcap_adds_six_passes_over_the_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The softcap's passes over a piece's logits, from PyTorch's profiler (one block, one
    piece): on PyTorch's CPU plan the cap as 2c sigmoid(2x / c) - c in the logits' buffer
    (sigmoid, the product, the difference) and three for the chain rule. The first step,
    2x / c, is made on the hidden rows and the bias (D + 1 products a row), not on the
    logits, and nothing is copied."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setenv("LS_XP_PLAN", "cpu")
    n, d, k = 64, 8, 4096
    g = torch.Generator().manual_seed(0)
    h0, w0, b0 = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g), torch.randn(k, generator=g)
    y = torch.randint(0, k, (n,), generator=g)

    def passes(**options: float) -> int:
        def run() -> None:
            h, w, b = (t.detach().requires_grad_() for t in (h0, w0, b0))
            ls_xp.linear_cross_entropy(h, w, y, 0.1, bias=b, **options).backward()

        run()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            run()
        top = top_level(aten_events(prof))
        return sum(any(list(s) == [n, k] for s in e.input_shapes) for e in top if e.name != "aten::mm")

    assert passes(softcap=30.0) == passes() + 6


def test_softcaps_chain_rule_lands_in_the_capped_logits() -> None:
    """With the row factors folded (``g`` holds -g / c^2), the product c^2 (t^2 - 1) (-g / c^2)
    is written over the capped logits, the buffer the fused loss's gradient goes to."""
    from ls_xp import _softcap

    rng = np.random.default_rng(0)
    c, x, g = 3.0, rng.normal(size=(4, 7)) * 5, rng.normal(size=(4, 7))
    capped = c * np.tanh(x / c)
    out = _softcap.chain(np, g * (-1.0 / c**2), capped, c, inplace=True, folded=True)
    assert out is capped
    np.testing.assert_allclose(out, g * (1.0 - np.tanh(x / c) ** 2), rtol=1e-12, atol=1e-15)
