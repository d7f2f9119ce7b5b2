"""The README's ``>>>`` examples and the docstring examples run, and print what they say.
(The docs pages' examples run in ``tests/test_docs.py``.)"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import ls_xp

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
README = ROOT / "README.md"
NEEDS = {"ls_xp.torch": "torch", "ls_xp.jax": "jax"}  # modules (and their submodules) -> library


def _modules() -> list[str]:
    found = [ls_xp.__name__]
    for info in pkgutil.walk_packages(ls_xp.__path__, prefix="ls_xp."):
        # the command's tooling is tested on its own; __main__ runs the command when imported
        if not info.name.startswith("ls_xp._tools") and info.name != "ls_xp.__main__":
            found.append(info.name)
    return sorted(found)


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "jax")),
    reason="the README's examples use torch and jax, which are not both installed",
)
def test_readme_examples():
    if not README.exists():
        pytest.skip("README.md is not next to the tests (an installed copy of the tests)")
    result = doctest.testfile(str(README), module_relative=False, optionflags=FLAGS, verbose=False)
    assert result.attempted >= 20, result
    assert result.failed == 0, result


def test_readme_is_short_and_has_no_history():
    if not README.exists():
        pytest.skip("README.md is not next to the tests (an installed copy of the tests)")
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert not re.search(r"\bwas\b[^.]*\bthen\b", text), "benchmark history belongs in docs/benchmarks.md"
    assert "source notebook" not in text  # "the original notebook", introduced as such
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]*)", text):
        assert (ROOT / link).exists(), link


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples(module):
    for prefix, library in NEEDS.items():
        inside = module == prefix or module.startswith(prefix + ".")
        if inside and importlib.util.find_spec(library) is None:
            pytest.skip(f"{library} is not installed")
    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS, verbose=False)
    assert result.failed == 0, result


@pytest.mark.parametrize("module", ["ls_xp._api", "ls_xp.reference"])
def test_public_docstrings_have_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=FLAGS, verbose=False)
    assert result.attempted > 0, result
