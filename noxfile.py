"""Per-backend isolated test sessions: ``nox -s numpy``, ``nox -s torch``, ...

Each session creates a fresh virtual environment, installs the project with only that
backend (``backends/NAME.txt``) plus the test tools, proves that the install imports no
other framework, runs ``ls-xp check`` for that backend and then the test suite, in which
every other backend is skipped with "not installed".
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["numpy", "array_api_strict", "torch", "jax", "dask"]

# backend name -> requirements file; the modules that must NOT be imported by `import ls_xp`
BACKENDS = {
    "numpy": "numpy.txt",
    "array_api_strict": "array-api-strict.txt",
    "torch": "torch.txt",
    "jax": "jax.txt",
    "dask": "dask.txt",
}
FRAMEWORKS = ("torch", "jax", "dask", "cupy", "array_api_strict")

# The oldest versions pyproject.toml declares (keep the two in step).
OLDEST = ["array-api-compat==1.12.0", "array-api-extra==0.8.0", "numpy==1.26.4"]

NO_FOREIGN_IMPORTS = (
    "import sys, ls_xp, ls_xp.reference, ls_xp._tools.backends; "
    "bad = [m for m in {mods!r} if m in sys.modules]; "
    "assert not bad, f'importing ls_xp pulled in {{bad}}'; print('imports OK')"
)


def _run_backend(session: nox.Session, backend: str) -> None:
    session.install("-r", f"backends/{BACKENDS[backend]}", "-e", ".[test]")
    session.run("python", "-c", NO_FOREIGN_IMPORTS.format(mods=FRAMEWORKS))
    session.run("ls-xp", "check", "--backend", backend, "--sweep", "6")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session(name="numpy")
def numpy_only(session: nox.Session) -> None:
    """NumPy alone: the minimal install."""
    _run_backend(session, "numpy")


@nox.session(name="array_api_strict")
def strict(session: nox.Session) -> None:
    _run_backend(session, "array_api_strict")


@nox.session(name="torch")
def torch(session: nox.Session) -> None:
    _run_backend(session, "torch")


@nox.session(name="jax")
def jax(session: nox.Session) -> None:
    _run_backend(session, "jax")


@nox.session(name="dask")
def dask(session: nox.Session) -> None:
    _run_backend(session, "dask")


@nox.session(name="oldest")
def oldest(session: nox.Session) -> None:
    """The oldest declared versions of the core dependencies, with NumPy."""
    session.install(*OLDEST)
    session.install("--no-deps", "-e", ".")
    session.install("pytest", "hypothesis", "mpmath")
    session.run("python", "-c", NO_FOREIGN_IMPORTS.format(mods=FRAMEWORKS))
    session.run("ls-xp", "check", "--backend", "numpy", "--sweep", "6")
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--backend", "numpy", *session.posargs
    )


@nox.session(name="cuda")
def cuda(session: nox.Session) -> None:
    """GPU machines: CUDA builds of PyTorch and JAX, and CuPy; GPU devices join the
    matrix automatically (``ls-xp check`` shows them, the tests parametrise over them)."""
    session.install("torch", "jax[cuda12]", "-r", "backends/cupy.txt", "-e", ".[test]")
    session.run("ls-xp", "check")
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (Sphinx: the user guide's MyST pages, the API reference from
    the docstrings, pydata-sphinx-theme), warnings as errors, into docs/_build/html."""
    session.install("-r", "backends/numpy.txt", "-r", "backends/torch.txt", "-e", ".[docs]")
    # -E: a fresh environment, so that the API pages follow the docstrings
    session.run(
        "python", "-m", "sphinx", "-E", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )
