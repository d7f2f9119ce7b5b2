"""``ls-xp bench``: loss + gradient of ls_xp against the named peers, in one run.

Every measurement runs in a fresh Python process: the inputs are built, the resident
memory is read (``resource.getrusage``), the function is run once (warm-up, compilation)
and then timed ``repeats`` times. ls_xp and each peer are measured alternately (A B A B,
``pairs`` times), and the ratio reported is the median of the per-pair ratios, so that the
drift of a shared machine cancels. Reported per implementation: the median time, the peak
host memory beyond the inputs (peak RSS less the RSS before the first run, compilation
included), the step's own peak (on Linux the peak RSS of the timed runs, ``VmHWM`` reset
after the warm-up, less the RSS before them: what one call holds, without the compiler's
memory), for PyTorch on the CPU the tensor peak (the largest rise, during one call, of the
bytes alive in PyTorch's allocator, from the profiler's memory events: a figure the C
allocator's reuse of freed pages cannot move, see :mod:`ls_xp._tools.bench_memory`), on a non-CPU
device the peak device memory beyond the inputs (``torch.cuda.max_memory_allocated``,
JAX's ``memory_stats``), the host memory faulted in per timed call (``getrusage``'s minor
page faults over the timed runs, times the page size: the fresh pages the kernel had to hand
out, which on a CPU is often a large part of the time; a lower bound where the library asks
for transparent huge pages, as NumPy does for large arrays, since one fault then maps 2 MiB),
and for PyTorch the operations and host synchronisations of one call (PyTorch profiler:
top-level ``aten::`` operations, and ``_local_scalar_dense`` events, one per value read
back by ``bool()``, ``.item()`` or ``float()``; on a GPU each operation is at least one
kernel launch and each read a synchronisation); for the compiled workloads, the kernels
Inductor generated for the step's forward and backward graphs (from its output code).
``busy=True`` keeps one core busy with a spinning process while measuring.

The workloads and peers are in :mod:`ls_xp._tools.workloads`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from ls_xp._tools import bench_memory as memory
from ls_xp._tools.workloads import (
    COMPILED_IMPLEMENTATIONS,
    DTYPES,
    IMPLEMENTATIONS,
    LINEAR_IMPLEMENTATIONS,
    SIZES,
    is_compiled,
    is_linear,
    parse_size,
    setup,
)

__all__ = ["DTYPES", "SIZES", "format_report", "measure", "parse_size", "plot", "ratios", "run_bench"]

# a value read back: bool() -> is_nonzero -> item -> _local_scalar_dense; count it once
SYNC_EVENT = "aten::_local_scalar_dense"


def _torch_profile(run: Callable[[], Any], device: str) -> dict[str, int | None]:
    """Top-level aten operations and host syncs of one call (after the warm-up), and on the
    CPU the largest rise of the tensor bytes alive during it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=device == "cpu") as prof:
        run()
    events = [e for e in prof.events() or [] if e.name.startswith("aten::")]
    top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    tensor_peak = memory.tensor_peak_bytes(prof) if device == "cpu" else None
    return {
        "ops": len(top),
        "syncs": sum(e.name == SYNC_EVENT for e in events),
        "tensor_peak_bytes": tensor_peak,
    }


# a kernel Inductor generates: a line of its output code that compiles one (C++, Triton)
_KERNEL_DEF = re.compile(r"^\w+ = async_compile\.(?:cpp_pybinding|cpp|triton|halide)\(", re.M)


def _warm_up_counting_kernels(run: Callable[[], Any]) -> tuple[Any, int]:
    """The warm-up call of a compiled workload, and the kernels Inductor generated for its
    forward and backward graphs (each launched once per call, besides the extern matmuls).
    The output code is captured also where it comes from Inductor's cache."""
    from torch._inductor.utils import run_and_get_code

    out, codes = run_and_get_code(run)
    return out, sum(len(_KERNEL_DEF.findall(code)) for code in codes)


def _worker(
    backend: str, impl: str, dims: tuple[int, ...], repeats: int, dtype: str, device: str
) -> dict[str, Any]:
    run = setup(backend, impl, tuple(dims), dtype, device)
    baseline = memory.rss_bytes()  # the inputs exist; nothing has run yet
    device_memory = memory.DeviceMemory(backend, device)
    # warm-up: compilation, first-touch allocations (counted in the peak)
    kernels = None
    if impl.startswith("torch-compiled-"):
        out, kernels = _warm_up_counting_kernels(run)
    else:
        out = run()
    del out
    peak = memory.peak_rss_bytes()
    # the step's own peak: over the timed calls, above what is resident before them
    resident = memory.rss_bytes() if memory.reset_peak_rss() else None
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        del out
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    result: dict[str, Any] = {
        "time_s": statistics.median(times),
        "times_s": times,
        "peak_bytes": max(0, max(peak, memory.peak_rss_bytes()) - baseline),
        "step_peak_bytes": None if resident is None else max(0, memory.peak_rss_since_reset() - resident),
        "device_peak_bytes": device_memory.peak(),
        # pages first touched per call (timing included them); ``repeats`` >= 1
        "faulted_bytes": faults * resource.getpagesize() // max(repeats, 1),
    }
    if backend == "torch":
        result.update(_torch_profile(run, device))
    if kernels is not None:
        result["kernels"] = kernels
    return result


# ------------------------------------------------------------------ the driver


def available_implementations(
    backends: list[str] | None = None, linear: bool = False, compiled: bool = False,
    impls: list[str] | None = None,
) -> list[tuple[str, str]]:  # fmt: skip
    table = COMPILED_IMPLEMENTATIONS if compiled else LINEAR_IMPLEMENTATIONS if linear else IMPLEMENTATIONS
    out = []
    for (backend, impl), module in table.items():
        if (backends and backend not in backends) or (impls and impl not in impls):
            continue
        if importlib.util.find_spec(module) is not None and importlib.util.find_spec(backend) is not None:
            out.append((backend, impl))
    return out


def measure(
    backend: str,
    impl: str,
    size: str,
    repeats: int = 5,
    timeout: float = 900,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict[str, Any]:
    dims = parse_size(size)
    call = f"_bench._worker({backend!r}, {impl!r}, {dims!r}, {repeats}, {dtype!r}, {device!r})"
    code = f"import json, sys; from ls_xp._tools import bench as _bench; print(json.dumps({call}))"
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    result: dict[str, Any] = {
        "backend": backend, "impl": impl, "size": size, "shape": list(dims), "dtype": dtype, "device": device,
    }  # fmt: skip
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        result["error"] = f"timed out after {timeout:.0f} s"
        return result
    if proc.returncode != 0:
        result["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return result
    result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return result


@contextlib.contextmanager
def _busy_core(enabled: bool) -> Iterator[None]:
    """Keep one core busy with a spinning process (a data loader's share of the machine)."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def run_bench(
    backends: list[str] | None,
    sizes: list[str],
    repeats: int,
    progress: Callable[[str], None] | None = None,
    *,
    pairs: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    busy: bool = False,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Every implementation (of ``only``, if given) at every size, ``pairs`` times in
    alternation (ls_xp, peer, ...)."""

    def impls(size: str) -> list[tuple[str, str]]:
        return [
            bi
            for bi in available_implementations(backends, is_linear(size), is_compiled(size), only)
            if not (bi[0] == "numpy" and (dtype, device) != ("float32", "cpu"))
        ]

    runs: list[dict[str, Any]] = []
    total = sum(len(impls(size)) for size in sizes) * pairs
    i = 0
    with _busy_core(busy):
        for size in sizes:
            for _ in range(pairs):
                for backend, impl in impls(size):
                    i += 1
                    if progress:
                        progress(f"[{i}/{total}] {backend} {impl} {size} {dtype} {device}")
                    runs.append(measure(backend, impl, size, repeats, dtype=dtype, device=device))
    results = _combine(runs)
    return {
        "results": results,
        "ratios": ratios(runs),
        "machine": machine(),
        "settings": {"pairs": pairs, "repeats": repeats, "dtype": dtype, "device": device, "busy": busy},
    }


def _combine(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backend, implementation, size): medians over the pairs."""
    rows: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        rows.setdefault((r["backend"], r["impl"], r["size"]), []).append(r)
    out = []
    for group in rows.values():
        ok = [r for r in group if "error" not in r]
        if not ok:
            out.append(group[-1])
            continue
        row = dict(ok[0])
        for key in (
            "time_s",
            "peak_bytes",
            "step_peak_bytes",
            "device_peak_bytes",
            "tensor_peak_bytes",
            "faulted_bytes",
            "ops",
            "syncs",
            "kernels",
        ):
            vals = [r[key] for r in ok if r.get(key) is not None]
            row[key] = statistics.median(vals) if vals else None
        row["times_s"] = [r["time_s"] for r in ok]
        out.append(row)
    return out


# the implementations the ratios divide, and the peers each is divided by (None: every
# implementation of the run that is not one of these)
_OURS: dict[str, tuple[str, ...] | None] = {
    "ls_xp": None,
    "torch-compiled-ls_xp": None,
    "ls_xp-eps0": ("native-linear-ce-chunked-eps0",),
    "ls_xp-options": ("ls_xp", "unfused-ls_xp-options"),
}
# peers measured for one of ours only
_PAIRED_ONLY = ("unfused-ls_xp-options",)


def _is_peer(ours: str, peer: str) -> bool:
    wanted = _OURS[ours]
    if wanted is None:
        return peer not in _OURS and peer not in _PAIRED_ONLY
    return peer in wanted


def _median_of(pairs: list[tuple[dict[str, Any], dict[str, Any]]], side: int, key: str) -> float | None:
    """The median of a count over one side of the pairs, where that side measured it."""
    vals = [pair[side][key] for pair in pairs if pair[side].get(key) is not None]
    return statistics.median(vals) if vals else None


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ls_xp / peer for time and memory, per backend and size: the median of the ratios of
    the pairs measured next to each other in this run."""
    out = []
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        by_key.setdefault((r["backend"], r["impl"], r["size"]), []).append(r)
    for (backend, impl, size), ours in by_key.items():
        if impl not in _OURS:
            continue
        for (b2, peer, s2), theirs in by_key.items():
            if b2 != backend or s2 != size or not _is_peer(impl, peer):
                continue
            pairs = [
                (a, b) for a, b in zip(ours, theirs, strict=False) if "error" not in a and "error" not in b
            ]
            if not pairs:
                continue

            def median_ratio(
                key: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]] = pairs
            ) -> float | None:
                vals = [a[key] / b[key] for a, b in pairs if a.get(key) is not None and b.get(key)]
                return statistics.median(vals) if vals else None

            out.append(
                {
                    "backend": backend,
                    "size": size,
                    "ours": impl,
                    "peer": peer,
                    "pairs": len(pairs),
                    "time_ratio": median_ratio("time_s"),
                    "memory_ratio": median_ratio("peak_bytes"),
                    "step_memory_ratio": median_ratio("step_peak_bytes"),
                    "device_memory_ratio": median_ratio("device_peak_bytes"),
                    "tensor_memory_ratio": median_ratio("tensor_peak_bytes"),
                    "ops": _median_of(pairs, 0, "ops"),
                    "peer_ops": _median_of(pairs, 1, "ops"),
                    "kernels": _median_of(pairs, 0, "kernels"),
                    "peer_kernels": _median_of(pairs, 1, "kernels"),
                }
            )
    return out


def machine() -> str:
    """The machine in one line; the CPUs this process may use, if fewer than all, since
    ls_xp's NumPy blocks run on that many threads by default (``workers``)."""
    import platform

    from ls_xp._plan import available_cpus

    py = platform.python_version()
    cpus, usable = os.cpu_count(), available_cpus()
    cpu_text = f"{cpus} CPUs" + ("" if usable == cpus else f" ({usable} available to this process)")
    return f"{platform.machine()}, {cpu_text}, Python {py}, {platform.system()}"


def format_report(report: dict[str, Any]) -> str:
    st = report.get("settings", {})
    lines = [
        f"machine: {report['machine']}",
        f"settings: {st.get('dtype', 'float32')} on {st.get('device', 'cpu')}, "
        f"{st.get('pairs', 1)} alternating pair(s) of fresh processes, "
        f"median of {st.get('repeats', '?')} runs each" + (", one core kept busy" if st.get("busy") else ""),
        "",
        f"{'backend':8s} {'implementation':16s} {'size':12s} {'shape':>16s} {'median':>9s}"
        f" {'peak extra':>11s} {'step peak':>11s} {'tensor peak':>12s} {'device peak':>12s} {'faulted':>12s}"
        f" {'ops':>6s} {'syncs':>5s} {'kernels':>7s}",
    ]
    for r in report["results"]:
        shape = "x".join(str(d) for d in r["shape"])
        if "error" in r:
            lines.append(
                f"{r['backend']:8s} {r['impl']:16s} {r['size']:12s} {shape:>16s}  error: {r['error']}"
            )
            continue
        peak = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:8.0f} MiB"
        step = "-" if r.get("step_peak_bytes") is None else f"{r['step_peak_bytes'] / 2**20:8.0f} MiB"
        tensors = "-" if r.get("tensor_peak_bytes") is None else f"{r['tensor_peak_bytes'] / 2**20:8.0f} MiB"
        dev = "-" if r.get("device_peak_bytes") is None else f"{r['device_peak_bytes'] / 2**20:8.0f} MiB"
        flt = "-" if r.get("faulted_bytes") is None else f"{r['faulted_bytes'] / 2**20:8.0f} MiB"
        ops = "-" if r.get("ops") is None else f"{r['ops']:.0f}"
        syncs = "-" if r.get("syncs") is None else f"{r['syncs']:.0f}"
        kernels = "-" if r.get("kernels") is None else f"{r['kernels']:.0f}"
        lines.append(
            f"{r['backend']:8s} {r['impl']:16s} {r['size']:12s} {shape:>16s} {r['time_s']:8.4f}s {peak:>11s}"
            f" {step:>11s} {tensors:>12s} {dev:>12s} {flt:>12s} {ops:>6s} {syncs:>5s} {kernels:>7s}"
        )
    if report["ratios"]:
        lines += ["", "ratios ls_xp / peer (median over the pairs of this run; < 1 is better):"]
        for q in report["ratios"]:
            mem = "-" if q["memory_ratio"] is None else f"{q['memory_ratio']:.2f}x"
            if q.get("step_memory_ratio") is not None:
                mem += f"  step memory {q['step_memory_ratio']:.2f}x"
            if q.get("tensor_memory_ratio") is not None:
                mem += f"  tensor memory {q['tensor_memory_ratio']:.2f}x"
            dev = (
                ""
                if q.get("device_memory_ratio") is None
                else f"  device memory {q['device_memory_ratio']:.2f}x"
            )
            ops = "" if q.get("ops") is None else f"  ops {q['ops']:.0f} vs {q['peer_ops']:.0f}"
            if q.get("kernels") is not None and q.get("peer_kernels") is not None:
                ops += f"  kernels {q['kernels']:.0f} vs {q['peer_kernels']:.0f}"
            ours = "" if q.get("ours", "ls_xp") == "ls_xp" else f"{q['ours']} "
            head = f"  {q['backend']:6s} {q['size']:12s} {ours}vs {q['peer']:14s}"
            lines.append(f"{head} time {q['time_ratio']:.2f}x  memory {mem}{dev}{ops}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib  # pyright: ignore[reportMissingImports]  (optional: only for --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyright: ignore[reportMissingImports]

    ok = [r for r in report["results"] if "error" not in r]
    sizes = list(dict.fromkeys(r["size"] for r in ok))
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
        ax.set_xticklabels([f"{s}\n{'x'.join(map(str, parse_size(s)))}" for s in sizes])
        ax.set_yscale("log")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"label-smoothed CE, loss + gradient, float32 ({report['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
