"""The door: which library an evaluation runs in, and the messages for bad inputs."""

from __future__ import annotations

import importlib.util
import itertools
import tracemalloc
import warnings

import numpy as np
import pytest

import ls_xp

X = np.arange(12.0).reshape(4, 3)
Y = np.array([0, 2, 1, 2])
WANT = 1.1826059644443803  # the original notebook's smoothed loss

LIBRARIES = [m for m in ("torch", "jax", "dask", "array_api_strict") if importlib.util.find_spec(m)]


def _as(lib: str, a: np.ndarray):
    if lib == "numpy":
        return a
    if lib == "torch":
        import torch

        return torch.asarray(a)
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    if lib == "dask":
        import dask.array as da

        return da.from_array(a)
    import array_api_strict

    return array_api_strict.asarray(a)


def _library(a) -> str:
    name = type(a).__module__.split(".")[0]
    return {"jaxlib": "jax"}.get(name, name)


@pytest.mark.parametrize("other", LIBRARIES)
@pytest.mark.parametrize("which", ["logits", "target"])
def test_numpy_joins_any_other_library(other, which):
    """NumPy logits with another library's target (and the reverse) evaluate in the other
    library: NumPy and Python values join any library."""
    x, y = (X, _as(other, Y)) if which == "logits" else (_as(other, X), Y)
    loss = ls_xp.cross_entropy(x, y, 0.1)
    assert _library(loss) == other
    got = loss.compute() if other == "dask" else loss
    assert float(got) == pytest.approx(WANT, rel=1e-12)


@pytest.mark.parametrize("other", LIBRARIES)
def test_numpy_logits_join_the_library_of_weight_and_where(other):
    w = _as(other, np.array([1.0, 2.0, 0.5]))
    loss = ls_xp.cross_entropy(X, Y, 0.1, weight=w)
    assert _library(loss) == other
    m = _as(other, np.array([True, True, True]))
    _, grad = ls_xp.loss_and_grad(X, Y, 0.1, where=m)
    assert _library(grad) == other


@pytest.mark.parametrize(("a", "b"), list(itertools.permutations(LIBRARIES, 2)))
def test_two_non_numpy_libraries_are_an_error_naming_both(a, b):
    with pytest.raises(TypeError, match=rf"target is a {b} array but logits is a {a} array; convert target"):
        ls_xp.cross_entropy(_as(a, X), _as(b, Y), 0.1)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_check_grads_with_numpy_primals():
    """jax.test_util.check_grads evaluates the loss on NumPy primals with JAX labels
    closed over, as it does for optax."""
    import jax.numpy as jnp
    from jax.test_util import check_grads

    y = jnp.asarray(Y)
    x = np.random.default_rng(0).normal(size=(4, 3))
    check_grads(lambda v: ls_xp.cross_entropy(v, y, 0.1), (x,), order=2, modes=["fwd", "rev"])
    check_grads(lambda v: ls_xp.kl_divergence(v, y, 0.2, convention="others"), (x,), order=1)


def test_list_logits_name_the_argument():
    with pytest.raises(TypeError, match=r"logits must be an array .* got list; convert it first"):
        ls_xp.cross_entropy(X.tolist(), Y, 0.1)
    with pytest.raises(TypeError, match=r"hidden must be an array .* got list"):
        ls_xp.linear_cross_entropy(X.tolist(), np.ones((5, 3)), Y, 0.1)


def test_float_labels_say_the_fix():
    fix = r"integer dtype, got float64; convert it, e\.g\. target\.astype\(int\)"
    with pytest.raises(TypeError, match=fix):
        ls_xp.cross_entropy(X, Y.astype(float), 0.1)


def test_ignore_index_none_says_what_to_pass():
    with pytest.raises(TypeError, match=r"ignore_index must be an integer, got None; .* -100"):
        ls_xp.cross_entropy(X, Y, 0.1, ignore_index=None)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_is_called_jax_in_messages():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import jax.numpy as jnp

    with pytest.raises(TypeError) as info:
        ls_xp.cross_entropy(torch.asarray(X), jnp.asarray(Y), 0.1)
    assert "jaxlib" not in str(info.value) and "jax array" in str(info.value)


def test_read_only_logits_are_blocked(tmp_path):
    """Logits read with np.load(mmap_mode="r") (or any read-only array) are evaluated in
    blocks like any other: "none" over 20000 x 1000 float32 (76 MiB) holds a few
    block-sized temporaries (2 MiB each; a fixed amount, whatever N), not a copy."""
    rng = np.random.default_rng(0)
    n, k = 20_000, 1000
    path = tmp_path / "logits.npy"
    np.save(path, rng.standard_normal((n, k), dtype=np.float32))
    y = rng.integers(0, k, n)
    x = np.load(path, mmap_mode="r")
    assert not x.flags.writeable
    tracemalloc.start()
    try:
        loss = ls_xp.cross_entropy(x, y, 0.1, reduction="none")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 16 * 2**20, (peak, x.nbytes)  # one block of logits is 2 MiB; a copy would be 76
    want = ls_xp.cross_entropy(np.array(x[:64]), y[:64], 0.1, reduction="none")
    np.testing.assert_allclose(loss[:64], want, rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("dask") is None, reason="dask is not installed")
def test_dask_evaluation_warns_nothing():
    """The dense picks read one entry per row chunk-locally: no PerformanceWarning from a
    gather out of the flattened array."""
    import dask.array as da

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20_000, 100)), rng.integers(0, 100, 20_000)
    dx, dy = da.from_array(x, chunks=(1000, 100)), da.from_array(y, chunks=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = ls_xp.loss_and_grad(dx, dy, 0.1, convention="others")
        got = float(loss.compute())
        grad.compute()
    assert got == pytest.approx(float(ls_xp.cross_entropy(x, y, 0.1, convention="others")), rel=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_ls_xp_torch_resolves_after_a_bare_import_in_a_fresh_process():
    """``import torch, ls_xp; ls_xp.torch.CrossEntropyLoss`` (as the docs write it), before
    any torch call or ``import ls_xp.torch``."""
    import subprocess
    import sys

    code = "import torch, ls_xp; print(ls_xp.torch.CrossEntropyLoss.__name__, ls_xp.jax.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CrossEntropyLoss", "ls_xp.jax"]
