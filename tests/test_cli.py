"""The command line says what is wrong instead of a traceback, and never reports a false green."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest

import ls_xp


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ls_xp", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_version():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"ls-xp {ls_xp.__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("check", "--backend", "numpyy"), "invalid choice: 'numpyy'"),
        (("check", "--sweep", "-1"), "--sweep: must be a positive integer, got '-1'"),
        (("bench", "--pairs", "0"), "--pairs: must be a positive integer, got '0'"),
        (("bench", "--size", "huge"), "size must be one of"),
    ],
)
def test_bad_arguments_are_errors_not_tracebacks(args, message):
    out = _cli(*args)
    assert out.returncode == 2, out
    assert message in out.stderr and "Traceback" not in out.stderr


def test_check_that_runs_no_cell_fails():
    pytest.importorskip("numpy", reason="numpy is not installed")
    out = _cli("check", "--backend", "numpy", "--device", "no-such-device", "--sweep", "1")
    assert out.returncode == 1
    assert "no cell ran" in out.stderr


def test_check_reports_versions():
    pytest.importorskip("numpy", reason="numpy is not installed")
    import json

    out = _cli("check", "--backend", "numpy", "--dtype", "float64", "--sweep", "1", "--json")
    report = json.loads(out.stdout)
    assert report["versions"]["ls_xp"] == ls_xp.__version__ and "python" in report["versions"]
    assert report["devices"] == ["numpy/cpu"]
    assert report["passed"] > 0 and out.returncode == 0


def test_quick_check():
    pytest.importorskip("numpy", reason="numpy is not installed")
    import json

    out = _cli("check", "--backend", "numpy", "--quick", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["passed"] > 0
    assert {c["dtype"] for c in report["cells"]} == {"float32"}


def test_bench_reports_the_memory_faulted_in_per_call():
    """One small bench run in fresh processes: every row has its time, peak and the host
    memory faulted in per call (minor page faults), and the table shows that column."""
    pytest.importorskip("numpy", reason="numpy is not installed")
    import json

    out = _cli("bench", "--backend", "numpy", "--size", "64x10", "--repeats", "2", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["results"]
    assert {r["impl"] for r in rows} >= {"ls_xp", "numpy-inplace"}
    for r in rows:
        assert r["time_s"] > 0 and r["peak_bytes"] >= 0
        assert isinstance(r["faulted_bytes"], (int, float)) and r["faulted_bytes"] >= 0
    table = _cli("bench", "--backend", "numpy", "--size", "64x10", "--repeats", "1")
    header = [line for line in table.stdout.splitlines() if line.startswith("backend ")]
    assert table.returncode == 0 and len(header) == 1 and "faulted" in header[0]


_CELL_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+ \S+): (passed|FAILED|skipped) \(([^)]*)\)")


def test_check_prints_a_line_per_cell_when_stderr_is_not_a_terminal():
    """CI logs and pipes: one ``[i/N] target dtype: passed (1.2 s)`` line per cell, in report
    order, N the number of cells in the report, and stdout still pure JSON."""
    pytest.importorskip("numpy", reason="numpy is not installed")
    import json

    out = _cli("check", "--backend", "numpy", "--backend", "cupy", "--sweep", "1", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    lines = [m for m in map(_CELL_LINE.match, out.stderr.splitlines()) if m]
    n = len(report["cells"])
    assert n >= 5 and "\r" not in out.stderr
    assert [int(m[1]) for m in lines] == list(range(1, n + 1))
    assert {int(m[2]) for m in lines} == {n}
    assert [m[3] for m in lines] == [f"{c['target']} {c['dtype']}" for c in report["cells"]]
    said = {"pass": "passed", "fail": "FAILED", "skipped": "skipped"}
    assert [m[4] for m in lines] == [said[c["status"]] for c in report["cells"]]
    for m, c in zip(lines, report["cells"], strict=True):
        assert m[5] == c["reason"] if c["status"] == "skipped" else re.fullmatch(r"\d+\.\d s", m[5])
    assert re.search(rf"^ls-xp check: {n} cells in \d+\.\d s$", out.stderr, re.MULTILINE)


class _Stream(io.StringIO):
    """stderr as a test sees it: a terminal or not, and what was in it at each flush."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.flushed: list[str] = []

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_each_cell_line_is_flushed_when_the_cell_finishes(monkeypatch, capsys):
    """A cell's line reaches the log before the next cell starts, not at the end."""
    pytest.importorskip("numpy", reason="numpy is not installed")
    from ls_xp._tools import cli, conformance

    stream = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", stream)
    seen: list[str] = []
    real = conformance.check_cell

    def spy(tgt, dname, sweep):
        seen.append(stream.flushed[-1] if stream.flushed else "")
        return real(tgt, dname, sweep)

    monkeypatch.setattr(conformance, "check_cell", spy)
    assert cli.main(["check", "--backend", "numpy", "--dtype", "float32", "--dtype", "float64",
                     "--sweep", "1"]) == 0  # fmt: skip
    assert seen[0] == ""
    assert re.fullmatch(r"^\[1/2\] numpy/cpu float32: passed \(\d+\.\d s\)\n$", seen[1])
    assert "numpy/cpu" in capsys.readouterr().out  # the matrix stays on stdout


def test_check_on_a_terminal_overwrites_one_progress_line(monkeypatch, capsys):
    """A terminal gets ``\\r[i/N] checking ...`` redrawn in place: no line of its own per cell,
    the line cleared at the end, then how long the check took."""
    pytest.importorskip("numpy", reason="numpy is not installed")
    import json

    from ls_xp._tools import cli

    stream = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", stream)
    args = ["check", "--backend", "numpy", "--dtype", "float32", "--dtype", "float64", "--sweep", "1"]
    assert cli.main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = stream.getvalue()
    progress, _, summary = text.rpartition("\r")
    assert "\n" not in progress
    assert re.fullmatch(rf"ls-xp check: {len(report['cells'])} cells in \d+\.\d s\n", summary)
    draws = [d.rstrip() for d in progress.split("\r") if d.strip()]
    assert re.fullmatch(r"\[1/2\] checking numpy/cpu float32, \d+\.\d s elapsed", draws[0])
    assert re.fullmatch(r"\[2/2\] checking numpy/cpu float64, \d+\.\d s elapsed, ~\d+\.\d s left", draws[-2])
    assert re.fullmatch(r"\[2/2\] numpy/cpu float64: passed, \d+\.\d s elapsed, ~0\.0 s left", draws[-1])


def _event(index, status, **kw):
    from ls_xp._tools import conformance

    return conformance.CellProgress(index, 3, kw.pop("label", "torch/cpu float16"), status, 0.0, **kw)


def test_terminal_progress_ticks_keeps_failures_and_fits_the_width(monkeypatch):
    """While a cell runs the elapsed time is redrawn; a failure stays on its own line; the line
    never wraps (a wrapped line cannot be overwritten with ``\\r``)."""
    from ls_xp._tools import cli

    monkeypatch.setenv("COLUMNS", "40")  # a stream without a file descriptor: $COLUMNS, as shutil
    stream = _Stream(tty=True)
    printer = cli.CheckProgress(stream, tty=True, tick=0.01)
    label = "array_api_strict/no_float64 float32"
    printer(_event(1, "running", label=label))
    time.sleep(0.5)
    ticks = stream.getvalue().count("\r")
    fail = {"seconds": 2.0, "detail": "worst: sweep seed 1: error 1e-03 > 1e-05", "left": 4.0}
    printer(_event(1, "fail", label=label, **fail))
    printer(_event(2, "running", left=4.0))
    printer.close()
    text = stream.getvalue()
    assert ticks >= 3, text  # redrawn every 0.01 s for 0.5 s, with room for a busy machine
    draws = [d for line in text.split("\n") for d in line.split("\r")[1:] if "elapsed" in d]
    assert len(draws) > ticks and all(len(d) <= 39 for d in draws), draws
    assert "\n[1/3] array_api_strict/no_float64 float32: FAILED (2.0 s), worst: sweep seed 1" in (
        "\n" + text.replace("\r", "\n")
    )
    assert re.search(r"\rls-xp check: 1 of 3 cells in \d+\.\d s\n$", text)


def test_log_lines_say_the_result_time_and_reason():
    from ls_xp._tools import cli

    line = cli.CheckProgress.done_line
    assert line(_event(3, "pass", seconds=1.23)) == "[3/3] torch/cpu float16: passed (1.2 s)"
    assert line(_event(2, "skipped", detail="no CUDA device")) == (
        "[2/3] torch/cpu float16: skipped (no CUDA device)"
    )
    assert line(_event(1, "fail", seconds=75, detail="worst: x")) == (
        "[1/3] torch/cpu float16: FAILED (1 min 15 s), worst: x"
    )
    stream = _Stream(tty=False)
    printer = cli.CheckProgress(stream, tty=False)
    printer(_event(1, "running"))
    assert stream.getvalue() == ""  # a log gets finished cells only
    printer(_event(1, "pass", seconds=0.5))
    assert stream.flushed[-1] == "[1/3] torch/cpu float16: passed (0.5 s)\n"


def test_time_left_is_per_backend_and_says_when_it_is_a_lower_bound():
    """JAX cells take a hundred times a NumPy cell here: the estimate uses each backend's own
    mean and, while a backend still to come has not run, is shown as a lower bound."""
    from types import SimpleNamespace

    from ls_xp._tools import cli, conformance

    numpy, jax = SimpleNamespace(backend="numpy"), SimpleNamespace(backend="jax")
    rest = [(numpy, "float32", None), (numpy, "bfloat16", "no bfloat16"), (jax, "float32", None)]
    assert conformance._time_left(rest, {}) == (None, False)
    assert conformance._time_left(rest, {"numpy": [0.1, 0.3]}) == (pytest.approx(0.2), True)
    assert conformance._time_left(rest, {"numpy": [0.2], "jax": [20.0, 40.0]}) == (pytest.approx(30.2), False)
    stream = _Stream(tty=True)
    printer = cli.CheckProgress(stream, tty=True, tick=None)
    printer(_event(2, "running", left=30.0, left_at_least=True))
    assert re.search(r", over (29|30)\.\d s left$", printer.live_line())
    printer(_event(2, "running", left=0.5, left_at_least=True))
    assert printer.live_line().endswith(" elapsed")  # a lower bound under a second is no estimate
    printer(_event(2, "running", left=30.0))
    assert re.search(r", ~(29|30)\.\d s left$", printer.live_line())


def test_bench_ranks_runs_the_vocabulary_parallel_benchmark(monkeypatch):
    from ls_xp._tools import bench_ranks, cli

    seen = []
    monkeypatch.setattr(bench_ranks, "main", lambda argv: seen.append(list(argv)) or 0)
    args = cli.build_parser().parse_args(["bench", "--ranks", "2", "--json"])
    assert args.func(args) == 0
    assert seen == [["--ranks", "2", "--pairs", "3", "--repeats", "5", "--json"]]


def test_discovery_leaves_jax_64_bit_mode_alone():
    """Listing the backends does not switch jax_enable_x64: with it off, JAX's float64 cells
    are skipped, saying why (ls-xp check switches it on in its own process)."""
    pytest.importorskip("jax", reason="jax is not installed")
    import jax

    from ls_xp._tools import backends
    from tests._devices import jax_x64

    for enabled in (False, True):
        with jax_x64(enabled):
            cpu = [t for t in backends.discover(["jax"]) if isinstance(t, backends.Target)]
            assert cpu and jax.config.jax_enable_x64 is enabled
            for t in cpu:
                assert ("float64" in t.dtypes) is enabled
                assert t.skipped_dtypes == ({} if enabled else {"float64": "jax_enable_x64 is off"})


def test_check_runs_jax_float64_cells():
    """ls-xp check switches JAX's 64-bit mode on for its float64 cells."""
    pytest.importorskip("jax", reason="jax is not installed")
    out = _cli("check", "--backend", "jax", "--dtype", "float64", "--sweep", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith("jax/cpu"))
    assert "pass" in row and "skipped" not in row, row
