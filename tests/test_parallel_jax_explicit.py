"""``ls_xp.cross_entropy`` on class-sharded JAX arrays under an explicit-axes mesh
(``jax.make_mesh``'s default in JAX 0.10, used with ``jax.set_mesh``): eager, ``jit``,
``grad``, ``loss_and_grad``, ``reduction="none"`` and a class-sharded weight vector, each
against the loss of the unsharded NumPy arrays.

Under explicit sharding every operation must have a layout JAX can name: a select whose
mask is laid out unlike its cases, or a gather from a sharded vector, is a
``ShardingTypeError`` at trace time (see :mod:`ls_xp._picks`). The checks run in one
fresh Python with 4 emulated devices and print their findings as JSON.
"""

from __future__ import annotations

import textwrap

import pytest

from tests._devices import run_on_cpu_devices

pytest.importorskip("jax", reason="jax is not installed")

SCRIPT = textwrap.dedent(
    r"""
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import NamedSharding, PartitionSpec as P
    import ls_xp

    N, K = 6, 12
    rng = np.random.default_rng(1)
    X = 3 * rng.standard_normal((N, K)); X[0, 0] = X[0, K - 1] = 9.0
    Y = rng.integers(0, K, N); Y[1] = -100
    W = rng.random(K) + 0.5
    M = rng.random((N, K)) > 0.3
    M[:, 0] = M[:, K - 1] = True; M[np.arange(N), np.clip(Y, 0, K - 1)] = True
    T = rng.dirichlet(np.ones(K), N)
    mesh = jax.make_mesh((4,), ("c",))
    out = {"axis_types": str(mesh.axis_types), "cases": []}

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    def run(name, kw, soft=False, f32=False, labels=Y):
        dt = jnp.float32 if f32 else jnp.float64
        ref_kw = {k: (np.asarray(v) if k in ("weight", "where") else v) for k, v in kw.items()}
        y_np = T if soft else labels
        ref = ls_xp.loss_and_grad(X.astype(np.float64), y_np, 0.1, **ref_kw)
        red = kw.get("reduction", "mean")
        up = np.linspace(0.5, 1.5, N)
        with jax.set_mesh(mesh):
            put = lambda a, spec: jax.device_put(jnp.asarray(a), NamedSharding(mesh, spec))
            x = put(X.astype(dt), P(None, "c"))
            y = put(T.astype(dt), P(None, "c")) if soft else jnp.asarray(labels)
            args = dict(kw)
            if "weight" in kw:
                args["weight"] = put(np.asarray(kw["weight"], dt), P("c"))
            if "where" in kw:
                args["where"] = put(kw["where"], P(None, "c"))
            def loss(x):
                v = ls_xp.cross_entropy(x, y, 0.1, **args)
                return (v * jnp.asarray(up, dt)).sum() if red == "none" else v
            g_ref = np.asarray(ref[1])
            if red == "none":  # (the gradient of the rows' sum, each row times its cotangent)
                g_ref = g_ref * up[:, None]
            l_ref = np.asarray(ref[0])
            results = {
                "eager": (ls_xp.cross_entropy(x, y, 0.1, **args), None),
                "jit": (jax.jit(lambda x: ls_xp.cross_entropy(x, y, 0.1, **args))(x), None),
                "grad": (None, jax.jit(jax.grad(loss))(x)),
                "eager grad": (None, jax.grad(loss)(x)),
                "value_and_grad": jax.jit(jax.value_and_grad(loss))(x),
            }
            if red != "none":
                results["loss_and_grad"] = jax.jit(lambda x: ls_xp.loss_and_grad(x, y, 0.1, **args))(x)
                results["loss_and_grad eager"] = ls_xp.loss_and_grad(x, y, 0.1, **args)
            for how, (l, g) in results.items():
                err, spec = 0.0, None
                if l is not None:
                    want = (l_ref * up).sum() if (red == "none" and how == "value_and_grad") else l_ref
                    err = max(err, rel(l, want))
                if g is not None:
                    err = max(err, rel(g, g_ref))
                    spec = str(g.sharding.spec)
                out["cases"].append(dict(name=name, how=how, err=err, spec=spec, f32=f32))

    run("plain", {})
    run("every row counted", {}, labels=np.abs(Y) % K)  # (the row factors made at once)
    run("others, sum", {"convention": "others", "reduction": "sum"})
    run("none", {"reduction": "none"})
    run("sharded weight", {"weight": W})
    run("sharded weight, none", {"weight": W, "reduction": "none", "convention": "others"})
    run("where", {"where": M, "weight": W})
    run("probabilities", {}, soft=True)
    run("llm options", {"z_loss": 1e-2, "softcap": 4.0, "weight": W})
    run("float32", {"weight": W}, f32=True)
    # outside the mesh's context: class-sharded logits, labels on one device (every row
    # counted, the row factors made at once), eagerly, as a data loader hands them over
    y_all = np.abs(Y) % K
    x = jax.device_put(jnp.asarray(X), NamedSharding(mesh, P(None, "c")))
    want = ls_xp.loss_and_grad(X, y_all, 0.1)
    got = ls_xp.loss_and_grad(x, jnp.asarray(y_all), 0.1)
    out["outside"] = max(rel(got[0], want[0]), rel(got[1], want[1]))
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def findings() -> dict:
    return run_on_cpu_devices(SCRIPT)


def test_the_mesh_has_explicit_axes(findings):
    assert "Explicit" in findings["axis_types"], findings["axis_types"]


def test_explicit_mesh_equals_the_unsharded_loss_and_gradient(findings):
    """Every way of calling it (eager, jit, grad, value_and_grad, loss_and_grad) gives the
    unsharded loss and gradient: float64 within 1e-12, float32 within 1e-5."""
    bad = [c for c in findings["cases"] if c["err"] > (1e-5 if c["f32"] else 1e-12)]
    assert not bad, bad[:5]
    hows = {c["how"] for c in findings["cases"]}
    assert {"eager", "jit", "grad", "eager grad", "value_and_grad", "loss_and_grad"} <= hows


def test_explicit_mesh_gradient_keeps_the_class_sharding(findings):
    specs = {c["spec"] for c in findings["cases"] if c["spec"] is not None}
    assert specs == {"P(None, 'c')"}, specs


def test_labels_on_one_device_beside_class_sharded_logits(findings):
    assert findings["outside"] <= 1e-12, findings["outside"]
