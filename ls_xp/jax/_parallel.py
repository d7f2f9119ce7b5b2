"""Vocabulary-parallel loss inside ``jax.shard_map``: the classes split over a named axis.

The formula is :mod:`ls_xp._vocab_parallel`'s with ``lax.pmax`` and ``lax.psum`` over
``axis_name`` as the collectives: one MAX and one SUM of O(rows) values per forward
(the SUM only, with log-probabilities). The loss is a ``jax.custom_vjp`` whose forward
keeps the local gradient and whose backward only scales it (no collective), so
``jax.grad`` and ``jax.jit`` work and the N x K logits are never gathered.

``shard_map`` splits evenly: rank i holds the classes ``[i k, (i + 1) k)``. Values are
not read under tracing: a class index out of range gives NaN rows, as under ``jax.jit``
for the unsharded loss.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ls_xp import _validate as v
from ls_xp import _vocab_parallel as vp
from ls_xp import _vocab_parallel_run as vpr
from ls_xp._evaluate import Result
from ls_xp._shift import Shift, scored

Array = Any

__all__ = ["vocab_parallel_cross_entropy"]


class _AxisCollectives:
    """All-reduces over a named mesh axis."""

    def __init__(self, axis_name: Any) -> None:
        self.axis_name = axis_name

    def max(self, a: Array) -> Array:
        return lax.pmax(a, self.axis_name)

    def sum(self, a: Array) -> Array:
        return lax.psum(a, self.axis_name)


class _Static(NamedTuple):
    """The hashable settings (``custom_vjp``'s non-differentiable arguments)."""

    opts: v.Options
    eps: float
    kl: bool
    axis_name: Any
    sharded_weight: bool


def _evaluate(
    x: Array, target: Array, weight: Array | None, where: Array | None, s: _Static, grad: bool
) -> Any:
    """(loss, local gradient) of this shard."""
    ax = v.check_axis(s.opts.axis, x.ndim)
    k = x.shape[ax]
    size = lax.axis_size(s.axis_name)
    offset = lax.axis_index(s.axis_name) * k
    soft = target.shape == x.shape and jnp.issubdtype(target.dtype, jnp.floating)
    dt = jnp.promote_types(x.dtype, jnp.float32)
    st = vp.Setting(
        eps=s.eps, convention=s.opts.convention, log_probs=s.opts.log_probs, kl=s.kl, soft=bool(soft),
        dtype=dt, num_classes=k * size, offset=offset, reduction=s.opts.reduction,
        ignore_index=s.opts.ignore_index, sharded_weight=weight is not None, read=False,
        z_loss=s.opts.z_loss, softcap=s.opts.softcap, aux=s.opts.return_aux, rank=lax.axis_index(s.axis_name),
        ranks=size,
    )  # fmt: skip
    if weight is not None and not s.sharded_weight:
        weight = lax.dynamic_slice_in_dim(weight, offset, k)
    rows = vp.prepare(jnp, st, x, target, weight, where, ax)
    stats, g = vpr.evaluate(
        jnp, st, rows, _AxisCollectives(s.axis_name), want_grad=grad, step=rows.x.shape[0], dense=True
    )
    batch = tuple(x.shape[:ax]) + tuple(x.shape[ax + 1 :])
    loss, aux = vpr.reduce_rows(jnp, st, rows, stats.glob, batch, x.dtype)
    out = (loss, aux) if s.opts.return_aux else loss
    if g is None:
        return out, None
    shape = list(x.shape)
    shape.append(shape.pop(ax))
    return out, jnp.moveaxis(g.reshape(shape), -1, ax).astype(x.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _loss(x: Array, target: Array, weight: Array | None, where: Array | None, s: _Static) -> Any:
    """The loss, or ``(loss, aux)`` (the statistics carry no gradient)."""
    return _evaluate(x, target, weight, where, s, grad=False)[0]


def _loss_fwd(x: Array, target: Array, weight: Array | None, where: Array | None, s: _Static) -> Any:
    out, g = _evaluate(x, target, weight, where, s, grad=True)
    return out, (g, target, weight, where)


def _loss_bwd(s: _Static, res: Any, up: Any) -> tuple[Any, ...]:
    g, target, weight, where = res
    up = up[0] if s.opts.return_aux else up  # (the statistics' cotangents are ignored)
    ax = v.check_axis(s.opts.axis, g.ndim)
    scale = jnp.expand_dims(up, ax) if s.opts.reduction == "none" else up
    return (g * scale.astype(g.dtype), _zero(target), _zero(weight), _zero(where))


def _zero(a: Array | None) -> Any:
    """The zero cotangent of a non-differentiable input (float0 for integers and masks)."""
    if a is None:
        return None
    if jnp.issubdtype(a.dtype, jnp.floating):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, dtype=jax.dtypes.float0)


_loss.defvjp(_loss_fwd, _loss_bwd)


def vocab_parallel_cross_entropy(
    local_logits: Array,
    target: Array,
    smoothing: float = 0.1,
    *,
    axis_name: Any,
    reduction: str = "mean",
    weight: Array | None = None,
    ignore_index: int = -100,
    axis: int = -1,
    convention: str = "uniform",
    where: Array | None = None,
    log_probs: bool = False,
    weight_sharded: bool = False,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
) -> Any:
    """Label-smoothed cross-entropy of logits whose classes are split over the mesh axis
    ``axis_name``, for use inside ``jax.shard_map``: each shard passes its slice of the
    classes (``P(None, axis_name)`` for (N, K) logits), the replicated ``target`` (or
    probabilities sharded like the logits) and gets the loss of the whole, equal to
    ``ls_xp.cross_entropy`` of the gathered logits. ``weight``: the whole (K,) vector
    (replicated), or the shard's slice with ``weight_sharded=True``; ``where`` sharded like
    the logits. ``smoothing`` is a Python number (static). ``z_loss``, ``softcap``,
    ``shift`` (class indices) and ``return_aux`` (``(loss, aux)``, the statistics of the
    whole) as in :func:`ls_xp.cross_entropy`. Differentiable in ``local_logits``
    (``jax.grad``, ``jax.value_and_grad``), jittable."""
    opts = v.options(
        reduction=reduction, ignore_index=ignore_index, axis=axis, convention=convention, log_probs=log_probs,
        z_loss=z_loss, softcap=softcap, shift=shift, return_aux=return_aux,
    )  # fmt: skip
    eps = float(v.check_smoothing(None, smoothing))
    x = jnp.asarray(local_logits)
    ax = v.check_axis(opts.axis, x.ndim)
    target = jnp.asarray(target)
    weight = None if weight is None else jnp.asarray(weight)
    where = None if where is None else jnp.asarray(where)
    v.check_floating(jnp, x, "local_logits")
    if opts.shift:
        sh = Shift.of(jnp, x, target, None, ax, opts)
        if sh.soft:
            raise ValueError("shift with probability targets is not supported on sharded classes")
        target = sh.target
    soft = target.shape == x.shape and jnp.issubdtype(target.dtype, jnp.floating)
    batch = tuple(x.shape[:ax]) + tuple(x.shape[ax + 1 :])
    if not soft and (tuple(target.shape) != batch or not jnp.issubdtype(target.dtype, jnp.integer)):
        raise ValueError(
            f"target must hold the replicated class indices of shape {batch}, or probabilities of "
            f"local_logits' shape {tuple(x.shape)}; got shape {tuple(target.shape)} and dtype {target.dtype}"
        )
    if where is not None and tuple(where.shape) != tuple(x.shape):
        raise ValueError(f"where must have local_logits' shape {tuple(x.shape)}, got {tuple(where.shape)}")
    s = _Static(opts, eps, False, axis_name, bool(weight_sharded))
    out: Any = _loss(x, target, weight, where, s)
    if not opts.shift:
        return out
    loss, aux = out if opts.return_aux else (out, None)
    res = scored(Result(loss, None, None, None, aux), opts.shift, opts.reduction == "none")
    return (res.loss, res.aux) if opts.return_aux else res.loss
