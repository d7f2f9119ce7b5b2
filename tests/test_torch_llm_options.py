"""z_loss, softcap, shift and return_aux on PyTorch tensors: autograd, forward mode and the
compiled operator give the generic core's values and gradients."""

from __future__ import annotations

import numpy as np
import pytest

import ls_xp

torch = pytest.importorskip("torch", reason="torch is not installed")

CASES = [
    {"z_loss": 1e-2},
    {"softcap": 2.0},
    {"shift": 1},
    {"shift": 2, "reduction": "none"},
    {"z_loss": 1e-2, "softcap": 3.0, "shift": 1, "reduction": "sum"},
]


def _data(soft):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5))
    t = rng.dirichlet(np.ones(5), (2, 6)) if soft else rng.integers(0, 5, (2, 6))
    return x, t


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kw", CASES)
def test_autograd_equals_the_core(kw, soft):
    x, t = _data(soft)
    want, want_grad = ls_xp.loss_and_grad(x, t, 0.1, **kw)
    xt = torch.tensor(x, requires_grad=True)
    loss = ls_xp.cross_entropy(xt, torch.tensor(t), 0.1, **kw)
    loss.sum().backward()
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(xt.grad.numpy(), want_grad, rtol=1e-9, atol=1e-12)


def test_gradcheck_of_probability_targets_with_softcap():
    """Probability targets that require grad keep the softcap's chain rule unfolded (their
    gradient shares the row factors): gradcheck in both arguments."""
    x, t = (torch.tensor(a) for a in _data(True))
    x.requires_grad_()
    t.requires_grad_()

    def f(a, b):
        return ls_xp.cross_entropy(a, b, 0.1, softcap=2.0, z_loss=1e-2, reduction="sum")

    assert torch.autograd.gradcheck(f, (x, t))


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kw", CASES)
def test_forward_mode_equals_finite_differences(kw, soft):
    from torch import func

    x, t = (torch.tensor(a) for a in _data(soft))
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def f(a):
        return ls_xp.cross_entropy(a, t, 0.1, **kw)

    tangent = func.jvp(f, (x,), (v,))[1]
    numeric = (f(x + 1e-6 * v) - f(x - 1e-6 * v)) / 2e-6
    torch.testing.assert_close(tangent, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kw", CASES)
def test_compiled_operator_equals_the_core(kw, soft):
    x, t = _data(soft)
    want, want_grad = ls_xp.loss_and_grad(x, t, 0.1, **kw)
    torch._dynamo.reset()
    xt = torch.tensor(x, requires_grad=True)
    compiled = torch.compile(
        lambda a, b: ls_xp.cross_entropy(a, b, 0.1, **kw), backend="aot_eager", fullgraph=True
    )
    loss = compiled(xt, torch.tensor(t))
    loss.sum().backward()
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(xt.grad.numpy(), want_grad, rtol=1e-9, atol=1e-12)


def test_return_aux_with_autograd():
    x, y = _data(False)
    want, want_aux = ls_xp.cross_entropy(x, y, 0.1, z_loss=1e-3, return_aux=True)
    xt = torch.tensor(x, requires_grad=True)
    loss, aux = ls_xp.cross_entropy(xt, torch.tensor(y), 0.1, z_loss=1e-3, return_aux=True)
    loss.backward()
    np.testing.assert_allclose(loss.detach().numpy(), want, rtol=1e-12)
    for got, exp in zip(aux, want_aux, strict=True):
        assert not got.requires_grad
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-12)
    _, grad = ls_xp.loss_and_grad(x, y, 0.1, z_loss=1e-3)
    np.testing.assert_allclose(xt.grad.numpy(), grad, rtol=1e-10)


LINEAR_CASES = [*CASES, {"z_loss": 1e-2, "softcap": 3.0, "shift": 1, "reduction": "none", "chunk_size": 3}]


def _linear_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 7, 4)), rng.normal(size=(9, 4)), rng.normal(size=9), rng.integers(0, 9, (2, 7))


@pytest.mark.parametrize("kw", LINEAR_CASES)
def test_fused_linear_autograd_equals_the_core(kw):
    h, w_cls, b, y = _linear_data()
    want = ls_xp.linear_loss_and_grad(h, w_cls, y, 0.1, bias=b, **kw)
    ht, wt, bt = (torch.tensor(a, requires_grad=True) for a in (h, w_cls, b))
    loss = ls_xp.linear_cross_entropy(ht, wt, torch.tensor(y), 0.1, bias=bt, **kw)
    loss.sum().backward()
    np.testing.assert_allclose(loss.detach().numpy(), want[0], rtol=1e-10)
    for got, exp in zip((ht.grad, wt.grad, bt.grad), want[1:], strict=True):
        np.testing.assert_allclose(got.numpy(), exp, rtol=1e-9, atol=1e-12)


def test_fused_linear_return_aux_with_autograd():
    h, w_cls, b, y = _linear_data()
    _, want_aux = ls_xp.linear_cross_entropy(h, w_cls, y, 0.1, bias=b, z_loss=1e-3, return_aux=True)
    ht = torch.tensor(h, requires_grad=True)
    loss, aux = ls_xp.linear_cross_entropy(
        ht, torch.tensor(w_cls), torch.tensor(y), 0.1, bias=torch.tensor(b), z_loss=1e-3, return_aux=True
    )
    loss.backward()
    for got, exp in zip(aux, want_aux, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=1e-10)


def test_the_modules_take_the_options_keyword_only():
    from ls_xp.torch import CrossEntropyLoss, LinearCrossEntropyLoss

    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 5, (6,))
    module = CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-2, softcap=3.0, return_aux=True)
    loss, aux = module(x, y)
    want, waux = ls_xp.cross_entropy(x, y, 0.1, axis=1, z_loss=1e-2, softcap=3.0, return_aux=True)
    torch.testing.assert_close(loss, want) and torch.testing.assert_close(aux.lse, waux.lse)
    assert "z_loss=0.01" in repr(module) and int(aux.count) == 6
    h, head, t = (
        torch.randn(2, 4, 3, dtype=torch.float64),
        torch.nn.Linear(3, 7).double(),
        torch.randint(0, 7, (2, 4)),
    )
    fused = LinearCrossEntropyLoss(head, label_smoothing=0.1, shift=1, z_loss=1e-3, softcap=5.0)(h, t)
    want = ls_xp.cross_entropy(head(h), t, 0.1, shift=1, z_loss=1e-3, softcap=5.0)
    torch.testing.assert_close(fused, want)
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
        CrossEntropyLoss(z_loss=-1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torchs_cpu_cap_is_within_three_eps_c_of_the_cap(dtype):
    """PyTorch's CPU plan caps the logits as 2c sigmoid(2x / c) - c, in their buffer: against
    mpmath's c tanh(x / c), within 3 eps c absolute (eps the machine epsilon) from tiny to
    saturated logits, and
    exact at the ends (-c and c where the cap saturates, 0 at 0, NaN at NaN)."""
    mpmath = pytest.importorskip("mpmath", reason="mpmath is not installed")
    import array_api_compat.torch as xp

    from ls_xp._softcap import cap

    c = 30.0
    rng = np.random.default_rng(0)
    mags = np.concatenate([10.0 ** rng.uniform(-30, 4, 2000), rng.uniform(0, 60, 3000), [0.0, 1e-300, 1e30]])
    x = np.concatenate([mags, -mags]).astype(dtype)
    buf = torch.from_numpy(x.copy())
    got = cap(xp, buf, c, inplace=True, own=True, x_scale=1.0, plan="cpu")
    assert got is buf
    want = np.array([float(c * mpmath.tanh(mpmath.mpf(float(v)) / c)) for v in x])
    assert np.max(np.abs(got.numpy().astype(np.float64) - want)) <= 3 * c * np.finfo(dtype).eps
    for c_other in (2.0, c):  # the caller's logits (at c = 2 the argument 2x / c is x itself)
        x0 = torch.from_numpy(x.copy())
        out = cap(xp, x0, c_other, inplace=True, own=False, x_scale=1.0, plan="cpu")
        assert out is not x0 and torch.equal(x0, torch.from_numpy(x))
        want_other = cap(xp, x0.clone(), c_other, inplace=True, own=True, x_scale=1.0, plan="cpu")
        torch.testing.assert_close(out, want_other, rtol=0, atol=0, equal_nan=True)
    ends = torch.tensor([np.inf, -np.inf, 1e4, -1e4, 0.0, np.nan], dtype=getattr(torch, dtype))
    ends = cap(xp, ends, c, inplace=True, own=True, x_scale=1.0, plan="cpu")
    assert ends[:5].tolist() == [c, -c, c, -c, 0.0] and bool(torch.isnan(ends[5]))
