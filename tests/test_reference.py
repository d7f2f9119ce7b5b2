"""The reference table: values on every backend, stored exact values, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from ls_xp import reference
from ls_xp._tools import cli
from ls_xp._tools import conformance as _conformance


@pytest.mark.parametrize("case", reference.CASES, ids=lambda c: c.name)
def test_reference_case_on_every_backend(xb, fdtype, case):
    out = xb.np(case.run(xb.xp, dtype=xb.dtype(fdtype), device=xb.device))
    err = _conformance._relative(out, case.exact_values())
    tol = _conformance.TOLERANCES[fdtype]["reference"]
    assert err <= tol, f"{case.name} on {xb} {fdtype}: relative error {err:.3g}"


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
    assert reference.get("kl_example_sum").exact == "inf"
    assert set(reference.names()) == {c.name for c in reference.CASES}
    with pytest.raises(KeyError, match="no reference case 'nope'"):
        reference.get("nope")


def test_relative_error_treats_inf_and_nan_strictly():
    rel = _conformance._relative
    assert rel([math.inf], [math.inf]) == 0.0
    assert rel([1e300], [math.inf]) == math.inf
    assert rel([math.nan], [1.0]) == math.inf
    assert rel([1.0, 2.0], [1.0]) == math.inf
    assert rel([1.1], [1.0]) == pytest.approx(0.1)
    assert _conformance._grad_error([[1.0, 2.0]], [[1.0, 2.2]]) == pytest.approx(0.2 / 2.2)


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
    out = _cli("check", "--backend", "numpy", "--json", "--sweep", "4")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["failed"] == 0
    cells = {c["dtype"]: c for c in report["cells"]}
    assert cells["float64"]["status"] == "pass" and cells["float32"]["status"] == "pass"
    # reference cases + sweep + fused linear problems
    assert cells["float64"]["checks"] == len(reference.CASES) + 4 + _conformance.LINEAR_PROBLEMS
    assert cells["float64"]["worst_error"]["linear"] < 1e-12
    assert cells["bfloat16"]["status"] == "skipped" and "no bfloat16" in cells["bfloat16"]["reason"]
    table = _cli("check", "--backend", "numpy", "--backend", "cupy", "--sweep", "2")
    assert table.returncode == 0
    assert "numpy/cpu" in table.stdout and "passed, 0 failed" in table.stdout
    assert "cupy" in table.stdout and "skipped" in table.stdout
    assert "relative tolerances" in table.stdout


def test_check_device_filter():
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    report = _conformance.run(["array_api_strict"], ["device1"], ["float64"], sweep=2)
    assert [c["target"] for c in report["cells"]] == ["array_api_strict/device1"]
    assert report["cells"][0]["status"] == "pass"


def test_check_passes_on_every_array_api_strict_device():
    # the emulated devices (no float64, no 64-bit integers) are only run here and by
    # `ls-xp check`; every keyword of the sweep must work on each of them
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    report = _conformance.run(["array_api_strict"], None, ["float32", "float64"], sweep=12)
    ran = [c for c in report["cells"] if c["status"] != "skipped"]
    assert {c["target"] for c in ran} >= {"array_api_strict/no_x64", "array_api_strict/no_float64"}
    assert report["failed"] == 0, [c["failures"] for c in report["cells"] if c["status"] == "fail"]
    skipped = [c for c in report["cells"] if c["status"] == "skipped"]
    assert all(c["dtype"] == "float64" and "no float64" in c["reason"] for c in skipped)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_check_native_parity_runs_where_there_is_a_peer(backend):
    pytest.importorskip(backend, reason=f"{backend} is not installed")
    if backend == "jax":
        pytest.importorskip("optax", reason="optax is not installed (the JAX peer)")
    report = _conformance.run([backend], ["cpu"], ["float32"], sweep=4)
    cell = report["cells"][0]
    assert cell["status"] == "pass", cell["failures"]
    if backend == "numpy":
        assert cell["worst_error"]["native"] is None  # NumPy has no native implementation
    else:
        assert cell["checks"] == len(reference.CASES) + 4 + 4 + _conformance.LINEAR_PROBLEMS


def test_check_reports_a_wrong_fused_linear_gradient_as_failure(monkeypatch):
    """The linear check must be able to fail: scale the fused classifier gradient."""
    from ls_xp import _api

    real = _api.linear_loss_and_grad

    def off(*args, **kw):
        loss, gh, gw, gb = real(*args, **kw)
        return loss, gh, gw * 1.001, gb

    monkeypatch.setattr(_api, "linear_loss_and_grad", off)
    report = _conformance.run(["numpy"], None, ["float64"], sweep=1)
    cell = report["cells"][0]
    assert cell["status"] == "fail"
    assert {f["check"] for f in cell["failures"]} == {"linear"}


def test_check_reports_a_wrong_value_as_failure(monkeypatch):
    """The checker must be able to fail: corrupt one exact value and run it in-process."""
    bad = reference.get("notebook_mean")
    broken = type(bad)(**{**bad.__dict__, "exact": "1.2"})
    monkeypatch.setattr(reference, "CASES", (broken,))
    report = _conformance.run(["numpy"], None, ["float64"], sweep=1)
    assert report["failed"] == 1 and report["passed"] == 0
    assert report["cells"][0]["failures"][0]["case"] == "notebook_mean"
    assert cli.main(["check", "--backend", "numpy", "--dtype", "float64", "--sweep", "1"]) == 1


def test_check_reports_a_wrong_gradient_as_failure(monkeypatch):
    """Break the float32 gradient only: the sweep (a float64 evaluation is its reference)
    must catch it; the reference cases hold no gradients."""
    import ls_xp

    real = ls_xp.cross_entropy_grad

    def broken(x, *a, **k):
        g = real(x, *a, **k)
        return g * 1.001 if x.dtype == np.float32 else g

    monkeypatch.setattr(ls_xp, "cross_entropy_grad", broken)
    report = _conformance.run(["numpy"], None, ["float32"], sweep=3)
    assert report["failed"] == 1
    assert {f["check"] for f in report["cells"][0]["failures"]} == {"sweep"}
