"""The documentation site: every page's ``>>>`` examples run and print what they say, and
the site builds with warnings as errors (what ``nox -s docs`` runs)."""

from __future__ import annotations

import doctest
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")) if DOCS.exists() else []
LIBRARIES = ("torch", "jax", "dask")  # a page whose examples import one of them needs it


def _needs(text: str) -> list[str]:
    found = re.findall(r"^(?:>>>|\.\.\.) .*?\bimport ([\w, .]+)", text, flags=re.MULTILINE)
    mods = {m.strip().split(".")[0] for line in found for m in line.split(",")}
    return sorted(m for m in mods if m in LIBRARIES)


def test_pages_are_found():
    if not DOCS.exists():
        pytest.skip("docs/ is not next to the tests (an installed copy of the tests)")
    assert len(PAGES) >= 10, PAGES


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(page):
    text = (DOCS / page).read_text(encoding="utf-8")
    missing = [m for m in _needs(text) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the page's examples use {', '.join(missing)}, not installed")
    result = doctest.testfile(str(DOCS / page), module_relative=False, optionflags=FLAGS, verbose=False)
    assert result.failed == 0, result


def test_every_page_is_in_a_toctree():
    if not DOCS.exists():
        pytest.skip("docs/ is not next to the tests (an installed copy of the tests)")
    listed = set()
    for page in [*DOCS.rglob("*.md"), *DOCS.rglob("*.rst")]:
        for block in re.findall(r"```\{toctree\}(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            base = page.parent.relative_to(DOCS)
            for entry in (raw.strip() for raw in block.splitlines()):
                if entry and not entry.startswith(":"):
                    listed.add((base / entry).as_posix())
    sources = [*DOCS.rglob("*.md"), *DOCS.rglob("*.rst")]
    pages = {p.relative_to(DOCS).with_suffix("").as_posix() for p in sources}
    assert pages - listed - {"index"} == set()


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("sphinx", "myst_parser", "pydata_sphinx_theme")),
    reason="sphinx, myst-parser or pydata-sphinx-theme is not installed (pip install 'ls_xp[docs]')",
)
def test_docs_build_without_warnings(tmp_path):
    if not (DOCS / "conf.py").exists():
        pytest.skip("docs/ is not next to the tests (an installed copy of the tests)")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the API reference documents the PyTorch modules: torch is not installed")
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", "docs", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    api = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "api").glob("*.html"))
    names = ("cross_entropy", "loss_and_grad", "kl_divergence", "smooth_labels", "mixup_targets",
             "CrossEntropyLoss", "linear_cross_entropy", "linear_loss_and_grad",
             "LinearCrossEntropyLoss")  # fmt: skip
    for name in names:
        assert name in api, name
    # the shared parameters are documented once, on the parameters page, and linked to
    losses = (tmp_path / "api" / "losses.html").read_text(encoding="utf-8")
    assert 'href="../parameters.html#param-chunk-size"' in losses
    for rule in ("torch.set_num_threads", "2**19", "CUDA-graph"):  # long rules: the parameters page
        assert rule not in losses, rule
    # rendered math, and the benchmark plot shipped as a local image
    assert "math notranslate" in (tmp_path / "parameters.html").read_text(encoding="utf-8")
    bench = (tmp_path / "benchmarks.html").read_text(encoding="utf-8")
    assert re.search(r'<img [^>]*src="_images/bench\.png"', bench), "the plot is not a local image"
    assert (tmp_path / "_images" / "bench.png").stat().st_size > 10_000
    assert "GPUs, compilers" in (tmp_path / "plans.html").read_text(encoding="utf-8")
    for example in ("train_torch", "train_jax", "train_numpy", "evaluate_dask"):
        assert (tmp_path / "examples" / f"{example}.html").exists(), example
