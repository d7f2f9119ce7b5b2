"""High-precision scalar evaluation with mpmath (an optional, test-time dependency).

An independent, loop-by-loop implementation of the definitions, evaluated at 60 decimal
digits. It produced the exact values stored in :mod:`ls_xp.reference` and the test suite
uses it to measure errors in ulp. It works on 2-D inputs (positions x classes) given as
nested Python lists; every float is converted exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mpmath

DPS = 60
Mpf = Any  # mpmath.mpf (mpmath has no type hints)


def _mpf(v: Any) -> Mpf:
    """Exact conversion: floats keep their binary value, strings their decimal one."""
    return mpmath.mpf(v)


def smoothed_rows(
    target: Sequence[Any],
    num_classes: int,
    eps: Any,
    convention: str,
    allowed: Sequence[Sequence[bool]] | None = None,
) -> list[list[Mpf]]:
    """The smoothed target distribution q of every row (masked classes get 0)."""
    eps = _mpf(eps)
    rows = []
    for n, t in enumerate(target):
        ok = [True] * num_classes if allowed is None else list(allowed[n])
        k = sum(ok)
        if isinstance(t, (list, tuple)):
            probs = [_mpf(v) for v in t]
        else:
            probs = [mpmath.mpf(1) if c == t else mpmath.mpf(0) for c in range(num_classes)]
        if convention == "uniform":
            q = [(1 - eps) * probs[c] + eps / k for c in range(num_classes)]
        else:
            q = [(1 - eps) * probs[c] + eps * (1 - probs[c]) / (k - 1) for c in range(num_classes)]
        rows.append([q[c] if ok[c] else mpmath.mpf(0) for c in range(num_classes)])
    return rows


def _row(
    x: Sequence[Any], q: list[Mpf], w: list[Mpf], ok: list[bool], log_probs: bool, kl: bool, softcap: Any
) -> tuple[Mpf, list[Mpf], Mpf, list[Mpf], list[Mpf]]:
    """One counted row: its loss, d loss / d (capped) logits, lse, softmax and the softcap's
    derivative d capped / d x."""
    num_classes = len(x)
    xs = [_mpf(v) for v in x]
    dcap = [mpmath.mpf(1)] * num_classes
    if softcap is not None:
        cap = _mpf(softcap)
        dcap = [1 - mpmath.tanh(v / cap) ** 2 for v in xs]
        xs = [cap * mpmath.tanh(v / cap) for v in xs]
    lse = mpmath.mpf(0)
    p: list[Mpf] = []
    if log_probs:
        logp = xs
    else:
        lse = mpmath.log(mpmath.fsum(mpmath.exp(xs[c]) for c in range(num_classes) if ok[c]))
        logp = [xs[c] - lse if ok[c] else mpmath.mpf(0) for c in range(num_classes)]
        p = [mpmath.exp(logp[c]) if ok[c] else mpmath.mpf(0) for c in range(num_classes)]
    terms = []
    for c in range(num_classes):
        if ok[c] and w[c] * q[c] != 0:
            terms.append(-w[c] * q[c] * logp[c] + (w[c] * q[c] * mpmath.log(q[c]) if kl else 0))
    wq = [w[c] * q[c] for c in range(num_classes)]
    total = mpmath.fsum(wq)
    grad = [-v for v in wq] if log_probs else [total * p[c] - wq[c] for c in range(num_classes)]
    return mpmath.fsum(terms), grad, lse, p, dcap


def evaluate(
    logits: Sequence[Sequence[Any]],
    target: Sequence[Any],
    eps: Any = 0.1,
    *,
    reduction: str = "mean",
    weight: Sequence[Any] | None = None,
    ignore_index: int = -100,
    convention: str = "uniform",
    where: Sequence[Sequence[bool]] | None = None,
    log_probs: bool = False,
    kl: bool = False,
    z_loss: Any = 0,
    softcap: Any = None,
) -> tuple[Any, list[list[Mpf]]]:
    """(loss, gradient) at high precision; loss is an mpf or a list of mpf for "none".

    ``z_loss`` adds z lse**2 per counted row ("mean": over their number, not their weight);
    ``softcap`` caps the logits at softcap * tanh(x / softcap) first."""
    with mpmath.workdps(DPS):
        num_classes = len(logits[0])
        soft = isinstance(target[0], (list, tuple))
        w = [mpmath.mpf(1)] * num_classes if weight is None else [_mpf(v) for v in weight]
        valid = [soft or t != ignore_index for t in target]
        q_all = smoothed_rows(
            [t if v else 0 for t, v in zip(target, valid, strict=True)], num_classes, eps, convention, where
        )
        z = _mpf(z_loss)
        rows, z_rows, grads, z_grads, caps = [], [], [], [], []
        denominator, count = mpmath.mpf(0), mpmath.mpf(0)
        for n, x in enumerate(logits):
            ok = [True] * num_classes if where is None else list(where[n])
            if not valid[n]:
                rows.append(mpmath.mpf(0))
                z_rows.append(mpmath.mpf(0))
                grads.append([mpmath.mpf(0)] * num_classes)
                z_grads.append([mpmath.mpf(0)] * num_classes)
                caps.append([mpmath.mpf(1)] * num_classes)
                continue
            row, grad, lse, p, dcap = _row(x, q_all[n], w, ok, log_probs, kl, softcap)
            rows.append(row)
            z_rows.append(z * lse**2)
            grads.append(grad)
            z_grads.append([2 * z * lse * pc for pc in p] if p else [mpmath.mpf(0)] * num_classes)
            caps.append(dcap)
            denominator += 1 if soft else w[target[n]]
            count += 1
        return _reduce(
            rows, z_rows, grads, z_grads, caps, reduction, denominator, denominator if soft else count
        )


def _reduce(
    rows: list[Mpf],
    z_rows: list[Mpf],
    grads: list[list[Mpf]],
    z_grads: list[list[Mpf]],
    caps: list[list[Mpf]],
    reduction: str,
    denominator: Mpf,
    count: Mpf,
) -> tuple[Any, list[list[Mpf]]]:
    """The reductions: the cross-entropy over ``denominator``, the z-loss over ``count``
    (the number of counted rows; "mean" only), each gradient through the softcap's
    derivative."""
    if reduction == "mean" and denominator == 0:
        return mpmath.nan, [[mpmath.mpf(0)] * len(g) for g in grads]
    a, b = (1, 1) if reduction != "mean" else (1 / denominator, 1 / count)
    out = [
        [(a * g + b * zg) * d for g, zg, d in zip(gr, zr, cr, strict=True)]
        for gr, zr, cr in zip(grads, z_grads, caps, strict=True)
    ]
    if reduction == "none":
        return [r + zr for r, zr in zip(rows, z_rows, strict=True)], out
    return a * mpmath.fsum(rows) + b * mpmath.fsum(z_rows), out
