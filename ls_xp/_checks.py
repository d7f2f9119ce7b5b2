"""Argument checks shared by the public functions.

Checks on *shapes, dtypes and Python parameters* always run. Checks on array *values*
(label ranges, negative weights, empty ``where`` rows) run only when the values are
concrete: not under ``jax.jit`` tracing and not on Dask arrays. There the core turns
the offending rows into NaN instead, so a bad input never yields a plausible number.

Scalars are accepted the way NumPy accepts them: an integer parameter takes anything
with ``__index__`` (Python and NumPy integers, 0-d integer arrays), a real parameter
anything ``float()`` reads (Python and NumPy numbers, concrete 0-d arrays), a boolean
parameter only ``True``/``False`` (and NumPy booleans). Booleans are refused where a
number is expected.
"""

from __future__ import annotations

import math
import operator
import os
import sys
from types import ModuleType
from typing import Any

from array_api_compat import (
    array_namespace,
    is_array_api_obj,
    is_array_api_strict_namespace,
    is_cupy_array,
    is_dask_array,
    is_jax_array,
    is_lazy_array,
    is_numpy_array,
    is_numpy_namespace,
    is_torch_array,
)
from array_api_compat import device as get_device

REDUCTIONS = ("mean", "sum", "none")
CONVENTIONS = ("uniform", "others")
PLANS = ("auto", "cpu", "accelerator")
_ACCELERATOR_NAMES = ("cuda", "gpu", "mps", "xpu", "rocm", "tpu", "hpu", "metal", "opencl")


def on_accelerator(x: Any) -> bool:
    """Whether ``x`` lives on an accelerator (anything but host memory): CuPy arrays, and
    devices named like ``cuda:0``, ``mps``, ``xpu``, JAX's ``gpu``/``tpu`` platforms.
    array-api-strict's emulated devices are host memory."""
    if is_cupy_array(x):
        return True
    dev = get_device(x)
    if dev is None:  # inside jax.jit: the compiler decides, values are never read anyway
        return False
    name = str(getattr(dev, "platform", None) or getattr(dev, "type", None) or dev).lower()
    return any(k in name for k in _ACCELERATOR_NAMES)


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


def is_concrete(x: Any) -> bool:
    """True when the values of ``x`` can be read without forcing a lazy computation.

    array-api-compat calls every JAX array lazy; a JAX array is only truly lazy while it
    is being traced (inside ``jit``, ``grad``, ``vmap``...). Likewise a PyTorch tensor
    wrapped by ``torch.func`` transforms (``vmap``, ``grad``) cannot be read. Dask arrays
    stay lazy.
    """
    if is_torch_array(x):
        functorch = getattr(getattr(sys.modules.get("torch"), "_C", None), "_functorch", None)
        wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
        return wrapped is None or not wrapped(x)
    if is_jax_array(x):
        jax_core = sys.modules.get("jax.core")
        tracer = getattr(jax_core, "Tracer", None)
        return tracer is None or not isinstance(x, tracer)
    return not is_lazy_array(x)


def _is_bool(value: Any) -> bool:
    return (
        isinstance(value, bool)
        or type(value).__name__ == "bool"
        or (getattr(value, "dtype", None) is not None and str(value.dtype) == "bool")
    )


def as_int(value: Any, name: str) -> int:
    """An integer parameter: Python or NumPy integers, 0-d integer arrays (not bool)."""
    if _is_bool(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError as exc:
        raise TypeError(f"{name} must be an integer, got {value!r}") from exc


def as_real(value: Any, name: str) -> float:
    """A real parameter: Python or NumPy numbers, concrete 0-d real arrays (not bool)."""
    if _is_bool(value) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    dtype = getattr(value, "dtype", None)
    if dtype is not None and "complex" in str(dtype):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a real number, got {value!r}") from exc


def as_bool(value: Any, name: str) -> bool:
    """A flag: True or False only (NumPy booleans too); anything else is a TypeError."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_" or type(value).__name__ == "bool":
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def _is_array(a: Any) -> bool:
    """An array of any array-API library (a plain bool: no narrowing of the caller's type)."""
    return bool(is_array_api_obj(a))


def _library(a: Any) -> str:
    return type(a).__module__.split(".")[0]


def same_namespace(xp: ModuleType, device: Any, value: Any, name: str, like: str = "logits") -> Any:
    """``value`` as an array of ``xp`` on ``device``; the ``like`` argument decides both.

    NumPy arrays and scalars, Python numbers and sequences are converted (what data loaders
    yield, as optax does with ``jnp.asarray``). An array of another array library, or of
    the same library on another device, is an error naming the argument: converting it
    would copy across devices or drop an autodiff dependency behind the caller's back.
    """
    if value is None:
        return None
    if is_array_api_obj(value) and not is_numpy_array(value):
        try:
            other = array_namespace(value)
        except TypeError:
            other = None
        if other is not xp:
            raise TypeError(
                f"{name} is a {_library(value)} array but {like} is a {_library_of(xp)} array; "
                f"pass {name} as a {_library_of(xp)} array (or a NumPy array, which is converted)"
            )
        dev = get_device(value)
        if device is not None and dev is not None and dev != device:
            raise ValueError(
                f"{name} is on device {dev!r} but {like} is on device {device!r}; "
                f"move {name} to {device!r} first"
            )
        return value
    try:
        return xp.asarray(value, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} could not be converted to an array like {like}: {value!r}") from exc


def inputs_like(xp: ModuleType, device: Any, target: Any, weight: Any, where: Any) -> tuple[Any, Any, Any]:
    """``target``, ``weight`` and ``where`` as arrays of the logits' library and device
    (:func:`same_namespace` on each)."""
    return (
        same_namespace(xp, device, target, "target"),
        same_namespace(xp, device, weight, "weight"),
        same_namespace(xp, device, where, "where"),
    )


def _library_of(xp: ModuleType) -> str:
    name = xp.__name__
    if name.startswith("array_api_compat."):
        name = name.split(".")[1]
    return name.split(".")[0]


def check_smoothing(
    xp: ModuleType | None, smoothing: Any, dtype: Any = None, device: Any = None, read: bool = True
) -> Any:
    """The smoothing factor as a Python float, or as a 0-d array of ``xp`` where it must
    stay one: traced (``jax.jit``, ``jax.grad``) or requiring grad (PyTorch).

    The range [0, 1] is checked where the value can be read; an out-of-range value that
    cannot be read becomes NaN, so the loss is NaN rather than a plausible number.
    """
    if _is_bool(smoothing) or isinstance(smoothing, (str, bytes)):
        raise TypeError(f"smoothing must be a real number in [0, 1], got {smoothing!r}")
    given: Any = smoothing  # any library's scalar or 0-d array
    keep = xp is not None and _is_array(given) and not is_numpy_array(given)
    if keep and (not read or not is_concrete(given) or getattr(given, "requires_grad", False)):
        if getattr(given, "ndim", 0) != 0:
            raise ValueError(f"smoothing must be a scalar (0-d), got shape {tuple(given.shape)}")
        assert xp is not None
        s = same_namespace(xp, device, given, "smoothing")
        s = xp.astype(s, dtype) if dtype is not None else s
        if read and is_concrete(s):
            _check_range(float(s), given)  # PyTorch tensors that require grad
            return s
        return xp.where((s >= 0.0) & (s <= 1.0), s, math.nan)
    if getattr(given, "ndim", 0) not in (0, None):
        raise ValueError(f"smoothing must be a scalar (0-d), got shape {tuple(given.shape)}")
    try:
        value = float(given)  # Python and NumPy scalars, concrete 0-d arrays
    except (TypeError, ValueError) as exc:
        raise TypeError(f"smoothing must be a real number in [0, 1], got {smoothing!r}") from exc
    _check_range(value, smoothing)
    return value


def _check_range(value: float, given: Any) -> None:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {given!r}")


def check_chunk_size(value: Any) -> int | None:
    """Rows per block: a positive integer, or None for the default."""
    if value is None:
        return None
    rows = as_int(value, "chunk_size")
    if rows < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per block) or None, got {rows}")
    return rows


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a
    container's or ``taskset``'s limit), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (macOS, Windows)
        return os.cpu_count() or 1


def check_workers(value: Any) -> int | None:
    """Threads over row blocks, SciPy's ``workers``: a positive count, or a negative one
    counted back from the CPUs available (-1: all of them); None for the default."""
    if value is None:
        return None
    count = as_int(value, "workers")
    if count < 0:
        count += available_cpus() + 1
        if count < 1:
            raise ValueError(
                f"workers={value} counts back past the {available_cpus()} CPU(s) available to this process"
            )
    elif count == 0:
        raise ValueError(
            "workers must be a positive int, a negative one counted back from the CPUs "
            "available (-1: all of them), or None; got 0"
        )
    return count


def default_workers(xp: ModuleType) -> int:
    """Threads for the CPU plan's row blocks when the caller chose none: every available
    CPU for libraries that run each operation on one thread (NumPy, and array-api-strict
    on NumPy), where blocks evaluated side by side are the only parallelism; 1 elsewhere
    (PyTorch spreads each operation over its own intra-op threads; JAX and Dask arrays
    are one block, scheduled by their compiler or scheduler)."""
    if is_numpy_namespace(xp) or is_array_api_strict_namespace(xp):
        return available_cpus()
    return 1


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    ax = as_int(axis, name)
    if not -ndim <= ax < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
    return ax % ndim


def check_floating(xp: ModuleType, x: Any, name: str) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def check_known_shape(x: Any, name: str) -> tuple[int, ...]:
    """The shape as ints; Dask arrays with unknown chunk sizes get the fix in the message."""
    shape = tuple(x.shape)
    if any(s is None or s != s for s in shape):  # noqa: PLR0124 (NaN: Dask's unknown size)
        hint = " (a Dask array with unknown chunk sizes: call .compute_chunk_sizes() first)"
        raise ValueError(f"{name} must have a known shape, got {shape}{hint if is_dask_array(x) else ''}")
    return shape


def check_num_classes(num_classes: int, convention: str, name: str = "number of classes") -> None:
    if num_classes < 1:
        raise ValueError(f"the {name} must be at least 1, got {num_classes}")
    if convention == "others" and num_classes == 1:
        raise ValueError(
            'convention="others" spreads smoothing over the K-1 other classes and needs '
            f"K >= 2, got K = {num_classes}"
        )


def first_value(xp: ModuleType, values: Any, bad: Any) -> Any:
    """The first element of ``values`` where ``bad`` holds (eager arrays only)."""
    flat_values = xp.reshape(values, (-1,))
    flat_bad = xp.reshape(bad, (-1,))
    picked = flat_values[flat_bad]
    item = picked[0]
    return int(item) if xp.isdtype(values.dtype, "integral") else float(item)


def any_true(xp: ModuleType, mask: Any, read: bool = True) -> bool:
    """``bool(xp.any(mask))`` for concrete arrays when values may be ``read``; always False
    for lazy ones, and without ``read`` (no host synchronisation on an accelerator)."""
    if not read or not is_concrete(mask):
        return False
    return bool(xp.any(mask))
