"""The reference table: values on every backend, stored exact values, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ls_xp import cli, reference


@pytest.mark.parametrize("case", reference.CASES, ids=lambda c: c.name)
def test_reference_case_on_every_backend(xb, fdtype, case):
    out = xb.np(case.run(xb.xp, dtype=xb.dtype(fdtype), device=xb.device))
    err = cli.relative_error(out, case.exact_values())
    assert err <= cli.TOLERANCES[fdtype], f"{case.name} on {xb} {fdtype}: relative error {err:.3g}"


@pytest.mark.parametrize("case", [c for c in reference.CASES if c.printed is not None], ids=lambda c: c.name)
def test_printed_values_agree_with_exact(case):
    """What the source prints is the exact value rounded to the digits it shows."""
    printed = np.asarray(case.printed, dtype=float)
    exact = np.asarray(case.exact_values(), dtype=float)
    np.testing.assert_allclose(exact, printed, rtol=0, atol=5e-5)


@pytest.mark.parametrize("case", reference.CASES, ids=lambda c: c.name)
def test_stored_exact_values_recomputed_with_mpmath(case):
    pytest.importorskip("mpmath", reason="mpmath is not installed")
    assert reference.compute_exact(case) == case.exact


def test_notebook_values_are_the_ones_in_the_brief():
    assert round(reference.get("notebook_ce").exact_values(), 4) == 1.1576
    assert round(reference.get("notebook_mean").exact_values(), 4) == 1.1826
    assert round(reference.get("notebook_sum").exact_values(), 4) == 4.7304
    assert [round(v, 4) for v in reference.get("notebook_none").exact_values()] == [
        2.3076, 0.5076, 1.4076, 0.5076,
    ]  # fmt: skip


def test_lookup_by_name_and_unknown_name():
    assert reference.get("seed004_kl_sum").exact == "inf"
    assert set(reference.names()) == {c.name for c in reference.CASES}
    with pytest.raises(KeyError, match="no reference case 'nope'"):
        reference.get("nope")


def test_relative_error_treats_inf_and_nan_strictly():
    assert cli.relative_error([math.inf], [math.inf]) == 0.0
    assert cli.relative_error([1e300], [math.inf]) == math.inf
    assert cli.relative_error([math.nan], [1.0]) == math.inf
    assert cli.relative_error([1.0, 2.0], [1.0]) == math.inf
    assert cli.relative_error([1.1], [1.0]) == pytest.approx(0.1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ls_xp", *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_cli_reference_table_and_json():
    out = _cli("reference")
    assert out.returncode == 0, out.stderr
    for case in reference.CASES:
        assert case.name in out.stdout
    one = _cli("reference", "notebook_sum", "--json")
    assert one.returncode == 0
    data = json.loads(one.stdout)
    assert data[0]["name"] == "notebook_sum" and data[0]["printed"] == 4.7304
    assert data[0]["exact"] == reference.get("notebook_sum").exact
    bad = _cli("reference", "nope")
    assert bad.returncode == 2 and "no reference case" in bad.stderr


def test_cli_check_passes_and_reports_json():
    out = _cli("check", "--backend", "numpy", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["failed"] == 0
    assert report["passed"] == 2 * len(reference.CASES)
    assert {r["dtype"] for r in report["results"]} == {"float32", "float64"}
    table = _cli("check", "--backend", "numpy", "--backend", "cupy")
    assert table.returncode == 0
    assert "numpy/cpu" in table.stdout and "passed, 0 failed" in table.stdout
    assert "cupy" in table.stdout and "skipped" in table.stdout


def test_check_reports_a_wrong_value_as_failure(monkeypatch):
    """The checker must be able to fail: corrupt one exact value and run it in-process."""
    bad = reference.get("notebook_mean")
    broken = type(bad)(**{**bad.__dict__, "exact": "1.2"})
    monkeypatch.setattr(reference, "CASES", (broken,))
    report = cli.run_check(["numpy"], ["float64"], progress=False)
    assert report["failed"] == 1 and report["passed"] == 0
    monkeypatch.setattr(cli.reference, "CASES", (broken,))
    assert cli.main(["check", "--backend", "numpy", "--dtype", "float64"]) == 1
