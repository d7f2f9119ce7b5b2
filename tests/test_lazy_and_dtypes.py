"""Laziness (jax.jit, Dask), half precision, device placement and no mutation of inputs."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import ls_xp
from tests._cases import NumpyXB, call, random_problem


@pytest.mark.parametrize("seed", range(6))
def test_jit_equals_eager(seed):
    jax = pytest.importorskip("jax", reason="jax is not installed")
    p = random_problem(seed)
    kw = dict(reduction=p.reduction, ignore_index=p.ignore_index, axis=1)
    w = None if p.weight is None else jax.numpy.asarray(p.weight)
    x, t = jax.numpy.asarray(p.logits), jax.numpy.asarray(p.target)
    eager = ls_xp.loss_and_grad(x, t, p.smoothing, weight=w, **kw)
    jitted = jax.jit(lambda a, b, c: ls_xp.loss_and_grad(a, b, p.smoothing, weight=c, **kw))(x, t, w)
    for e, j in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=1e-13, atol=1e-15)


def test_dask_stays_lazy_until_computed():
    dask = pytest.importorskip("dask", reason="dask is not installed")
    da = pytest.importorskip("dask.array", reason="dask is not installed")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 20))
    y = rng.integers(0, 20, 1000)
    y[::7] = -100
    w = rng.uniform(0.5, 2, 20)

    def refuse(*args, **kwargs):
        raise AssertionError("ls_xp computed a Dask array while building the graph")

    with dask.config.set(scheduler=refuse):
        dx, dy, dw = da.from_array(x, chunks=(250, 20)), da.from_array(y, chunks=250), da.from_array(w)
        loss, grad = ls_xp.loss_and_grad(dx, dy, 0.1, weight=dw)
        rows = ls_xp.cross_entropy(dx, dy, 0.1, weight=dw, reduction="none")
        q = ls_xp.smooth_labels(da.from_array(np.abs(y) % 20, chunks=250), 20, 0.1)
    assert all(isinstance(a, da.Array) for a in (loss, grad, rows, q))
    ref_loss, ref_grad = ls_xp.loss_and_grad(x, y, 0.1, weight=w)
    np.testing.assert_allclose(loss.compute(), ref_loss, rtol=1e-14)
    np.testing.assert_allclose(grad.compute(), ref_grad, rtol=1e-13, atol=1e-18)
    assert grad.chunks[0] == (250, 250, 250, 250)  # the batch chunking is kept


def test_results_live_on_the_input_device():
    """array-api-strict raises on any mix of devices, so a missing device= would fail here."""
    xps = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    dev = xps.Device("device1")
    p = random_problem(3, soft=False)
    x = xps.asarray(p.logits, device=dev)
    y = xps.asarray(p.target, device=dev)
    allowed = xps.ones(p.logits.shape, dtype=xps.bool, device=dev)
    w = xps.ones((p.logits.shape[1],), device=dev)
    loss, grad = ls_xp.loss_and_grad(x, y, 0.1, axis=1, weight=w, where=allowed, ignore_index=p.ignore_index)
    assert loss.device == dev and grad.device == dev
    assert ls_xp.kl_divergence(x, y, 0.1, axis=1, ignore_index=p.ignore_index).device == dev
    assert ls_xp.smooth_labels(xps.asarray([0, 1], device=dev), 3).device == dev
    soft = xps.asarray(np.full(p.logits.shape, 1 / p.logits.shape[1]), device=dev)
    assert ls_xp.loss_and_grad(x, soft, 0.1, axis=1)[1].device == dev


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(xb, name):
    if name not in xb.target.dtypes:
        pytest.skip(f"{xb} has no {name}")
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(4, 10000)) * 8).astype(np.float32)  # PyTorch's fp16 loss is inf here
    y = rng.integers(0, 10000, 4)
    half = xb.asarray(x, name)
    loss, grad = ls_xp.loss_and_grad(half, xb.asarray(y), 0.1)
    assert loss.dtype == xb.dtype(name) and grad.dtype == xb.dtype(name)
    x_rounded = xb.np(half)  # the half values, exactly, in float64
    ref_loss, ref_grad = ls_xp.loss_and_grad(x_rounded, y, 0.1)
    rtol = 1e-3 if name == "float16" else 8e-3
    assert np.isfinite(xb.np(loss))
    np.testing.assert_allclose(xb.np(loss), ref_loss, rtol=rtol)
    np.testing.assert_allclose(xb.np(grad), ref_grad, rtol=rtol, atol=1e-7)


def test_float16_torch_overflows_where_we_do_not():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(4, 10000)) * 8, dtype=torch.float16)
    y = torch.tensor(rng.integers(0, 10000, 4))
    theirs = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
    ours = ls_xp.cross_entropy(x, y, 0.1)
    assert torch.isinf(theirs) and torch.isfinite(ours)


@pytest.mark.parametrize("soft", [False, True])
def test_inputs_are_never_written(xb, soft):
    p = random_problem(11, soft=soft)
    p.weight = np.linspace(0.5, 2, p.logits.shape[1])
    allowed = np.ones(p.logits.shape, dtype=bool)
    before = [p.logits.copy(), p.target.copy(), p.weight.copy()]
    args = [xb.asarray(p.logits), xb.asarray(p.target) if not soft else xb.asarray(p.target, "float64")]
    w = xb.asarray(p.weight)
    m = xb.asarray(allowed)
    snapshot = [xb.np(a) for a in (*args, w)]
    ls_xp.loss_and_grad(*args, p.smoothing, weight=w, where=m, axis=1, ignore_index=p.ignore_index)
    ls_xp.kl_divergence(*args, p.smoothing, weight=w, axis=1, ignore_index=p.ignore_index)
    for a, s in zip((*args, w), snapshot, strict=True):
        np.testing.assert_array_equal(xb.np(a), s)
    for a, b in zip((p.logits, p.target, p.weight), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_read_only_numpy_inputs_work():
    p = random_problem(5, soft=False)
    for a in (p.logits, p.target):
        a.flags.writeable = False
    _, grad = call(ls_xp.loss_and_grad, NumpyXB(), p, "float64")
    assert grad.flags.writeable  # the gradient is a new array of ours


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunked_equals_unchunked(xb, chunk_size):
    p = random_problem(21, soft=False)
    p.logits = np.random.default_rng(0).normal(size=(50, 9)) * 4
    p.target = np.random.default_rng(1).integers(0, 9, 50)
    p.target[::5] = -100
    p.ignore_index, p.reduction, p.weight = -100, "mean", np.linspace(0.5, 2, 9)
    whole = call(ls_xp.loss_and_grad, xb, p, "float64", chunk_size=10**6)
    blocks = call(ls_xp.loss_and_grad, xb, p, "float64", chunk_size=chunk_size)
    np.testing.assert_allclose(xb.np(blocks[0]), xb.np(whole[0]), rtol=1e-15)
    np.testing.assert_array_equal(xb.np(blocks[1]), xb.np(whole[1]))  # row-wise: bit-identical
    for soft_target in (False, True):
        t = np.random.default_rng(2).dirichlet(np.ones(9), size=50) if soft_target else p.target
        kw = dict(reduction="none")
        a = ls_xp.loss_and_grad(xb.asarray(p.logits), xb.asarray(t), 0.2, chunk_size=chunk_size, **kw)
        b = ls_xp.loss_and_grad(xb.asarray(p.logits), xb.asarray(t), 0.2, chunk_size=10**6, **kw)
        np.testing.assert_array_equal(xb.np(a[0]), xb.np(b[0]))
        np.testing.assert_array_equal(xb.np(a[1]), xb.np(b[1]))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_chunk_size_must_be_a_positive_int(bad):
    error, message = (ValueError, "a positive int") if bad < 1 else (TypeError, "an integer")
    with pytest.raises(error, match=f"chunk_size must be {message}"):
        ls_xp.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), chunk_size=bad)


@pytest.mark.parametrize("workers", [1, 2, 3, -1])
def test_threads_over_blocks_give_the_same_bits(xb, workers):
    """Row blocks on several threads: the same loss and gradient, bit for bit, for class
    indices (weights, ignored rows, a class mask, both conventions) and probabilities."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(61, 9)) * 3
    y = rng.integers(0, 9, 61)
    y[::6] = -100
    cases = [
        (y, dict(weight=xb.asarray(np.linspace(0.5, 2, 9)))),
        (
            np.where(y == 4, 5, y),
            dict(where=xb.asarray(np.arange(9) != 4), convention="others", reduction="none"),
        ),
        (y, dict(overwrite_logits=True)),
        (rng.dirichlet(np.ones(9), size=61), dict(reduction="sum")),
    ]
    for t, kw in cases:
        one = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(t), 0.2, chunk_size=5, workers=1, **kw)
        many = ls_xp.loss_and_grad(xb.asarray(x), xb.asarray(t), 0.2, chunk_size=5, workers=workers, **kw)
        np.testing.assert_array_equal(xb.np(many[0]), xb.np(one[0]))
        np.testing.assert_array_equal(xb.np(many[1]), xb.np(one[1]))
    loss = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), 0.1, chunk_size=5, workers=workers)
    one = ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), 0.1, chunk_size=5, workers=1)
    np.testing.assert_array_equal(xb.np(loss), xb.np(one))


def test_blocks_run_side_by_side_on_the_threads_asked_for(monkeypatch):
    """With workers=2 two blocks are in flight at once: each of the first two waits for
    the other at a barrier, which a single thread would never pass."""
    import threading

    from ls_xp import _math

    barrier = threading.Barrier(2, timeout=30)
    threads = set()
    block = _math.block

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        if len(threads) <= 2 and barrier.n_waiting < 2 and not barrier.broken:
            barrier.wait()
        return block(*args, **kwargs)

    monkeypatch.setattr(_math, "block", spy)
    x, y = np.random.default_rng(5).normal(size=(40, 7)), np.arange(40) % 7
    ls_xp.loss_and_grad(x, y, 0.1, chunk_size=4, workers=2)
    assert len(threads) == 2


def test_an_error_in_a_helper_thread_reaches_the_caller(monkeypatch):
    from ls_xp import _math

    block = _math.block
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("block 3 failed")
        return block(*args, **kwargs)

    monkeypatch.setattr(_math, "block", failing)
    x, y = np.random.default_rng(6).normal(size=(40, 7)), np.arange(40) % 7
    with pytest.raises(MemoryError, match="block 3 failed"):
        ls_xp.loss_and_grad(x, y, 0.1, chunk_size=4, workers=2)


def test_helper_threads_keep_the_callers_numpy_errstate(monkeypatch):
    """Blocks on helper threads run under the caller's NumPy errstate (a copy of its
    context), so errstate(invalid="raise") raises wherever the invalid operation falls."""
    import threading

    from ls_xp import _math

    barrier = threading.Barrier(2, timeout=30)
    seen = {}
    block = _math.block

    def spy(*args, **kwargs):
        seen[threading.get_ident()] = np.geterr()["invalid"]
        if len(seen) <= 2 and not barrier.broken and barrier.n_waiting < 2:
            barrier.wait()  # two blocks in flight: both threads take part
        return block(*args, **kwargs)

    monkeypatch.setattr(_math, "block", spy)
    x = np.random.default_rng(7).normal(size=(40, 5))
    with np.errstate(invalid="raise"):
        ls_xp.loss_and_grad(x, np.arange(40) % 5, 0.1, chunk_size=4, workers=2)
    assert len(seen) == 2 and set(seen.values()) == {"raise"}
    monkeypatch.setattr(_math, "block", block)
    x[::4, 1] = np.inf  # inf - inf while shifting: an invalid operation in every block
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        ls_xp.loss_and_grad(x, np.arange(40) % 5, 0.1, chunk_size=4, workers=2)


def test_workers_count_the_cpus_this_process_may_use(monkeypatch):
    """An affinity mask (taskset, a container's CPU set) limits the default and -1."""
    import os

    from ls_xp import _plan, _validate

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this OS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert _plan.available_cpus() == 1
    assert _plan.default_workers(array_namespace(np.zeros(1))) == 1
    assert _validate.check_workers(-1) == 1
    with pytest.raises(ValueError, match=r"workers=-2 counts back past the 1 CPU\(s\) available"):
        _validate.check_workers(-2)


def test_default_workers_follow_the_library():
    from ls_xp import _plan

    assert _plan.default_workers(array_namespace(np.zeros(1))) == _plan.available_cpus()
    torch = pytest.importorskip("torch", reason="torch is not installed")
    assert _plan.default_workers(array_namespace(torch.zeros(1))) == 1


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (0, ValueError, "workers must be a positive int, a negative one counted back"),
        (-(10**6), ValueError, r"workers=-1000000 counts back past the \d+ CPU"),
        (1.5, TypeError, "workers must be an integer, got 1.5"),
        (True, TypeError, "workers must be an integer, got True"),
        ("2", TypeError, "workers must be an integer, got '2'"),
    ],
)
def test_workers_must_be_a_nonzero_int(xb, bad, error, message):
    with pytest.raises(error, match=message):
        ls_xp.cross_entropy(xb.asarray(np.zeros((2, 3))), xb.asarray(np.array([0, 1])), workers=bad)


def test_overwrite_logits_writes_the_gradient_into_the_callers_buffer(xb):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 11)), rng.integers(0, 11, 40)
    ref_loss, ref_grad = ls_xp.loss_and_grad(x, y, 0.1)
    logits = xb.asarray(x)
    loss, grad = ls_xp.loss_and_grad(logits, xb.asarray(y), 0.1, overwrite_logits=True, chunk_size=7)
    np.testing.assert_allclose(xb.np(loss), ref_loss, rtol=1e-14)
    np.testing.assert_allclose(xb.np(grad), ref_grad, rtol=1e-13, atol=1e-17)
    if xb.name in ("numpy", "torch", "array_api_strict"):  # writeable, concrete arrays
        assert grad is logits
    else:  # JAX arrays are immutable, Dask arrays lazy: a new array, the input untouched
        assert grad is not logits
        np.testing.assert_array_equal(xb.np(logits), x)
    # without the keyword the caller's array is never touched
    logits = xb.asarray(x)
    ls_xp.loss_and_grad(logits, xb.asarray(y), 0.1)
    np.testing.assert_array_equal(xb.np(logits), x)
