"""ls_xp: label-smoothed cross-entropy for every array-API library.

One implementation, written against the Python array API standard, that runs unchanged on
NumPy, PyTorch, JAX, CuPy, Dask and array-api-strict arrays: smoothed targets, the loss,
the KL form and the analytic gradient.
"""

from ls_xp._api import (
    cross_entropy,
    cross_entropy_grad,
    kl_divergence,
    linear_cross_entropy,
    linear_loss_and_grad,
    loss_and_grad,
)
from ls_xp._core import mixup_targets, smooth_labels

__version__ = "0.1.0"

__all__ = [
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
