"""The command line says what is wrong instead of a traceback, and never reports a false green."""

from __future__ import annotations

import subprocess
import sys

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
