"""Validation at the door: argument kinds, shapes, dtypes and values, and the conversion
of NumPy and Python inputs to the library of the logits.

Checks on *shapes, dtypes and Python parameters* always run. Checks on array *values*
(label ranges, negative weights, empty ``where`` rows) run only where the values may be
read: concrete arrays (not under ``jax.jit`` tracing, not Dask) on the CPU plan, or where
``check_values=True``. Elsewhere the core turns the offending rows into NaN, so a bad
input never yields a plausible number.

The scalar keywords are checked into an :class:`Options` by :mod:`ls_xp._options`, whose
names this module re-exports: the door is one module to its callers.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from array_api_compat import array_namespace, is_array_api_obj, is_dask_array, is_numpy_array
from array_api_compat import device as get_device

from ls_xp import _plan

# the checks of the scalar keywords, re-exported: the door is one module to its callers
from ls_xp._options import (
    CONVENTIONS,  # noqa: F401
    DEFAULT_OPTIONS,  # noqa: F401
    REDUCTIONS,  # noqa: F401
    Options,  # noqa: F401
    _is_bool,
    as_bool,  # noqa: F401
    as_int,
    as_real,  # noqa: F401
    check_choice,  # noqa: F401
    check_chunk_size,  # noqa: F401
    check_ignore_index,  # noqa: F401
    check_shift,  # noqa: F401
    check_softcap,  # noqa: F401
    check_workers,  # noqa: F401
    check_z_loss,  # noqa: F401
    options,  # noqa: F401
)
from ls_xp._plan import is_concrete

Array = Any


def check_accum_dtype(xp: ModuleType, value: Any, compute: Any) -> Any:
    """The dtype the fused loss sums the classifier's gradient in: a real floating dtype of
    ``xp``; None: float32 at least (the compute dtype)."""
    if value is None:
        return compute
    try:
        ok = xp.isdtype(value, "real floating")
    except (TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise TypeError(
            f"accum_dtype must be a real floating dtype of the inputs' library (e.g. float32), got {value!r}"
        )
    return value


def check_logits(logits: Any, name: str = "logits") -> None:
    """``logits`` must be an array of a supported library (a list is not)."""
    if not is_array_api_obj(logits):
        raise TypeError(
            f"{name} must be an array (NumPy, PyTorch, JAX, CuPy, Dask or array-api-strict), "
            f"got {type(logits).__name__}; convert it first, e.g. np.asarray({name})"
        )


def join_library(logits: Any, *others: Any, name: str = "logits") -> Any:
    """``logits`` converted to the library of the other array inputs where ``logits`` are
    NumPy and one of them is not: NumPy and Python values join any other library (a JAX
    loss evaluated on NumPy primals, as ``jax.test_util.check_grads`` does). Two non-NumPy
    libraries are left for :func:`same_namespace` to refuse, naming both."""
    what = _plan.kind(logits)
    if what in ("torch", "jax"):  # (also keeps array-api-compat's caches out of dynamo)
        return logits
    if what == "numpy" and all(o is None or type(o) is float or _plan.kind(o) == "numpy" for o in others):
        return logits  # (the common case, without the generic checks below)
    check_logits(logits, name)
    if not is_numpy_array(logits):
        return logits
    for other in others:
        if other is not None and is_array_api_obj(other) and not is_numpy_array(other):
            return array_namespace(other).asarray(logits, device=get_device(other))
    return logits


def _is_array(a: Any) -> bool:
    """An array of any array-API library (a plain bool: no narrowing of the caller's type)."""
    return bool(is_array_api_obj(a))


def _library(a: Any) -> str:
    """The name users know an array's library by ("jax", not "jaxlib")."""
    try:
        return _library_of(array_namespace(a))
    except TypeError:
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
    if _plan.known_namespace(value) is xp:  # (the common case: no generic look-ups)
        if _plan.kind(value) == "numpy" and device in ("cpu", None):
            return value  # (what xp.asarray gives back)
        if _plan.kind(value) == "torch" and (device is None or value.device == device):
            return value
    if is_array_api_obj(value) and not is_numpy_array(value):
        try:
            other = array_namespace(value)
        except TypeError:
            other = None
        if other is not xp:
            raise TypeError(
                f"{name} is a {_library(value)} array but {like} is a {_library_of(xp)} array; "
                f"convert {name} to a {_library_of(xp)} array"
            )
        dev = get_device(value)
        # a JAX sharding over several devices leaves placement to JAX (a replicated target
        # beside class-sharded logits is the usual layout; jit or an eager op reshards)
        spans = _plan.spans_devices(dev) or _plan.spans_devices(device)
        if device is not None and dev is not None and dev != device and not spans:
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
    if type(smoothing) is float:  # (the common case: a Python number, read as it is)
        _check_range(smoothing, smoothing)
        return smoothing
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
    if not 0.0 <= value <= 1.0:  # (also NaN; no math.isnan: a symbolic float under dynamo)
        raise ValueError(f"smoothing must be in [0, 1], got {given!r}")


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    ax = as_int(axis, name)
    if not -ndim <= ax < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
    return ax % ndim


def check_floating(xp: ModuleType, x: Any, name: str) -> None:
    if not _plan.isdtype(xp, x.dtype, "real floating"):
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


def class_weight(
    xp: ModuleType, weight: Array | None, num_classes: int, dtype: Any, read: bool
) -> Array | None:
    if weight is None:
        return None
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"weight must have shape ({num_classes},) (one entry per class), got {tuple(weight.shape)}"
        )
    if not xp.isdtype(weight.dtype, ("real floating", "integral")):
        raise TypeError(f"weight must have a real dtype, got {weight.dtype}")
    w = weight if weight.dtype == dtype else xp.astype(weight, dtype)
    bad = ~(w >= 0.0) | ~xp.isfinite(w)
    if any_true(xp, bad, read):
        value = first_value(xp, w, bad)
        raise ValueError(f"weight must be finite and non-negative, got an entry {value!r}")
    return w


def class_mask(xp: ModuleType, where: Array | None, shape: tuple[int, ...], axis: int) -> Array | None:
    """``where`` broadcast to the logits and laid out as (N, K).

    It broadcasts like any array: a 1-D ``where`` of length K is therefore one class mask
    for every row. (optax's ``where`` in ``softmax_cross_entropy`` is the same; its
    ``safe_softmax_cross_entropy``-style per-example masks are ``ignore_index`` here.)
    """
    if where is None:
        return None
    if where.dtype != xp.bool:
        raise TypeError(f"where must be a boolean array, got dtype {where.dtype}")
    try:
        full = xp.broadcast_to(where, shape)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(
            f"where with shape {tuple(where.shape)} does not broadcast to logits shape {shape}"
        ) from exc
    return xp.reshape(full if axis == len(shape) - 1 else xp.moveaxis(full, axis, -1), (-1, shape[axis]))


def is_probability_target(xp: ModuleType, logits: Array, target: Array, axis: int) -> bool:
    """Tell class indices from class probabilities the way PyTorch does: by shape."""
    batch = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1 :])
    if tuple(target.shape) == tuple(logits.shape):
        if not _plan.isdtype(xp, target.dtype, "real floating"):
            raise TypeError(
                "target has the shape of logits, so it is read as class probabilities, which "
                f"must be floating point; got dtype {target.dtype}. Class indices must have "
                f"logits' shape without the class axis, {batch}"
            )
        return True
    if tuple(target.shape) != batch:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}: class indices need shape {batch} (logits without axis "
            f"{axis}), class probabilities need shape {tuple(logits.shape)}"
        )
    if not _plan.isdtype(xp, target.dtype, "integral"):
        raise TypeError(
            f"target holds class indices (its shape is logits' without the class axis), which "
            f"must have an integer dtype, got {target.dtype}; convert it, e.g. "
            "target.astype(int) (NumPy) or target.long() (PyTorch)"
        )
    return False


# --------------------------------------------------------------------------------------
# the one evaluation: checks and bookkeeping -> blocks -> assembly
# --------------------------------------------------------------------------------------
