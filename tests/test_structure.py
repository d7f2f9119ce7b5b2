"""The shape of the package: no import circle, a core that imports no framework, one
adapter interface, modules and functions of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ls_xp"
FRAMEWORKS = ("numpy", "torch", "jax", "jaxlib", "dask", "cupy", "array_api_strict", "optax")
# the layers that may import a framework: the adapters and the command-line tooling
ADAPTERS = ("ls_xp.torch", "ls_xp.jax", "ls_xp._tools")

if not ROOT.is_dir():
    pytest.skip("the package sources are not next to the tests", allow_module_level=True)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, at any depth of its code (lazy imports included)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):  # imports for type checkers only never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return out


def _internal_graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        # an import of a parent package is no edge of its own: Python imports every
        # parent before its child anyway
        graph[name] = {
            m for m in _imports(name) if m in MODULES and m != name and not name.startswith(m + ".")
        }
    return graph


def test_no_import_circle():
    graph = _internal_graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("name", [m for m in MODULES if not m.startswith(ADAPTERS)])
def test_the_core_imports_no_framework(name):
    bad = {m for m in _imports(name) if m.split(".")[0] in FRAMEWORKS}
    assert not bad, f"{name} imports {sorted(bad)}"


def test_the_adapters_implement_one_interface():
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("jax", reason="jax is not installed")
    from ls_xp._adapters import Adapter
    from ls_xp.jax._adapter import ADAPTER as JAX
    from ls_xp.torch._adapter import ADAPTER as TORCH

    hooks = [name for name in vars(Adapter) if not name.startswith("_")]
    assert hooks == ["loss", "values", "linear_loss", "linear_values"]
    for adapter in (TORCH, JAX):
        assert isinstance(adapter, Adapter)


def test_no_public_name_is_an_internal_hook():
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("jax", reason="jax is not installed")
    import ls_xp.jax
    import ls_xp.torch

    hooks = {"loss", "value", "values", "linear_loss", "linear_values", "wants_autograd"}
    for module in (ls_xp.torch, ls_xp.jax):
        public = {n for n in dir(module) if not n.startswith("_")} | set(getattr(module, "__all__", ()))
        assert not public & hooks, (module.__name__, sorted(public & hooks))


def _long_functions(tree: ast.AST) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            # the docstring does not count: what is read is the code
            first = body[0] if body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                body = body[1:]
            if body:
                length = (body[-1].end_lineno or 0) - body[0].lineno + 1
                if length > 60:
                    out.append((node.name, length))
    return out


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_readable(name):
    source = MODULES[name].read_text(encoding="utf-8")
    assert len(source.splitlines()) <= 520, f"{name}: {len(source.splitlines())} lines"
    assert not _long_functions(ast.parse(source)), f"{name}: {_long_functions(ast.parse(source))}"
