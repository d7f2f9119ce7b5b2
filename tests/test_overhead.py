"""The per-call work of a small loss: what is decided once (options, namespaces, dtypes)
is reused, the label check reads the labels with two reductions, and none of it changes a
result or an error. (Timings are ``ls-xp bench``'s, not the tests'.)"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from array_api_compat import array_namespace

import ls_xp
from ls_xp import _options, _plan
from tests._profiling import aten_events, top_level


def test_the_options_of_a_repeated_call_are_built_once():
    first = _options.options(reduction="sum", axis=1, z_loss=1e-4)
    assert _options.options(reduction="sum", axis=1, z_loss=1e-4) is first
    # equal values of other types are other keys: each is checked as given
    assert _options.options(z_loss=0) is not _options.options(z_loss=0.0)
    assert _options.options(z_loss=0) == _options.options(z_loss=0.0)
    with pytest.raises(TypeError, match="log_probs must be True or False, got 1"):
        _options.options(log_probs=1)
    for _ in range(2):  # a refused call leaves nothing behind
        with pytest.raises(ValueError, match="reduction must be one of"):
            _options.options(reduction="avg")
    assert _options.options(reduction=np.str_("sum")) is not first  # (not a plain type: checked afresh)


def test_a_negative_worker_count_is_counted_back_at_every_call(monkeypatch):
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this OS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert _options.options(workers=-1).workers == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert _options.options(workers=-1).workers == 1


def test_the_namespace_is_array_api_compats():
    a = np.zeros((2, 3))
    assert _plan.namespace(a) is array_namespace(a)
    assert _plan.known_namespace(a) is array_namespace(a)
    assert _plan.device_of(a) == "cpu"
    assert _plan.isdtype(array_namespace(a), a.dtype, "real floating")
    assert not _plan.isdtype(array_namespace(a), np.dtype(np.int64), "real floating")


def _x_y(n=12, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k)), rng.integers(0, k, n)


@pytest.mark.parametrize("ignore_index", [-100, 0, 2, 7])
def test_labels_in_range_with_and_without_ignored_rows(ignore_index):
    """Every path of the label check (all in range; ignored rows out of range; an ignored
    class in range) gives the loss of the rows that count, as the plain formula does."""
    x, y = _x_y()
    y[[1, 4]] = ignore_index
    x[1] = math.nan  # an ignored row's logits do not reach the loss
    loss, grad = ls_xp.loss_and_grad(x, y, 0.1, ignore_index=ignore_index)
    keep = y != ignore_index
    z = x[keep] - x[keep].max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = -(0.9 * logp[np.arange(keep.sum()), y[keep]] + 0.1 * logp.mean(axis=1))
    np.testing.assert_allclose(float(loss), rows.mean(), rtol=1e-13)
    assert np.all(grad[~keep] == 0) and np.isfinite(grad).all()


@pytest.mark.parametrize(("bad", "ignore_index"), [(-3, -100), (5, -100), (9, 7), (-1, 0), (5, 2)])
def test_a_label_out_of_range_is_named_beside_ignored_rows(bad, ignore_index):
    x, y = _x_y()
    y[0] = ignore_index
    y[3] = bad
    with pytest.raises(ValueError, match=rf"target contains class index {bad}, outside \[0, 5\)"):
        ls_xp.loss_and_grad(x, y, 0.1, ignore_index=ignore_index)
    per_row = ls_xp.cross_entropy(x, y, 0.1, ignore_index=ignore_index, reduction="none", check_values=False)
    assert math.isnan(per_row[3]) and not np.isnan(np.delete(per_row, 3)).any()


def test_every_row_counting_gives_the_general_cases_factors():
    """With no row ignored the "mean" factors are 1 / n made at once: the same bits as the
    reciprocal of the counted rows (float32 and float64, a row count with a long binary
    expansion of 1 / n)."""
    for dtype in (np.float32, np.float64):
        x, y = _x_y(n=4097, k=3, seed=1)
        x = x.astype(dtype)
        loss, grad = ls_xp.loss_and_grad(x, y, 0.1)
        y2 = y.copy()
        y2[0] = -100  # one ignored row: the general path, on the other rows
        loss2, grad2 = ls_xp.loss_and_grad(np.concatenate([x[:1], x]), np.concatenate([y2[:1], y]), 0.1)
        assert loss2.dtype == loss.dtype == dtype and type(loss2) is type(loss)
        # (the gradient rows are elementwise in the factors: equal bits; the loss sums one
        # more, zero, row, which may change the order of additions)
        assert np.array_equal(grad2[1:], grad)
        np.testing.assert_allclose(float(loss2), float(loss), rtol=4 * np.finfo(dtype).eps)


def test_the_numpy_row_index_is_not_the_callers():
    x, y = _x_y()
    _, grad = ls_xp.loss_and_grad(x, y, 0.1)
    assert grad.flags.writeable
    loss_none = ls_xp.cross_entropy(x, y, 0.1, reduction="none")
    assert loss_none.flags.writeable


def test_the_cpu_plans_operations_per_call(monkeypatch):
    """A regression bound on the CPU plan's launches of one small loss + backward (47
    top-level operations and 3 reads on torch 2.13 when this was written; 59 before the
    label check and the row factors were trimmed; native F.cross_entropy: 15)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setenv("LS_XP_PLAN", "cpu")
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)

    def run():
        x = x0.detach().requires_grad_()
        ls_xp.cross_entropy(x, y, 0.1).backward()

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = aten_events(prof)
    top = top_level(events)
    syncs = sum(e.name == "aten::_local_scalar_dense" for e in events)
    assert 15 < len(top) <= 47
    assert syncs <= 3


def test_jax_index_dtype_follows_x64_switched_after_a_call():
    """The remembered decisions leave out JAX's index dtype, which follows
    ``jax_enable_x64``: switched off after a call with it on, no int64 is asked for (JAX
    would warn and truncate). In a fresh process, so that the switch touches no other test."""
    pytest.importorskip("jax", reason="jax is not installed")
    script = textwrap.dedent(
        """
        import warnings
        import jax, jax.numpy as jnp, numpy as np, ls_xp
        warnings.simplefilter("error")
        x, y = np.random.default_rng(0).standard_normal((8, 5)), np.arange(8) % 5
        def step():
            return jax.jit(jax.value_and_grad(lambda a: ls_xp.cross_entropy(a, jnp.asarray(y), 0.1)))

        jax.config.update("jax_enable_x64", True)
        step()(jnp.asarray(x))
        jax.config.update("jax_enable_x64", False)
        step()(jnp.asarray(x, dtype=jnp.float32))
        ls_xp.cross_entropy(jnp.asarray(x, dtype=jnp.float32), jnp.asarray(y), 0.1)
        print("OK")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
