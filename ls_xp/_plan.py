"""How an evaluation is scheduled: the execution plan, the block sizes and the threads.

Nothing here changes a result beyond the order of additions; everything here decides
how much memory an evaluation holds at once, how many operations it launches and on how
many threads it runs. Every block-size constant of the library lives here, with its
reason; the measurements behind them are on the documentation's benchmarks page.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from array_api_compat import device as get_device
from array_api_compat import (
    is_array_api_strict_namespace,
    is_cupy_array,
    is_jax_array,
    is_lazy_array,
    is_numpy_namespace,
    is_torch_array,
    is_writeable_array,
)

PLANS = ("auto", "cpu", "accelerator")
_ACCELERATOR_NAMES = ("cuda", "gpu", "mps", "xpu", "rocm", "tpu", "hpu", "metal", "opencl")

# --- block sizes, in elements of one block of logits ---------------------------------
# The CPU plan: a block's temporaries stay cache-sized (2 MiB of float32 each).
BLOCK_ELEMENTS = 1 << 19
# The accelerator plan: each block is a fixed number of launches whatever its size, so
# one block up to 1 GiB of float32 temporaries, then equal blocks under that budget.
ACCELERATOR_BLOCK_ELEMENTS = 1 << 28
# PyTorch on the CPU: every operation hands its work to the intra-op thread pool, which
# wants fewer, larger blocks; a block stays under glibc's largest mmap threshold (32 MiB
# of float32), above which every temporary is mapped and faulted in afresh.
TORCH_CPU_BLOCK_ELEMENTS = 7 << 20
# The fused linear loss: its classifier-gradient product (V x n) @ (n x D) wants n in the
# hundreds, so its row blocks hold more logits than the plain loss's.
LINEAR_BLOCK_ELEMENTS = 1 << 24
LINEAR_ACCELERATOR_BLOCK_ELEMENTS = 1 << 26
# ... and the classifier gradient is accumulated one class slice of this size at a time,
# so that the temporary product stays small while the matmuls stay large.
GRAM_ELEMENTS = 1 << 21
# The PyTorch fused loss evaluates the softmax of a block of logits in sub-blocks of this
# size (the plain loss's blocks, smaller than the matmul's).
TORCH_LINEAR_SOFTMAX_ELEMENTS = 1 << 21
# JAX's fused loss scans over blocks of this size: XLA keeps a few arrays of a block live.
JAX_SCAN_BLOCK_ELEMENTS = 1 << 22


def on_accelerator(x: Any) -> bool:
    """Whether ``x`` lives on an accelerator (anything but host memory): CuPy arrays, and
    devices named like ``cuda:0``, ``mps``, ``xpu``, JAX's ``gpu``/``tpu`` platforms.
    array-api-strict's emulated devices are host memory."""
    if kind(x) == "numpy":
        return False
    if is_cupy_array(x):
        return True
    dev = get_device(x)
    if dev is None:  # inside jax.jit: the compiler decides, values are never read anyway
        return False
    dev = next(iter(getattr(dev, "device_set", None) or (dev,)))  # (a JAX sharding: its devices)
    name = str(getattr(dev, "platform", None) or getattr(dev, "type", None) or dev).lower()
    return any(k in name for k in _ACCELERATOR_NAMES)


def device_of(x: Any) -> Any:
    """The device new arrays like ``x`` are made on: ``x``'s device, or ``None`` (the
    library's default) when ``x`` is a JAX array sharded over several devices, whose
    sharding names a layout of ``x``'s shape that a new array of another shape cannot take;
    JAX places such arrays where the operations that use them ask."""
    dev = get_device(x)
    return None if len(getattr(dev, "device_set", ())) > 1 else dev


def plan(x: Any) -> str:
    """The execution plan for arrays like ``x``: ``"cpu"`` or ``"accelerator"``.

    ``LS_XP_PLAN`` in the environment (``auto``, ``cpu``, ``accelerator``) forces one, as a
    testing and tuning aid: ``accelerator`` on a CPU runs exactly the code path a GPU runs.
    """
    forced = os.environ.get("LS_XP_PLAN", "auto").strip().lower() or "auto"
    if forced not in PLANS:
        allowed = ", ".join(repr(p) for p in PLANS)
        raise ValueError(f"the environment variable LS_XP_PLAN must be one of {allowed}, got {forced!r}")
    if forced != "auto":
        return forced
    return "accelerator" if on_accelerator(x) else "cpu"


_KINDS: dict[type, str] = {}


def kind(x: Any) -> str:
    """The kind of library of ``x`` ("numpy", "torch", "jax" or "other"), cached per type:
    these checks run several times per call, and a small loss is all call overhead."""
    t = type(x)
    torch_mod = sys.modules.get("torch")
    if torch_mod is not None and torch_mod.compiler.is_compiling():  # no cache for dynamo to guard on
        return "torch" if isinstance(x, torch_mod.Tensor) else "numpy" if t.__module__ == "numpy" else "other"
    kind = _KINDS.get(t)
    if kind is None:
        if is_torch_array(x):
            kind = "torch"
        elif is_jax_array(x):
            kind = "jax"
        elif t.__module__ == "numpy" and t.__name__ == "ndarray":
            kind = "numpy"
        else:
            kind = "other"
        _KINDS[t] = kind
    return kind


def is_concrete(x: Any) -> bool:
    """True when the values of ``x`` can be read without forcing a lazy computation.

    array-api-compat calls every JAX array lazy; a JAX array is only truly lazy while it
    is being traced (inside ``jit``, ``grad``, ``vmap``...). Likewise a PyTorch tensor
    wrapped by ``torch.func`` transforms (``vmap``, ``grad``) cannot be read. Dask arrays
    stay lazy.
    """
    what = kind(x)
    if what == "numpy":
        return True
    if what == "torch":
        torch_mod = sys.modules.get("torch")
        if torch_mod is not None and torch_mod.compiler.is_compiling():
            return False  # traced by dynamo / export: fake tensors, no value to read
        functorch = getattr(getattr(sys.modules.get("torch"), "_C", None), "_functorch", None)
        wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
        return wrapped is None or not wrapped(x)
    if what == "jax":
        jax_core = sys.modules.get("jax.core")
        tracer = getattr(jax_core, "Tracer", None)
        return tracer is None or not isinstance(x, tracer)
    return not is_lazy_array(x)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a
    container's or ``taskset``'s limit), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (macOS, Windows)
        return os.cpu_count() or 1


def default_workers(xp: ModuleType) -> int:
    """Threads for the CPU plan's row blocks when the caller chose none: every available
    CPU for libraries that run each operation on one thread (NumPy, and array-api-strict
    on NumPy), where blocks evaluated side by side are the only parallelism; 1 elsewhere
    (PyTorch spreads each operation over its own intra-op threads; JAX and Dask arrays
    are one block, scheduled by their compiler or scheduler)."""
    if is_numpy_namespace(xp) or is_array_api_strict_namespace(xp):
        return available_cpus()
    return 1


def workers(xp: ModuleType, count: int | None, plan_name: str) -> int:
    """Threads over row blocks: the caller's (checked) ``count``, else the library's
    default; the accelerator plan's few large blocks run one after another."""
    if plan_name != "cpu":
        return 1
    return default_workers(xp) if count is None else count


def block_rows(x: Any, chunk_size: int | None, plan_name: str = "cpu") -> int:
    """Rows per block of the (N, K) logits ``x``: ``chunk_size`` if given; else cache-sized
    blocks on the CPU plan and as few blocks as the budget allows on the accelerator plan.

    Lazy arrays (Dask) and JAX arrays get one block: their scheduler or compiler plans the
    memory. Read-only arrays (a memory-mapped ``np.load(..., mmap_mode="r")``) are blocked
    like any other: blocks only read the logits.
    """
    n_rows, num_classes = x.shape
    if chunk_size is not None:
        return chunk_size
    if not is_concrete(x) or kind(x) == "jax":
        return max(n_rows, 1)
    if plan_name == "accelerator":
        blocks = -(-n_rows * num_classes // ACCELERATOR_BLOCK_ELEMENTS)  # ceil
        return max(1, -(-n_rows // max(blocks, 1)))
    return max(1, BLOCK_ELEMENTS // max(num_classes, 1))


def can_overwrite(logits: Any, axis: int, dtype: Any) -> bool:
    """The gradient can go into the logits' own buffer: a concrete, writeable 2-D array
    with the classes last, already in the compute dtype."""
    return (
        logits.ndim == 2
        and axis == 1
        and logits.dtype == dtype
        and is_concrete(logits)
        and is_writeable_array(logits)
    )


_Out = TypeVar("_Out")


def run_blocks(run: Callable[[int], tuple[_Out, Any]], count: int, threads: int) -> list[_Out]:
    """``run(i)`` for every block i, on ``threads`` threads (the caller's among them),
    each taking the next block when it is done with one; the results in block order.

    ``run`` returns a block's result and an object to keep alive until that thread's next
    block has been written (its gradient): the allocator then reuses that memory for the
    next block instead of returning the pages to the OS and faulting them in again.
    Blocks are independent and write disjoint rows, so the results do not depend on the
    threads, bit for bit. Threads help where the library runs each operation on one
    thread and releases the GIL while it computes (NumPy).
    """
    if count == 1:  # (no thread machinery for the common single block)
        return [run(0)[0]]
    out: list[Any] = [None] * count
    jobs = iter(range(count))
    lock = threading.Lock()
    failed = threading.Event()

    def work() -> None:
        _held = None  # the previous block's gradient, released only when the next is written
        while not failed.is_set():
            with lock:
                i = next(jobs, None)
            if i is None:
                return
            try:
                out[i], _held = run(i)
            except BaseException:
                failed.set()  # the other threads stop at their next block
                raise

    if threads <= 1:
        work()
        return out
    with concurrent.futures.ThreadPoolExecutor(threads - 1, thread_name_prefix="ls_xp") as pool:
        # each helper runs in a copy of the caller's context, so that context-local
        # settings (NumPy's errstate) hold in every block alike
        helpers = [pool.submit(contextvars.copy_context().run, work) for _ in range(threads - 1)]
        work()
        for h in helpers:
            h.result()  # (re-raises a helper's error)
    return out
