"""Argument checks shared by the public functions.

Checks on *shapes, dtypes and Python parameters* always run. Checks on array *values*
(label ranges, negative weights, empty ``where`` rows) run only when the values are
concrete: not under ``jax.jit`` tracing and not on Dask arrays. There the core turns
the offending rows into NaN instead, so a bad input never yields a plausible number.
"""

from __future__ import annotations

import math
import sys
from types import ModuleType
from typing import Any

from array_api_compat import is_jax_array, is_lazy_array, is_torch_array

REDUCTIONS = ("mean", "sum", "none")
CONVENTIONS = ("uniform", "others")


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


def check_smoothing(smoothing: Any) -> float:
    if isinstance(smoothing, (bool, str, bytes)):
        raise TypeError(f"smoothing must be a real number in [0, 1], got {smoothing!r}")
    try:
        value = float(smoothing)  # Python and NumPy scalars, concrete 0-d arrays
    except (TypeError, ValueError) as exc:
        raise TypeError(f"smoothing must be a real number in [0, 1], got {smoothing!r}") from exc
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{name} must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def check_floating(xp: ModuleType, x: Any, name: str) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


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


def any_true(xp: ModuleType, mask: Any) -> bool:
    """``bool(xp.any(mask))`` for concrete arrays; always False for lazy ones."""
    if not is_concrete(mask):
        return False
    return bool(xp.any(mask))
