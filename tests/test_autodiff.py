"""The analytic gradient through PyTorch autograd and JAX transformations."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

import ls_xp
from tests._cases import random_problem, torch_reference

# ----------------------------------------------------------------------------- PyTorch


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is not installed")


def _torch_inputs(torch, p, requires_target_grad=False):
    x = torch.tensor(p.logits, requires_grad=True)
    t = torch.tensor(p.target, requires_grad=requires_target_grad and p.soft)
    w = None if p.weight is None else torch.tensor(p.weight)
    return x, t, w


@pytest.mark.parametrize("seed", range(24))
def test_backward_equals_torch_autograd(torch, seed):
    p = random_problem(seed)
    ref_loss, ref_grad = torch_reference(p)
    x, t, w = _torch_inputs(torch, p)
    loss = ls_xp.cross_entropy(x, t, p.smoothing, reduction=p.reduction, weight=w,
                               ignore_index=p.ignore_index, axis=1)  # fmt: skip
    assert loss.grad_fn is not None and "LabelSmoothingCE" in type(loss.grad_fn).__name__
    loss.sum().backward()
    np.testing.assert_allclose(loss.detach().numpy(), ref_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_flows_into_probability_targets_like_torch(torch, reduction):
    """Distillation: teacher probabilities that require grad get PyTorch's gradient."""
    p = random_problem(5, soft=True)
    p.reduction = reduction
    for convention in ("uniform",):
        x, t, w = _torch_inputs(torch, p, requires_target_grad=True)
        ours = ls_xp.cross_entropy(x, t, 0.2, reduction=reduction, weight=w, axis=1, convention=convention)
        ours.sum().backward()
        x2, t2, w2 = _torch_inputs(torch, p, requires_target_grad=True)
        ref = torch.nn.functional.cross_entropy(x2, t2, weight=w2, reduction=reduction, label_smoothing=0.2)
        ref.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(t.grad.numpy(), t2.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kl", [False, True])
@pytest.mark.parametrize("convention", ["uniform", "others"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_and_gradgradcheck(torch, kl, convention, reduction):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(3, 4)), requires_grad=True)
    y = torch.tensor([0, 3, -100])
    t = torch.tensor(rng.dirichlet(np.ones(4), size=3), requires_grad=True)
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    fn = ls_xp.kl_divergence if kl else ls_xp.cross_entropy
    kw = dict(weight=w, reduction=reduction, convention=convention)
    assert torch.autograd.gradcheck(lambda a: fn(a, y, 0.2, **kw), (x,))
    assert torch.autograd.gradgradcheck(lambda a: fn(a, y, 0.2, **kw), (x,))
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, 0.2, **kw), (x, t))
    assert torch.autograd.gradgradcheck(lambda a, b: fn(a, b, 0.2, **kw), (x, t))
    m = torch.tensor([[True, True, False, True]] * 3)
    assert torch.autograd.gradgradcheck(lambda a: fn(a, torch.tensor([0, 3, 1]), 0.2, where=m, **kw), (x,))


def test_backward_keeps_only_the_gradient(torch):
    """The autograd node saves the logits (the caller's tensor, no copy) and keeps one N x K
    gradient, which the backward pass hands to ``.grad`` without a copy; PyTorch's native
    loss saves its N x K log-probabilities and more."""
    n, k = 64, 1000
    x = torch.randn(n, k, requires_grad=True)
    y = torch.randint(0, k, (n,))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = ls_xp.cross_entropy(x, y, 0.1)
    big = [t for t in saved if t.numel() >= n * k]
    assert [t.data_ptr() for t in big] == [x.data_ptr()]  # the input itself, not a copy
    kept = [t for t in loss.grad_fn.buffers if t is not None]
    assert [(t.shape, t.dtype) for t in kept] == [((n, k), torch.float32)]  # one N x K buffer
    ptr = kept[0].data_ptr()
    del kept
    loss.backward()
    assert x.grad.data_ptr() == ptr  # handed over, not copied
    expected = ls_xp.cross_entropy_grad(x.detach(), y, 0.1)
    np.testing.assert_allclose(x.grad.numpy(), expected.numpy(), rtol=1e-6)


def test_backward_scales_by_the_incoming_gradient(torch):
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (5,))
    (3.0 * ls_xp.cross_entropy(x, y, 0.1)).backward()
    g3 = x.grad.clone()
    x.grad = None
    rows = ls_xp.cross_entropy(x, y, 0.1, reduction="none")
    rows.backward(torch.arange(5.0, dtype=torch.float64))
    base = ls_xp.cross_entropy_grad(x.detach(), y, 0.1, reduction="none")
    np.testing.assert_allclose(x.grad.numpy(), (base * torch.arange(5.0)[:, None]).numpy(), rtol=1e-14)
    np.testing.assert_allclose(
        g3.numpy(), 3 * ls_xp.cross_entropy_grad(x.detach(), y, 0.1).numpy(), rtol=1e-14
    )


def test_retain_graph_twice(torch):
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 6, (4,))
    loss = ls_xp.cross_entropy(x, y, 0.1)
    loss.backward(retain_graph=True)
    loss.backward()
    expected = 2 * ls_xp.cross_entropy_grad(x.detach(), y, 0.1)
    np.testing.assert_allclose(x.grad.numpy(), expected.numpy(), rtol=1e-14)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_backward_gives_its_buffer_away_once(torch, scale):
    # the first backward hands the forward's gradient buffer to autograd (scaled in place);
    # later backwards through the retained graph recompute it and must not touch .grad
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(5, 7, dtype=torch.float64), -1).requires_grad_()
    loss = scale * ls_xp.cross_entropy(x, t, 0.2, reduction="sum")
    g1 = torch.autograd.grad(loss, (x, t), retain_graph=True)
    g2 = torch.autograd.grad(loss, (x, t), retain_graph=True)
    loss.backward()
    expected = scale * ls_xp.cross_entropy_grad(x.detach(), t.detach(), 0.2, reduction="sum")
    for first, second in zip(g1, g2, strict=True):
        assert first.data_ptr() != second.data_ptr()
        np.testing.assert_array_equal(first.numpy(), second.numpy())
    np.testing.assert_allclose(g1[0].numpy(), expected.numpy(), rtol=1e-14)
    np.testing.assert_allclose(x.grad.numpy(), expected.numpy(), rtol=1e-14)
    assert t.grad is not None and torch.equal(t.grad, g1[1])


def test_weight_gradient_is_refused_like_torch(torch):
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(NotImplementedError, match="gradient with respect to weight"):
        ls_xp.cross_entropy(x, torch.tensor([0, 1, 2, 0]), weight=w)


def test_no_grad_mode_and_plain_tensors_stay_plain(torch):
    x = torch.randn(4, 3, requires_grad=True)
    with torch.no_grad():
        assert ls_xp.cross_entropy(x, torch.tensor([0, 1, 2, 0])).grad_fn is None
    loss, grad = ls_xp.loss_and_grad(x, torch.tensor([0, 1, 2, 0]))
    assert loss.grad_fn is None and grad.grad_fn is None


def test_module_is_a_drop_in(torch):
    from ls_xp.torch import LabelSmoothingCrossEntropy

    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    ours = LabelSmoothingCrossEntropy(0.1, weight=w, ignore_index=3, axis=1)
    theirs = torch.nn.CrossEntropyLoss(weight=w, ignore_index=3, label_smoothing=0.1)
    x = torch.randn(5, 4, 2, requires_grad=True)
    y = torch.randint(0, 4, (5, 2))
    a, b = ours(x, y), theirs(x, y)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a, x)[0]
    gb = torch.autograd.grad(b, x)[0]
    torch.testing.assert_close(ga, gb)
    assert "weight" in dict(ours.named_buffers())
    assert "smoothing=0.1" in repr(ours)
    # the notebook's module
    nb = LabelSmoothingCrossEntropy(0.1)
    assert round(nb(torch.arange(12.0).reshape(4, 3), torch.tensor([0, 2, 1, 2])).item(), 4) == 1.1826


@pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo notes about lru_cache in array-api-compat
def test_torch_compile_of_a_small_model(torch):
    from ls_xp.torch import LabelSmoothingCrossEntropy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).double()
    crit = LabelSmoothingCrossEntropy(0.1)
    x = torch.randn(32, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (32,))

    def step(inp, tgt):
        return crit(model(inp), tgt)

    compiled = torch.compile(step, backend="eager" if not _inductor_ok(torch) else "inductor")
    loss_c = compiled(x, y)
    loss_c.backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
    ref.backward()
    torch.testing.assert_close(loss_c, ref)
    for gc, p in zip(grads_c, model.parameters(), strict=True):
        torch.testing.assert_close(gc, p.grad)


def _inductor_ok(torch) -> bool:
    """Inductor needs a C compiler on the CPU; fall back to dynamo's eager backend."""
    import shutil

    return shutil.which("cc") is not None or shutil.which("gcc") is not None


def test_torch_func_grad_and_vmap(torch):
    from torch.func import grad, vmap

    rng = np.random.default_rng(3)
    xs = torch.tensor(rng.normal(size=(3, 4, 5)))
    ys = torch.tensor(rng.integers(0, 5, (3, 4)))
    g = grad(lambda a: ls_xp.cross_entropy(a, ys[0], 0.1))(xs[0])
    np.testing.assert_allclose(g.numpy(), ls_xp.cross_entropy_grad(xs[0], ys[0], 0.1).numpy(), rtol=1e-13)
    per_problem = vmap(lambda a, b: ls_xp.cross_entropy(a, b, 0.1))(xs, ys)
    loop = torch.stack([ls_xp.cross_entropy(xs[i], ys[i], 0.1) for i in range(3)])
    np.testing.assert_allclose(per_problem.numpy(), loop.numpy(), rtol=1e-14)
    gv = vmap(grad(lambda a, b: ls_xp.cross_entropy(a, b, 0.1)))(xs, ys)
    gl = torch.stack([ls_xp.cross_entropy_grad(xs[i], ys[i], 0.1) for i in range(3)])
    np.testing.assert_allclose(gv.numpy(), gl.numpy(), rtol=1e-13)


# ----------------------------------------------------------------------------- JAX


@pytest.fixture
def jax():
    return pytest.importorskip("jax", reason="jax is not installed")


def _plain_jax(jax, p, smoothing=None):
    """optax-style autodiff reference: log_softmax, dense smoothed targets."""
    jnp = jax.numpy
    eps = p.smoothing if smoothing is None else smoothing
    k = p.logits.shape[1]
    w = jnp.ones(k) if p.weight is None else jnp.asarray(p.weight)
    wb = jnp.reshape(w, (1, k) + (1,) * (p.logits.ndim - 2))

    def f(x, t=None):
        lp = jax.nn.log_softmax(x, axis=1)
        if p.soft:
            q = (1 - eps) * (jnp.asarray(p.target) if t is None else t) + eps / k
            rows = -jnp.sum(wb * q * lp, axis=1)
            denom = rows.size
        else:
            y = jnp.asarray(p.target)
            valid = y != p.ignore_index
            q = (1 - eps) * jnp.moveaxis(jax.nn.one_hot(jnp.where(valid, y, 0), k), -1, 1) + eps / k
            rows = jnp.where(valid, -jnp.sum(wb * q * lp, axis=1), 0.0)
            denom = jnp.sum(jnp.where(valid, w[jnp.where(valid, y, 0)], 0.0))
        if p.reduction == "none":
            return rows
        return jnp.sum(rows) if p.reduction == "sum" else jnp.sum(rows) / denom

    return f


def _ours(jax, p):
    jnp = jax.numpy
    w = None if p.weight is None else jnp.asarray(p.weight)
    kw = dict(reduction=p.reduction, weight=w, ignore_index=p.ignore_index, axis=1)
    target = jnp.asarray(p.target)
    return lambda x: ls_xp.cross_entropy(x, target, p.smoothing, **kw)


@pytest.mark.parametrize("seed", range(12))
def test_jax_grad_equals_autodiff_of_plain_formula_and_torch(jax, seed):
    p = random_problem(seed)
    x = jax.numpy.asarray(p.logits)
    ours, plain = _ours(jax, p), _plain_jax(jax, p)

    def total(f):
        return lambda a: jax.numpy.sum(f(a))

    g = jax.grad(total(ours))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(total(plain))(x)), rtol=1e-12, atol=1e-15)
    if importlib.util.find_spec("torch") is not None:  # and PyTorch's autograd, where installed
        np.testing.assert_allclose(np.asarray(g), torch_reference(p)[1], rtol=1e-12, atol=1e-15)
    v, gv = jax.value_and_grad(total(ours))(x)
    np.testing.assert_allclose(np.asarray(gv), np.asarray(g), rtol=0, atol=0)
    jv, jg = jax.jit(jax.value_and_grad(total(ours)))(x)
    np.testing.assert_allclose(float(jv), float(v), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(jg), np.asarray(g), rtol=1e-13, atol=1e-16)


def test_jax_compiled_value_and_grad_keeps_one_temporary_of_the_logits_size(jax):
    """XLA's buffer assignment for jit(value_and_grad) holds one N x K temporary besides
    the gradient it returns (the exponentials, or the class indices that find the first
    maximum, whichever is wider: int64 with x64 on): a bound on peak memory that needs no
    timing (optax's holds 3 of the logits' size; gathering z_y from z instead of the
    logits once made ours 2)."""
    jnp = jax.numpy
    x = jnp.zeros((256, 4096), dtype=jnp.float32)
    y = jnp.zeros(256, dtype=jnp.int32)
    f = jax.jit(jax.value_and_grad(lambda a: ls_xp.cross_entropy(a, y, 0.1)))
    analysis = f.lower(x).compile().memory_analysis()
    if analysis is None:
        pytest.skip("this JAX backend gives no memory analysis")
    widest = max(x.dtype.itemsize, jnp.arange(1).dtype.itemsize)
    assert analysis.temp_size_in_bytes <= 1.1 * x.size * widest


def test_jax_first_order_gradient_comes_from_the_rule(jax):
    x = jax.numpy.ones((3, 4))
    jaxpr = str(jax.make_jaxpr(lambda a: ls_xp.cross_entropy(a, jax.numpy.asarray([0, 1, 2])))(x))
    assert "custom_jvp_call" in jaxpr


@pytest.mark.parametrize("seed", [0, 1, 4, 7])
def test_jax_jacfwd_and_hessian_match_plain_autodiff(jax, seed):
    p = random_problem(seed)
    p.logits = p.logits[:2, ...]
    p.target = p.target[:2, ...]
    x = jax.numpy.asarray(p.logits)
    ours, plain = _ours(jax, p), _plain_jax(jax, p)
    np.testing.assert_allclose(
        np.asarray(jax.jacfwd(ours)(x)), np.asarray(jax.jacfwd(plain)(x)), rtol=1e-11, atol=1e-14
    )
    np.testing.assert_allclose(
        np.asarray(jax.jacrev(ours)(x)), np.asarray(jax.jacrev(plain)(x)), rtol=1e-11, atol=1e-14
    )
    if p.reduction != "none":
        np.testing.assert_allclose(
            np.asarray(jax.hessian(ours)(x)), np.asarray(jax.hessian(plain)(x)), rtol=1e-10, atol=1e-13
        )


def test_jax_vmap_over_problems_equals_a_loop(jax):
    jnp = jax.numpy
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(4, 6, 5)))
    ys = jnp.asarray(rng.integers(0, 5, (4, 6)))
    f = lambda a, b: ls_xp.cross_entropy(a, b, 0.1)  # noqa: E731
    batched = jax.vmap(f)(xs, ys)
    loop = jnp.stack([f(xs[i], ys[i]) for i in range(4)])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(loop), rtol=1e-14)
    gb = jax.vmap(jax.grad(f))(xs, ys)
    gl = jnp.stack([jax.grad(f)(xs[i], ys[i]) for i in range(4)])
    np.testing.assert_allclose(np.asarray(gb), np.asarray(gl), rtol=1e-13)


def test_jax_gradient_into_soft_targets_and_weights(jax):
    jnp = jax.numpy
    p = random_problem(8, soft=True)
    p.reduction, p.weight = "mean", np.linspace(0.5, 2, p.logits.shape[1])
    x, t, w = jnp.asarray(p.logits), jnp.asarray(p.target), jnp.asarray(p.weight)
    ours = lambda a, b, c: ls_xp.cross_entropy(a, b, p.smoothing, weight=c, axis=1)  # noqa: E731
    plain_p = _plain_jax(jax, p)
    g = jax.grad(ours, argnums=(0, 1))(x, t, w)
    gp = jax.grad(plain_p, argnums=(0, 1))(x, t)
    for a, b in zip(g, gp, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)
    # weight: differentiate the formula (the rule falls back to autodiff there)
    gw = jax.grad(ours, argnums=2)(x, t, w)
    lp = jax.nn.log_softmax(x, axis=1)
    q = (1 - p.smoothing) * t + p.smoothing / p.logits.shape[1]

    def plain_w(wv):
        return -jnp.sum(jnp.reshape(wv, (1, -1) + (1,) * (x.ndim - 2)) * q * lp) / (x.size // x.shape[1])

    np.testing.assert_allclose(np.asarray(gw), np.asarray(jax.grad(plain_w)(w)), rtol=1e-12)


def test_double_backward_emits_no_warning():
    """The differentiable recomputation copies by arithmetic, not through torch.asarray,
    which warns on a tensor that requires grad."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = ls_xp.cross_entropy(x, torch.tensor([0, 3, 1, 2, 3]), 0.1)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(h).all()
