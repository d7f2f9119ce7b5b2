"""The project's own promises about itself: CI runs the README's command, the core imports
no framework, the code is ruff-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_ci_runs_the_readme_test_command_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci
    assert "pytest" in commands[1] and "ls-xp" in commands[0]


def test_core_imports_no_framework():
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import ls_xp, ls_xp.reference
bad = [m for m in ("torch", "jax", "dask", "cupy", "array_api_strict") if m in sys.modules]
assert not bad, bad
tools = [m for m in sys.modules if m.startswith("ls_xp._tools")]
assert not tools, tools  # the library never imports the command's tooling
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("module", ["_math.py", "_evaluate.py", "_linear.py", "_validate.py", "_plan.py"])
def test_core_module_names_no_framework(module):
    src = (ROOT / "ls_xp" / module).read_text(encoding="utf-8")
    for name in ("numpy", "torch", "jax", "dask", "cupy", "array_api_strict"):
        assert not re.search(rf"^\s*(import|from)\s+{name}\b", src, re.M), name


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed")  # fmt: skip
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run(
            [ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr
