"""The language-model options (z-loss, softcap, shift, return_aux) of
``ls_xp.jax.vocab_parallel_cross_entropy`` inside ``jax.shard_map``, against the
unsharded loss: loss, gradient, every field of the statistics, and the collectives of
the compiled step (one MAX and one SUM in all, none in the backward).

One fresh Python with 4 emulated devices runs every case and prints its findings as
JSON (the device count must be set before JAX is imported).
"""

from __future__ import annotations

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

    B, T, K = 2, 3, 12
    rng = np.random.default_rng(2)
    X = rng.standard_normal((B, T, K)) * 3
    X[0, 0, 0] = X[0, 0, K - 1] = 9.0  # a maximum on the first and the last shard
    SCORED = rng.integers(0, K, (B, T))
    SCORED[0, 0] = K - 1  # the tie's second class: a miss
    SCORED[0, 1], SCORED[1, 0] = X[0, 1].argmax(), X[1, 0].argmax()  # hits
    W = rng.random(K) + 0.5
    M = rng.random((B, T, K)) > 0.3
    M[..., 0] = M[..., K - 1] = True
    M[0, 1] = M[1, 0] = True
    for b, t in itertools.product(range(B), range(T)):
        M[b, t, SCORED[b, t]] = True
    TP = rng.dirichlet(np.ones(K), (B, T))
    TP[0, 0] = 0.0; TP[0, 0, 0] = TP[0, 0, K - 1] = 0.5  # the target's maximum on two shards
    TP[1, 1] = 0.4 / K; TP[1, 1, X[1, 1].argmax()] += 0.6

    def collectives(txt):
        return [l for l in txt.splitlines() if re.search(r"= .*(all-gather|all-reduce|all-to-all)\(", l)]

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        if np.array_equal(a, b):
            return 0.0
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    def case(mesh, c):
        dt = jnp.float32 if c.get("f32") else jnp.float64
        shift = c.get("shift", 0)
        x = np.array(X)
        if c.get("soft"):
            y = jnp.asarray(TP, dt)
        else:
            y = np.array(SCORED)
            if shift:
                y[:, 1:], y[:, 0] = SCORED[:, :-1], 0
                x[:, -1] = np.inf  # the last position scores nothing
            else:
                y[0, 2] = -100; x[0, 2] = np.inf
            y = jnp.asarray(y)
        x = jnp.asarray(x, dt)
        w = None if c["w"] is None else jnp.asarray(W, dt)
        m = jnp.asarray(M) if c["m"] else None
        kw = dict(reduction=c["red"], convention=c["conv"], z_loss=c.get("z", 0.0), softcap=c.get("cap"),
                  shift=shift, return_aux=True)
        up = jnp.asarray(rng.random((B, T - shift)) + 0.5, dt)
        cls = P(None, None, "tp")
        specs = (cls, cls if c.get("soft") else P(), P("tp") if c["w"] == "shard" else P(), cls)
        args = [a for a in (x, y, w, m) if a is not None]
        sp = tuple(s for a, s in zip((x, y, w, m), specs) if a is not None)

        def f(*a):
            it = iter(a)
            xl, yl = next(it), next(it)
            wl = next(it) if w is not None else None
            ml = next(it) if m is not None else None
            sharded = c["w"] == "shard"
            return vce(xl, yl, c["eps"], axis_name="tp", weight=wl, where=ml, weight_sharded=sharded, **kw)

        def total(*a):
            loss, aux = jax.shard_map(f, mesh=mesh, in_specs=sp, out_specs=P())(*a)
            return ((loss * up).sum() if c["red"] == "none" else loss), aux

        def ref(x):
            loss, aux = ls_xp.cross_entropy(x, y, c["eps"], weight=w, where=m, **kw)
            return ((loss * up).sum() if c["red"] == "none" else loss), aux

        put = lambda a, s: jax.device_put(a, NamedSharding(mesh, s))
        fn = jax.jit(jax.value_and_grad(total, has_aux=True))
        dev_args = [put(a, s) for a, s in zip(args, sp)]
        (l, aux), g = fn(*dev_args)
        (lr, aux_r), gr = jax.value_and_grad(ref, has_aux=True)(x)
        err = max(rel(l, lr), rel(g, gr))
        aux_err = max(rel(a, b) for a, b in zip(aux, aux_r))
        colls = collectives(fn.lower(*dev_args).compile().as_text())
        gathers = [l for l in colls if "all-gather" in l]
        hits = float(np.sum(aux_r.accuracy)) if c["red"] == "none" else None
        return dict(c, err=err, aux_err=aux_err, reduces=len(colls) - len(gathers), gathers=len(gathers),
                    hits=hits)

    every = dict(z=1e-2, cap=3.0, shift=1)
    grid = list(itertools.product(["mean", "sum", "none"], [None, "rep", "shard"], [False, True]))
    out = {"cases": []}
    for r in (2, 3, 4):
        mesh = Mesh(np.array(jax.devices()[:r]), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
        cases = [dict(every, eps=0.1, conv="others" if m else "uniform", red=rd, w=w, m=m)
                 for rd, w, m in grid]
        cases = cases if r == 4 else cases[::4]
        cases += [dict(every, shift=0, eps=0.1, conv="others", red=rd, w="shard", m=False, soft=True)
                  for rd in ("mean", "none")]
        cases += [dict(eps=0.1, conv="uniform", red="mean", w="rep", m=False, **{k: v})
                  for k, v in every.items()]
        cases += [dict(every, eps=0.1, conv="uniform", red="mean", w="rep", m=True, f32=True)]
        for c in cases:
            out["cases"].append(dict(case(mesh, c), R=r))
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def findings() -> dict:
    return run_on_cpu_devices(SCRIPT, timeout=900)


def test_shard_map_llm_options_equal_the_unsharded_loss(findings):
    """float64 within 1e-12, float32 within 1e-5, the statistics included, R = 2, 3, 4."""
    bad = [c for c in findings["cases"] if max(c["err"], c["aux_err"]) > (1e-5 if c.get("f32") else 1e-12)]
    assert not bad, bad[:5]
    assert {c["R"] for c in findings["cases"]} == {2, 3, 4}
    hits = [c["hits"] for c in findings["cases"] if c["hits"] is not None]
    assert hits and all(0 < h < 5 for h in hits), hits  # hits and misses both


def test_shard_map_llm_options_collectives(findings):
    """One MAX and one SUM for the whole step (forward and backward), nothing gathered."""
    for c in findings["cases"]:
        assert c["gathers"] == 0, c
        assert c["reduces"] == 2, c
