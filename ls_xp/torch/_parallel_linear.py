"""The fused head with a vocabulary-sharded classifier on a process group.

    loss(H, W, y) = cross_entropy(H [W_0; W_1; ...]^T + b, y)    H (N, D) replicated, W_r (k_r, D)

Forward: row blocks of local logits X_B = H_B W_r^T + b_r, one at a time, give the
rank's statistics (:func:`ls_xp._vocab_parallel.local_block`); then one MAX and one SUM
(:func:`ls_xp._vocab_parallel_run.statistics`) give the loss. Backward: the blocks
again (the logits are recomputed: the global statistics come only after every block),
G_B = d loss / d X_B from the same formula as the unfused loss, dW_r += G_B^T H_B and
db_r += sum G_B locally, and dH = sum_r G_B W_r, all-reduced once for the whole of H.
So never more than one block of local logits exists, and the communication is O(N)
forward and N x D once backward (no N x V or V x D array is ever sent).
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as torch_xp
import torch
import torch.distributed as dist

from ls_xp import _linear
from ls_xp import _validate as v
from ls_xp import _vocab_parallel as vp
from ls_xp import _vocab_parallel_grad as vpg
from ls_xp import _vocab_parallel_llm as llm
from ls_xp import _vocab_parallel_run as vpr
from ls_xp.torch._parallel import COUNTER, GroupCollectives, layout, scored_outputs, setting, shifted_target

Tensor = torch.Tensor

__all__ = ["vocab_parallel_linear_cross_entropy"]


class _Problem:
    """The checked fused problem of one rank."""

    def __init__(
        self,
        hidden: Tensor,
        w: Tensor,
        bias: Tensor | None,
        y: Tensor,
        weight: Any,
        st: vp.Setting,
        step: int,
    ) -> None:
        self.hidden, self.w, self.bias, self.y, self.weight, self.st, self.step = (
            hidden,
            w,
            bias,
            y,
            weight,
            st,
            step,
        )

    _whole: vp.Rows | None = None

    def blocks(self) -> list[slice]:
        n = self.hidden.shape[0]
        return [slice(lo, min(n, lo + self.step)) for lo in range(0, n, self.step)] or [slice(0, 0)]

    def rows(self, sl: slice) -> vp.Rows:
        """The block's local logits (the only (n_B, k) array) as rows; the per-row columns
        are the whole problem's (:attr:`whole`), cut."""
        x = self.hidden[sl] @ self.w.T
        if self.bias is not None:
            x += self.bias
        return self.whole.cut(sl)._replace(x=x, owned=True)  # (ours: shifted in place)

    @property
    def whole(self) -> vp.Rows:
        """The per-row columns of every row, made once (no logits: a shape-only view)."""
        if self._whole is None:
            shape = (self.y.shape[0], self.w.shape[0])
            x = torch.empty((), dtype=self.st.dtype, device=self.w.device).expand(*shape)
            self._whole = vp.prepare(torch_xp, self.st, x, self.y, self.weight, None, 1)
        return self._whole


class _VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, w: Tensor, bias: Tensor | None, p: _Problem, coll: Any, aux: list[Any]
    ) -> Tensor:
        with torch.no_grad():
            held: dict[str, Any] = {}  # the blocks' statistics, as whole columns
            for sl in p.blocks():
                rows = p.rows(sl)
                pk = vpr.picks(torch_xp, sl.stop - sl.start, w.shape[0], False, w.device)
                vpr.hold(torch_xp, held, vp.local_block(torch_xp, p.st, rows, pk)[0], sl, p.y.shape[0])
                del rows  # (the block's logits)
            stats = vpr.statistics(torch_xp, p.st, p.whole, [vpr.held_local(held)], coll)
            loss, aux[0] = vpr.reduce_rows(
                torch_xp, p.st, p.whole, stats.glob, hidden.shape[:-1], hidden.dtype
            )
        ctx.p, ctx.stats, ctx.coll, ctx.h_shape = p, stats, coll, hidden.shape
        return loss

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        up = grad_outputs[0].reshape(-1) if ctx.p.st.reduction == "none" else grad_outputs[0]
        p, stats = ctx.p, ctx.stats
        k = p.w.shape[0]
        dt = p.st.dtype
        gh = torch.zeros(p.hidden.shape, dtype=dt, device=p.hidden.device)
        gw = torch.zeros(p.w.shape, dtype=dt, device=p.w.device)
        gb = None if p.bias is None else torch.zeros(p.bias.shape, dtype=dt, device=p.w.device)
        with torch.no_grad():
            for sl in p.blocks():
                rows = p.rows(sl)
                loc, glob = vpr.local_cut(stats.loc, sl), stats.glob.cut(sl)
                # the cotangent folded into the row factors (no second block-sized array)
                scale = up[sl].to(dt)[:, None] if p.st.reduction == "none" else up.to(dt)
                glob = glob._replace(factor=glob.factor * scale)
                if glob.factor_z is not None:
                    glob = glob._replace(factor_z=glob.factor_z * scale)
                if p.st.softcap is not None:  # the capped logits kept for the chain rule
                    rows = llm.prepared(torch_xp, p.st, rows)._replace(owned=False)
                pk = vpr.picks(torch_xp, sl.stop - sl.start, k, False, p.w.device)
                e = vpg.exp_block(torch_xp, p.st, rows, loc.m_r, loc.top, pk)
                g = vpg.grad_block(torch_xp, p.st, e, rows, loc, glob, pk)
                torch.mm(g, p.w.to(dt), out=gh[sl])
                gw.addmm_(g.T, p.hidden[sl].to(dt))  # (in place: no k x D temporary per block)
                if gb is not None:
                    gb += g.sum(0)
                del rows, e, g
            ctx.coll.sum_into(gh)  # the one collective of the backward: dH = sum over the ranks
        h_dtype = p.hidden.dtype
        return (
            gh.to(h_dtype).reshape(ctx.h_shape) if ctx.needs_input_grad[0] else None,
            gw.to(p.w.dtype) if ctx.needs_input_grad[1] else None,
            None if gb is None or not ctx.needs_input_grad[2] else gb.to(p.w.dtype),
            None,
            None,
            None,
        )


class _LinearCollectives(GroupCollectives):
    def sum_into(self, a: Tensor) -> None:
        """All-reduce SUM in place (the hidden-state gradient)."""
        dist.all_reduce(a, op=dist.ReduceOp.SUM, group=self.group)
        self.calls.append(("sum", a.numel()))


def vocab_parallel_linear_cross_entropy(
    hidden: Tensor,
    local_classifier: Tensor,
    target: Any,
    smoothing: float = 0.1,
    *,
    group: Any = None,
    bias: Tensor | None = None,
    reduction: str = "mean",
    weight: Any = None,
    ignore_index: int = -100,
    convention: str = "uniform",
    chunk_size: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    shift: int = 0,
    return_aux: bool = False,
) -> Any:
    """``cross_entropy(hidden @ classifier.T + bias, target)`` with the classifier's rows
    (the classes) split over ``group``: each rank passes the same ``hidden`` (..., D) and
    ``target`` and its contiguous slice ``local_classifier`` (k_r, D) (and ``bias``
    (k_r,)), in rank order. Never more than one block of ``chunk_size`` rows of local
    logits exists; the loss is the same on every rank. Backward: each rank gets the
    gradient of its own classifier slice, and ``hidden`` the full gradient (one
    all-reduce of N x D). ``weight``: the whole (K,) or the rank's slice. ``z_loss``,
    ``softcap``, ``shift`` and ``return_aux`` (``(loss, aux)``) as in
    :func:`ls_xp.linear_cross_entropy`."""
    opts = v.options(
        reduction=reduction, ignore_index=ignore_index, convention=convention, chunk_size=chunk_size,
        z_loss=z_loss, softcap=softcap, shift=shift, return_aux=return_aux,
    )  # fmt: skip
    target, weight, bias = v.inputs_like(torch_xp, hidden.device, target, weight, bias)
    v.check_floating(torch_xp, hidden, "hidden")
    if local_classifier.ndim != 2 or local_classifier.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"local_classifier must have shape (k, {hidden.shape[-1]}) (this rank's rows of "
            f"nn.Linear.weight), got {tuple(local_classifier.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (local_classifier.shape[0],):
        raise ValueError(f"bias must have shape ({local_classifier.shape[0]},) (this rank's classes)")
    h = hidden.reshape(-1, hidden.shape[-1])
    k = local_classifier.shape[0]
    shape_only = torch.empty((), dtype=hidden.dtype, device=hidden.device).expand(*hidden.shape[:-1], k)
    target, pending = shifted_target(shape_only, target, shape_only.ndim - 1, opts)
    lay = layout(
        shape_only, target, weight, None, shape_only.ndim - 1, opts, group, False, smoothing, pending
    )
    st = setting(shape_only, lay, lay.eps, opts, False, False, hidden.device.type == "cpu")
    plan = "cpu" if hidden.device.type == "cpu" else "accelerator"
    # the rows of a block of the whole problem: each rank holds its share of that block
    step = chunk_size or _linear.default_block_rows(lay.num_classes, plan)
    coll = _LinearCollectives(group)
    COUNTER[:] = [coll]
    p = _Problem(
        h.detach(),
        local_classifier.detach(),
        None if bias is None else bias.detach(),
        target.reshape(-1),
        weight,
        st,
        step,
    )
    aux: list[Any] = [None]
    loss: Tensor = _VocabParallelLinearCE.apply(hidden, local_classifier, bias, p, coll, aux)
    return scored_outputs(loss, aux[0], opts)
