"""``ls-xp bench``: loss + gradient of ls_xp against the named peers, in one run.

Every measurement runs in a fresh Python process: the inputs are built, the resident
memory is read, the function is run once (warm-up, compilation) and then timed ``repeats``
times. Reported: the median time, the peak memory beyond the inputs (peak RSS, VmHWM, less
the RSS before the first run; Linux) and ratios to every peer of the same backend measured
in the same run. The machines are shared and noisy: read the medians and
ratios, not single numbers.

The peers (written here as baselines, or the libraries' own functions):

- numpy: ``numpy-inplace``, a careful hand-written in-place version; ``numpy-dense``, the
  dense smoothed-target version in the style of seed 001;
- torch: ``torch-native``, ``F.cross_entropy(..., label_smoothing=eps)`` forward + backward;
- jax: ``optax``, ``softmax_cross_entropy(x, smooth_labels(one_hot(y)))`` under
  ``jit(value_and_grad)``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SIZES: dict[str, tuple[int, int]] = {
    "small": (64, 10),
    "medium": (4096, 32000),
    "large": (2048, 131072),
}
EPS = 0.1

# (backend, implementation) -> module needed
IMPLEMENTATIONS: dict[tuple[str, str], str] = {
    ("numpy", "ls_xp"): "numpy",
    ("numpy", "numpy-inplace"): "numpy",
    ("numpy", "numpy-dense"): "numpy",
    ("torch", "ls_xp"): "torch",
    ("torch", "torch-native"): "torch",
    ("jax", "ls_xp"): "jax",
    ("jax", "optax"): "optax",
}


# ------------------------------------------------------------------ the measured functions


def _numpy_inplace(x: Any, y: Any) -> tuple[Any, Any]:
    """Hand-written NumPy, in place: the baseline a careful engineer writes."""
    import numpy as np

    n, k = x.shape
    rows = np.arange(n)
    m = x.max(axis=1, keepdims=True)
    g = np.subtract(x, m)
    sum_z = g.sum(axis=1)
    z_y = g[rows, y]
    np.exp(g, out=g)
    se = g.sum(axis=1, keepdims=True)
    lse = np.log(se[:, 0])
    loss = ((1 - EPS) * (lse - z_y) + EPS / k * (k * lse - sum_z)).mean()
    g /= se
    g -= EPS / k
    g[rows, y] -= 1 - EPS
    g /= n
    return loss, g


def _numpy_dense(x: Any, y: Any) -> tuple[Any, Any]:
    """Dense smoothed targets, as in seed 001: log_softmax, full target matrix, product."""
    import numpy as np

    n, k = x.shape
    z = x - x.max(axis=1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.full((n, k), EPS / k, dtype=x.dtype)
    q[np.arange(n), y] += 1 - EPS
    loss = -(q * lp).sum(axis=1).mean()
    grad = (np.exp(lp) - q) / n
    return loss, grad


def _setup(backend: str, impl: str, n: int, k: int) -> Callable[[], Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((n, k), dtype=np.float32)
    y_np = rng.integers(0, k, n)
    if backend == "numpy":
        import ls_xp

        fn = {
            "ls_xp": lambda: ls_xp.loss_and_grad(x_np, y_np, EPS),
            "numpy-inplace": lambda: _numpy_inplace(x_np, y_np),
            "numpy-dense": lambda: _numpy_dense(x_np, y_np),
        }[impl]
        return fn
    if backend == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        x: Any = torch.from_numpy(x_np).requires_grad_()
        y: Any = torch.from_numpy(y_np)
        if impl == "ls_xp":
            import ls_xp

            def run() -> Any:
                x.grad = None
                loss = ls_xp.cross_entropy(x, y, EPS)
                loss.backward()
                return loss

        else:

            def run() -> Any:
                x.grad = None
                loss = torch.nn.functional.cross_entropy(x, y, label_smoothing=EPS)
                loss.backward()
                return loss

        return run
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(x_np)
    y = jnp.asarray(y_np)
    if impl == "ls_xp":
        import ls_xp

        f = jax.jit(jax.value_and_grad(lambda a: ls_xp.cross_entropy(a, y, EPS)))
    else:
        import optax

        def plain(a: Any) -> Any:
            labels = optax.smooth_labels(jax.nn.one_hot(y, k, dtype=a.dtype), EPS)
            return optax.softmax_cross_entropy(a, labels).mean()

        f = jax.jit(jax.value_and_grad(plain))

    def run_jax() -> Any:
        out = f(x)
        jax.block_until_ready(out)
        return out

    return run_jax


def _rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _worker(backend: str, impl: str, n: int, k: int, repeats: int) -> dict[str, Any]:
    run = _setup(backend, impl, n, k)
    baseline = _rss_kib("VmRSS")  # the inputs exist; nothing has run yet
    out = run()  # warm-up: compilation, first-touch allocations (counted in the peak)
    del out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        del out
    peak_kib = _rss_kib("VmHWM") - baseline
    return {"time_s": statistics.median(times), "times_s": times, "peak_bytes": peak_kib * 1024}


# ------------------------------------------------------------------ the driver


def available_implementations(backends: list[str] | None = None) -> list[tuple[str, str]]:
    out = []
    for (backend, impl), module in IMPLEMENTATIONS.items():
        if backends and backend not in backends:
            continue
        if importlib.util.find_spec(module) is not None and importlib.util.find_spec(backend) is not None:
            out.append((backend, impl))
    return out


def measure(backend: str, impl: str, size: str, repeats: int = 5, timeout: float = 900) -> dict[str, Any]:
    n, k = SIZES[size]
    code = (
        "import json, sys; from ls_xp import _bench; "
        f"print(json.dumps(_bench._worker({backend!r}, {impl!r}, {n}, {k}, {repeats})))"
    )
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    result: dict[str, Any] = {"backend": backend, "impl": impl, "size": size, "shape": [n, k]}
    if proc.returncode != 0:
        result["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return result
    result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return result


def run_bench(
    backends: list[str] | None, sizes: list[str], repeats: int, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    impls = available_implementations(backends)
    results = []
    total = len(impls) * len(sizes)
    for i, (size, (backend, impl)) in enumerate(((s, bi) for s in sizes for bi in impls), start=1):
        if progress:
            progress(f"[{i}/{total}] {backend} {impl} {size} {SIZES[size][0]}x{SIZES[size][1]}")
        results.append(measure(backend, impl, size, repeats))
    return {"results": results, "ratios": ratios(results), "machine": machine()}


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ls_xp / peer for time and peak memory, per backend and size, same run."""
    out = []
    for r in results:
        if r["impl"] != "ls_xp" or "error" in r:
            continue
        for peer in results:
            if peer["backend"] != r["backend"] or peer["size"] != r["size"] or peer["impl"] == "ls_xp":
                continue
            if "error" in peer:
                continue
            mem = None
            if r.get("peak_bytes") is not None and peer.get("peak_bytes"):
                mem = r["peak_bytes"] / peer["peak_bytes"]
            out.append(
                {
                    "backend": r["backend"],
                    "size": r["size"],
                    "peer": peer["impl"],
                    "time_ratio": r["time_s"] / peer["time_s"],
                    "memory_ratio": mem,
                }
            )
    return out


def machine() -> str:
    import platform

    py = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {py}, {platform.system()}"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']}", ""]
    lines.append(
        f"{'backend':8s} {'implementation':15s} {'size':7s} {'shape':>13s} {'median':>9s} {'peak extra':>11s}"
    )
    for r in report["results"]:
        shape = "x".join(str(d) for d in r["shape"])
        if "error" in r:
            lines.append(
                f"{r['backend']:8s} {r['impl']:15s} {r['size']:7s} {shape:>13s}  error: {r['error']}"
            )
            continue
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:8.0f} MiB"
        lines.append(
            f"{r['backend']:8s} {r['impl']:15s} {r['size']:7s} {shape:>13s} {r['time_s']:8.4f}s {peak:>11s}"
        )
    if report["ratios"]:
        lines += ["", "ratios ls_xp / peer (same run; < 1 is better):"]
        for q in report["ratios"]:
            mem = "-" if q["memory_ratio"] is None else f"{q['memory_ratio']:.2f}x"
            head = f"  {q['backend']:6s} {q['size']:7s} vs {q['peer']:14s}"
            lines.append(f"{head} time {q['time_ratio']:.2f}x  memory {mem}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib  # pyright: ignore[reportMissingImports]  (optional: only for --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyright: ignore[reportMissingImports]

    ok = [r for r in report["results"] if "error" not in r]
    sizes = [s for s in SIZES if any(r["size"] == s for r in ok)]
    labels = sorted({(r["backend"], r["impl"]) for r in ok})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(labels), 1)
    for j, (backend, impl) in enumerate(labels):
        for ax, key, scale in ((axes[0], "time_s", 1.0), (axes[1], "peak_bytes", 2.0**-20)):
            vals = []
            for s in sizes:
                r = next(
                    (r for r in ok if r["size"] == s and r["backend"] == backend and r["impl"] == impl), None
                )
                vals.append(0.0 if r is None or r[key] is None else r[key] * scale)
            ax.bar([i + j * width for i in range(len(sizes))], vals, width, label=f"{backend}: {impl}")
    for ax, title in ((axes[0], "median time (s)"), (axes[1], "peak memory beyond inputs (MiB)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))])
        ax.set_xticklabels([f"{s}\n{SIZES[s][0]}x{SIZES[s][1]}" for s in sizes])
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"label-smoothed CE, loss + gradient, float32 ({report['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
