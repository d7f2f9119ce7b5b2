"""Inside ``torch.compile``: the traced loss behind one CompositeImplicitAutograd operator.

Why an operator: an ``autograd.Function`` that dynamo traces becomes the higher-order
operator ``autograd_function_apply``, and AOTAutograd's cache refuses graphs that hold it.
Every fresh process of a training script then traces and partitions the joint graph again
and runs Inductor's joint-graph passes, whose first use loads their whole pattern library;
native ``F.cross_entropy`` hits the cache and pays none of it. A CompositeImplicitAutograd
operator is one node to dynamo (which then traces none of the formula's Python: it runs
it once on fake tensors for the output's shape), and AOTAutograd decomposes it while it
traces the joint graph. There the same Function runs under plain autograd, so the
compiled program, analytic backward included, is the one the Function gives, and it is
cached like native's.

A cache keys the operator by its name, not by the Python behind it, so the operator's
namespace carries a fingerprint of ls_xp's sources and of the array-API libraries it runs
through: a changed formula is another operator, never a stale compiled graph.

Only the commonest losses take this route (the gradient of the logits, or none, with a
Python smoothing). The others, and ``torch.export``, keep the Function
(:mod:`ls_xp.torch._traced`): an exported program must not carry an operator whose name
depends on the installation, and export does not use AOTAutograd's cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

import torch

import ls_xp
from ls_xp._validate import Options
from ls_xp.torch import _traced
from ls_xp.torch._calls import Request, evaluate

Tensor = torch.Tensor

_TRACED_WITH = ("array-api-compat", "array-api-extra")


def fingerprint(root: Path, versions: tuple[str, ...]) -> str:
    """16 hex digits that change with any source file under ``root`` (its bytecode where an
    installation ships no sources) or any of ``versions``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) or sorted(root.rglob("*.pyc")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    for version in versions:
        h.update(version.encode())
    return h.hexdigest()[:16]


def _installed(name: str) -> str:
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover (a vendored copy)
        return f"{name}==?"


NAMESPACE = "ls_xp_traced_" + fingerprint(
    Path(ls_xp.__file__).parent, (ls_xp.__version__, *(_installed(n) for n in _TRACED_WITH))
)
_SCHEMA = (
    "label_smoothed_ce(Tensor logits, Tensor target, Tensor? weight, Tensor? where, float eps, "
    "str reduction, int ignore_index, int axis, str convention, bool log_probs, "
    "bool overwrite_logits, float z_loss, float softcap, int shift, bool kl, bool float_loss) -> Tensor"
)


def _kernel(
    logits: Tensor, target: Tensor, weight: Tensor | None, where: Tensor | None, eps: float,
    reduction: str, ignore_index: int, axis: int, convention: str, log_probs: bool,
    overwrite_logits: bool, z_loss: float, softcap: float, shift: int, kl: bool, float_loss: bool,
) -> Tensor:  # fmt: skip
    """The decomposition: the traced loss, through the Function where the logits need a gradient."""
    opts = Options(
        reduction=reduction, ignore_index=ignore_index, axis=axis, convention=convention,
        log_probs=log_probs, overwrite_logits=overwrite_logits, check_values=False,
        z_loss=z_loss, softcap=softcap or None, shift=shift,
    )  # fmt: skip
    req = Request(kl=kl, grad=False, inplace=False, loss_in_compute_dtype=float_loss)
    if torch.is_grad_enabled() and logits.requires_grad:
        out: Tensor = _traced._TracedRecomputeCE.apply(logits, target, weight, where, eps, opts, req)
        return out
    res = evaluate(logits, target, eps, weight, where, opts, req)
    assert res.loss is not None
    return res.loss


def _define() -> torch.library.Library | None:
    if hasattr(getattr(torch.ops, NAMESPACE), "label_smoothed_ce"):  # pragma: no cover (a reload)
        return None
    lib = torch.library.Library(NAMESPACE, "DEF")
    lib.define(_SCHEMA)
    lib.impl("label_smoothed_ce", _kernel, "CompositeImplicitAutograd")
    return lib


_LIBRARY = _define()  # (kept: the registration lives as long as this object)


def traced_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    where: Tensor | None,
    smoothing: Any,
    opts: Options,
    kl: bool,
    needs: tuple[bool, bool, bool],
    float_loss: bool,
) -> Tensor:
    """The loss as the compiler sees it: the operator where it applies, else the traced
    Function (:func:`ls_xp.torch._traced.traced_loss`)."""
    if (
        needs[1:] != (False, False)
        or isinstance(smoothing, torch.Tensor)
        or opts.return_aux
        or torch.compiler.is_exporting()
    ):
        return _traced.traced_loss(logits, target, weight, where, smoothing, opts, kl, needs, float_loss)
    op = getattr(torch.ops, NAMESPACE).label_smoothed_ce
    return op(
        logits, target, weight, where, float(smoothing), opts.reduction, opts.ignore_index,
        opts.axis, opts.convention, opts.log_probs, opts.overwrite_logits, opts.z_loss,
        opts.softcap or 0.0, opts.shift, kl, float_loss,
    )  # fmt: skip
