"""The public API is typed: mypy and pyright are clean on the package, and a type checker
sees the logits' array type in what the losses return (not ``Any``)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = """
import numpy as np
import ls_xp

x = np.zeros((4, 3))
y = np.array([0, 1, 2, 0])
reveal_type(ls_xp.cross_entropy(x, y, 0.1))
reveal_type(ls_xp.loss_and_grad(x, y))
"""
TORCH_SNIPPET = """
import torch
import ls_xp

reveal_type(ls_xp.cross_entropy_grad(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])))
"""


def _run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


# the package imports every framework somewhere (adapters, tooling): a type checker needs them all
FRAMEWORKS_MISSING = [m for m in ("numpy", "torch", "jax") if importlib.util.find_spec(m) is None]
MISSING = FRAMEWORKS_MISSING + (["mypy"] if importlib.util.find_spec("mypy") is None else [])
needs_mypy = pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")


@pytest.mark.slow
@needs_mypy
def test_mypy_is_clean():
    out = _run([sys.executable, "-m", "mypy"])  # settings: [tool.mypy] in pyproject.toml
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
@needs_mypy
def test_return_types_follow_the_logits(tmp_path):
    snippets = [(SNIPPET, ["ndarray", "tuple[numpy.ndarray"])]
    if importlib.util.find_spec("torch") is not None:
        snippets.append((TORCH_SNIPPET, ["torch._tensor.Tensor"]))
    for i, (code, expected) in enumerate(snippets):
        path = tmp_path / f"reveal_{i}.py"
        path.write_text(code)
        out = _run([sys.executable, "-m", "mypy", "--no-incremental", str(path)])
        revealed = [line for line in out.stdout.splitlines() if "Revealed type" in line]
        assert revealed, out.stdout + out.stderr
        for line, want in zip(revealed, expected, strict=False):
            assert want in line and '"Any"' not in line, line


def _pyright() -> str | None:
    exe = shutil.which("pyright") or str(Path(sys.executable).parent / "pyright")
    return exe if Path(exe).exists() or shutil.which("pyright") else None


@pytest.mark.slow
@pytest.mark.skipif(_pyright() is None, reason="pyright is not installed")
@pytest.mark.skipif(bool(FRAMEWORKS_MISSING), reason=f"not installed: {', '.join(FRAMEWORKS_MISSING)}")
def test_pyright_is_clean():
    exe = _pyright()
    assert exe is not None
    version = _run([exe, "--version"])
    if version.returncode != 0:  # the PyPI wrapper fetches pyright itself (needs Node.js)
        pytest.skip(f"pyright could not start: {(version.stdout + version.stderr).strip()[-300:]}")
    out = _run([exe, "--pythonpath", sys.executable])  # settings: [tool.pyright] in pyproject.toml
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 errors, 0 warnings" in out.stdout, out.stdout
