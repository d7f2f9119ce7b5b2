"""The documentation site builds with warnings as errors (what ``nox -s docs`` runs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_parser") is None,
    reason="sphinx and myst-parser are not installed (pip install 'ls_xp[docs]')",
)
def test_docs_build_without_warnings(tmp_path):
    if not (ROOT / "docs" / "conf.py").exists():
        pytest.skip("docs/ is not next to the tests (an installed copy of the tests)")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the API reference documents the PyTorch modules: torch is not installed")
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", "docs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "api.html").read_text(encoding="utf-8")
    names = ("cross_entropy", "loss_and_grad", "kl_divergence", "smooth_labels", "CrossEntropyLoss",
             "linear_cross_entropy", "linear_loss_and_grad", "LinearCrossEntropyLoss")  # fmt: skip
    for name in names:
        assert name in api
    assert "GPUs, compilers" in (tmp_path / "guide.html").read_text(encoding="utf-8")
