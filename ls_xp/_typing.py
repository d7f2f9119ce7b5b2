"""Types of the public API: any array of an array-API library, as a structural protocol.

The losses return arrays of the library of ``logits`` (and on its device), so they are
typed by a type variable bound to this protocol: a type checker sees that
``ls_xp.cross_entropy(np_array, ...)`` is a NumPy array and ``...(torch_tensor, ...)`` a
``torch.Tensor``. (NumPy's reductions return NumPy scalars, which behave as 0-d arrays.)
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypeVar

__all__ = ["ArrayLike", "ArrayT", "Convention", "Reduction"]


class ArrayLike(Protocol):
    """What every array of NumPy, PyTorch, JAX, CuPy, Dask and array-api-strict has."""

    @property
    def shape(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...


ArrayT = TypeVar("ArrayT", bound=ArrayLike)
Reduction = Literal["mean", "sum", "none"]
Convention = Literal["uniform", "others"]
