"""Sphinx configuration: the user guide (MyST markdown pages) and the API reference
(autodoc + napoleon from the NumPy-style docstrings). Built with warnings as errors by
``nox -s docs`` and by ``tests/test_docs.py``; the ``>>>`` examples of the pages run in
``tests/test_docs.py`` too."""

from __future__ import annotations

import re
from typing import Any

import ls_xp

project = "ls_xp"
author = "the ls_xp developers"
copyright = "2026, the ls_xp developers"
release = version = ls_xp.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
autodoc_typehints = "none"  # the signatures carry them; the docstrings say the rest
autodoc_member_order = "bysource"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = "ls_xp"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": []}

# The shared parameter entries of the docstrings end with 'See "NAME" in the parameters
# guide.' (plain text for help()); on the site that sentence links to the section of
# docs/parameters.md: the label (param-NAME)= for a parameter, (NAME)= for the sections
# with a hyphenated name (bad-input, non-finite).
_SEE = re.compile(r'See\s+"([\w-]+)"\s+in\s+the\s+parameters\s+guide\.')


def _see(match: re.Match[str]) -> str:
    name = match.group(1)
    label = name if "-" in name else f"param-{name}"
    title = name.replace("-", " ") if "-" in name else name
    return f"See :ref:`{title} <{label}>` in the parameters guide."


def _link_parameters(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    text = _SEE.sub(_see, "\n".join(lines))  # a sentence may wrap over two lines
    lines[:] = text.split("\n")


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _link_parameters)
