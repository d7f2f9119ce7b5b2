"""The README's ``>>>`` examples and the docstring examples run, and print what they say."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "jax")),
    reason="the README's examples use torch and jax, which are not both installed",
)
def test_readme_examples():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not next to the tests (an installed copy of the tests)")
    result = doctest.testfile(str(readme), module_relative=False, optionflags=FLAGS, verbose=False)
    assert result.attempted >= 15, result
    assert result.failed == 0, result


@pytest.mark.parametrize("module", ["ls_xp._core", "ls_xp._api", "ls_xp.torch", "ls_xp.reference"])
def test_docstring_examples(module):
    if module == "ls_xp.torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
