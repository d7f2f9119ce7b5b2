"""Vocabulary-parallel loss on JAX: ``jax.shard_map`` over emulated CPU devices, and the
GSPMD path of ``ls_xp.cross_entropy`` on class-sharded arrays.

The device count must be set before JAX is imported, so the checks run in one fresh
Python (``XLA_FLAGS=--xla_force_host_platform_device_count=4``) that prints its findings
as JSON; the tests read them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests._devices import run_on_cpu_devices

pytest.importorskip("jax", reason="jax is not installed")

SCRIPT = textwrap.dedent(
    r"""
    import itertools, json, re
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import ls_xp
    from ls_xp.jax import vocab_parallel_cross_entropy as vce

    K, N = 12, 6
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, K)) * 3
    X[0, 0] = X[0, K - 1] = 9.0  # a maximum on two shards
    Y = rng.integers(0, K, N); Y[1] = -100
    W = rng.random(K) + 0.5
    M = rng.random((N, K)) > 0.3
    M[:, 0] = M[:, K - 1] = True; M[np.arange(N), np.clip(Y, 0, K - 1)] = True
    T = rng.dirichlet(np.ones(K), N)
    UP = rng.random(N) + 0.5

    def collectives(txt):
        return [l for l in txt.splitlines() if re.search(r"= .*(all-gather|all-reduce|all-to-all)\(", l)]

    def case(mesh, c):
        dt = jnp.float32 if c.get("f32") else jnp.float64
        x = jnp.asarray(X, dt)
        y = jnp.asarray(T, dt) if c.get("soft") else jnp.asarray(Y)
        w = None if c["w"] is None else jnp.asarray(W, dt)
        m = jnp.asarray(M) if c["m"] else None
        kw = dict(reduction=c["red"], convention=c["conv"], log_probs=c.get("lp", False))
        if kw["log_probs"]:
            x = jax.nn.log_softmax(jnp.where(M, x, -1e30) if c["m"] else x, -1)
        sh = lambda a, spec: None if a is None else jax.device_put(a, NamedSharding(mesh, spec))
        cls = P(None, "tp")
        specs = (cls, cls if c.get("soft") else P(), P("tp") if c["w"] == "shard" else P(), cls)

        def local(xl, yl, wl, ml):
            sharded = c["w"] == "shard"
            return vce(xl, yl, c["eps"], axis_name="tp", weight=wl, where=ml, weight_sharded=sharded, **kw)

        def total(x, y, w, m):
            args = [a for a in (x, y, w, m) if a is not None]
            sp = tuple(s for a, s in zip((x, y, w, m), specs) if a is not None)
            def f(*a):
                it = iter(a)
                xl, yl = next(it), next(it)
                wl = next(it) if w is not None else None
                return local(xl, yl, wl, next(it) if m is not None else None)
            out = jax.shard_map(f, mesh=mesh, in_specs=sp, out_specs=P())(*args)
            return (out * jnp.asarray(UP, dt)).sum() if c["red"] == "none" else out

        def ref(x):
            out = ls_xp.cross_entropy(x, y, c["eps"], weight=w, where=m, **kw)
            return (out * jnp.asarray(UP, dt)).sum() if c["red"] == "none" else out

        args = (sh(x, cls), sh(y, specs[1]), sh(w, specs[2]), sh(m, cls))
        fn = jax.jit(jax.value_and_grad(total))
        l, g = fn(*args)
        lr, gr = jax.value_and_grad(ref)(x)
        l, lr, g, gr = (np.asarray(a, np.float64) for a in (l, lr, g, gr))
        err = max(float(abs(l - lr) / abs(lr)), float(np.max(np.abs(g - gr)) / np.max(np.abs(gr))))
        colls = collectives(fn.lower(*args).compile().as_text())
        gathers = [l for l in colls if "all-gather" in l]
        return dict(c, err=err, reduces=len(colls) - len(gathers), gathers=len(gathers))

    out = {"cases": [], "gspmd": None}
    grid = list(itertools.product(
        [0.0, 0.1], ["uniform", "others"], ["mean", "none"], [None, "rep", "shard"], [False, True]
    ))
    for r in (2, 3, 4):
        mesh = Mesh(np.array(jax.devices()[:r]), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
        cases = [dict(eps=e, conv=cv, red=rd, w=w, m=m) for e, cv, rd, w, m in grid] if r == 4 else []
        cases += [dict(eps=0.1, conv="others", red="sum", w="rep", m=True),
                  dict(eps=0.1, conv="uniform", red="mean", w=None, m=False, soft=True),
                  dict(eps=0.1, conv="others", red="none", w="shard", m=True, lp=True),
                  dict(eps=0.1, conv="uniform", red="mean", w="rep", m=True, f32=True)]
        for c in cases:
            out["cases"].append(dict(case(mesh, c), R=r))

    # the GSPMD path: ls_xp.cross_entropy of logits sharded on the classes, under jit
    mesh = Mesh(np.array(jax.devices()), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
    n, k = 64, 1024
    x = jnp.asarray(rng.standard_normal((n, k)), jnp.float32)
    x = jax.device_put(x, NamedSharding(mesh, P(None, "tp")))
    y = jax.device_put(jnp.asarray(rng.integers(0, k, n)), NamedSharding(mesh, P()))
    f = jax.jit(jax.value_and_grad(lambda x, y: ls_xp.cross_entropy(x, y, 0.1, convention="others")))
    colls = collectives(f.lower(x, y).compile().as_text())
    def size(line):  # the largest array a collective moves
        dims = re.findall(r"\[([\d,]*)\]", line.split("=")[1].split("all-")[0])
        return max((int(np.prod([int(d) for d in ds.split(",") if d])) for ds in dims), default=0)
    big = [l for l in colls if size(l) >= n * k // 4]
    _, g = f(x, y)
    out["gspmd"] = dict(collectives=len(colls), big=len(big), sharded=g.sharding.spec == P(None, "tp"))
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def findings() -> dict:
    return run_on_cpu_devices(SCRIPT)


def test_shard_map_equals_the_unsharded_loss_and_gradient(findings):
    bad = [c for c in findings["cases"] if c["err"] > (1e-5 if c.get("f32") else 1e-12)]
    assert not bad, bad[:5]
    assert {c["R"] for c in findings["cases"]} == {2, 3, 4}


def test_shard_map_collectives(findings):
    """One MAX and one SUM (the SUM only with log-probabilities); nothing gathered."""
    for c in findings["cases"]:
        assert c["gathers"] == 0, c
        assert c["reduces"] == (1 if c.get("lp") else 2), c


def test_gspmd_keeps_the_logits_and_their_gradient_sharded(findings):
    g = findings["gspmd"]
    assert g["big"] == 0, g  # no collective of an N x K array (or of a quarter of one)
    assert g["sharded"], g


def test_shard_map_example_trains():
    """examples/train_jax_shard_map.py in a fresh Python (it asks for 2 emulated devices)."""
    import re
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "train_jax_shard_map.py"
    if not script.exists():
        pytest.skip("examples/ is not next to the tests")
    env = {k: val for k, val in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", proc.stdout)]
    assert "(2 devices)" in proc.stdout and losses[-1] < 0.6 * losses[0], proc.stdout
