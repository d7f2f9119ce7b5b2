"""The ``ls-xp`` command line: ``reference``, ``check`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ls_xp import __version__, reference

if TYPE_CHECKING:
    from ls_xp._tools import conformance

# the backends `check` knows (ls_xp._tools.backends.BACKEND_NAMES, which needs NumPy to import)
BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "dask", "cupy")


def versions() -> dict[str, str]:
    """ls_xp, Python and every installed array library, for reports that must be traceable."""
    import importlib.metadata
    import platform

    out = {"ls_xp": __version__, "python": platform.python_version()}
    for dist in ("numpy", "array-api-compat", "array-api-extra", "array-api-strict", "torch", "jax",
                 "jaxlib", "optax", "dask", "cupy"):  # fmt: skip
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


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


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


_SAID = {"pass": "passed", "fail": "FAILED", "skipped": "skipped"}


class CheckProgress:
    """The progress of ``ls-xp check`` on ``stream`` (stderr, so that stdout stays parseable).

    On a terminal: one line, overwritten in place, with the cell being checked, ``[i/N]``, the
    elapsed time and an estimate of the time left, redrawn every ``tick`` seconds while a cell
    runs; failures stay on screen. Elsewhere (CI logs, pipes): one flushed line per finished cell.
    """

    def __init__(self, stream: TextIO, tty: bool, tick: float | None = 1.0) -> None:
        self.stream, self.tty, self.tick = stream, tty, tick
        self._t0 = time.monotonic()
        self._event: conformance.CellProgress | None = None
        self._since = self._t0  # when the current event came
        self._width = 0  # of the line now on screen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, event: conformance.CellProgress) -> None:
        with self._lock:
            self._event, self._since = event, time.monotonic()
            if not self.tty:
                if event.status != "running":
                    print(self.done_line(event), file=self.stream, flush=True)
                return
            if event.status == "fail":
                self._clear()
                print(self.done_line(event), file=self.stream, flush=True)
            self._draw()
        if self.tick and self._ticker is None and event.status == "running":
            self._ticker = threading.Thread(target=self._tick, name="ls-xp check progress", daemon=True)
            self._ticker.start()

    @staticmethod
    def done_line(event: conformance.CellProgress) -> str:
        """``[3/40] torch/cpu float32: passed (1.2 s)``, for logs."""
        said = _SAID.get(event.status, event.status)
        if event.status == "skipped":
            return f"[{event.index}/{event.total}] {event.label}: skipped ({event.detail})"
        tail = f", {event.detail}" if event.detail else ""
        return f"[{event.index}/{event.total}] {event.label}: {said} ({_duration(event.seconds)}){tail}"

    def live_line(self, width: int = 200) -> str:
        """``[3/40] checking torch/cpu float32, 12.5 s elapsed, ~40.0 s left``, for a terminal;
        at most ``width`` characters, the label shortened first (the count and times matter more)."""
        e = self._event
        if e is None:
            return ""
        now = time.monotonic()
        what = f"checking {e.label}" if e.status == "running" else f"{e.label}: {_SAID[e.status]}"
        head, tail = f"[{e.index}/{e.total}] ", f", {_duration(now - self._t0)} elapsed"
        left = None if e.left is None else max(e.left - (now - self._since), 0.0)
        if left is not None and not (e.left_at_least and left < 1.0):  # "over 0.2 s" says nothing
            tail += f", {'over ' if e.left_at_least else '~'}{_duration(left)} left"
        room = width - len(head) - len(tail)
        if len(what) > room:
            what = what[: max(room - 3, 0)] + "..."
        return (head + what + tail)[:width]

    def _draw(self) -> None:
        line = self.live_line(self._columns() - 1)
        print("\r" + line.ljust(self._width), end="", file=self.stream, flush=True)
        self._width = len(line)

    def _clear(self) -> None:
        if self._width:
            print("\r" + " " * self._width + "\r", end="", file=self.stream, flush=True)
            self._width = 0

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):  # not a real file: $COLUMNS, stdout or 80
            columns = shutil.get_terminal_size().columns
        return columns if columns > 10 else 80

    def _tick(self) -> None:
        assert self.tick is not None
        while not self._stop.wait(self.tick):
            with self._lock:
                if self._event is not None and self._event.status == "running":
                    self._draw()

    def close(self) -> None:
        """Stop redrawing, clear the line and say how long the whole check took."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self.tty:
                self._clear()
            if self._event is not None:
                e, took = self._event, _duration(time.monotonic() - self._t0)
                done = e.index if e.status != "running" else e.index - 1
                cells = f"{e.total}" if done == e.total else f"{done} of {e.total}"
                print(f"ls-xp check: {cells} cells in {took}", file=self.stream, flush=True)


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("ls-xp check compares results with NumPy: pip install 'ls_xp[numpy]'", file=sys.stderr)
        return 2
    from ls_xp._tools import backends as _backends
    from ls_xp._tools import conformance as _conformance

    _backends.enable_jax_x64(args.backend)  # (the float64 cells; this process is the CLI's)
    dtypes: list[str] = args.dtype or (["float32"] if args.quick else list(_conformance.DTYPES))
    if args.quick:
        args.sweep = min(args.sweep, 2)
    progress = CheckProgress(sys.stderr, sys.stderr.isatty())
    try:
        report = _conformance.run(args.backend, args.device, dtypes, args.sweep, progress)
    finally:
        progress.close()
    report["versions"] = versions()
    report["devices"] = sorted({c["target"] for c in report["cells"] if c["status"] != "skipped"})
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(" ".join(f"{k} {v}" for k, v in report["versions"].items()))
        print("devices checked: " + (", ".join(report["devices"]) or "none"))
        print(_conformance.format_matrix(report, dtypes))
    if report["passed"] == 0 and report["failed"] == 0:
        wanted = ", ".join(args.device or []) or "any"
        print(
            f"ls-xp check: no cell ran (devices matching: {wanted}); nothing was checked",
            file=sys.stderr,
        )
        return 1
    return 1 if report["failed"] else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.ranks is not None:  # the vocabulary-parallel loss on R gloo processes
        from ls_xp._tools import bench_ranks

        flags = [
            "--ranks",
            str(args.ranks),
            "--pairs",
            str(max(args.pairs, 3) if args.pairs == 1 else args.pairs),
        ]
        return bench_ranks.main([*flags, "--repeats", str(args.repeats), *(["--json"] if args.json else [])])
    from ls_xp._tools import bench as _bench

    def progress(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            print("ls-xp bench --plot needs matplotlib: pip install 'ls_xp[plot]'", file=sys.stderr)
            return 2
    sizes = args.size or ["small", "medium"]
    for size in sizes:
        try:
            _bench.parse_size(size)
        except ValueError as exc:
            print(f"ls-xp bench: {exc}", file=sys.stderr)
            return 2
    report = _bench.run_bench(
        args.backend, sizes, args.repeats, progress,
        pairs=args.pairs, dtype=args.dtype, device=args.device, busy=args.busy, only=args.impl,
    )  # fmt: skip
    report["versions"] = versions()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(" ".join(f"{k} {v}" for k, v in report["versions"].items()))
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
    parser.add_argument("--version", action="version", version=f"ls-xp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_reference(sub)
    _add_check(sub)
    _add_bench(sub)
    return parser


def _add_reference(sub: Any) -> None:
    p_ref = sub.add_parser(
        "reference",
        help="show the reference cases and their exact values",
        description="The worked examples of the source documents, with their exact (mpmath) values.",
    )
    p_ref.add_argument("name", nargs="?", help="one case by name (default: the table of all)")
    p_ref.add_argument("--json", action="store_true", help="machine-readable output")
    p_ref.set_defaults(func=_cmd_reference)


def _add_check(sub: Any) -> None:
    p_chk = sub.add_parser(
        "check",
        help="the conformance matrix: every backend, device and dtype against the reference values",
        description="Run the reference cases, a seeded random sweep, parity with each backend's own "
        "loss and the fused linear loss against the unfused one on every installed backend, device and "
        "dtype. Exit status 1 on any failure, or when no "
        "cell ran. Progress goes to stderr: one line per cell, or one line redrawn on a terminal. About "
        "3 minutes on a 2-core CPU, most of it JAX compiling; --quick about 20 seconds.",
        epilog="examples:\n  ls-xp check --quick\n  ls-xp check --backend torch --device cuda --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_chk.add_argument("--backend", action="append", choices=BACKENDS, help="only this backend (repeatable)")
    p_chk.add_argument(
        "--device", action="append", help="only devices whose label contains this (repeatable)"
    )
    p_chk.add_argument(
        "--dtype", action="append", choices=["float16", "bfloat16", "float32", "float64"], help="repeatable"
    )
    p_chk.add_argument(
        "--sweep", type=_positive_int, default=12, help="random problems per cell (default 12)"
    )
    p_chk.add_argument(
        "--quick", action="store_true", help="a first look: float32 only, 2 random problems per cell"
    )
    p_chk.add_argument("--json", action="store_true", help="machine-readable output")
    p_chk.set_defaults(func=_cmd_check)


def _add_bench(sub: Any) -> None:
    p_b = sub.add_parser(
        "bench",
        help="time and peak memory of loss + gradient against the peers",
        description="Time, peak memory (host and device) and, for PyTorch, operations and host syncs of "
        "loss + gradient, ls_xp against each backend's peers, each measurement in a fresh process.",
        epilog="examples:\n  ls-xp bench --backend numpy --size medium\n"
        "  ls-xp bench --backend torch --size busy --pairs 3 --busy\n"
        "  ls-xp bench --backend torch --device cuda --dtype bfloat16 --size xlarge\n"
        "  ls-xp bench --size linear --pairs 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_b.add_argument("--backend", action="append", choices=["numpy", "torch", "jax"], help="repeatable")
    p_b.add_argument(
        "--size",
        action="append",
        help="the loss from N x K logits: small (64x10), busy (2048x32000), medium (4096x32000), "
        "large (2048x131072), wide (8192x65536), xlarge (8192x131072) or NxK; the linear workload "
        "(hidden N x D, classifier V x D, fused against the matmul and then the loss): linear-small "
        "(512x64x4096), linear (4096x256x32768) or NxDxV; repeatable (default: small, medium)",
    )
    p_b.add_argument(
        "--impl",
        action="append",
        help="only these implementations (repeatable), e.g. ls_xp-options and ls_xp at --size linear",
    )
    p_b.add_argument("--repeats", type=_positive_int, default=5, help="timed runs per measurement (median)")
    p_b.add_argument(
        "--pairs",
        type=_positive_int,
        default=1,
        help="alternating ls_xp/peer rounds, each in fresh processes (median ratio)",
    )
    p_b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="logits dtype")
    p_b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, gpu (JAX), ... (default cpu)")
    p_b.add_argument("--busy", action="store_true", help="keep one core busy with a spinning process")
    p_b.add_argument(
        "--ranks",
        type=_positive_int,
        default=None,
        help="R gloo processes on 127.0.0.1: the vocabulary-parallel loss against one process and "
        "torch's loss_parallel (per-rank peak memory and time; --pairs defaults to 3 here)",
    )
    p_b.add_argument("--json", action="store_true", help="machine-readable output")
    p_b.add_argument("--plot", metavar="FILE.png", help="draw time and memory per backend and size")
    p_b.set_defaults(func=_cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
