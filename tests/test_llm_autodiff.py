"""The language-model options under the frameworks' own gradient checks, and on the
accelerator plan: torch gradcheck and JAX check_grads with every option on, no host
synchronisation and an operation count that does not grow with the batch."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import ls_xp
from tests._profiling import aten_events, top_level

ALL = dict(z_loss=1e-2, softcap=3.0, shift=1, ignore_index=0, convention="others")


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 5, 4)) * 2
    y = rng.integers(0, 4, (2, 5))
    return x, y, rng.uniform(0.5, 2.0, 4), rng.random((2, 5, 4)) > 0.2


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_gradcheck_with_every_option(reduction):
    import torch

    x, y, w, m = _data()
    m[..., :2] = True  # two allowed classes per row, the target among them ("others")
    y = np.where(m[np.arange(2)[:, None], np.arange(5), y], y, 1)
    xt = torch.tensor(x, requires_grad=True)
    eps = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)

    def f(a, e):
        return ls_xp.cross_entropy(
            a, torch.tensor(y), e, weight=torch.tensor(w), where=torch.tensor(m), reduction=reduction, **ALL
        )

    assert torch.autograd.gradcheck(f, (xt, eps), eps=1e-6, atol=1e-7)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_gradcheck_of_the_fused_loss_with_every_option():
    import torch

    rng = np.random.default_rng(1)
    h = torch.tensor(rng.normal(size=(2, 5, 3)), requires_grad=True)
    w_cls = torch.tensor(rng.normal(size=(6, 3)), requires_grad=True)
    b = torch.tensor(rng.normal(size=6), requires_grad=True)
    y = torch.tensor(rng.integers(0, 6, (2, 5)))
    opts = dict(z_loss=1e-2, softcap=3.0, shift=1, weight=torch.tensor(rng.uniform(0.5, 2, 6)))

    def f(hh, ww, bb):
        return ls_xp.linear_cross_entropy(hh, ww, y, 0.1, bias=bb, chunk_size=3, **opts)

    assert torch.autograd.gradcheck(f, (h, w_cls, b), eps=1e-6, atol=1e-7)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_jax_check_grads_with_every_option(reduction):
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    x, y, w, _ = _data()
    y, w = jnp.asarray(y), jnp.asarray(w)

    def f(a):
        return ls_xp.cross_entropy(a, y, 0.1, weight=w, reduction=reduction, **ALL)

    check_grads(f, (jnp.asarray(x),), order=2, modes=["fwd", "rev"], eps=1e-4)
    check_grads(jax.jit(f), (jnp.asarray(x),), order=1, modes=["rev"], eps=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_accelerator_plan_with_every_option_reads_nothing_back_and_its_count_holds(monkeypatch):
    import torch
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setenv("LS_XP_PLAN", "accelerator")

    def counts(n):
        g = torch.Generator().manual_seed(n)
        x0 = torch.randn(n, 8, 300, generator=g)
        y = torch.randint(0, 300, (n, 8), generator=g)

        def run():
            x = x0.detach().requires_grad_()
            ls_xp.cross_entropy(
                x, y, 0.1, z_loss=1e-4, softcap=30.0, shift=1, weight=torch.rand(300)
            ).backward()

        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        events = aten_events(prof)
        top = top_level(events)
        return len(top), sum(e.name in ("aten::_local_scalar_dense", "aten::item") for e in events)

    (ops_small, syncs_small), (ops_large, syncs_large) = counts(4), counts(64)
    assert syncs_small == syncs_large == 0
    assert ops_small == ops_large
