"""ls_xp.linear_cross_entropy: the fused classifier matmul and loss against the unfused
``cross_entropy(hidden @ classifier.T + bias)`` on every backend, the autodiff routes
(torch autograd, compile, export; JAX grad, jit, vmap), Dask row chunks, and proof that
no N x V array is made."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import ls_xp

TOL = {"float32": {"rtol": 1e-4, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}

# (reduction, convention, options): bias, class weights, ignored rows, blocks that do not
# divide the rows, a traced-looking smoothing of 0
CASES = [
    (red, conv, opts)
    for red in ("mean", "sum", "none")
    for conv in ("uniform", "others")
    for opts in (
        {"bias": True, "ignore": True, "chunk_size": 4},
        {"weight": True, "smoothing": 0.0},
        {"weight": True, "ignore": True, "bias": True, "smoothing": 0.3, "chunk_size": 7},
    )
]


def _problem(rng, shape=(3, 5), dim=6, classes=9, ignore=False):
    h = rng.normal(size=(*shape, dim))
    w_cls = rng.normal(size=(classes, dim)) / np.sqrt(dim) * 3
    b = rng.normal(size=classes)
    y = rng.integers(0, classes, size=shape)
    if ignore:
        y.reshape(-1)[[1, 4]] = -100
    weight = rng.uniform(0.2, 2.0, size=classes)
    return h, w_cls, b, y, weight


def _unfused(xb, h, w_cls, b, y, eps, **kw):
    """Loss and the three gradients through the materialised logits, on the same backend."""
    xp = xb.xp
    logits = h @ xp.matrix_transpose(w_cls)
    if b is not None:
        logits = logits + b
    loss, g = ls_xp.loss_and_grad(logits, y, eps, **kw)
    d = h.shape[-1]
    g2, h2 = xp.reshape(g, (-1, w_cls.shape[0])), xp.reshape(h, (-1, d))
    gb = None if b is None else xp.sum(g2, axis=0)
    return loss, xp.reshape(g2 @ w_cls, h.shape), xp.matrix_transpose(g2) @ h2, gb


@pytest.mark.parametrize(("red", "conv", "opts"), CASES)
def test_matches_unfused_on_every_backend(xb, fdtype, rng, red, conv, opts):
    if fdtype not in xb.target.dtypes:
        pytest.skip(f"{xb} has no {fdtype}")
    h, w_cls, b, y, weight = _problem(rng, ignore=opts.get("ignore", False))
    eps = opts.get("smoothing", 0.1)
    args = (xb.asarray(h, fdtype), xb.asarray(w_cls, fdtype), xb.asarray(y))
    bias = xb.asarray(b, fdtype) if opts.get("bias") else None
    kw = {
        "reduction": red,
        "convention": conv,
        "weight": xb.asarray(weight, fdtype) if opts.get("weight") else None,
    }
    got = ls_xp.linear_loss_and_grad(*args, eps, bias=bias, chunk_size=opts.get("chunk_size"), **kw)
    want = _unfused(xb, args[0], args[1], bias, args[2], eps, **kw)
    for name, a, e in zip(("loss", "grad_hidden", "grad_classifier", "grad_bias"), got, want, strict=True):
        if e is None:
            assert a is None, name
            continue
        scale = max(1.0, float(np.max(np.abs(xb.np(e)))))
        np.testing.assert_allclose(xb.np(a), xb.np(e), rtol=TOL[fdtype]["rtol"],
                                   atol=TOL[fdtype]["rtol"] * scale, err_msg=name)  # fmt: skip
        assert tuple(a.shape) == tuple(e.shape), name
    loss = ls_xp.linear_cross_entropy(*args, eps, bias=bias, chunk_size=opts.get("chunk_size"), **kw)
    np.testing.assert_allclose(xb.np(loss), xb.np(got[0]), rtol=TOL[fdtype]["rtol"])


def test_classifier_gradient_in_class_slices(xb, rng, monkeypatch):
    """The eager accumulator adds each block's G^T H slice by slice of classes."""
    from ls_xp import _plan

    monkeypatch.setattr(_plan, "GRAM_ELEMENTS", 12)  # two classes per slice at D = 6
    h, w_cls, b, y, _ = _problem(rng, ignore=True)
    args = (xb.asarray(h), xb.asarray(w_cls), xb.asarray(y))
    got = ls_xp.linear_loss_and_grad(*args, 0.1, bias=xb.asarray(b), chunk_size=4)
    want = _unfused(xb, *args[:2], xb.asarray(b), args[2], 0.1)
    for a, e in zip(got, want, strict=True):
        np.testing.assert_allclose(xb.np(a), xb.np(e), rtol=1e-10, atol=1e-12)


def test_exact_where_the_unfused_loss_is_exact(rng):
    """A confident, correct row: the loss is ~1e-14 and keeps its relative accuracy
    (the core's log1p form), in the fused path as in cross_entropy."""
    h = np.array([[30.0, 0.0]])
    w_cls = np.eye(2)
    fused = ls_xp.linear_cross_entropy(h, w_cls, np.array([0]), 0.0)
    np.testing.assert_allclose(fused, np.log1p(np.exp(-30.0)), rtol=1e-15)


def test_bad_labels_raise_eagerly_and_give_nan_on_the_accelerator_plan(xb):
    h, w_cls = xb.asarray(np.ones((4, 3))), xb.asarray(np.ones((5, 3)))
    y = xb.asarray(np.array([0, 1, 7, 2]))
    if xb.eager:
        with pytest.raises(ValueError, match="class index 7, outside"):
            ls_xp.linear_cross_entropy(h, w_cls, y)
    else:
        assert np.isnan(xb.np(ls_xp.linear_cross_entropy(h, w_cls, y)))


def test_all_ignored_mean_is_nan_with_zero_gradients():
    h, w_cls = np.ones((3, 2)), np.ones((4, 2))
    loss, gh, gw, gb = ls_xp.linear_loss_and_grad(h, w_cls, np.full(3, -100), bias=np.zeros(4))
    assert np.isnan(loss)
    assert not gh.any() and not gw.any() and not gb.any()
    loss, gh, gw, _ = ls_xp.linear_loss_and_grad(np.ones((0, 2)), w_cls, np.zeros(0, dtype=int))
    assert np.isnan(loss) and gh.shape == (0, 2) and not gw.any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"classifier": np.ones((5, 4))}, ValueError, r"classifier must have shape \(V, 3\)"),
        ({"classifier": np.ones(5)}, ValueError, "classifier must have shape"),
        ({"bias": np.ones(4)}, ValueError, r"bias must have shape \(5,\)"),
        ({"target": np.ones((4, 5))}, ValueError, "probability targets are not supported"),
        ({"target": np.array([0, 1])}, ValueError, r"target must hold integer class indices of shape \(4,\)"),
        ({"smoothing": 1.5}, ValueError, "smoothing must be in"),
        ({"reduction": "batchmean"}, ValueError, "reduction must be one of"),
        ({"convention": "other"}, ValueError, "convention must be one of"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index"),
        ({"weight": -np.ones(5)}, ValueError, "weight must be finite and non-negative"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, match):
    args = {"hidden": np.ones((4, 3)), "classifier": np.ones((5, 3)), "target": np.array([0, 1, 2, 3])}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ls_xp.linear_cross_entropy(**args)


def test_arrays_of_another_library_are_refused():
    """NumPy hidden states join the classifier's library; two other libraries are refused."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed")
    h, w_cls, y = np.ones((4, 3)), np.arange(15.0).reshape(5, 3) / 10, np.array([0, 1, 2, 3])
    joined = ls_xp.linear_cross_entropy(h, torch.tensor(w_cls), y)
    assert isinstance(joined, torch.Tensor)
    np.testing.assert_allclose(joined.numpy(), ls_xp.linear_cross_entropy(h, w_cls, y), rtol=1e-12)
    with pytest.raises(TypeError, match="classifier is a jax array but hidden is a torch array"):
        ls_xp.linear_cross_entropy(torch.tensor(h), jnp.asarray(w_cls), y)


def test_numpy_peak_memory_is_one_block_not_n_by_v():
    """tracemalloc sees every NumPy buffer: the fused loss and gradients at N = 4096,
    V = 8192 (logits of 256 MiB in float64) stay far below one N x V array."""
    rng = np.random.default_rng(0)
    n, d, v = 4096, 16, 8192
    h, w_cls, y = rng.normal(size=(n, d)), rng.normal(size=(v, d)), rng.integers(0, v, n)
    ls_xp.linear_loss_and_grad(h[:2], w_cls, y[:2])  # imports and caches outside the count
    tracemalloc.start()
    try:
        ls_xp.linear_loss_and_grad(h, w_cls, y, 0.1, chunk_size=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n_by_v, block = n * v * 8, 64 * v * 8
    assert peak < 0.1 * n_by_v, f"peak {peak / 2**20:.1f} MiB vs N x V {n_by_v / 2**20:.0f} MiB"
    # the block's logits (overwritten by their gradient) and the core's temporaries
    assert peak < 5 * block + 2 * (v + n) * d * 8, (
        f"peak {peak / 2**20:.1f} MiB, one block {block / 2**20:.0f} MiB"
    )


# ---------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
def test_torch_gradcheck_every_input(red):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w_cls = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    eps = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (2, 5), generator=g)
    y[0, 1] = -100
    weight = torch.rand(7, dtype=torch.float64, generator=g) + 0.5

    def f(h, w_cls, b, eps):
        return ls_xp.linear_cross_entropy(
            h, w_cls, y, eps, bias=b, weight=weight, reduction=red, chunk_size=3
        )

    assert torch.autograd.gradcheck(f, (h, w_cls, b, eps))


def test_torch_backward_equals_native_head_and_loss():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    h = torch.randn(3, 8, 16, requires_grad=True)
    y = torch.randint(0, 50, (3, 8))
    crit = ls_xp.torch.LinearCrossEntropyLoss(head, label_smoothing=0.1, chunk_size=5)
    crit(h, y).backward()
    fused = (h.grad, head.weight.grad, head.bias.grad)
    h.grad = head.weight.grad = head.bias.grad = None
    logits = head(h)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 50), y.reshape(-1), label_smoothing=0.1).backward()
    for a, e in zip(fused, (h.grad, head.weight.grad, head.bias.grad), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_torch_module_with_a_weight_tensor_and_per_call_classifier():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    emb = torch.randn(10, 4)
    h, y = torch.randn(6, 4), torch.arange(6)
    tied = ls_xp.torch.LinearCrossEntropyLoss(emb, reduction="sum", label_smoothing=0.2, convention="others")
    per_call = ls_xp.torch.LinearCrossEntropyLoss(reduction="sum", label_smoothing=0.2, convention="others")
    expected = ls_xp.cross_entropy(h @ emb.T, y, 0.2, reduction="sum", convention="others")
    torch.testing.assert_close(tied(h, y), expected)
    torch.testing.assert_close(per_call(h, y, emb), expected)
    assert list(tied.parameters()) == [] and "head=(10, 4)" in repr(tied)
    with pytest.raises(TypeError, match="no classifier"):
        per_call(h, y)
    with pytest.raises(TypeError, match="built with a head"):
        tied(h, y, emb)
    with pytest.raises(TypeError, match=r"head must be an nn\.Linear"):
        ls_xp.torch.LinearCrossEntropyLoss("lm_head")
    with pytest.raises(ValueError, match="reduction must be one of"):
        ls_xp.torch.LinearCrossEntropyLoss(emb, reduction="avg")


def test_torch_retain_graph_and_no_double_backward():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    h = torch.randn(5, 3, requires_grad=True)
    w_cls = torch.randn(4, 3, requires_grad=True)
    loss = ls_xp.linear_cross_entropy(h, w_cls, torch.tensor([0, 1, 2, 3, 0]))
    (g1,) = torch.autograd.grad(loss, h, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, h, retain_graph=True)  # recomputed: the first was given away
    torch.testing.assert_close(g1, g2)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(loss, h, create_graph=True)


def test_torch_class_weight_gradient_is_refused_not_dropped():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    with pytest.raises(NotImplementedError, match="weight"):
        ls_xp.linear_cross_entropy(
            torch.randn(2, 3, requires_grad=True), torch.randn(4, 3), torch.tensor([0, 1]),
            weight=torch.ones(4, requires_grad=True),
        )  # fmt: skip


def test_torch_half_precision_matches_float32():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    torch.manual_seed(0)
    h, w_cls, y = torch.randn(64, 8), torch.randn(100, 8), torch.randint(0, 100, (64,))
    ref = ls_xp.linear_cross_entropy(h, w_cls, y)
    for dt in (torch.float16, torch.bfloat16):
        got = ls_xp.linear_cross_entropy(h.to(dt), w_cls.to(dt), y, chunk_size=16)
        assert got.dtype == dt
        torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=0.0)


@pytest.mark.parametrize("red", ["mean", "none"])
def test_torch_compile_fullgraph_and_export(red):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    torch.manual_seed(0)
    h = torch.randn(6, 4, requires_grad=True)
    w_cls, b = torch.randn(9, 4, requires_grad=True), torch.randn(9, requires_grad=True)
    y = torch.tensor([0, 1, 2, -100, 4, 8])

    def f(h, w_cls, b):
        return ls_xp.linear_cross_entropy(h, w_cls, y, 0.1, bias=b, reduction=red).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    grads_c = torch.autograd.grad(compiled(h, w_cls, b), (h, w_cls, b))
    grads_e = torch.autograd.grad(f(h, w_cls, b), (h, w_cls, b))
    for a, e in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(a, e)

    class Head(torch.nn.Module):
        def forward(self, h, w_cls, y):
            return ls_xp.linear_cross_entropy(h, w_cls, y, 0.1, reduction=red)

    program = torch.export.export(Head(), (h.detach(), w_cls.detach(), y))
    assert "ls_xp.linear_ce" in str(program.graph)
    torch.testing.assert_close(
        program.module()(h.detach(), w_cls.detach(), y), Head()(h.detach(), w_cls.detach(), y)
    )


# ---------------------------------------------------------------- JAX


def _jax():
    return pytest.importorskip("jax", reason="jax is not installed")


@pytest.mark.parametrize("red", ["mean", "sum", "none"])
def test_jax_grad_jit_and_weight_cotangent(red):
    jax = _jax()
    jnp = jax.numpy
    h, w_cls, b, y, weight = (jnp.asarray(a) for a in _problem(np.random.default_rng(1), ignore=True))

    def fused(h, w_cls, b, weight, eps):
        loss = ls_xp.linear_cross_entropy(
            h, w_cls, y, eps, bias=b, weight=weight, reduction=red, chunk_size=4
        )
        return jnp.sum(loss**2)  # a non-uniform cotangent for "none"

    def unfused(h, w_cls, b, weight, eps):
        return jnp.sum(ls_xp.cross_entropy(h @ w_cls.T + b, y, eps, weight=weight, reduction=red) ** 2)

    args = (h, w_cls, b, weight, jnp.asarray(0.2))
    want = jax.grad(unfused, argnums=(0, 1, 2, 3, 4))(*args)
    for grad in (jax.grad(fused, argnums=(0, 1, 2, 3, 4)), jax.jit(jax.grad(fused, argnums=(0, 1, 2, 3, 4)))):
        for a, e in zip(grad(*args), want, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-10, atol=1e-12)


def test_jax_vmap_and_python_smoothing():
    jax = _jax()
    jnp = jax.numpy
    h, w_cls, _, y, _ = (jnp.asarray(a) for a in _problem(np.random.default_rng(2)))
    stacked = jnp.stack([h, 2 * h, -h])
    got = jax.vmap(lambda x: ls_xp.linear_cross_entropy(x, w_cls, y, 0.1, chunk_size=4))(stacked)
    want = jnp.stack([ls_xp.cross_entropy(x @ w_cls.T, y, 0.1) for x in stacked])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)


def test_jax_jit_never_holds_n_by_v():
    """Every intermediate of jit(value_and_grad) of the fused loss is smaller than the
    N x V logits: the blocks are the body of a scan."""
    jax = _jax()
    jnp = jax.numpy
    n, d, v = 512, 8, 1024
    h, w_cls = jnp.ones((n, d), jnp.float32), jnp.ones((v, d), jnp.float32)
    y = jnp.zeros(n, jnp.int32)

    def f(h, w_cls):
        return ls_xp.linear_cross_entropy(h, w_cls, y, 0.1, chunk_size=64)

    from jax.extend.core import jaxprs_in_params

    jaxpr = jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(h, w_cls)
    sizes = []

    def walk(jx):
        for eqn in jx.eqns:
            sizes.extend(int(np.prod(o.aval.shape)) for o in eqn.outvars if hasattr(o.aval, "shape"))
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    assert max(sizes) <= 64 * v, max(sizes)
    unfused = jax.make_jaxpr(jax.value_and_grad(lambda h, w: ls_xp.cross_entropy(h @ w.T, y, 0.1), (0, 1)))(
        h, w_cls
    )
    assert any(int(np.prod(o.aval.shape)) == n * v for e in unfused.jaxpr.eqns for o in e.outvars)


# ---------------------------------------------------------------- Dask


def test_dask_rows_chunked_classifier_replicated():
    da = pytest.importorskip("dask.array", reason="dask is not installed")
    h, w_cls, b, y, weight = _problem(np.random.default_rng(3), shape=(40,), ignore=True)
    dh, dy = da.from_array(h, chunks=(8, -1)), da.from_array(y, chunks=8)
    dw, db = da.from_array(w_cls, chunks=-1), da.from_array(b, chunks=-1)
    got = ls_xp.linear_loss_and_grad(dh, dw, dy, 0.1, bias=db, weight=da.from_array(weight, chunks=-1))
    want = ls_xp.linear_loss_and_grad(h, w_cls, y, 0.1, bias=b, weight=weight)
    for a, e in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a.compute()), e, rtol=1e-12, atol=1e-14)
    assert got[1].chunks[0] == dh.chunks[0]  # the hidden gradient keeps the row chunks


def test_all_rows_ignored_with_weights_and_z_loss_gives_zero_gradients():
    # the z-loss scale (total weight over counted rows) is 0/0 here: 0, as the plain loss's
    rng = np.random.default_rng(4)
    h, w_cls = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    y, weight = np.full(4, -100), rng.random(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, gh, gw, _ = ls_xp.linear_loss_and_grad(h, w_cls, y, 0.1, weight=weight, z_loss=1e-4)
        plain, g = ls_xp.loss_and_grad(h @ w_cls.T, y, 0.1, weight=weight, z_loss=1e-4)
    assert np.isnan(loss) and np.isnan(plain)  # a mean over no counted row, as PyTorch's
    assert not np.any(g) and not np.any(gh) and not np.any(gw)
