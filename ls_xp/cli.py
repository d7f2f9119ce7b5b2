"""The ``ls-xp`` command line: ``reference``, ``check`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from ls_xp import reference

# Relative tolerance of a reference value, per dtype: the one place they are stated.
# float64 inputs are the decimal inputs rounded once, so a few ulp of the result are
# expected; float32/half inputs carry their own rounding of the inputs (~1 ulp of each
# input, amplified by the condition number of the case).
TOLERANCES: dict[str, float] = {
    "float64": 2e-15,
    "float32": 1e-6,
    "float16": 5e-3,
    "bfloat16": 4e-2,
}


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(u) for u in v) + "]"
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.6g}"


def _cmd_reference(args: argparse.Namespace) -> int:
    if args.name:
        try:
            cases = [reference.get(args.name)]
        except KeyError as exc:
            print(exc.args[0], file=sys.stderr)
            return 2
    else:
        cases = list(reference.CASES)
    if args.json:
        print(json.dumps([c.as_dict() for c in cases], indent=2, ensure_ascii=False))
        return 0
    if args.name:
        c = cases[0]
        for key, raw in c.as_dict().items():
            if key in ("inputs", "params"):
                shown = json.dumps(raw, ensure_ascii=False)
            elif key in ("printed", "exact"):
                shown = _fmt(raw)
            else:
                shown = raw
            if shown:
                print(f"{key:12s} {shown}")
        return 0
    width = max(len(c.name) for c in cases)
    print(f"{'name':{width}s}  {'function':14s}  {'printed by the source':28s}  exact")
    for c in cases:
        printed = _fmt(c.printed)
        exact = _fmt(c.exact_values())
        print(f"{c.name:{width}s}  {c.function:14s}  {printed[:28]:28s}  {exact}")
    return 0


def relative_error(got: Any, exact: Any) -> float:
    """Worst relative error of ``got`` (array-like) against ``exact`` (floats); inf matches
    only inf of the same sign, and NaN never matches."""
    import numpy as np

    g = np.asarray(got, dtype=np.float64).ravel()
    e = np.asarray(exact, dtype=np.float64).ravel()
    if g.shape != e.shape:
        return math.inf
    worst = 0.0
    for gv, ev in zip(g.tolist(), e.tolist(), strict=True):
        if math.isinf(ev) or math.isinf(gv) or math.isnan(gv):
            if gv != ev:
                return math.inf
            continue
        err = abs(gv - ev) / abs(ev) if ev != 0 else abs(gv)
        worst = max(worst, err)
    return worst


def run_check(backends: Sequence[str] | None, dtypes: Sequence[str], progress: bool) -> dict[str, Any]:
    """Evaluate every reference case on every backend/device/dtype; return a report."""
    from ls_xp import _backends

    results: list[dict[str, Any]] = []
    for tgt in _backends.discover(list(backends) if backends else None):
        if isinstance(tgt, _backends.Unavailable):
            results.append({"target": tgt.label, "dtype": None, "status": "skipped", "reason": tgt.reason})
            continue
        for dname in dtypes:
            if dname not in tgt.dtypes:
                reason = tgt.skipped_dtypes.get(dname, f"{tgt.backend} has no {dname}")
                results.append({"target": tgt.label, "dtype": dname, "status": "skipped", "reason": reason})
                continue
            dtype = tgt.dtypes[dname]
            tol = TOLERANCES[dname]
            for case in reference.CASES:
                if progress:
                    print(f"\r  {tgt.label} {dname} {case.name:32s}", end="", file=sys.stderr, flush=True)
                try:
                    out = tgt.to_numpy(case.run(tgt.xp, dtype=dtype, device=tgt.device))
                    err = relative_error(out, case.exact_values())
                    ok = err <= tol
                    results.append(
                        {
                            "target": tgt.label,
                            "dtype": dname,
                            "case": case.name,
                            "status": "pass" if ok else "fail",
                            "error": err,
                            "tolerance": tol,
                        }
                    )
                except Exception as exc:  # noqa: BLE001 - a crash is a failure of that cell
                    results.append(
                        {
                            "target": tgt.label,
                            "dtype": dname,
                            "case": case.name,
                            "status": "fail",
                            "error": None,
                            "tolerance": tol,
                            "exception": f"{type(exc).__name__}: {exc}",
                        }
                    )
    if progress:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)
    failed = sum(r["status"] == "fail" for r in results)
    passed = sum(r["status"] == "pass" for r in results)
    return {"tolerances": TOLERANCES, "results": results, "passed": passed, "failed": failed}


def _print_check(report: dict[str, Any], dtypes: Sequence[str]) -> None:
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    skipped: dict[str, str] = {}
    for r in report["results"]:
        if r["dtype"] is None:
            skipped[r["target"]] = r["reason"]
            continue
        rows.setdefault(r["target"], {}).setdefault(r["dtype"], []).append(r)
    names = [c.name for c in reference.CASES]
    width = max(len(n) for n in names)
    for target, by_dtype in rows.items():
        print(f"\n{target}")
        print(f"  {'case':{width}s}  " + "  ".join(f"{d:>22s}" for d in dtypes))
        for name in names:
            cells = []
            for d in dtypes:
                cell = "-"
                for r in by_dtype.get(d, []):
                    if r["status"] == "skipped":
                        cell = "skipped"
                    elif r.get("case") == name:
                        if r["error"] is None:
                            cell = "FAIL (raised)"
                        else:
                            mark = "pass" if r["status"] == "pass" else "FAIL"
                            cell = f"{mark} {r['error']:.1e}"
                cells.append(f"{cell:>22s}")
            print(f"  {name:{width}s}  " + "  ".join(cells))
        for d in dtypes:
            for r in by_dtype.get(d, []):
                if r["status"] == "skipped":
                    print(f"  {d}: skipped: {r['reason']}")
                elif "exception" in r:
                    print(f"  {d} {r['case']}: {r['exception']}")
    for target, reason in skipped.items():
        print(f"\n{target}: skipped: {reason}")
    tol = ", ".join(f"{d} {report['tolerances'][d]:.0e}" for d in dtypes)
    print(f"\nrelative tolerances: {tol}")
    print(f"{report['passed']} passed, {report['failed']} failed")


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("ls-xp check compares results with NumPy: pip install 'ls_xp[numpy]'", file=sys.stderr)
        return 2
    dtypes = args.dtype or ["float32", "float64"]
    report = run_check(args.backend, dtypes, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_check(report, dtypes)
    return 1 if report["failed"] else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ls_xp import _bench

    def progress(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    report = _bench.run_bench(args.backend, args.size or ["small", "medium"], args.repeats, progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_bench.format_report(report))
    if args.plot:
        _bench.plot(report, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 1 if any("error" in r for r in report["results"]) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ls-xp", description="Label-smoothed cross-entropy for every array library."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_ref = sub.add_parser("reference", help="show the reference cases and their exact values")
    p_ref.add_argument("name", nargs="?", help="one case by name (default: the table of all)")
    p_ref.add_argument("--json", action="store_true", help="machine-readable output")
    p_ref.set_defaults(func=_cmd_reference)
    p_chk = sub.add_parser("check", help="evaluate every reference case on every installed backend")
    p_chk.add_argument("--backend", action="append", help="only this backend (repeatable)")
    p_chk.add_argument(
        "--dtype", action="append", choices=list(TOLERANCES), help="only this dtype (repeatable)"
    )
    p_chk.add_argument("--json", action="store_true", help="machine-readable output")
    p_chk.set_defaults(func=_cmd_check)
    p_b = sub.add_parser("bench", help="time and peak memory of loss + gradient against the peers")
    p_b.add_argument("--backend", action="append", choices=["numpy", "torch", "jax"], help="repeatable")
    p_b.add_argument("--size", action="append", choices=["small", "medium", "large"], help="repeatable")
    p_b.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p_b.add_argument("--json", action="store_true", help="machine-readable output")
    p_b.add_argument("--plot", metavar="FILE.png", help="draw time and memory per backend and size")
    p_b.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
