"""``ls-xp bench --ranks R``: the vocabulary-parallel loss on R gloo processes.

:func:`run_ranks` starts R fresh processes (``torch.multiprocessing`` spawn) that join one
gloo process group over 127.0.0.1 on a free port, runs a function on every rank and
returns what each rank returned, or raises what a rank raised; a timeout bounds it, so a
rank waiting on a collective can never hang the caller. The tests use it too.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0 and ask)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(
    rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...], out: str, threads: int
) -> None:
    import torch
    import torch.distributed as dist

    if threads > 0:
        torch.set_num_threads(threads)
    result: dict[str, Any]
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=timedelta(seconds=60),
        )  # fmt: skip
        try:
            result = {"ok": fn(rank, world, *args)}
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 (every failure goes back to the caller)
        result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def run_ranks(
    world: int,
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    *,
    timeout: float = 120.0,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """``fn(rank, world, *args)`` on ``world`` fresh gloo processes; per rank a dict with
    ``"ok"`` (the value) or ``"error"`` (the message) and ``"trace"``. ``fn`` must be
    importable by name (a module-level function). Raises TimeoutError (after killing
    the processes) when they do not finish in ``timeout`` seconds."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ls_xp_ranks_") as out:
        env_before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(max(threads, 1))
        try:
            procs = [
                ctx.Process(target=_rank_main, args=(r, world, port, fn, tuple(args), out, threads))
                for r in range(world)
            ]
            for p in procs:
                p.start()
        finally:
            if env_before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_before
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        late = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        if late:
            raise TimeoutError(f"ranks {late} of {world} did not finish within {timeout:.0f} s")
        results = []
        for r in range(world):
            path = Path(out, f"rank{r}.pkl")
            if not path.exists():
                results.append({"error": f"rank {r} exited with code {procs[r].exitcode}", "trace": ""})
            else:
                results.append(pickle.loads(path.read_bytes()))
        return results


# ------------------------------------------------------------------------- the bench


def _measure(call: Callable[[], Any], repeats: int, sync: Callable[[], Any]) -> tuple[float, float]:
    """(median seconds, peak extra MiB over the inputs) of ``call`` after one warm-up, as
    the project measures (``ru_maxrss`` after the inputs are built as the base)."""
    import resource
    import statistics

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    call()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return statistics.median(times), peak / 1024.0


def _logits_step(mode: str, n: int, k: int, rank: int, world: int, eps: float) -> Callable[[], Any]:
    """One forward + backward of this rank's share (``k`` local classes)."""
    import numpy as np
    import torch

    import ls_xp
    from ls_xp.torch import vocab_parallel_cross_entropy

    x0 = torch.from_numpy(np.random.default_rng(rank).standard_normal((n, k), dtype=np.float32))
    y = torch.from_numpy(np.random.default_rng(99).integers(0, k * world, n))
    if mode == "loss_parallel":
        import torch.nn.functional as F
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Shard
        from torch.distributed.tensor.parallel import loss_parallel

        mesh = init_device_mesh("cpu", (world,))

        def peer() -> Any:
            x = x0.detach().requires_grad_()
            with loss_parallel():
                loss = F.cross_entropy(DTensor.from_local(x, mesh, [Shard(1)], run_check=False), y)
                loss.backward()
            return loss

        return peer

    def step() -> None:
        x = x0.detach().requires_grad_()
        loss = ls_xp.cross_entropy(x, y, eps) if world == 1 else vocab_parallel_cross_entropy(x, y, eps)
        loss.backward()

    return step


def _linear_step(n: int, dim: int, k: int, rank: int, world: int, eps: float) -> Callable[[], Any]:
    import numpy as np
    import torch

    import ls_xp
    from ls_xp.torch import vocab_parallel_linear_cross_entropy

    rng = np.random.default_rng(rank)
    h0 = torch.from_numpy(np.random.default_rng(7).standard_normal((n, dim), dtype=np.float32))
    w0 = torch.from_numpy(rng.standard_normal((k, dim), dtype=np.float32) / 16)
    y = torch.from_numpy(np.random.default_rng(99).integers(0, k * world, n))

    def step() -> None:
        h, w = h0.detach().requires_grad_(), w0.detach().requires_grad_()
        f = ls_xp.linear_cross_entropy if world == 1 else vocab_parallel_linear_cross_entropy
        f(h, w, y, eps).backward()

    return step


def bench_rank(rank: int, world: int, spec: dict[str, Any]) -> dict[str, float]:
    """One rank of one measurement (a module-level function: run in fresh processes)."""
    import torch.distributed as dist

    n, k_total, eps = spec["rows"], spec["classes"], spec["smoothing"]
    k = k_total // world + (1 if rank < k_total % world else 0)
    if spec["kind"] == "linear":
        call = _linear_step(n, spec["dim"], k, rank, world, eps)
        inputs = (n * spec["dim"] + k * spec["dim"]) * 4
    else:
        call = _logits_step(spec["mode"], n, k, rank, world, eps)
        inputs = n * k * 4
    seconds, extra = _measure(call, spec["repeats"], dist.barrier)
    return {"seconds": seconds, "extra_mib": extra, "input_mib": inputs / 2**20}


def _run(spec: dict[str, Any], world: int, threads: int) -> dict[str, float]:
    """One fresh measurement on ``world`` processes: the slowest rank's time and the
    largest per-rank peak (extra memory plus the rank's inputs)."""
    out = run_ranks(world, bench_rank, (spec,), timeout=600.0, threads=threads)
    bad = [r.get("error") for r in out if "ok" not in r]
    if bad:
        raise RuntimeError(f"a rank failed: {bad[0]}")
    ranks = [r["ok"] for r in out]
    return {
        "seconds": max(r["seconds"] for r in ranks),
        "peak_mib": max(r["extra_mib"] + r["input_mib"] for r in ranks),
    }


def compare(
    a: tuple[dict[str, Any], int, int], b: tuple[dict[str, Any], int, int], pairs: int
) -> dict[str, Any]:
    """A and B (each (spec, processes, threads per process)) alternately in fresh
    processes, A B A B...; the medians of the per-pair ratios A / B."""
    import statistics

    runs = []
    for _ in range(pairs):
        runs.append((_run(*a), _run(*b)))
    return {
        "time_ratio": statistics.median(x["seconds"] / y["seconds"] for x, y in runs),
        "peak_ratio": statistics.median(x["peak_mib"] / y["peak_mib"] for x, y in runs),
        "a": [x for x, _ in runs],
        "b": [y for _, y in runs],
    }


def run_bench(
    ranks: int, rows: int, classes: int, dim: int, linear_classes: int, pairs: int, repeats: int
) -> dict[str, Any]:
    """The three comparisons of ``ls-xp bench --ranks R``: the sharded loss against one
    process with the same total threads (ranks x 1 against 1 x ranks), against
    ``loss_parallel`` at eps = 0 (both ranks x 1), and the fused head against one process."""
    base = {"rows": rows, "classes": classes, "repeats": repeats, "kind": "logits"}
    ls = dict(base, mode="ls_xp", smoothing=0.1)
    ls0 = dict(base, mode="ls_xp", smoothing=0.0)
    peer = dict(base, mode="loss_parallel", smoothing=0.0)
    lin = dict(base, kind="linear", classes=linear_classes, dim=dim, smoothing=0.1)
    return {
        "ranks": ranks, "rows": rows, "classes": classes, "dim": dim, "linear_classes": linear_classes,
        "vs_one_process": compare((ls, ranks, 1), (ls, 1, ranks), pairs),
        "vs_loss_parallel": compare((ls0, ranks, 1), (peer, ranks, 1), pairs),
        "fused_vs_one_process": compare((lin, ranks, 1), (lin, 1, ranks), pairs),
    }  # fmt: skip


def format_report(rep: dict[str, Any]) -> str:
    lines = [
        f"ls-xp bench --ranks {rep['ranks']}: gloo over 127.0.0.1, {rep['rows']} x {rep['classes']} float32 "
        f"(fused: {rep['rows']} x {rep['dim']} x {rep['linear_classes']}); medians of A/B pairs",
        f"{'comparison':<44}{'time A/B':>10}{'peak A/B':>10}{'A s':>9}{'B s':>9}{'A MiB':>9}{'B MiB':>9}",
    ]
    names = {
        "vs_one_process": f"sharded eps=0.1 ({rep['ranks']}x1 thr) / 1 process",
        "vs_loss_parallel": "sharded eps=0 / loss_parallel",
        "fused_vs_one_process": "fused head sharded / 1 process",
    }
    for key, label in names.items():
        c = rep[key]
        a_s = sorted(x["seconds"] for x in c["a"])[len(c["a"]) // 2]
        b_s = sorted(x["seconds"] for x in c["b"])[len(c["b"]) // 2]
        a_m = sorted(x["peak_mib"] for x in c["a"])[len(c["a"]) // 2]
        b_m = sorted(x["peak_mib"] for x in c["b"])[len(c["b"]) // 2]
        lines.append(
            f"{label:<44}{c['time_ratio']:>10.2f}{c['peak_ratio']:>10.2f}{a_s:>9.3f}{b_s:>9.3f}{a_m:>9.0f}{b_m:>9.0f}"
        )
    lines.append("peak = per-rank extra ru_maxrss + the rank's inputs; time = the slowest rank's median")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ls_xp._tools.bench_ranks --ranks 2`` (what ``ls-xp bench --ranks`` runs)."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="ls-xp bench --ranks", description=run_bench.__doc__)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--classes", type=int, default=32000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--linear-classes", type=int, default=32768)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rep = run_bench(a.ranks, a.rows, a.classes, a.dim, a.linear_classes, a.pairs, a.repeats)
    print(json.dumps(rep, indent=1) if a.json else format_report(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
