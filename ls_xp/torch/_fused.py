"""The eager accelerator plan's fused block: the core's evaluation compiled by Inductor.

Eagerly, each array-API operation of the block is one kernel launch (about fifty per loss
and backward). On the accelerator plan the same evaluation is compiled instead, once per
layout (device, dtypes, class count and axis, which inputs are given, the options and
what is asked for), with dynamic batch dimensions (a new batch size or smoothing value
reuses the kernels) and a full graph; the compiled code reads no value back, as the eager
plan does not. ``LS_XP_COMPILE`` switches it: ``0`` (the default) never, ``auto``
compiles on CUDA devices where Triton is installed, ``1`` on any device on the
accelerator plan (forced on a CPU with ``LS_XP_PLAN=accelerator``: C++ kernels). It is off
by default because it has not yet been measured on a GPU: its CPU proxies (one kernel,
four passes over the logits, no sync) are tested, its Triton code and first-call compile
time on CUDA are not. The first call of a
layout pays the compilation; during CUDA-graph capture the block runs eagerly (a
compilation there, also a recompilation, would synchronise). Where no compiler works
the evaluation stays eager, with one warning per process.

Each compiled evaluation is its own code object, so that dynamo's per-code recompile
limit counts the recompilations of one layout, not of all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from typing import Any

import torch

from ls_xp._evaluate import Request, Result, evaluate
from ls_xp._validate import Options

Tensor = torch.Tensor

ENV = "LS_XP_COMPILE"
_SWITCH = ("auto", "1", "0")
# the Inductor backend; tests of the tracing alone may set "aot_eager" (no code generated)
BACKEND: Any = "inductor"
# compiled layouts per process: beyond it new layouts stay eager (an options object that
# changes at every call, a z_loss schedule, would otherwise compile at every call)
MAX_LAYOUTS = 64

_Key = tuple[Any, ...]
_COMPILED: dict[_Key, Callable[..., Any]] = {}
_FAILED: set[_Key] = set()
_BROKEN: set[str] = set()  # device types whose compiler failed: no further attempt
_warned: list[bool] = [False]


def switch() -> str:
    """The value of ``LS_XP_COMPILE`` (``auto``, ``1`` or ``0``), checked."""
    return _parse(os.environ.get(ENV))


@cache  # (every PyTorch evaluation asks: the environment's string, parsed once)
def _parse(raw: str | None) -> str:
    value = (raw or "").strip().lower() or "0"
    aliases = {"on": "1", "true": "1", "yes": "1", "off": "0", "false": "0", "no": "0"}
    value = aliases.get(value, value)
    if value not in _SWITCH:
        raise ValueError(f"the environment variable {ENV} must be one of auto, 1 or 0, got {raw!r}")
    return value


@cache
def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover (another PyTorch)
        return False
    return bool(has_triton())


def wanted(logits: Tensor) -> bool:
    """Whether the switch asks for the fused block on ``logits``' device (the caller has
    checked the plan)."""
    value = switch()
    if value == "auto":
        return logits.is_cuda and _has_triton()
    return value == "1"


def _usable(
    logits: Any, target: Any, weight: Any, where: Any, smoothing: Any, opts: Options, req: Request | None
) -> bool:
    """What the fused block computes exactly as the eager one does: concrete tensors, no
    value checks asked for (``check_values=True`` reads values back, which compiled code
    does not), and a freshly written gradient (``overwrite_logits`` writes it into the
    logits). ``req`` None is the training step: logits that require grad and nothing else
    that does; otherwise the evaluation outside autograd (the eager Functions call it with
    grad mode off). Anything the eager core would refuse (a bad axis, a bad smoothing) it
    refuses."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor) or logits.ndim < 1:
        return False
    fits = (
        -logits.ndim <= opts.axis < logits.ndim
        and (isinstance(smoothing, torch.Tensor) or _plain_smoothing(smoothing))
        and not (opts.check_values or (opts.overwrite_logits and (req is None or req.grad)))
        and (req is None or isinstance(req.z_scale, float))
    )
    if not fits or torch._C._are_functorch_transforms_active() or logits.device.type in _BROKEN:
        return False
    others = (target, weight, where, smoothing)
    grads = torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in others)
    if req is None:  # (the logits' gradient alone: the eager Function computes the others)
        fits = torch.is_grad_enabled() and logits.requires_grad and not grads and not opts.return_aux
    else:  # a differentiable recomputation (create_graph): eager, joining the graph
        fits = not (grads or (torch.is_grad_enabled() and logits.requires_grad))
    return fits and not (logits.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _plain_smoothing(smoothing: Any) -> bool:
    """A number in [0, 1] (the eager core raises for others, which a tensor would not)."""
    return isinstance(smoothing, (float, int)) and not isinstance(smoothing, bool) and 0 <= smoothing <= 1


def _key(
    logits: Tensor, target: Tensor, weight: Any, where: Any, smoothing: Any, opts: Options, req: Any
) -> _Key:
    def spec(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            return (t.dtype, t.ndim)
        return None if t is None else "zero" if t == 0 else "number"

    classes = logits.shape[opts.axis % logits.ndim]
    inputs = tuple(spec(t) for t in (logits, target, weight, where, smoothing))
    return (logits.device, classes, *inputs, opts, req)  # (the device: the smoothing tensor's)


def _compiled(key: _Key, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A new compiled evaluation for one layout (its own code object, see the module).

    A smoothing of exactly 0 stays the number 0: the core drops the smoothing terms for
    it, which a tensor 0 would keep (0 / 0 where a row allows one class). Other numbers
    come as a one-element tensor (:func:`_smoothing`), made 0-d inside the graph: dynamo
    takes a 0-d float64 tensor argument on the CPU for a number, guarded by reading it."""
    kind = key[-3]

    def run(logits: Tensor, target: Tensor, smoothing: Any, weight: Any, where: Any) -> Any:
        eps = 0.0 if kind == "zero" else smoothing.reshape(()) if kind == "number" else smoothing
        return fn(logits, target, eps, weight, where)

    # dynamo keeps what it learnt of a function's shapes under its code's name: one per layout
    name = "ls_xp_fused_" + hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    code = run.__code__.replace(co_name=name)
    own = types.FunctionType(code, run.__globals__, name, None, run.__closure__)
    return torch.compile(own, backend=BACKEND, fullgraph=True)


# the last number smoothing of each layout as a one-element tensor: dynamo cannot trace a
# float argument through the core's checks, and a constant would compile anew for every value
_EPS: dict[_Key, tuple[float, Tensor]] = {}


def _smoothing(key: _Key, smoothing: Any, logits: Tensor) -> Any:
    if isinstance(smoothing, torch.Tensor) or smoothing == 0:
        return smoothing if isinstance(smoothing, torch.Tensor) else None  # (0: compiled in)
    value = float(smoothing)
    held = _EPS.get(key)
    if held is None or held[0] != value:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        held = _EPS[key] = (value, torch.full((1,), value, dtype=dtype, device=logits.device))
    return held[1]


# where dynamo reads a tensor's dynamic and static dimensions (torch._dynamo.mark_*)
_MARKS = (
    "_dynamo_weak_dynamic_indices",
    "_dynamo_dynamic_indices",
    "_dynamo_dynamic_range",
    "_dynamo_static_indices",
)


@contextlib.contextmanager
def _batch_dynamic(marks: tuple[tuple[Tensor, int | None], ...]) -> Iterator[None]:
    """Marks the batch dimensions of each tensor dynamic for dynamo, and its class axis
    (the int, if any) static, for this call only: they are the caller's tensors. The
    class count is part of the layout (array-api-compat's ``clip`` cannot take a
    symbolic bound)."""
    before = [{a: getattr(t, a) for a in _MARKS if hasattr(t, a)} for t, _ in marks]
    for t, axis in marks:
        for d in range(t.ndim):
            if d == axis:
                torch._dynamo.mark_static(t, d)
            else:
                torch._dynamo.maybe_mark_dynamic(t, d)
    try:
        yield
    finally:
        for (t, _), held in zip(marks, before, strict=True):
            for a in _MARKS:
                if a in held:
                    setattr(t, a, held[a])
                elif hasattr(t, a):
                    delattr(t, a)


def fused(
    logits: Any,
    target: Any,
    smoothing: Any,
    weight: Any,
    where: Any,
    opts: Options,
    req: Request,
) -> Result | None:
    """The evaluation by the compiled block, or None where the eager one runs instead."""
    if not _usable(logits, target, weight, where, smoothing, opts, req):
        return None
    given, opts = opts, replace(opts, chunk_size=None, workers=None, check_values=False)
    key = _key(logits, target, weight, where, smoothing, opts, req)

    def block(x: Tensor, t: Tensor, eps: Any, w: Any, m: Any) -> Result:
        return evaluate(x, t, eps, w, m, opts, req)

    try:
        return _call(key, block, logits, target, smoothing, weight, where, opts)
    except Exception as exc:  # noqa: BLE001 (the eager evaluation decides whether it was the inputs)
        eager = evaluate(logits, target, smoothing, weight, where, given, req)
        _give_up(key, logits, exc)  # the eager block computed it: the compiler failed
        return eager


def fused_loss(
    traced: Callable[..., Tensor],
    logits: Any,
    target: Any,
    weight: Any,
    where: Any,
    smoothing: Any,
    opts: Options,
    kl: bool,
    float_loss: bool,
) -> Tensor | None:
    """The loss of logits that require grad as one compiled training step, or None where
    the eager Function runs instead.

    ``traced`` is the loss as the user's own ``torch.compile`` traces it
    (:func:`ls_xp.torch._traced.traced_loss`), compiled here with its backward, which
    AOTAutograd partitions as it does a compiled model's: the forward reads the logits and
    keeps per-row statistics, the backward reads them once more and writes the gradient,
    and no gradient is held between the two."""
    if not _usable(logits, target, weight, where, smoothing, opts, None):
        return None
    opts = replace(opts, chunk_size=None, workers=None, check_values=False)
    key = ("step", *_key(logits, target, weight, where, smoothing, opts, (kl, float_loss)))

    def step(x: Tensor, t: Tensor, eps: Any, w: Any, m: Any) -> Tensor:
        return traced(x, t, w, m, eps, opts, kl, (True, False, False), float_loss)

    try:
        return _call(key, step, logits, target, smoothing, weight, where, opts)
    except Exception as exc:  # noqa: BLE001 (the eager Function decides whether it was the inputs)
        _give_up(key, logits, exc)
        return None


def _call(
    key: _Key, fn: Callable[..., Any], logits: Tensor, target: Tensor, smoothing: Any, weight: Any,
    where: Any, opts: Options,
) -> Any:  # fmt: skip
    """``fn`` compiled for this layout (once), called with the batch dimensions dynamic."""
    if key in _FAILED or (key not in _COMPILED and len(_COMPILED) >= MAX_LAYOUTS):
        return None
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = _compiled(key, fn)
    axis = opts.axis % logits.ndim
    marks = ((logits, axis), (target, axis if target.shape == logits.shape else None))
    with _batch_dynamic(marks):
        return compiled(logits, target, _smoothing(key, smoothing, logits), weight, where)


def _give_up(key: _Key, logits: Tensor, exc: Exception) -> None:
    """Remember a layout whose compilation failed (and a device whose compiler failed),
    and say so once per process."""
    from torch._dynamo.exc import BackendCompilerFailed  # (dynamo is imported by now)

    _FAILED.add(key)
    _COMPILED.pop(key, None)
    if isinstance(exc, BackendCompilerFailed):
        _BROKEN.add(logits.device.type)
    if not _warned[0]:
        _warned[0] = True
        first = (str(exc).strip().splitlines() or [""])[0]
        warnings.warn(
            f"ls_xp: the fused block could not be compiled ({type(exc).__name__}: {first}); "
            f"the eager block runs instead (set {ENV}=0 to skip the attempt)",
            RuntimeWarning,
            stacklevel=5,
        )
