"""The scalar keywords of the losses, checked once at the door into a frozen :class:`Options`.

Scalars are accepted the way NumPy accepts them: an integer parameter takes anything
with ``__index__`` (Python and NumPy integers, 0-d integer arrays), a real parameter
anything ``float()`` reads (Python and NumPy numbers, concrete 0-d arrays), a boolean
parameter only ``True``/``False`` (and NumPy booleans). Booleans are refused where a
number is expected. (:mod:`ls_xp._validate` re-exports all of this, the door's other half.)
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

from array_api_compat import is_array_api_obj

from ls_xp._plan import available_cpus, compiling, is_concrete

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


DEFAULT_OPTIONS = Options()

# the options of recent calls, by their keywords and the keywords' types (True is not 1,
# 1 is not 1.0): a loss called in a loop checks and builds the same Options every time
_OPTIONS: dict[tuple[Any, ...], Options] = {}
_CACHED_TYPES = frozenset((str, int, float, bool, type(None)))
_MAX_CACHED = 256


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
    """The keywords as an :class:`Options`, each checked; an error names the bad one.

    Keywords of plain Python types give the same frozen object as the last call with the
    same keywords did (checked then); anything else (NumPy scalars, a dtype, values
    traced by dynamo, a negative ``workers``, which depends on the CPUs available at the
    time) is checked afresh."""
    given = (
        reduction, ignore_index, axis, convention, log_probs, chunk_size, workers,
        overwrite_logits, check_values, z_loss, softcap, shift, return_aux,
    )  # fmt: skip
    types = tuple(map(type, given))
    key = None
    if accum_dtype is None and _CACHED_TYPES.issuperset(types) and not compiling():
        key = given + types
        hit = _OPTIONS.get(key)
        if hit is not None:
            return hit
    opts = _build_options(*given, accum_dtype)
    if key is not None and (workers is None or workers > 0):
        if len(_OPTIONS) >= _MAX_CACHED:
            _OPTIONS.clear()
        _OPTIONS[key] = opts
    return opts


def _build_options(
    reduction: Any,
    ignore_index: Any,
    axis: Any,
    convention: Any,
    log_probs: Any,
    chunk_size: Any,
    workers: Any,
    overwrite_logits: Any,
    check_values: Any,
    z_loss: Any,
    softcap: Any,
    shift: Any,
    return_aux: Any,
    accum_dtype: Any,
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


def check_ignore_index(value: Any) -> int:
    if value is None:
        raise TypeError(
            "ignore_index must be an integer, got None; to ignore no class pass a value that "
            "is no class index, such as the default -100 (fairseq's ignore_index=None)"
        )
    return as_int(value, "ignore_index")


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
