"""The causal shift: position t of the logits is scored against target t + shift.

For class indices the logits are left as they are: the targets are shifted instead, and
the last ``shift`` positions get ``ignore_index``, so that they add nothing to the loss,
the gradient (exactly 0) or the ``"mean"`` denominator, and neither input is copied
(Cut Cross-Entropy's ``shift``; HF's ``ForCausalLMLoss`` slices both, which copies).
``"none"`` returns the ``T - shift`` scored positions. Probability targets are sliced
(``logits[..., :T - shift, :]`` against ``target[..., shift:, :]``; a view where the
library makes one) and their gradients padded back with zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ls_xp._plan import device_of

if TYPE_CHECKING:
    from types import ModuleType

    from ls_xp._evaluate import Result
    from ls_xp._validate import Options

Array = Any


class Shift(NamedTuple):
    logits: Array
    target: Array
    where: Array | None
    shift: int
    soft: bool

    @staticmethod
    def of(
        xp: ModuleType, logits: Array, target: Array, where: Array | None, ax: int, opts: Options
    ) -> Shift:
        s, shape = opts.shift, tuple(logits.shape)
        if ax != len(shape) - 1 or len(shape) < 2:
            raise ValueError(
                f"shift={s} needs logits of shape (..., T, K), the classes last (axis=-1) and the "
                f"sequence before them; got axis={opts.axis} and shape {shape}"
            )
        length = shape[-2]
        if s >= length:
            raise ValueError(
                f"shift={s} must be smaller than the sequence length {length} (logits.shape[-2])"
            )
        soft = tuple(target.shape) == shape
        if soft:
            logits, target = logits[..., : length - s, :], target[..., s:, :]
            if where is not None and where.ndim >= 2 and where.shape[-2] == length:
                where = where[..., : length - s, :]
        elif tuple(target.shape) == shape[:-1]:  # (anything else: the usual shape error)
            pad = xp.full((*shape[:-2], s), opts.ignore_index, dtype=target.dtype, device=device_of(target))
            target = xp.concat([target[..., s:], pad], axis=-1)
        return Shift(logits, target, where, s, soft)

    def restore(self, xp: ModuleType, res: Result, opts: Options) -> Result:
        """The result in the caller's terms: ``"none"`` outputs over the scored positions,
        gradients of the caller's full arrays."""
        if self.soft:
            return res._replace(
                grad=self._pad(xp, res.grad, False), target_grad=self._pad(xp, res.target_grad, True)
            )

        return scored(res, self.shift, opts.reduction == "none")

    def per_row(self, xp: ModuleType, a: Array) -> Array:
        """Per-position values over the scored positions (the ``"none"`` losses' shape) as
        the evaluated rows see them: class indices score every position, the last
        ``shift`` ignored, which get 0."""
        if self.soft:
            return a
        zeros = xp.zeros((*a.shape[:-1], self.shift), dtype=a.dtype, device=device_of(a))
        return xp.concat([a, zeros], axis=-1)

    def _pad(self, xp: ModuleType, g: Array | None, front: bool) -> Array | None:
        if g is None:
            return None
        zeros = xp.zeros((*g.shape[:-2], self.shift, g.shape[-1]), dtype=g.dtype, device=device_of(g))
        return xp.concat([zeros, g] if front else [g, zeros], axis=-2)


_R = TypeVar("_R", bound=Any)


def scored(res: _R, shift: int, per_position: bool) -> _R:
    """A result (the loss's or the fused loss's) over the ``T - shift`` scored positions:
    ``lse`` always, the loss, its eps-derivative and the other statistics for ``"none"``."""

    def cut(a: Array | None) -> Array | None:
        return None if a is None else a[..., : a.shape[-1] - shift]

    aux = res.aux
    if aux is not None:  # (lse is per position whatever the reduction)
        aux = aux._replace(lse=cut(aux.lse))
        if per_position:
            aux = aux._replace(accuracy=cut(aux.accuracy), z_loss=cut(aux.z_loss))
    if not per_position:
        return res._replace(aux=aux)
    return res._replace(loss=cut(res.loss), smoothing_grad=cut(res.smoothing_grad), aux=aux)
