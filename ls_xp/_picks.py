"""One entry per row: reading and writing ``a[i, cols[i]]`` of an (n, K) block.

Two strategies, chosen by what the namespace can do, not by which library it is: on
eager, mutable arrays an index pair ``(rows, cols)`` (one gather, or one in-place
scatter); on lazy or immutable ones (JAX, Dask) and where integer-array assignment is
missing (array-api-strict) a boolean mask ``classes == cols``, which a compiler fuses
into the elementwise passes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_extra as xpx
from array_api_compat import is_writeable_array

from ls_xp._numeric import astype

Array = Any


@functools.cache
def scatters_in_place(xp: ModuleType) -> bool:
    """Whether ``xpx.at`` writes through integer-array indices in place in this namespace.

    True for NumPy, PyTorch, CuPy and Dask; False for JAX (immutable arrays) and
    array-api-strict (the standard does not require integer-array *assignment*). Where it
    is False, one entry per row is picked with a boolean mask instead (see :class:`Picks`).
    """
    probe = xp.zeros(2)
    try:
        xpx.at(probe, xp.asarray([1])).set(1.0, copy=None)
    except (IndexError, TypeError, NotImplementedError, ValueError):
        return False
    return is_writeable_array(probe)


@dataclass(frozen=True)
class Picks:
    """How a block of shape (n, K) reads and writes one entry per row, ``[i, cols[i]]``.

    Per-row quantities are columns of shape (n, 1), the class indices ``cols`` too, so
    that they broadcast against the block with no reshape. On eager mutable arrays the
    entries are addressed by the index pair ``(rows, cols)`` with ``rows = arange(n)`` as a
    column: one gather or one in-place scatter each, giving or taking an (n, 1) column,
    with no flat view and no index arithmetic. ``dense`` picks with boolean masks
    ``classes == cols`` instead: for lazy or immutable arrays (JAX, Dask,
    array-api-strict), where a comparison fuses into the elementwise passes under a
    compiler and a scatter would not.
    """

    rows: Array  # (n, 1)
    classes: Array | None  # arange(K), for the dense picks
    dense: bool
    # dense picks that still read by the index pair: PyTorch under its compiler, which
    # lowers the gather to one load per row where a masked sum is a comparison per entry
    gathers: bool = False

    @property
    def by_value(self) -> bool:
        """Whether the row maxima are found by value (every column with z = 0) rather than
        as the first one's column: where the picks gather, PyTorch under its compiler,
        finding the column costs a loop over K in the forward kernel and again in the
        backward's (see :func:`ls_xp._math._log_softmax_parts`)."""
        return self.gathers


def at(pk: Picks, cols: Array) -> Any:
    """Where the entries [i, cols[i]] lie: an index pair, or a boolean (n, K) mask."""
    return pk.classes == cols if pk.dense else (pk.rows, cols)


def first_max(xp: ModuleType, a: Array, pk: Picks, a_max: float | Array | None = None) -> Array:
    """The column of each row's first maximum, an (n, 1) column (``a_max``: the row
    maxima, where the caller has them).

    Eager arrays take ``argmax``. The dense picks write it as K - 1 - max(K - 1 - c) over
    the columns c that hold the maximum (the last column in a row without one, a row of
    NaNs): ``argmax`` compiles poorly (XLA on a CPU), and a maximum rather than a minimum
    is what PyTorch's partitioner recomputes freely; across a minimum it saves the
    backward's N x K operands from the forward pass instead of the logits.
    """
    if not pk.dense:
        return astype(xp, xp.argmax(a, axis=-1, keepdims=True), pk.rows.dtype)
    assert pk.classes is not None
    if a_max is None:
        a_max = xp.max(a, axis=-1, keepdims=True)
    last = a.shape[-1] - 1
    rev = last - pk.classes
    # in the floating dtype of the row where it holds every column exactly: a maximum of
    # floats is a vector instruction, one of 64-bit integers is not (AVX2)
    exact = isinstance(last, int) and last < 2**24 and a.dtype in (xp.float32, xp.float64)
    hit = xp.max(xp.where(a == a_max, xp.astype(rev, a.dtype) if exact else rev, 0), axis=-1, keepdims=True)
    return last - (xp.astype(hit, pk.classes.dtype) if exact else hit)


def take_per_row(xp: ModuleType, a: Array, pk: Picks, cols: Array) -> Array:
    """``a[i, cols[i]]`` for every row i, an (n, 1) column.

    Eager mutable arrays index directly with the pair (one gather; the indices are in
    range by construction, so ``take``'s wrapping of negative indices is not needed).
    The dense picks sum the row masked to its one entry: exact (the entry plus zeros),
    fused by a compiler into the pass that reads the row anyway, and chunk-local on Dask,
    where a gather from the flattened array would re-chunk it.
    """
    if not pk.dense or pk.gathers:
        return a[pk.rows, cols]
    return xp.sum(xp.where(pk.classes == cols, a, 0.0), axis=-1, keepdims=True)


def take_class(xp: ModuleType, w: Array, cols: Array) -> Array:
    """``w[cols]`` of the class weights (K,) for an (n, 1) column of classes.

    One gather; where the library refuses it on immutable arrays (JAX's explicit
    sharding has no layout for a gather from a class-sharded vector), the weight summed
    over a mask ``classes == cols`` instead, exact (one entry plus zeros) and partitioned
    with the classes like the logits' own passes.
    """
    try:
        return xp.reshape(xp.take(w, xp.reshape(cols, (-1,)), axis=0), (-1, 1))
    except Exception:
        if scatters_in_place(xp):
            raise
        classes = xp.arange(w.shape[0], dtype=cols.dtype)
        return xp.sum(xp.where(classes == cols, w, 0.0), axis=-1, keepdims=True)


def put_per_row(
    xp: ModuleType, g: Array, at: Any, values: float | Array, *, add: bool, inplace: bool
) -> Array:
    """``g[i, cols[i]] = values[i]`` (or ``+=``) for every row i, with ``at = at(pk, cols)``
    and ``values`` a number or an (n, 1) column.

    In place where ``g`` is ours (``inplace``) and ``at`` is an index pair; a boolean mask
    ``at`` gives an elementwise select. An index pair is only formed for writeable arrays
    of the compute dtype (:func:`ls_xp._evaluate.blocks`), so the in-place write is a
    plain assignment: ``xpx.at`` would add a cast per write on PyTorch (its guard against
    mixed dtypes, which cannot occur here).
    """
    if not isinstance(at, tuple):
        # ``+=`` adds a select of the values and zeros (g + 0 is g): a select whose two
        # cases were g + values and g would need the mask laid out as g is, which a mask
        # made from arange(K) is not when g is class-sharded (JAX's explicit sharding)
        return g + xp.where(at, values, 0.0) if add else xp.where(at, values, g)
    if inplace:
        g[at] = g[at] + values if add else values
        return g
    # a copy, written there: made by arithmetic, which keeps an autodiff graph (the copy of
    # xpx.at, asarray(copy=True), warns on a PyTorch tensor that requires grad); * 1.0
    # keeps every value as it is, -0.0 and NaN included
    out = g * 1.0
    out[at] = out[at] + values if add else values
    return out
