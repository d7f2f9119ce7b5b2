"""The rule's evaluation in row blocks under ``jit`` on a CPU: ``lax.scan`` over blocks
of rows, each block the core's :func:`~ls_xp._evaluate.evaluate`, rematerialised.

Why: XLA's CPU backend hands its row reductions to YNNPACK fusions, which read a
materialised input whenever the reduced expression holds a ``select`` (the picks, the
ignored-row guard, the first maximum), so evaluating the logits whole keeps at least one
N x K temporary besides the gradient (two with labels closed over). Over row blocks
those inputs are block-sized, and ``jax.checkpoint`` of the scan body keeps XLA from
saving any N x K residual: in reverse mode the forward pass keeps only the blocks'
per-row statistics (the outputs of their reductions, :func:`_row_statistics`), and the
backward pass recomputes each block's gradient from its logits and those statistics in
one elementwise pass, written straight into the cotangent of the logits. So
``jit(value_and_grad)`` holds the logits, the gradient and a few blocks.

Each block is evaluated with ``reduction="none"`` (its rows as the core computes them,
class weights and row factors included); the reduction of the rows is done here, with
the "mean" denominator of the whole problem (the blocks see only their own rows), as the
fused linear loss does (:func:`ls_xp._linear.finish`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ls_xp import _plan
from ls_xp import _validate as v
from ls_xp._evaluate import Request, class_indices, evaluate, total_weight
from ls_xp._numeric import safe_divide

Array = Any

# Logits per block: XLA keeps about seven block-sized arrays live in the forward pass (the
# guarded logits, z, exp(z), the picks), so 2**20 elements keep them near 28 MiB of
# float32 (near cache-sized) while each step of the loop, which has a cost of its own,
# still covers 8 rows of 131072 classes; larger blocks only hold more memory.
BLOCK_ELEMENTS = 1 << 20
# a blocked evaluation whose best block (rows dividing N) is below this fraction of the
# budget would scan too many tiny blocks: the logits are evaluated whole instead
_SMALLEST_SHARE = 8


class Layout(NamedTuple):
    """Rows per block and the number of blocks (their product is N)."""

    rows: int
    blocks: int


def layout(logits: Array, target: Array, weight: Any, where: Any, opts: v.Options) -> Layout | None:
    """The row blocks for these inputs, or None where the rule evaluates the logits whole
    (:func:`_whole`, and problems of one block)."""
    if _whole(logits, target, weight, where, opts):
        return None
    shape = tuple(logits.shape)
    n, k = math.prod(shape[:-1]), shape[-1]
    budget = min(n, opts.chunk_size or max(1, BLOCK_ELEMENTS // k))
    rows = _largest_divisor(n, budget)
    if rows >= n or (opts.chunk_size is None and rows * _SMALLEST_SHARE < budget):
        return None
    return Layout(rows, n // rows)


def _whole(logits: Array, target: Array, weight: Any, where: Any, opts: v.Options) -> bool:
    """Whether the logits are evaluated whole: concrete inputs (eager calls, whose values
    the core checks; a concrete class mask likewise), accelerators (XLA fuses their
    reductions), several devices or sharded logits, class axes other than the last, the
    causal shift, and inputs the core's checks will refuse."""
    if _plan.is_concrete(logits) or _plan.plan(logits) != "cpu" or logits.ndim < 2:
        return True
    # several devices: jit may shard the rows, which its partitioner splits itself (a scan
    # over row blocks would gather them); an explicit sharding is the mesh's layout too
    spec = getattr(getattr(getattr(logits, "aval", None), "sharding", None), "spec", None) or ()
    if jax.device_count() > 1 or any(part is not None for part in spec):
        return True
    shape = tuple(logits.shape)
    if not all(isinstance(d, int) for d in shape):
        return True
    n, k = math.prod(shape[:-1]), shape[-1]
    soft = tuple(target.shape) == shape and jnp.issubdtype(target.dtype, jnp.floating)
    index = tuple(target.shape) == shape[:-1] and jnp.issubdtype(target.dtype, jnp.integer)
    return (
        opts.shift != 0
        or opts.return_aux
        or opts.axis % logits.ndim != logits.ndim - 1
        or n < 2
        or k < 1
        or not (soft or index)
        or (weight is not None and tuple(weight.shape) != (k,))
        or (where is not None and (tuple(where.shape) != shape or _plan.is_concrete(where)))
    )


def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (blocks that tile the rows
    exactly: the scan's inputs and outputs are then reshapes of the logits, no copies)."""
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            best = max([best, *(e for e in (d, n // d) if e <= limit)])
    return best


def _row_statistics(prim: Any, *_: Any, **__: Any) -> bool:
    """The checkpoint policy: save what a row reduction returns (per-row values), recompute
    everything elementwise."""
    return prim in (lax.reduce_max_p, lax.reduce_min_p, lax.reduce_sum_p, lax.argmax_p, lax.argmin_p)


class _Denominators(NamedTuple):
    total: float | Array  # the "mean" denominator: sum of w_y over the counted rows
    z_scale: float | Array  # the z-terms' scale: their "mean" is over the count, not the weight


def _denominators(target: Array, weight: Any, num_classes: int, dt: Any, opts: v.Options) -> _Denominators:
    """The whole problem's "mean" denominator (the core's bookkeeping, :func:`total_weight`),
    and the values checked where they may be read (labels closed over under ``jit``)."""
    read = (_plan.plan(target) == "cpu") if opts.check_values is None else opts.check_values
    w = v.class_weight(jnp, weight, num_classes, dt, read)
    if jnp.issubdtype(target.dtype, jnp.floating):  # probabilities: the mean over the positions
        return _Denominators(float(math.prod(target.shape[:-1])), 1.0)
    y = jnp.reshape(target, (-1,))
    valid, _, safe = class_indices(jnp, y, num_classes, opts.ignore_index, read)
    if opts.reduction != "mean":
        return _Denominators(1.0, 1.0)
    total = total_weight(jnp, valid, None if w is None else jnp.take(w, safe, axis=0), dt)
    if w is None or not opts.z_loss:
        return _Denominators(total, 1.0)
    count = total_weight(jnp, valid, None, dt)
    return _Denominators(total, safe_divide(jnp, total, count, 0.0))


def evaluate_blocks(
    logits: Array,
    target: Array,
    weight: Any,
    where: Any,
    smoothing: Any,
    opts: v.Options,
    kl: bool,
    lay: Layout,
    tangents: tuple[Any, Any, Any] | None = None,
) -> tuple[Array, Array | None]:
    """The loss and, given the tangents (d logits, d target, d smoothing; None where
    zero), its tangent ``sum(grad * d_logits) + ...`` from the core's analytic
    derivatives, block by block."""
    shape, k = tuple(logits.shape), logits.shape[-1]
    dt = jnp.result_type(logits.dtype, jnp.float32)
    den = _denominators(target, weight, k, dt, opts)
    d_x, d_t, d_eps = tangents if tangents is not None else (None, None, None)
    soft = jnp.issubdtype(target.dtype, jnp.floating)
    req = Request(
        kl=kl, grad=d_x is not None, target_grad=soft and d_t is not None, smoothing_grad=d_eps is not None,
        loss_in_compute_dtype=True, z_scale=den.z_scale,
    )  # fmt: skip
    block_opts = replace(opts, reduction="none", axis=-1, chunk_size=None)

    def cut(a: Any, per_class: bool) -> Any:  # (N, ...) -> (blocks, rows, ...): no copy
        return None if a is None else jnp.reshape(a, (lay.blocks, lay.rows, *((k,) if per_class else ())))

    xs = (cut(logits, True), cut(target, soft), cut(where, True), cut(d_x, True), cut(d_t, True))

    def body(carry: None, xs_b: Any) -> tuple[None, Any]:
        x_b, t_b, m_b, dx_b, dt_b = xs_b
        # 1. the block's rows and derivatives, from the core
        res = evaluate(x_b, t_b, smoothing, weight, m_b, block_opts, req)
        # 2. the rows' tangent: sum_c g_c dx_c (+ the target's, + the smoothing's), linear in
        #    the tangents, so that reverse mode transposes it into g * cotangent per block
        tan = None
        for g, d in ((res.grad, dx_b), (res.target_grad, dt_b)):
            if g is not None:
                part = jnp.sum(g * d, axis=-1, dtype=dt)
                tan = part if tan is None else tan + part
        if res.smoothing_grad is not None:
            part = res.smoothing_grad * jnp.asarray(d_eps, dt)
            tan = part if tan is None else tan + part
        return carry, (res.loss, tan)

    # 3. rematerialised: reverse mode saves the reductions' per-row outputs, not the
    #    block's gradient, and the backward pass rebuilds it elementwise from its logits
    step = jax.checkpoint(body, policy=_row_statistics, prevent_cse=False)
    _, (rows, tan_rows) = lax.scan(step, None, xs)
    loss = _reduce(rows, den.total, opts.reduction, shape[:-1], math.nan).astype(logits.dtype)
    if tangents is None:
        return loss, None
    if tan_rows is None:
        return loss, jnp.zeros_like(loss)
    return loss, _reduce(tan_rows, den.total, opts.reduction, shape[:-1], 0.0).astype(logits.dtype)


def _reduce(rows: Array, total: Any, reduction: str, batch_shape: tuple[int, ...], at_zero: float) -> Array:
    """The blocks' rows reduced: the "mean" over the whole problem's denominator (NaN loss,
    zero derivatives where it is 0: every row ignored, as in PyTorch)."""
    if reduction == "none":
        return jnp.reshape(rows, batch_shape)
    out = jnp.sum(rows)
    return jnp.asarray(safe_divide(jnp, out, total, at_zero)) if reduction == "mean" else out
