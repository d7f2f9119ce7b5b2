"""DTensor logits: ``ls_xp.cross_entropy`` on a DTensor of a 1-D ``DeviceMesh``.

- ``Shard(class_axis)`` (the output of ``ColwiseParallel(output_layouts=Shard(-1))``):
  the vocabulary-parallel loss of :mod:`ls_xp.torch._parallel` on the local shards over
  the mesh's process group. No context manager is needed (unlike ``loss_parallel``).
- ``Shard(d)`` on another axis (batch-sharded): the local loss, plus one SUM of the
  local sum and "mean" denominator for ``"mean"`` and ``"sum"`` (with z-loss, shift or
  statistics: of the local sum, z-term, hits and count; not with class weights under
  ``"mean"``, and the shift not along the sharded positions).
- ``Replicate()``: the loss of the local (whole) tensor.

The loss comes back as a DTensor, ``Replicate()`` (``"none"``: placed like the rows);
``loss.backward()`` gives the logits a gradient with their own placement, through
``to_local``'s autograd rule. ``target``, ``weight`` and ``where`` may be DTensors
(replicated, or sharded like the logits) or plain tensors, replicated (``weight`` also
a plain tensor of the local slice; ``where`` and probability targets: the local shard).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from ls_xp import _validate as v
from ls_xp.torch._parallel import sharded_loss, sharded_values

Tensor = torch.Tensor


def is_dtensor(x: Any) -> bool:
    """A DTensor, without importing ``torch.distributed.tensor`` (cheap for every call)."""
    mod = sys.modules.get("torch.distributed.tensor")
    cls = getattr(mod, "DTensor", None)
    return cls is not None and isinstance(x, cls)


def _placement(logits: Any) -> Any:
    from torch.distributed.tensor import Partial

    mesh = logits.device_mesh
    if mesh.ndim != 1:
        raise ValueError(
            f"logits are a DTensor on a {mesh.ndim}-D DeviceMesh; ls_xp takes a 1-D mesh: pass "
            "the sub-mesh of the tensor-parallel dimension (mesh['tp']) and its local tensors"
        )
    p = logits.placements[0]
    if isinstance(p, Partial):
        raise ValueError(
            f"logits are a DTensor with placement {p} (pending sums): redistribute them first, e.g. "
            "logits.redistribute(placements=[Shard(-1)]) (classes sharded) or [Replicate()]"
        )
    return p


def _local(a: Any, name: str, logits_placement: Any) -> Any:
    """A DTensor argument as its local tensor: replicated, or sharded like the logits."""
    if not is_dtensor(a):
        return a
    from torch.distributed.tensor import Replicate

    p = a.placements[0]
    if not isinstance(p, Replicate) and p != logits_placement:
        raise ValueError(
            f"{name} is a DTensor with placement {p}; give it Replicate() or the logits' {logits_placement}"
        )
    return a.to_local()


def dtensor_loss(
    logits: Any,
    target: Any,
    smoothing: Any,
    weight: Any,
    where: Any,
    opts: v.Options,
    *,
    kl: bool,
    local_loss: Callable[..., Any],
) -> Any:
    """The loss of DTensor logits, a DTensor (see the module docstring); ``local_loss`` is
    the adapter's loss of plain tensors (for the batch-sharded and replicated cases)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    p = _placement(logits)
    mesh = logits.device_mesh
    ax = v.check_axis(opts.axis, logits.ndim)
    target, weight, where = (
        _local(a, n, p) for a, n in ((target, "target"), (weight, "weight"), (where, "where"))
    )
    local = logits.to_local()
    if isinstance(p, Shard) and p.dim % logits.ndim == ax:
        out = sharded_loss(local, target, smoothing, weight, where, opts, mesh.get_group(), kl=kl)
        return _replicated(out, mesh, opts)

    def fn(a: Tensor, reduction: str) -> Any:  # the adapter's loss of plain tensors
        return local_loss(a, target, smoothing, weight, where, replace(opts, reduction=reduction), kl=kl)

    if isinstance(p, Replicate):
        return _replicated(fn(local, opts.reduction), mesh, opts)
    assert isinstance(p, Shard)
    d = p.dim % logits.ndim
    _refuse_batch_sharded(opts, weight, d, logits.ndim)
    target, where = _my_rows(target, logits, d, ax), _my_rows(where, logits, d, ax)
    shape = torch.Size(s for i, s in enumerate(logits.shape) if i != ax)
    if opts.shift:  # (the scored positions: the last `shift` of each sequence have no target)
        shape = torch.Size((*shape[:-1], shape[-1] - opts.shift))
    place = [Shard(d if d < ax else d - 1)]

    def rows(a: Tensor) -> Any:  # per-position values, placed like the positions
        return DTensor.from_local(a, mesh, place, run_check=False, shape=shape, stride=_contiguous(shape))

    if opts.z_loss or opts.shift or opts.return_aux:
        out = local_loss(local, target, smoothing, weight, where, _local_sum(opts), kl=kl)
        return _batch_llm(out, opts, mesh, rows)
    if opts.reduction == "none":
        return rows(fn(local, "none"))
    part = fn(local, "sum")
    return DTensor.from_local(_batch_total(part, local, target, weight, opts, ax, mesh), mesh, [Replicate()])


def _local_sum(opts: v.Options) -> v.Options:
    """The local evaluation of a batch shard with the language-model options: ``"sum"``
    (``"none"`` stays) with the statistics, whose count is the "mean" denominator (the
    shift's padded positions and ignored ones left out)."""
    return replace(opts, reduction="none" if opts.reduction == "none" else "sum", return_aux=True)


def _batch_llm(out: Any, opts: v.Options, mesh: Any, rows: Callable[[Tensor], Any]) -> Any:
    """z-loss, shift and the statistics on a batch shard: each rank's positions are whole
    rows, so the local loss is exact and one SUM of (loss, z-term, hits, count) makes the
    global "sum"; without class weights the "mean" of both the cross-entropy and the
    z-term is that sum over the global count. The other ranks' part enters as a constant,
    so each rank's gradient stays its own."""
    from torch.distributed.tensor import DTensor, Replicate

    loss, aux = out

    def rep(a: Tensor) -> Any:
        return DTensor.from_local(a, mesh, [Replicate()], run_check=False)

    dt = loss.dtype
    if opts.reduction == "none":  # (the positions' own values; only the count is summed)
        if not opts.return_aux:
            return rows(loss)
        count = aux.count.to(dt).reshape(1)
        dist.all_reduce(count, group=mesh.get_group())
        n = rep(count[0].to(aux.count.dtype))
        return rows(loss), type(aux)(rows(aux.lse), rows(aux.z_loss), rows(aux.accuracy), n)
    both = torch.stack([loss.detach(), aux.z_loss.to(dt), aux.accuracy.to(dt), aux.count.to(dt)])
    dist.all_reduce(both, group=mesh.get_group())
    total, z, hits, n = loss + (both[0] - loss.detach()), both[1], both[2], both[3]
    if opts.reduction == "mean":  # (0 / 0 = NaN where no position counts, as unsharded)
        total, z, hits = total / n, z / n, hits / n
    if not opts.return_aux:
        return rep(total)
    return rep(total), type(aux)(rows(aux.lse), rep(z), rep(hits), rep(n.to(aux.count.dtype)))


def _batch_total(
    part: Tensor, local: Tensor, target: Tensor, weight: Any, opts: v.Options, ax: int, mesh: Any
) -> Tensor:
    """The batch-sharded "sum"/"mean": one SUM of (local sum, local denominator); the
    other ranks' part enters as a constant, so each rank's gradient stays its own."""
    target = torch.as_tensor(target, device=local.device)
    if target.dtype.is_floating_point and target.shape == local.shape:
        count = torch.tensor(float(local.numel() // local.shape[ax]), device=local.device, dtype=part.dtype)
    else:
        valid = target != opts.ignore_index
        if weight is None:
            count = valid.sum().to(part.dtype)
        else:
            w = torch.as_tensor(weight, device=local.device)
            count = torch.where(valid, w[target.clamp(0, w.shape[0] - 1)], 0).sum().to(part.dtype)
    both = torch.stack([part.detach(), count])
    dist.all_reduce(both, group=mesh.get_group())
    total = part + (both[0] - part.detach())
    if opts.reduction == "sum":
        return total
    return total / both[1]  # (no host read: 0 / 0 is the NaN of a mean over nothing)


def _my_rows(a: Any, logits: Any, d: int, ax: int) -> Any:
    """A replicated per-position argument cut to this rank's rows (``torch.chunk``'s split,
    DTensor's own); one already the local rows' size passes."""
    if a is None:
        return a
    a = torch.as_tensor(a, device=logits.to_local().device)
    dim = d if a.ndim == logits.ndim or d < ax else d - 1
    if a.shape[dim] != logits.shape[d]:
        return a  # (already this rank's rows)
    world = logits.device_mesh.size()
    parts = torch.chunk(a, world, dim)
    rank = logits.device_mesh.get_local_rank()
    return parts[rank] if rank < len(parts) else a.narrow(dim, 0, 0)


def _replicated(out: Any, mesh: Any, opts: v.Options) -> Any:
    """A loss (``(loss, aux)``) identical on every rank as ``Replicate()`` DTensors."""
    from torch.distributed.tensor import DTensor, Replicate

    def rep(a: Tensor) -> Any:
        return DTensor.from_local(a, mesh, [Replicate()], run_check=False)

    if not opts.return_aux:
        return rep(out)
    loss, aux = out
    return rep(loss), type(aux)(*(rep(a) for a in aux))


def dtensor_values(
    logits: Any, target: Any, smoothing: Any, weight: Any, where: Any, opts: v.Options, with_aux: bool = False
) -> Any:
    """``loss_and_grad`` of class-sharded DTensor logits: (Replicate loss, gradient placed
    like the logits), and with ``with_aux`` the statistics (Replicate DTensors; None
    without ``opts.return_aux``)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if opts.return_aux and not with_aux:  # (a caller that does not take the statistics)
        raise NotImplementedError(
            "return_aux=True is not supported by loss_and_grad of DTensor logits yet; use "
            "cross_entropy(..., return_aux=True) and .backward()"
        )
    p = _placement(logits)
    ax = v.check_axis(opts.axis, logits.ndim)
    if not (isinstance(p, Shard) and p.dim % logits.ndim == ax):
        raise ValueError(
            f"loss_and_grad takes DTensor logits sharded on the class axis (Shard({ax})), got {p}; use "
            "cross_entropy(...) and .backward() for other placements"
        )
    mesh = logits.device_mesh
    target, weight, where = (
        _local(a, n, p) for a, n in ((target, "target"), (weight, "weight"), (where, "where"))
    )
    loss, g, aux = sharded_values(logits.to_local(), target, smoothing, weight, where, opts, mesh.get_group())
    shape, stride = logits.shape, _contiguous(logits.shape)
    g = DTensor.from_local(g, mesh, [p], run_check=False, shape=shape, stride=stride)
    if not (with_aux and opts.return_aux):
        loss = DTensor.from_local(loss, mesh, [Replicate()], run_check=False)
        return (loss, g, None) if with_aux else (loss, g)
    loss, aux = _replicated((loss, aux), mesh, opts)
    return loss, g, aux


def _contiguous(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape`` (a DTensor's global layout)."""
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(int(size), 1)
    return tuple(reversed(strides))


def _refuse_batch_sharded(opts: v.Options, weight: Any, d: int, ndim: int) -> None:
    """What a batch shard with the language-model options cannot give from its own rows:
    the "mean" with class weights (the loss's denominator is the total weight, the
    z-loss's the count: two scales of one local gradient), and a shift along the sharded
    positions."""
    llm = [n for n in ("z_loss", "shift", "return_aux") if getattr(opts, n) not in (0, 0.0, False)]
    if llm and weight is not None and opts.reduction == "mean":
        raise NotImplementedError(
            f"{llm[0]} with class weights and reduction='mean' is not supported for batch-sharded "
            "DTensor logits; shard the logits on the class axis (Shard(class_axis)) or replicate them"
        )
    if opts.shift and (d == ndim - 2 or ndim < 3):  # (a shift needs the classes last)
        raise NotImplementedError(
            f"shift={opts.shift} moves along the sharded axis {d} of the DTensor logits; shard "
            "them on the batch axis of (batch, time, classes) logits, or on the class axis"
        )


def dtensor_linear_loss(
    hidden: Any, classifier: Any, target: Any, smoothing: Any, bias: Any, weight: Any, opts: v.Options
) -> Any:
    """``linear_cross_entropy`` with a classifier DTensor ``Shard(0)`` (its rows, the
    classes, split over a 1-D mesh) and ``hidden`` replicated: the fused vocabulary-parallel
    head on the local rows; the loss a ``Replicate()`` DTensor, the classifier's gradient
    ``Shard(0)``."""
    from torch.distributed.tensor import Shard

    from ls_xp.torch._parallel_linear import vocab_parallel_linear_cross_entropy

    p = _placement(classifier)
    if not (isinstance(p, Shard) and p.dim % 2 == 0):
        raise ValueError(
            f"classifier is a DTensor with placement {p}; linear_cross_entropy takes Shard(0) (its rows, "
            "the classes, split: ColwiseParallel's weight); redistribute it, or pass a plain tensor"
        )
    mesh = classifier.device_mesh
    hidden, target, weight = (
        _local(a, n, p) for a, n in ((hidden, "hidden"), (target, "target"), (weight, "weight"))
    )
    bias = _local(bias, "bias", p)
    out = vocab_parallel_linear_cross_entropy(
        hidden, classifier.to_local(), target, smoothing, group=mesh.get_group(), bias=bias,
        reduction=opts.reduction, weight=weight, ignore_index=opts.ignore_index, convention=opts.convention,
        chunk_size=opts.chunk_size, z_loss=opts.z_loss, softcap=opts.softcap, shift=opts.shift,
        return_aux=opts.return_aux,
    )  # fmt: skip
    return _replicated(out, mesh, opts)
