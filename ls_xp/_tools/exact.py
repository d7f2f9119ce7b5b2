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
) -> tuple[Any, list[list[Mpf]]]:
    """(loss, gradient) at high precision; loss is an mpf or a list of mpf for "none"."""
    with mpmath.workdps(DPS):
        num_classes = len(logits[0])
        soft = isinstance(target[0], (list, tuple))
        w = [mpmath.mpf(1)] * num_classes if weight is None else [_mpf(v) for v in weight]
        valid = [soft or t != ignore_index for t in target]
        q_all = smoothed_rows(
            [t if v else 0 for t, v in zip(target, valid, strict=True)],
            num_classes,
            eps,
            convention,
            where,
        )
        rows, grads = [], []
        denominator = mpmath.mpf(0)
        for n, x in enumerate(logits):
            ok = [True] * num_classes if where is None else list(where[n])
            xs = [_mpf(v) for v in x]
            if log_probs:
                logp = xs
                p = None
            else:
                lse = mpmath.log(mpmath.fsum(mpmath.exp(xs[c]) for c in range(num_classes) if ok[c]))
                logp = [xs[c] - lse if ok[c] else mpmath.mpf(0) for c in range(num_classes)]
                p = [mpmath.exp(logp[c]) if ok[c] else mpmath.mpf(0) for c in range(num_classes)]
            q = q_all[n]
            if not valid[n]:
                rows.append(mpmath.mpf(0))
                grads.append([mpmath.mpf(0)] * num_classes)
                continue
            terms = []
            for c in range(num_classes):
                if not ok[c] or w[c] * q[c] == 0:
                    continue
                term = -w[c] * q[c] * logp[c]
                if kl:
                    term += w[c] * q[c] * mpmath.log(q[c])
                terms.append(term)
            rows.append(mpmath.fsum(terms))
            denominator += 1 if soft else w[target[n]]
            wq = [w[c] * q[c] for c in range(num_classes)]
            total = mpmath.fsum(wq)
            if p is None:
                grads.append([-v for v in wq])
            else:
                grads.append([total * p[c] - wq[c] for c in range(num_classes)])
        if reduction == "none":
            return rows, grads
        loss = mpmath.fsum(rows)
        if reduction == "sum":
            return loss, grads
        if denominator == 0:
            return mpmath.nan, [[mpmath.mpf(0)] * num_classes for _ in grads]
        return loss / denominator, [[v / denominator for v in g] for g in grads]
