"""The conformance matrix behind ``ls-xp check``.

For every installed backend, every device it can see and every floating dtype the device
supports, one *cell* runs three checks:

- ``reference``: every case of :mod:`ls_xp.reference` against its exact value;
- ``sweep``: seeded random problems with every keyword (weights, ignored positions, soft
  targets, extra dimensions, reductions, smoothing 0..1, both conventions, class masks,
  log-probabilities, the KL form), loss and gradient, against ls_xp on NumPy float64 with
  the same (rounded) inputs;
- ``native``: the backend's own implementation where it has one: PyTorch's
  ``cross_entropy(label_smoothing=...)`` (loss and autograd gradient), optax's
  ``softmax_cross_entropy(smooth_labels(...))`` on JAX;
- ``linear``: :func:`ls_xp.linear_loss_and_grad` (the fused classifier matmul and loss, in
  blocks of two rows) against the unfused loss of ``hidden @ classifier.T + bias`` on
  NumPy float64 with the same (rounded) inputs: loss and the three gradients.

The sweep proves that every backend, device and dtype computes what NumPy float64 computes;
that the float64 values are right comes from the reference cases (exact values) and the
native peers (independent implementations).

A cell passes when every error is within the dtype's tolerance in :data:`TOLERANCES`.
Errors are relative: |got - want| / |want| for losses (per element), and the largest
gradient error divided by the largest gradient entry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ls_xp import reference
from ls_xp._tools import backends as _backends
from ls_xp._tools import sweep as _sweep

# The one place where tolerances are stated: relative error, per dtype and check.
# "reference" compares with exact values of the decimal inputs (input rounding included);
# "parity" compares with a float64 evaluation of the same rounded inputs.
TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"reference": 2e-15, "parity": 1e-12},
    "float32": {"reference": 1e-6, "parity": 1e-5},
    "float16": {"reference": 5e-3, "parity": 4e-3},
    "bfloat16": {"reference": 4e-2, "parity": 3e-2},
}
DTYPES = ("float16", "bfloat16", "float32", "float64")
SWEEP_PROBLEMS = 12
_NP_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16}


def _relative(got: Any, want: Any) -> float:
    g = np.asarray(got, dtype=np.float64).ravel()
    w = np.asarray(want, dtype=np.float64).ravel()
    if g.shape != w.shape:
        return math.inf
    same_special = (np.isnan(g) & np.isnan(w)) | ((g == w) & np.isinf(w))
    if np.any((np.isnan(g) | np.isinf(g) | np.isnan(w) | np.isinf(w)) & ~same_special):
        return math.inf
    ok = ~same_special
    if not np.any(ok):
        return 0.0
    scale = np.maximum(np.abs(w[ok]), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(g[ok] - w[ok]) / scale))


def _grad_error(got: Any, want: Any) -> float:
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape or not np.all(np.isfinite(g) == np.isfinite(w)):
        return math.inf
    scale = np.max(np.abs(w[np.isfinite(w)]), initial=0.0)
    if scale == 0.0:
        return float(np.max(np.abs(g[np.isfinite(g)]), initial=0.0))
    return float(np.max(np.abs(g[np.isfinite(w)] - w[np.isfinite(w)]), initial=0.0) / scale)


def _round_like(a: np.ndarray, tgt: _backends.Target, dtype: Any) -> np.ndarray:
    """``a`` rounded to ``dtype`` by the backend itself (bfloat16 has no NumPy twin)."""
    return tgt.to_numpy(tgt.xp.asarray(a, dtype=dtype, device=tgt.device)).astype(np.float64)


def check_reference(tgt: _backends.Target, dname: str, dtype: Any) -> list[dict[str, Any]]:
    out = []
    for case in reference.CASES:
        try:
            got = tgt.to_numpy(case.run(tgt.xp, dtype=dtype, device=tgt.device))
            err = _relative(got, case.exact_values())
            out.append({"check": "reference", "case": case.name, "error": err})
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check
            out.append({"check": "reference", "case": case.name, "error": math.inf, "exception": repr(exc)})
    return out


def _rounded_problem(p: _sweep.Problem, tgt: _backends.Target, dtype: Any) -> _sweep.Problem:
    return _sweep.rounded(p, lambda a: _round_like(a, tgt, dtype))


def check_sweep(tgt: _backends.Target, dname: str, dtype: Any, seeds: range) -> list[dict[str, Any]]:
    from array_api_compat import numpy as np_xp

    out = []
    for seed in seeds:
        p = _rounded_problem(_sweep.random_problem(seed, extras=True), tgt, dtype)
        try:
            want_loss, want_grad = _sweep.evaluate(p, np_xp, np.float64)
            loss, grad = _sweep.evaluate(p, tgt.xp, dtype, tgt.device)
            err = max(_relative(tgt.to_numpy(loss), want_loss), _grad_error(tgt.to_numpy(grad), want_grad))
            out.append({"check": "sweep", "case": f"seed {seed}", "error": err})
        except Exception as exc:  # noqa: BLE001
            out.append({"check": "sweep", "case": f"seed {seed}", "error": math.inf, "exception": repr(exc)})
    return out


def _torch_native(p: _sweep.Problem, tgt: _backends.Target, dtype: Any) -> tuple[Any, Any]:
    import torch

    x = torch.tensor(p.logits, dtype=dtype, device=tgt.device, requires_grad=True)
    t = torch.tensor(p.target, dtype=dtype if p.soft else torch.int64, device=tgt.device)
    w = None if p.weight is None else torch.tensor(p.weight, dtype=dtype, device=tgt.device)
    loss = torch.nn.functional.cross_entropy(
        x, t, weight=w, ignore_index=p.ignore_index, reduction=p.reduction, label_smoothing=p.smoothing
    )
    loss.sum().backward()
    return loss.detach(), x.grad


def _optax_native(p: _sweep.Problem, tgt: _backends.Target, dtype: Any) -> tuple[Any, Any]:
    import jax
    import optax

    k = p.logits.shape[1]
    x = jax.device_put(jax.numpy.asarray(p.logits, dtype=dtype), tgt.device)
    labels = jax.nn.one_hot(jax.numpy.asarray(p.target), k, axis=1, dtype=dtype)
    if p.soft:
        labels = jax.numpy.asarray(p.target, dtype=dtype)
    labels = optax.smooth_labels(jax.numpy.moveaxis(labels, 1, -1), p.smoothing)

    def rows(a: Any) -> Any:
        return optax.softmax_cross_entropy(jax.numpy.moveaxis(a, 1, -1), labels)

    def total(a: Any) -> Any:
        r = rows(a)
        return jax.numpy.sum(r) if p.reduction != "mean" else jax.numpy.mean(r)

    loss = rows(x) if p.reduction == "none" else total(x)
    return loss, jax.grad(total)(x)


def _for_torch(p: _sweep.Problem) -> _sweep.Problem:
    return p  # random problems without extras are exactly PyTorch's


def _for_optax(p: _sweep.Problem) -> _sweep.Problem:
    """optax has no class weights and no ignore_index: drop them."""
    target = p.target if p.soft else np.where(p.target < 0, 0, p.target)
    if not p.soft and p.ignore_index >= 0:
        target = np.where(target == p.ignore_index, (p.ignore_index + 1) % p.logits.shape[1], target)
    return _sweep.Problem(p.logits, target, p.smoothing, p.reduction, None, -100)


def native_for(
    tgt: _backends.Target,
) -> tuple[str, Callable[..., tuple[Any, Any]], Callable[[_sweep.Problem], _sweep.Problem]] | None:
    """The backend's own implementation, and how to turn a problem into one it computes."""
    import importlib.util

    if tgt.backend == "torch":
        return "torch.nn.functional.cross_entropy", _torch_native, _for_torch
    if tgt.backend == "jax" and importlib.util.find_spec("optax") is not None:
        return "optax.softmax_cross_entropy", _optax_native, _for_optax
    return None


def check_native(tgt: _backends.Target, dname: str, dtype: Any, seeds: range) -> list[dict[str, Any]]:
    native = native_for(tgt)
    if native is None:
        return []
    name, fn, comparable = native
    out = []
    for seed in seeds:
        p = _rounded_problem(comparable(_sweep.random_problem(seed)), tgt, dtype)
        try:
            loss, grad = _sweep.evaluate(p, tgt.xp, dtype, tgt.device)
            n_loss, n_grad = fn(p, tgt, dtype)
            err = max(
                _relative(tgt.to_numpy(loss), tgt.to_numpy(n_loss)),
                _grad_error(tgt.to_numpy(grad), tgt.to_numpy(n_grad)),
            )
            out.append({"check": "native", "case": f"{name} seed {seed}", "error": err})
        except Exception as exc:  # noqa: BLE001
            out.append(
                {"check": "native", "case": f"{name} seed {seed}", "error": math.inf, "exception": repr(exc)}
            )
    return out


LINEAR_PROBLEMS = 3


def _linear_problem(seed: int) -> dict[str, Any]:
    """A small fused problem: every keyword, an ignored row, blocks that do not divide."""
    rng = np.random.default_rng(1000 + seed)
    n, d, v = 5 + seed, 8, 11 + 7 * seed
    y = rng.integers(0, v, n)
    y[1] = -100
    return {
        "arrays": (rng.normal(size=(n, d)), rng.normal(size=(v, d)) / math.sqrt(d), rng.normal(size=v),
                   rng.uniform(0.5, 2.0, v)),
        "target": y,
        "options": {"reduction": ("mean", "sum", "none")[seed % 3],
                    "convention": ("uniform", "others")[seed % 2], "chunk_size": 2},
    }  # fmt: skip


def check_linear(tgt: _backends.Target, dname: str, dtype: Any, seeds: range) -> list[dict[str, Any]]:
    from ls_xp import _api

    out = []
    for seed in seeds:
        prob = _linear_problem(seed)
        h, w, b, weight = (_round_like(a, tgt, dtype) for a in prob["arrays"])
        y, opts = prob["target"], prob["options"]
        case = f"seed {seed} ({opts['reduction']}, {opts['convention']})"
        try:
            loss, g = _api.loss_and_grad(h @ w.T + b, y, 0.1, weight=weight, **opts)
            want = (loss, g @ w, g.T @ h, g.sum(axis=0))
            xp, dev = tgt.xp, tgt.device
            args = [xp.asarray(a, dtype=dtype, device=dev) for a in (h, w, b, weight)]
            got = _api.linear_loss_and_grad(
                args[0],
                args[1],
                xp.asarray(y.astype(np.int32), device=dev),
                0.1,
                bias=args[2],
                weight=args[3],
                **opts,
            )
            err = max(
                _relative(tgt.to_numpy(got[0]), want[0]),
                *(_grad_error(tgt.to_numpy(a), e) for a, e in zip(got[1:], want[1:], strict=True)),
            )
            out.append({"check": "linear", "case": case, "error": err})
        except Exception as exc:  # noqa: BLE001
            out.append({"check": "linear", "case": case, "error": math.inf, "exception": repr(exc)})
    return out


@dataclass(frozen=True)
class CellProgress:
    """One step of :func:`run`, for a progress display.

    Each cell that runs is announced twice: with ``status="running"`` before its checks and
    with its result after them; a skipped cell is announced once. ``index`` counts the
    cells of the report (skipped ones included) from 1 to ``total``.
    """

    index: int
    total: int
    label: str  # "torch/cpu float32"
    status: Literal["running", "pass", "fail", "skipped"]  # a cell that runs: "running", then its result
    elapsed: float  # seconds since run() started
    seconds: float = 0.0  # the cell's own time, once it is done
    left: float | None = None  # estimated seconds to the end (see _time_left); None before any cell ran
    left_at_least: bool = False  # a backend still to come has not run yet: ``left`` is a lower bound
    detail: str = ""  # the skip reason, or the worst failure


_Cell = tuple[_backends.Target | _backends.Unavailable, str, str | None]


def plan(
    backends: list[str] | None = None, devices: list[str] | None = None, dtypes: list[str] | None = None
) -> list[_Cell]:
    """Every cell of the matrix, in report order: (target, dtype name, skip reason or None)."""
    cells: list[_Cell] = []
    for tgt in _backends.discover(backends):
        if devices and not any(d in tgt.device_label for d in devices):
            continue
        for dname in dtypes or DTYPES:
            reason = tgt.reason if isinstance(tgt, _backends.Unavailable) else _unsupported(tgt, dname)
            cells.append((tgt, dname, reason))
    return cells


def check_cell(tgt: _backends.Target, dname: str, sweep: int) -> dict[str, Any]:
    """The four checks of one cell, each result marked against the dtype's tolerance."""
    dtype = tgt.dtypes[dname]
    tol = TOLERANCES[dname]
    results = check_reference(tgt, dname, dtype)
    results += check_sweep(tgt, dname, dtype, range(sweep))
    results += check_native(tgt, dname, dtype, range(sweep))
    results += check_linear(tgt, dname, dtype, range(min(sweep, LINEAR_PROBLEMS)))
    for r in results:
        r["tolerance"] = tol["reference" if r["check"] == "reference" else "parity"]
        r["pass"] = r["error"] <= r["tolerance"]
    worst = max(results, key=lambda r: r["error"] / r["tolerance"])
    return {
        "target": tgt.label,
        "dtype": dname,
        "status": "pass" if all(r["pass"] for r in results) else "fail",
        "worst_error": {c: max((r["error"] for r in results if r["check"] == c), default=None)
                        for c in ("reference", "sweep", "native", "linear")},
        "worst": {k: worst[k] for k in ("check", "case", "error", "tolerance")},
        "checks": len(results),
        "failures": [r for r in results if not r["pass"]],
    }  # fmt: skip


def _worst_failure(cell: dict[str, Any]) -> str:
    w = cell["worst"]
    return f"worst: {w['check']} {w['case']}: error {w['error']:.2e} > {w['tolerance']:.0e}"


def _time_left(rest: list[_Cell], times: dict[str, list[float]]) -> tuple[float | None, bool]:
    """Seconds the cells in ``rest`` will take, each at the mean time of its backend's cells so
    far (backends differ a hundredfold: JAX compiles), and whether some backend is not yet known."""
    if not times:
        return None, False
    left, unknown = 0.0, False
    for tgt, _, reason in rest:
        if reason is None:
            seen = times.get(tgt.backend)
            left += sum(seen) / len(seen) if seen else 0.0
            unknown = unknown or not seen
    return left, unknown


def run(
    backends: list[str] | None = None,
    devices: list[str] | None = None,
    dtypes: list[str] | None = None,
    sweep: int = SWEEP_PROBLEMS,
    progress: Callable[[CellProgress], None] | None = None,
) -> dict[str, Any]:
    """Run the matrix; returns ``{"tolerances", "cells", "passed", "failed", "skipped"}``.

    ``progress``, when given, is called before and after each cell (see :class:`CellProgress`).
    """
    t0 = time.monotonic()
    todo = plan(backends, devices, list(dtypes or DTYPES))
    total = len(todo)
    cells: list[dict[str, Any]] = []
    times: dict[str, list[float]] = {}
    for i, (tgt, dname, reason) in enumerate(todo, 1):
        label = f"{tgt.label} {dname}"
        if reason is not None or isinstance(tgt, _backends.Unavailable):
            cells.append({"target": tgt.label, "dtype": dname, "status": "skipped", "reason": reason})
            if progress:
                left, more = _time_left(todo[i:], times)
                now = time.monotonic() - t0
                progress(CellProgress(i, total, label, "skipped", now, 0.0, left, more, str(reason)))
            continue
        if progress:
            left, more = _time_left(todo[i - 1 :], times)
            progress(CellProgress(i, total, label, "running", time.monotonic() - t0, 0.0, left, more))
        start = time.monotonic()
        cell = check_cell(tgt, dname, sweep)
        cells.append(cell)
        seconds = time.monotonic() - start
        times.setdefault(tgt.backend, []).append(seconds)
        if progress:
            detail = _worst_failure(cell) if cell["status"] == "fail" else ""
            left, more = _time_left(todo[i:], times)
            now = time.monotonic() - t0
            progress(CellProgress(i, total, label, cell["status"], now, seconds, left, more, detail))
    return {
        "tolerances": TOLERANCES,
        "cells": cells,
        "passed": sum(c["status"] == "pass" for c in cells),
        "failed": sum(c["status"] == "fail" for c in cells),
        "skipped": sum(c["status"] == "skipped" for c in cells),
    }


def _unsupported(tgt: _backends.Target, dname: str) -> str | None:
    if dname not in tgt.dtypes:
        return tgt.skipped_dtypes.get(dname, f"{tgt.backend} has no {dname}")
    info = getattr(tgt.xp, "__array_namespace_info__", None)
    if info is not None and dname in ("float32", "float64"):
        try:
            supported = info().dtypes(device=tgt.device, kind="real floating")
        except Exception:  # noqa: BLE001 - an inspection API that does not know the device
            return None
        if dname not in supported:
            return f"device {tgt.device_label} has no {dname}"
    return None


def format_matrix(report: dict[str, Any], dtypes: list[str]) -> str:
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for c in report["cells"]:
        rows.setdefault(c["target"], {})[c["dtype"]] = c
    width = max([len(t) for t in rows] + [14])
    colw = 22
    lines = [f"{'backend/device':{width}s}  " + "  ".join(f"{d:>{colw}s}" for d in dtypes)]
    notes = []
    for target, by_dtype in rows.items():
        reasons = {c.get("reason") for c in by_dtype.values() if c["status"] == "skipped"}
        if (
            len(by_dtype) == len(dtypes)
            and all(c["status"] == "skipped" for c in by_dtype.values())
            and len(reasons) == 1
        ):
            lines.append(f"{target:{width}s}  skipped: {reasons.pop()}")
            continue
        cells = []
        for d in dtypes:
            c = by_dtype.get(d)
            if c is None:
                text = "-"
            elif c["status"] == "skipped":
                text = "skipped"
                notes.append(f"{target} {d}: skipped: {c['reason']}")
            else:
                mark = "pass" if c["status"] == "pass" else "FAIL"
                text = f"{mark} {c['worst']['error']:.1e}"
                for f in c["failures"][:5]:
                    extra = f" ({f['exception']})" if "exception" in f else ""
                    err = f"error {f['error']:.2e} > {f['tolerance']:.0e}"
                    notes.append(f"{target} {d}: {f['check']} {f['case']}: {err}{extra}")
            cells.append(f"{text:>{colw}s}")
        lines.append(f"{target:{width}s}  " + "  ".join(cells))
    lines.append("")
    lines.append(
        "cells: worst relative error of the cell's checks (reference cases, random sweep, native peer, "
        "fused linear)"
    )
    tols = report["tolerances"]
    tol = "; ".join(f"{d} {tols[d]['reference']:.0e} / {tols[d]['parity']:.0e}" for d in dtypes)
    lines.append(f"relative tolerances (reference / parity): {tol}")
    lines.extend(notes)
    lines.append(f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped")
    return "\n".join(lines)
