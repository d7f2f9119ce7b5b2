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
