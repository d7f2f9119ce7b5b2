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

import array_api_extra as xpx
from array_api_compat import (
    array_namespace,
    is_array_api_strict_namespace,
    is_cupy_array,
    is_jax_array,
    is_jax_namespace,
    is_lazy_array,
    is_numpy_namespace,
    is_torch_array,
    is_writeable_array,
)
from array_api_compat import device as get_device

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
# The fused linear loss on the accelerator plan: a fixed number of launches per block, so
# its blocks are large (on the CPU plan they are sized in bytes: ls_xp._linear.BLOCK_BYTES).
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
    what = kind(x)
    if what == "numpy":
        return False
    if what == "torch":  # (a torch.device: its type names it; no generic device look-up)
        name = x.device.type
        return name != "cpu" and _is_accelerator_name(name)
    if is_cupy_array(x):
        return True
    dev = get_device(x)
    if dev is None:  # inside jax.jit: the compiler decides, values are never read anyway
        return False
    dev = next(iter(getattr(dev, "device_set", None) or (dev,)))  # (a JAX sharding: its devices)
    return _is_accelerator_name(str(getattr(dev, "platform", None) or getattr(dev, "type", None) or dev))


def _is_accelerator_name(name: str) -> bool:
    name = name.lower()
    return any(k in name for k in _ACCELERATOR_NAMES)


def device_of(x: Any) -> Any:
    """The device new arrays like ``x`` are made on: ``x``'s device, or ``None`` (the
    library's default) when ``x`` is a JAX array sharded over several devices, whose
    sharding names a layout of ``x``'s shape that a new array of another shape cannot take;
    JAX places such arrays where the operations that use them ask."""
    what = kind(x)
    if what == "numpy":
        return "cpu"  # (array-api-compat's device of every NumPy array)
    if what == "torch":
        return x.device
    dev = get_device(x)
    return None if spans_devices(dev) else dev


def spans_devices(dev: Any) -> bool:
    """Whether the device ``dev`` (of an array) is a JAX sharding over several devices."""
    return len(getattr(dev, "device_set", ())) > 1


def plan(x: Any) -> str:
    """The execution plan for arrays like ``x``: ``"cpu"`` or ``"accelerator"``.

    ``LS_XP_PLAN`` in the environment (``auto``, ``cpu``, ``accelerator``) forces one, as a
    testing and tuning aid: ``accelerator`` on a CPU runs exactly the code path a GPU runs.
    """
    forced = _forced_plan(os.environ.get("LS_XP_PLAN", "auto"))
    if forced != "auto":
        return forced
    return "accelerator" if on_accelerator(x) else "cpu"


_FORCED: dict[str, str] = {}


def _forced_plan(raw: str) -> str:
    """``LS_XP_PLAN`` normalised and checked (read at every call, as tests change it; its
    few values are parsed once)."""
    forced = _FORCED.get(raw)
    if forced is None:
        forced = raw.strip().lower() or "auto"
        if forced not in PLANS:
            allowed = ", ".join(repr(p) for p in PLANS)
            raise ValueError(f"the environment variable LS_XP_PLAN must be one of {allowed}, got {forced!r}")
        if len(_FORCED) < 64:
            _FORCED[raw] = forced
    return forced


_KINDS: dict[type, str] = {}


def compiling() -> bool:
    """Whether dynamo is tracing this call (``torch.compile``, ``torch.export``): then no
    cache is read or written, so that dynamo has nothing to guard on."""
    if _IS_COMPILING:  # (asked several times per call: the function found once)
        return bool(_IS_COMPILING[0]())
    torch_mod = sys.modules.get("torch")
    if torch_mod is None:
        return False
    is_compiling = torch_mod.compiler.is_compiling
    if is_compiling():
        return True
    _IS_COMPILING.append(is_compiling)  # (outside dynamo: no side effect for it to trace)
    return False


_IS_COMPILING: list[Callable[[], bool]] = []


def kind(x: Any) -> str:
    """The kind of library of ``x`` ("numpy", "torch", "jax" or "other"), cached per type:
    these checks run several times per call, and a small loss is all call overhead."""
    t = type(x)
    if compiling():  # no cache for dynamo to guard on
        torch_mod = sys.modules["torch"]
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


_NAMESPACES: dict[str, ModuleType] = {}


def namespace(x: Any) -> ModuleType:
    """``array_namespace(x)``, looked up once for NumPy and PyTorch arrays: every array of
    those has the same (array-api-compat's) namespace, and the look-up is a fair share of a
    small loss's time."""
    what = kind(x)
    if what not in ("numpy", "torch") or compiling():
        return array_namespace(x)
    xp = _NAMESPACES.get(what)
    if xp is None:
        xp = _NAMESPACES[what] = array_namespace(x)
    return xp


def kind_of_namespace(xp: ModuleType) -> str | None:
    """The kind ("numpy", "torch") whose namespace :func:`namespace` found ``xp`` to be."""
    for what, known in _NAMESPACES.items():
        if known is xp:
            return what
    return None


def known_namespace(x: Any) -> ModuleType | None:
    """The namespace of ``x`` where :func:`namespace` has already looked it up (NumPy and
    PyTorch arrays, outside dynamo), else None: a cheap test that two arrays share one."""
    what = kind(x)
    return _NAMESPACES.get(what) if what in ("numpy", "torch") and not compiling() else None


_Value = TypeVar("_Value")
_MEMO: dict[tuple[Any, ...], Any] = {}


def memo(key: tuple[Any, ...], make: Callable[[], _Value]) -> _Value:
    """``make()``, remembered under ``key`` (a decision about a namespace, a dtype or a
    device, the same at every call): not while dynamo traces, nor for unhashable keys
    (some libraries' device objects)."""
    if compiling():
        return make()
    try:
        hit = _MEMO.get(key, _MISSING)
    except TypeError:
        return make()
    if hit is _MISSING:
        hit = make()
        if len(_MEMO) >= 1024:
            _MEMO.clear()
        _MEMO[key] = hit
    return hit


_MISSING = object()


def isdtype(xp: ModuleType, dtype: Any, kinds: str | tuple[str, ...]) -> bool:
    """``xp.isdtype(dtype, kinds)``, remembered (NumPy's is a Python function of its own)."""
    return memo(("isdtype", xp, dtype, kinds), lambda: bool(xp.isdtype(dtype, kinds)))


def compute_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The dtype the formulas compute in: float32 at least (float16/bfloat16 in float32).

    The usual dtypes are compared, not promoted: a compiler traces a comparison of dtypes,
    while ``result_type`` (``torch.promote_types``) stops dynamo."""
    if dtype in (xp.float64, xp.float32):
        return dtype
    if any(dtype == getattr(xp, name, None) for name in ("float16", "bfloat16")):
        return xp.float32
    return memo(("compute", xp, dtype), lambda: xp.result_type(dtype, xp.float32))


def index_dtype(xp: ModuleType, device: Any) -> Any:
    """The library's default index dtype on ``device`` (``xpx.default_dtype``); JAX's is
    asked every time (it follows ``jax_enable_x64``, which a program may switch)."""
    if is_jax_namespace(xp):
        return xpx.default_dtype(xp, "indexing", device=device)
    return memo(("index", xp, device), lambda: xpx.default_dtype(xp, "indexing", device=device))


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
        if compiling():
            return False  # traced by dynamo / export: fake tensors, no value to read
        wrapped = _functorch_wrapped()
        return wrapped is None or not wrapped(x)
    if what == "jax":
        jax_core = sys.modules.get("jax.core")
        tracer = getattr(jax_core, "Tracer", None)
        return tracer is None or not isinstance(x, tracer)
    return not is_lazy_array(x)


_WRAPPED: list[Any] = []


def _functorch_wrapped() -> Any:
    """``torch._C._functorch.is_functorch_wrapped_tensor`` (None where missing), found once."""
    if not _WRAPPED:
        functorch = getattr(getattr(sys.modules.get("torch"), "_C", None), "_functorch", None)
        _WRAPPED.append(getattr(functorch, "is_functorch_wrapped_tensor", None))
    return _WRAPPED[0]


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
