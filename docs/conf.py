"""Sphinx configuration: the user guide (the README, through MyST) and the API reference
(autodoc + napoleon from the NumPy-style docstrings). Built with warnings as errors by
``nox -s docs`` and by ``tests/test_docs.py``."""

from __future__ import annotations

import ls_xp

project = "ls_xp"
author = "the ls_xp developers"
copyright = "2026, the ls_xp developers"
release = version = ls_xp.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
autodoc_typehints = "none"  # the signatures carry them; the docstrings say the rest
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "image.nonlocal_uri"]  # the README's plot has an absolute URL
html_theme = "alabaster"
