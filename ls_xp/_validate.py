"""Validation at the door: argument kinds, shapes, dtypes and values, and the conversion
of NumPy and Python inputs to the library of the logits.

Checks on *shapes, dtypes and Python parameters* always run. Checks on array *values*
(label ranges, negative weights, empty ``where`` rows) run only where the values may be
read: concrete arrays (not under ``jax.jit`` tracing, not Dask) on the CPU plan, or where
``check_values=True``. Elsewhere the core turns the offending rows into NaN, so a bad
input never yields a plausible number.

Scalars are accepted the way NumPy accepts them: an integer parameter takes anything
with ``__index__`` (Python and NumPy integers, 0-d integer arrays), a real parameter
anything ``float()`` reads (Python and NumPy numbers, concrete 0-d arrays), a boolean
parameter only ``True``/``False`` (and NumPy booleans). Booleans are refused where a
number is expected.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from array_api_compat import array_namespace, is_array_api_obj, is_dask_array, is_numpy_array
from array_api_compat import device as get_device

from ls_xp import _plan
from ls_xp._plan import available_cpus, is_concrete

Array = Any

REDUCTIONS = ("mean", "sum", "none")
CONVENTIONS = ("uniform", "others")


@dataclass(frozen=True)
class Options:
    """The scalar keywords of the losses, checked once at the door.

    Frozen and hashable, so that it can be a static argument under ``jax.jit`` or a
    ``custom_jvp``'s non-differentiable argument; a module builds it once at construction.
    """

    reduction: str = "mean"
    ignore_index: int = -100
    axis: int = -1  # as given: the core normalises it against the logits' ndim
    convention: str = "uniform"
    log_probs: bool = False
    chunk_size: int | None = None
    workers: int | None = None  # a positive count (negative ones counted back), or None
    overwrite_logits: bool = False
    check_values: bool | None = None
    z_loss: float = 0.0  # the weight of lse**2 per counted row (PaLM's z-loss)
    softcap: float | None = None  # logits become softcap * tanh(logits / softcap) (Gemma 2)
    shift: int = 0  # score position t against target t + shift (the causal-LM shift)
    return_aux: bool = False  # also return the statistics of the same pass
    accum_dtype: Any = None  # the fused loss's dtype for summing dW and db (None: float32 at least)


def options(
    *,
    reduction: Any = "mean",
    ignore_index: Any = -100,
    axis: Any = -1,
    convention: Any = "uniform",
    log_probs: Any = False,
    chunk_size: Any = None,
    workers: Any = None,
    overwrite_logits: Any = False,
    check_values: Any = None,
    z_loss: Any = 0.0,
    softcap: Any = None,
    shift: Any = 0,
    return_aux: Any = False,
    accum_dtype: Any = None,
) -> Options:
    """The keywords as an :class:`Options`, each checked; an error names the bad one."""
    opts = Options(
        reduction=check_choice("reduction", reduction, REDUCTIONS),
        ignore_index=check_ignore_index(ignore_index),
        axis=as_int(axis, "axis"),
        convention=check_choice("convention", convention, CONVENTIONS),
        log_probs=as_bool(log_probs, "log_probs"),
        chunk_size=check_chunk_size(chunk_size),
        workers=check_workers(workers),
        overwrite_logits=as_bool(overwrite_logits, "overwrite_logits"),
        check_values=None if check_values is None else as_bool(check_values, "check_values"),
        z_loss=check_z_loss(z_loss),
        softcap=check_softcap(softcap),
        shift=check_shift(shift),
        return_aux=as_bool(return_aux, "return_aux"),
        accum_dtype=accum_dtype,  # (checked against the inputs' library by the fused loss)
    )
    if opts.log_probs and (opts.softcap is not None or opts.z_loss or opts.return_aux):
        name = "softcap" if opts.softcap is not None else "z_loss" if opts.z_loss else "return_aux"
        raise ValueError(
            f"{name} needs logits, but log_probs=True says they are log-probabilities; "
            f"pass the logits with log_probs=False"
        )
    return opts


def _static_real(value: Any, name: str) -> float:
    """A hyperparameter that shapes the computation: a Python or NumPy number (or a
    concrete 0-d array), never a traced value."""
    if type(value) in (int, float):  # (the common case; under dynamo also a symbolic float)
        return float(value)
    if is_array_api_obj(value) and not is_concrete(value):
        raise TypeError(f"{name} must be a Python number (a static hyperparameter), got a traced {value!r}")
    return as_real(value, name)


def _finite(z: float) -> bool:
    """``math.isfinite`` by comparisons, which dynamo also evaluates on a symbolic float
    (``torch.compile(dynamic=True)`` makes Python float defaults symbolic)."""
    return -math.inf < z < math.inf  # (False for NaN)


def check_z_loss(value: Any) -> float:
    z = _static_real(value, "z_loss")
    if not (_finite(z) and z >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0 (e.g. 1e-4), got {value!r}")
    return z


def check_softcap(value: Any) -> float | None:
    if value is None:
        return None
    cap = _static_real(value, "softcap")
    if not (_finite(cap) and cap > 0.0):
        raise ValueError(f"softcap must be a finite number > 0 (e.g. 30.0) or None, got {value!r}")
    return cap


def check_shift(value: Any) -> int:
    shift = as_int(value, "shift")
    if shift < 0:
        raise ValueError(f"shift must be an integer >= 0 (1 for the causal-LM loss), got {shift}")
    return shift


DEFAULT_OPTIONS = Options()


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


def check_ignore_index(value: Any) -> int:
    if value is None:
        raise TypeError(
            "ignore_index must be an integer, got None; to ignore no class pass a value that "
            "is no class index, such as the default -100 (fairseq's ignore_index=None)"
        )
    return as_int(value, "ignore_index")


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
    if _plan.kind(logits) in ("torch", "jax"):  # (also keeps array-api-compat's caches out of dynamo)
        return logits
    check_logits(logits, name)
    if not is_numpy_array(logits):
        return logits
    for other in others:
        if other is not None and is_array_api_obj(other) and not is_numpy_array(other):
            return array_namespace(other).asarray(logits, device=get_device(other))
    return logits


def _is_bool(value: Any) -> bool:
    return (
        isinstance(value, bool)
        or type(value).__name__ == "bool"
        or (getattr(value, "dtype", None) is not None and str(value.dtype) == "bool")
    )


def as_int(value: Any, name: str) -> int:
    """An integer parameter: Python or NumPy integers, 0-d integer arrays (not bool)."""
    if type(value) is int:  # (the common case; under dynamo also a symbolic int)
        return value
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
        if device is not None and dev is not None and dev != device and not _spans_devices(dev, device):
            raise ValueError(
                f"{name} is on device {dev!r} but {like} is on device {device!r}; "
                f"move {name} to {device!r} first"
            )
        return value
    try:
        return xp.asarray(value, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} could not be converted to an array like {like}: {value!r}") from exc


def _spans_devices(*devices: Any) -> bool:
    """Whether one of ``devices`` is a JAX sharding over several devices: then placement is
    JAX's (a replicated target beside class-sharded logits is the usual layout, and ``jit``
    or an eager op reshards as the shardings ask), not a mismatch to refuse."""
    return any(len(getattr(d, "device_set", ())) > 1 for d in devices)


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
    if not 0.0 <= value <= 1.0:  # (also NaN; no math.isnan: a symbolic float under dynamo)
        raise ValueError(f"smoothing must be in [0, 1], got {given!r}")


def check_chunk_size(value: Any) -> int | None:
    """Rows per block: a positive integer, or None for the default."""
    if value is None:
        return None
    rows = as_int(value, "chunk_size")
    if rows < 1:
        raise ValueError(f"chunk_size must be a positive int (rows per block) or None, got {rows}")
    return rows


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
        if not xp.isdtype(target.dtype, "real floating"):
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
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(
            f"target holds class indices (its shape is logits' without the class axis), which "
            f"must have an integer dtype, got {target.dtype}; convert it, e.g. "
            "target.astype(int) (NumPy) or target.long() (PyTorch)"
        )
    return False


# --------------------------------------------------------------------------------------
# the one evaluation: checks and bookkeeping -> blocks -> assembly
# --------------------------------------------------------------------------------------
