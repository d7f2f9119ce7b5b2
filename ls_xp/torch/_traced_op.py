"""Inside ``torch.compile``: the operator the traced loss hides behind, and its name.

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
Python smoothing; :func:`ls_xp.torch._traced.traced_loss` chooses). The others, and
``torch.export``, keep the Function: an exported program must not carry an operator whose
name depends on the installation, and export does not use AOTAutograd's cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import torch

import ls_xp

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
_LIBRARIES: list[torch.library.Library] = []  # (kept: a registration lives as long as its object)


def define(name: str, schema: str, kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The operator ``NAMESPACE::name`` with ``kernel`` as its CompositeImplicitAutograd
    implementation (defined once per process)."""
    namespace = getattr(torch.ops, NAMESPACE)
    if not hasattr(namespace, name):
        lib = torch.library.Library(NAMESPACE, "FRAGMENT")
        lib.define(f"{name}{schema}")
        lib.impl(name, kernel, "CompositeImplicitAutograd")
        _LIBRARIES.append(lib)
    op: Callable[..., Tensor] = getattr(namespace, name)
    return op
