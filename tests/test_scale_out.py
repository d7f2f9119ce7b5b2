"""Scale-out: Dask on a local multi-process cluster, JAX sharded over emulated devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ls_xp


@pytest.mark.slow
def test_dask_local_cluster_matches_numpy():
    da = pytest.importorskip("dask.array", reason="dask is not installed")
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    import dask

    n, k, rows = 100_000, 1000, 10_000
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit="4GiB",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        assert len(client.scheduler_info()["workers"]) == 2
        rng = da.random.default_rng(0)
        x = rng.standard_normal((n, k), chunks=(rows, k), dtype=np.float32)
        y = rng.integers(0, k, n, chunks=rows)
        y = da.where(rng.random(n, chunks=rows) < 0.05, -100, y)  # some ignored rows
        w = da.from_array(np.linspace(0.5, 2.0, k, dtype=np.float32))
        loss, grad = ls_xp.loss_and_grad(x, y, 0.1, weight=w)
        per_row = ls_xp.cross_entropy(x, y, 0.1, weight=w, reduction="none")
        assert all(isinstance(a, da.Array) for a in (loss, grad, per_row))  # still lazy
        assert grad.chunks[0] == (rows,) * (n // rows)  # row chunks survive
        got_loss, got_rows, got_colsum, got_head = dask.compute(loss, per_row, grad.sum(axis=0), grad[:2000])
        x_np, y_np = dask.compute(x, y)
    ref_loss, ref_grad = ls_xp.loss_and_grad(
        x_np, y_np, 0.1, weight=np.linspace(0.5, 2.0, k, dtype=np.float32)
    )
    ref_rows = ls_xp.cross_entropy(
        x_np, y_np, 0.1, weight=np.linspace(0.5, 2.0, k, dtype=np.float32), reduction="none"
    )
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(got_rows, ref_rows, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_head, ref_grad[:2000], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(got_colsum, ref_grad.sum(axis=0), rtol=1e-3, atol=1e-9)


JAX_SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import ls_xp

    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 512)).astype(np.float32)
    y = rng.integers(0, 512, 4096)
    y[::17] = -100
    t = rng.dirichlet(np.ones(512), size=4096).astype(np.float32)
    xs = jax.device_put(x, NamedSharding(mesh, P("batch", None)))
    ys = jax.device_put(y, NamedSharding(mesh, P("batch")))
    ts = jax.device_put(t, NamedSharding(mesh, P("batch", None)))
    f = jax.jit(jax.value_and_grad(lambda a, b: ls_xp.cross_entropy(a, b, 0.1)))
    for target, target_sharded in ((y, ys), (t, ts)):
        loss, grad = f(xs, target_sharded)
        ref_loss, ref_grad = f(jax.device_put(x, jax.devices()[0]), jax.device_put(target, jax.devices()[0]))
        assert len(grad.sharding.device_set) == 4, grad.sharding
        assert grad.sharding.is_equivalent_to(xs.sharding, 2), (grad.sharding, xs.sharding)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-5, atol=1e-10)
    rows = jax.jit(lambda a, b: ls_xp.cross_entropy(a, b, 0.1, reduction="none"))(xs, ys)
    assert len(rows.sharding.device_set) == 4
    print("sharded OK")
    """
)


@pytest.mark.slow
def test_jax_sharded_over_four_cpu_devices_equals_one_device():
    pytest.importorskip("jax", reason="jax is not installed")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", JAX_SHARDED], capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sharded OK" in out.stdout
