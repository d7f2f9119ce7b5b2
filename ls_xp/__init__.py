"""ls_xp: label-smoothed cross-entropy for every array-API library.

One implementation, written against the Python array API standard, that runs unchanged on
NumPy, PyTorch, JAX, CuPy, Dask and array-api-strict arrays: smoothed targets, the loss,
the KL form and the analytic gradient.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ls_xp._api import (
    cross_entropy,
    cross_entropy_grad,
    kl_divergence,
    linear_cross_entropy,
    linear_loss_and_grad,
    loss_and_grad,
)
from ls_xp._evaluate import Aux
from ls_xp._targets import mixup_targets, smooth_labels

__version__ = "0.1.0"

__all__ = [
    "Aux",
    "__version__",
    "cross_entropy",
    "cross_entropy_grad",
    "kl_divergence",
    "linear_cross_entropy",
    "linear_loss_and_grad",
    "loss_and_grad",
    "mixup_targets",
    "smooth_labels",
]


# the framework adapters, imported when first used (``import ls_xp`` imports no framework)
_SUBMODULES = ("jax", "reference", "torch")


def __getattr__(name: str) -> ModuleType:
    """``ls_xp.torch``, ``ls_xp.jax`` and ``ls_xp.reference`` after a bare ``import ls_xp``."""
    if name in _SUBMODULES:
        return importlib.import_module(f"ls_xp.{name}")
    raise AttributeError(f"module 'ls_xp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
