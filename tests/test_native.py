"""Every framework's way of calling: smoothing as a traced or differentiable value, inputs
from several libraries, -inf logits, scalars of any library, the PyTorch drop-in module."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ls_xp
from ls_xp._tools import backends as _backends

X = np.array([[0.3, -1.2, 2.0, 0.5], [1.0, 0.0, -0.5, 0.25], [-2.0, 1.5, 0.0, 0.1]])
Y = np.array([2, 0, 3])
T = np.array([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5]])

# ---------------------------------------------------------------- derivative in smoothing

DERIV_CASES = [
    (kl, conv, soft, red)
    for kl in (False, True)
    for conv in ("uniform", "others")
    for soft in (False, True)
    for red in ("mean", "sum", "none")
]


def _f(kl):
    return ls_xp.kl_divergence if kl else ls_xp.cross_entropy


def _fd(kl, conv, soft, red, eps, h=1e-6, **kw):
    """Central finite difference in eps, on NumPy float64."""
    f = _f(kl)
    t = T if soft else Y
    up = f(X, t, eps + h, convention=conv, reduction=red, **kw)
    down = f(X, t, eps - h, convention=conv, reduction=red, **kw)
    return (np.asarray(up) - np.asarray(down)) / (2 * h)


@pytest.mark.parametrize(("kl", "conv", "soft", "red"), DERIV_CASES)
def test_torch_smoothing_tensor_gets_the_exact_derivative(kl, conv, soft, red):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    w = np.array([1.0, 2.0, 0.5, 1.5])
    s = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(T if soft else Y)
    loss = _f(kl)(torch.tensor(X), t, s, convention=conv, reduction=red, weight=torch.tensor(w))
    loss.sum().backward()
    expected = np.sum(_fd(kl, conv, soft, red, 0.3, weight=w))
    np.testing.assert_allclose(s.grad.item(), expected, rtol=1e-7, atol=1e-9)


def test_torch_smoothing_and_logits_gradients_together():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = torch.tensor(X, requires_grad=True)
    s = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    ls_xp.cross_entropy(x, torch.tensor(Y), s).backward()
    x2 = torch.tensor(X, requires_grad=True)
    torch.nn.functional.cross_entropy(x2, torch.tensor(Y), label_smoothing=0.2).backward()
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(s.grad.item(), float(_fd(False, "uniform", False, "mean", 0.2)), rtol=1e-7)
    # torch.autograd.gradcheck in float64 on the smoothing input
    assert torch.autograd.gradcheck(
        lambda e: ls_xp.kl_divergence(torch.tensor(X), torch.tensor(Y), e, convention="others"),
        (torch.tensor(0.4, dtype=torch.float64, requires_grad=True),),
    )


@pytest.mark.parametrize(("kl", "conv", "soft", "red"), DERIV_CASES)
def test_jax_grad_jit_and_vmap_in_smoothing(kl, conv, soft, red):
    jax = pytest.importorskip("jax", reason="jax is not installed")
    jnp = jax.numpy
    x, t = jnp.asarray(X), jnp.asarray(T if soft else Y)

    def f(s):
        return jnp.sum(_f(kl)(x, t, s, convention=conv, reduction=red))

    expected = float(np.sum(_fd(kl, conv, soft, red, 0.3)))
    np.testing.assert_allclose(float(jax.grad(f)(0.3)), expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(float(jax.jit(jax.grad(f))(0.3)), expected, rtol=1e-7, atol=1e-9)
    _, tangent = jax.jvp(f, (0.3,), (1.0,))
    np.testing.assert_allclose(float(tangent), expected, rtol=1e-7, atol=1e-9)
    batched = jax.vmap(jax.grad(f))(jnp.asarray([0.3, 0.6]))
    np.testing.assert_allclose(
        np.asarray(batched), [expected, float(np.sum(_fd(kl, conv, soft, red, 0.6)))], rtol=1e-7, atol=1e-9
    )


def test_jax_traced_smoothing_under_jit_and_out_of_range_is_nan():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    x = jax.numpy.asarray(X)
    step = jax.jit(lambda x, s: ls_xp.cross_entropy(x, Y, s))
    np.testing.assert_allclose(float(step(x, 0.1)), float(ls_xp.cross_entropy(X, Y, 0.1)), rtol=1e-6)
    assert math.isnan(float(step(x, 1.5)))
    assert math.isnan(float(step(x, -0.1)))
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\]"):
        ls_xp.cross_entropy(x, Y, jax.numpy.asarray(1.5))


def test_smoothing_must_be_a_scalar():
    with pytest.raises(ValueError, match=r"smoothing must be a scalar \(0-d\), got shape \(2,\)"):
        ls_xp.cross_entropy(X, Y, np.array([0.1, 0.2]))


# ---------------------------------------------------------------- inputs of several libraries


def _numpy_like(a):
    return np.asarray(a)


@pytest.mark.parametrize("form", ["numpy", "list", "scalar"])
def test_numpy_and_python_inputs_are_converted_to_the_logits_library(xb, form):
    x = xb.asarray(X)
    w = np.array([1.0, 2.0, 0.5, 1.5])
    m = np.array([True, True, True, True])
    expected = xb.np(ls_xp.cross_entropy(x, xb.asarray(Y), 0.1, weight=xb.asarray(w), reduction="none"))
    if form == "scalar":  # one position: 1-D logits and a Python int
        got = ls_xp.cross_entropy(xb.asarray(X[0]), int(Y[0]), 0.1, weight=w.tolist(), reduction="none")
        np.testing.assert_allclose(xb.np(got), expected[0], rtol=1e-12)
        return
    conv = _numpy_like if form == "numpy" else (lambda a: a.tolist())
    got = ls_xp.cross_entropy(x, conv(Y), 0.1, weight=conv(w), where=conv(m), reduction="none")
    assert type(got) is type(expected) or xb.name != "numpy"
    np.testing.assert_allclose(xb.np(got), expected, rtol=1e-12)
    _loss, grad = ls_xp.loss_and_grad(x, conv(Y), 0.1, weight=conv(w))
    _ref_loss, ref_grad = ls_xp.loss_and_grad(x, xb.asarray(Y), 0.1, weight=xb.asarray(w))
    np.testing.assert_allclose(xb.np(grad), xb.np(ref_grad), rtol=1e-12)


def _installed():
    out = []
    for t in _backends.discover(None):
        if isinstance(t, _backends.Unavailable) or t.backend in ("numpy",):
            continue
        if t.backend == "array_api_strict" and t.device_label != "CPU_DEVICE":
            continue
        if "cpu" not in t.label.lower():
            continue
        out.append(t)
    return out


PAIRS = [(a, b) for a in _installed() for b in _installed() if a.backend != b.backend]


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a.backend}-{b.backend}" for a, b in PAIRS])
def test_arrays_of_another_library_are_named_in_the_error(a, b):
    x = a.xp.asarray(X, device=a.device)
    y = b.xp.asarray(Y, device=b.device)
    with pytest.raises(
        TypeError, match=r"target is a \w+ array but logits is a \w+ array; convert target to a"
    ):
        ls_xp.cross_entropy(x, y, 0.1)
    w = b.xp.asarray(np.ones(4), device=b.device)
    with pytest.raises(TypeError, match=r"weight is a \w+ array but logits is"):
        ls_xp.cross_entropy(x, a.xp.asarray(Y, device=a.device), 0.1, weight=w)


def test_arrays_on_another_device_are_named_in_the_error():
    xs = pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    x = xs.asarray(X, device=xs.Device("device1"))
    with pytest.raises(
        ValueError, match=r"target is on device .*CPU_DEVICE.* but logits is on device .*device1"
    ):
        ls_xp.cross_entropy(x, xs.asarray(Y), 0.1)
    with pytest.raises(ValueError, match=r"where is on device"):
        ls_xp.cross_entropy(x, xs.asarray(Y, device=x.device), 0.1, where=xs.asarray([True] * 4))


def test_jax_logits_with_numpy_labels_eager_and_jit():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    x = jax.numpy.asarray(X)
    eager = ls_xp.cross_entropy(x, Y, 0.1, weight=np.ones(4), where=np.ones(4, dtype=bool))
    jitted = jax.jit(lambda x: ls_xp.cross_entropy(x, Y, 0.1, weight=np.ones(4)))(x)
    np.testing.assert_allclose(float(eager), float(jitted), rtol=1e-6)
    g = jax.grad(lambda x: ls_xp.cross_entropy(x, Y, 0.1))(x)
    np.testing.assert_allclose(np.asarray(g), ls_xp.cross_entropy_grad(X, Y, 0.1), rtol=1e-5, atol=1e-7)


def test_torch_logits_that_require_grad_with_numpy_labels_and_weight():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = torch.tensor(X, requires_grad=True)
    w = np.array([1.0, 2.0, 0.5, 1.5])
    ls_xp.cross_entropy(x, Y, 0.1, weight=w).backward()
    ref = torch.tensor(X, requires_grad=True)
    torch.nn.functional.cross_entropy(
        ref, torch.tensor(Y), weight=torch.tensor(w), label_smoothing=0.1
    ).backward()
    np.testing.assert_allclose(x.grad.numpy(), ref.grad.numpy(), rtol=1e-12)


def test_smooth_labels_and_mixup_take_scalars_of_any_library():
    y = np.array([0, 2, 1])
    q = ls_xp.smooth_labels(y, np.array(y.max() + 1), np.float32(0.3))
    np.testing.assert_allclose(q[0], [0.8, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(ls_xp.mixup_targets(y, np.int64(3), np.float32(0.5))[0], [0.5, 0.5, 0.0])
    with pytest.raises(TypeError, match=r"num_classes must be an integer, got 3\.0"):
        ls_xp.smooth_labels(y, 3.0)
    with pytest.raises(TypeError, match="lam must be a real number, got True"):
        ls_xp.mixup_targets(y, 3, True)


# ---------------------------------------------------------------- scalars and flags


def test_integer_and_real_scalars_of_any_library():
    ref = ls_xp.cross_entropy(X, Y, 0.1, ignore_index=-100, chunk_size=2)
    got = ls_xp.cross_entropy(X, Y, np.float64(0.1), ignore_index=np.int64(-100), chunk_size=np.int64(2))
    assert got == ref
    got = ls_xp.cross_entropy(X, Y, np.array(0.1), ignore_index=np.array(-100), axis=np.int32(-1))
    assert got == ref


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"log_probs": "no"}, "log_probs must be True or False, got 'no'"),
        ({"log_probs": 1}, "log_probs must be True or False, got 1"),
        ({"ignore_index": True}, "ignore_index must be an integer, got True"),
        ({"ignore_index": -100.0}, "ignore_index must be an integer, got -100.0"),
        ({"chunk_size": 2.5}, "chunk_size must be an integer, got 2.5"),
        ({"axis": True}, "axis must be an integer, got True"),
    ],
)
def test_booleans_only_where_booleans_are_expected(kw, message):
    with pytest.raises(TypeError, match=message):
        ls_xp.cross_entropy(X, Y, 0.1, **kw)


def test_overwrite_logits_must_be_a_flag():
    with pytest.raises(TypeError, match="overwrite_logits must be True or False, got 'yes'"):
        ls_xp.loss_and_grad(X.copy(), Y, 0.1, overwrite_logits="yes")


def test_dask_unknown_chunk_sizes_say_what_to_do():
    da = pytest.importorskip("dask.array", reason="dask is not installed")
    x = da.from_array(X, chunks=2)
    x = x[x[:, 0] > -10]  # boolean indexing: unknown row counts
    with pytest.raises(ValueError, match=r"unknown chunk sizes: call \.compute_chunk_sizes\(\) first"):
        ls_xp.cross_entropy(x, Y, 0.1)
    x.compute_chunk_sizes()
    np.testing.assert_allclose(float(ls_xp.cross_entropy(x, Y, 0.1)), float(ls_xp.cross_entropy(X, Y, 0.1)))


# ---------------------------------------------------------------- -inf logits, against mpmath

NINF = -math.inf
# row 0: -inf on the target class; row 1: -inf on another class; row 2: finite
X_INF = np.array([[NINF, 1.0, 2.0, 0.5], [0.5, NINF, -1.0, 2.0], [0.1, 0.2, 0.3, 0.4]])
Y_INF = np.array([0, 3, 1])
T_INF = np.array([[0.0, 0.5, 0.5, 0.0], [0.2, 0.0, 0.3, 0.5], [0.25, 0.25, 0.25, 0.25]])
INF_CASES = [
    # (name, target, eps, convention, weight)
    ("target -inf, weight 0", Y_INF, 0.0, "uniform", [0.0, 1.0, 1.0, 1.0]),
    ("target -inf, weight 0, eps", Y_INF, 0.2, "uniform", [0.0, 0.0, 1.0, 1.0]),
    ("target -inf, others eps=1", Y_INF, 1.0, "others", [1.0, 0.0, 1.0, 1.0]),
    ("target -inf carries mass", Y_INF, 0.0, "uniform", None),
    ("other -inf, eps=0", np.array([1, 3, 1]), 0.0, "others", None),
    ("other -inf, eps>0", np.array([1, 3, 1]), 0.1, "uniform", None),
    ("probabilities 0 at -inf", T_INF, 0.0, "uniform", None),
    ("probabilities, weight 0 at -inf", T_INF, 0.3, "others", [0.0, 0.0, 1.0, 1.0]),
    ("probabilities, mass at -inf", T_INF, 0.3, "uniform", None),
]


def _exact_inf(x, t, eps, conv, weight, reduction, log_probs, kl):
    from ls_xp._tools import exact as _exact

    target = t.tolist()
    loss, grad = _exact.evaluate(
        x.tolist(), target, eps, reduction=reduction, convention=conv, weight=weight,
        log_probs=log_probs, kl=kl,
    )  # fmt: skip
    loss = np.array([float(v) for v in np.ravel(np.array(loss, dtype=object))])
    return loss, np.array([[float(v) for v in row] for row in grad])


@pytest.mark.parametrize("kl", [False, True])
@pytest.mark.parametrize("log_probs", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", INF_CASES, ids=[c[0] for c in INF_CASES])
def test_neg_inf_logits_follow_the_rule(xb, fdtype, case, reduction, log_probs, kl):
    pytest.importorskip("mpmath", reason="mpmath is not installed (the exact reference)")
    _, t, eps, conv, weight = case
    x = X_INF if not log_probs else X_INF - 3.0  # log-probabilities: any non-positive values
    ex_loss, ex_grad = _exact_inf(x, t, eps, conv, weight, reduction, log_probs, kl)
    fn = ls_xp.kl_divergence if kl else ls_xp.cross_entropy
    kw = {"convention": conv, "reduction": reduction, "log_probs": log_probs}
    w = None if weight is None else xb.asarray(np.array(weight), fdtype)
    tt = xb.asarray(t, fdtype) if t.dtype.kind == "f" else xb.asarray(t)
    got = xb.np(fn(xb.asarray(x, fdtype), tt, eps, weight=w, **kw)).ravel()
    rtol = 1e-12 if fdtype == "float64" else 1e-5
    assert np.array_equal(np.isposinf(got), np.isposinf(ex_loss)), (got, ex_loss)
    assert not np.any(np.isnan(got)) or np.all(np.isnan(ex_loss))
    fin = np.isfinite(ex_loss)
    np.testing.assert_allclose(got[fin], ex_loss[fin], rtol=rtol, atol=rtol * 1e-3)
    grad = xb.np(ls_xp.cross_entropy_grad(xb.asarray(x, fdtype), tt, eps, weight=w, **kw))
    if np.all(np.isfinite(ex_grad)):
        np.testing.assert_allclose(grad, ex_grad, rtol=rtol, atol=rtol * 1e-2)


def test_the_issue_example_is_zero_not_nan():
    x = np.array([[-np.inf, 1.0, 2.0]])
    out = ls_xp.cross_entropy(x, np.array([0]), 0.0, weight=np.array([0.0, 1, 1]), reduction="none")
    assert out.tolist() == [0.0]


# ---------------------------------------------------------------- "others" on the whole eps range


@pytest.mark.parametrize("eps", [0.0, 0.3, 0.5, 0.75, 0.9, 0.999, 1.0])
def test_others_convention_keeps_full_accuracy_for_every_eps(xb, eps):
    """For eps > (K-1)/K, 1 - eps - eps/(K-1) < 0: the loss is assembled from non-negative
    terms anyway (the classes other than y are summed separately)."""
    pytest.importorskip("mpmath", reason="mpmath is not installed (the exact reference)")
    from ls_xp._tools import exact as _exact

    rng = np.random.default_rng(3)
    x = np.concatenate([np.array([[30.0, 0.0, 29.5], [0.0, 30.0, 30.0]]), rng.normal(size=(4, 3)) * 20])
    y = np.array([1, 0, 2, 1, 0, 2])
    ex = _exact.evaluate(x.tolist(), y.tolist(), eps, reduction="none", convention="others")[0]
    ex = np.array([float(v) for v in ex])
    got = xb.np(ls_xp.cross_entropy(xb.asarray(x), xb.asarray(y), eps, reduction="none", convention="others"))
    err = np.max(np.abs(got - ex) / np.spacing(ex))
    assert err <= 8, f"{err:.1f} ulp"
    ex_kl = np.array(
        [
            float(v)
            for v in _exact.evaluate(
                x.tolist(), y.tolist(), eps, reduction="none", convention="others", kl=True
            )[0]
        ]
    )
    got_kl = xb.np(
        ls_xp.kl_divergence(xb.asarray(x), xb.asarray(y), eps, reduction="none", convention="others")
    )
    # the KL form is the cross-entropy minus the entropy of q: accurate relative to those
    np.testing.assert_allclose(got_kl, ex_kl, rtol=1e-12, atol=8 * np.finfo(float).eps * np.max(ex))


def test_the_issue_accuracy_example():
    got = float(ls_xp.cross_entropy(np.array([[30.0, 0.0]]), np.array([1]), 1.0, convention="others"))
    assert abs(got - 9.357622968839737e-14) <= 2 * np.spacing(9.357622968839737e-14)


# ---------------------------------------------------------------- torch.nn.CrossEntropyLoss drop-in


def _module_inputs(torch, kind):
    g = torch.Generator().manual_seed(0)
    if kind == "2d":
        return torch.randn(6, 5, generator=g, dtype=torch.float64), torch.tensor([0, 4, 2, 1, 3, 2])
    if kind == "nd":
        return torch.randn(3, 5, 2, 4, generator=g, dtype=torch.float64), torch.randint(
            0, 5, (3, 2, 4), generator=g
        )
    if kind == "unbatched":
        return torch.randn(5, generator=g, dtype=torch.float64), torch.tensor(3)
    if kind == "probabilities":
        x = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
        return x, torch.softmax(torch.randn(4, 5, 3, generator=g, dtype=torch.float64), dim=1)
    raise AssertionError(kind)


MODULE_CASES = [
    ("2d", {}),
    ("2d", {"label_smoothing": 0.1}),
    ("2d", {"weight": [1.0, 2.0, 0.5, 1.5, 1.0], "label_smoothing": 0.2, "reduction": "sum"}),
    ("2d", {"ignore_index": 2, "reduction": "none", "label_smoothing": 0.05}),
    ("nd", {"label_smoothing": 0.1}),
    ("nd", {"weight": [1.0, 2.0, 0.5, 1.5, 1.0], "ignore_index": 1}),
    ("unbatched", {"label_smoothing": 0.3}),
    ("probabilities", {"label_smoothing": 0.1, "reduction": "mean"}),
    ("probabilities", {"weight": [1.0, 2.0, 0.5, 1.5, 1.0], "reduction": "none"}),
]


@pytest.mark.parametrize(("kind", "kw"), MODULE_CASES)
def test_cross_entropy_loss_module_equals_torch(kind, kw):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from ls_xp.torch import CrossEntropyLoss

    kw = dict(kw)
    if "weight" in kw:
        kw["weight"] = torch.tensor(kw["weight"], dtype=torch.float64)
    ours, theirs = CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw)
    x, y = _module_inputs(torch, kind)
    xa, xb_ = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ours(xa, y), theirs(xb_, y)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(xa.grad, xb_.grad, rtol=1e-12, atol=1e-14)


def test_cross_entropy_loss_module_constructor_state_dict_and_repr():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from ls_xp.torch import CrossEntropyLoss

    w = torch.tensor([1.0, 2.0, 3.0])
    ours = CrossEntropyLoss(w, None, 1, None, "sum", 0.1)  # PyTorch's positional order
    theirs = torch.nn.CrossEntropyLoss(w, None, 1, None, "sum", 0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert (ours.ignore_index, ours.reduction, ours.label_smoothing) == (1, "sum", 0.1)
    assert repr(ours) == repr(theirs) == "CrossEntropyLoss()"
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"weight"}
    fresh = CrossEntropyLoss(torch.zeros(3))
    fresh.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(fresh.weight, w)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        assert CrossEntropyLoss(size_average=False).reduction == "sum"  # the legacy arguments too
    assert "convention='others'" in repr(CrossEntropyLoss(convention="others"))
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    model.loss = CrossEntropyLoss(w)
    assert "loss.weight" in model.state_dict()


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"label_smoothing": 1.5}, ValueError, r"smoothing must be in \[0, 1\]"),
        ({"convention": "fairseq"}, ValueError, "convention must be one of"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
    ],
)
def test_modules_check_their_arguments_at_construction(kw, error, message):
    pytest.importorskip("torch", reason="torch is not installed")
    from ls_xp.torch import CrossEntropyLoss, LabelSmoothingCrossEntropy

    with pytest.raises(error, match=message):
        CrossEntropyLoss(**kw)
    kw = {("smoothing" if k == "label_smoothing" else k): v for k, v in kw.items()}
    with pytest.raises(error, match=message):
        LabelSmoothingCrossEntropy(**kw)


def test_label_smoothing_module_takes_pytorchs_name_and_refuses_a_positional_weight():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from ls_xp.torch import LabelSmoothingCrossEntropy

    x, y = torch.arange(12.0).reshape(4, 3), torch.tensor([0, 2, 1, 2])
    assert LabelSmoothingCrossEntropy(label_smoothing=0.1)(x, y).item() == pytest.approx(1.1826059644)
    with pytest.raises(TypeError, match="not weight"):
        LabelSmoothingCrossEntropy(torch.ones(3))


def test_the_readme_optax_row_with_a_class_mask():
    optax = pytest.importorskip("optax", reason="optax is not installed")
    jax = pytest.importorskip("jax", reason="jax is not installed")
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 6)), np.array([0, 1, 2, 3, 4])
    m = rng.random((5, 6)) < 0.7
    m[np.arange(5), y] = True
    labels = optax.smooth_labels(jax.nn.one_hot(y, 6, dtype=jnp.float64), 0.2, where=jnp.asarray(m))
    theirs = optax.softmax_cross_entropy(jnp.asarray(x), labels, where=jnp.asarray(m)).mean()
    ours = ls_xp.cross_entropy(jnp.asarray(x), y, 0.2, where=m)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-12)


def test_a_1d_where_is_one_class_mask_for_every_row():
    """Unlike optax, where a 1-D ``where`` of length N masks examples (documented)."""
    x = np.random.default_rng(1).normal(size=(4, 4))
    y = np.array([0, 1, 1, 0])
    m = np.array([True, True, False, True])
    np.testing.assert_array_equal(
        ls_xp.cross_entropy(x, y, 0.1, where=m, reduction="none"),
        ls_xp.cross_entropy(x, y, 0.1, where=np.broadcast_to(m, (4, 4)), reduction="none"),
    )
