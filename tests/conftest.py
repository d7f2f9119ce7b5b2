"""Test fixtures: every installed backend and device, as ``xb``; dtypes as ``fdtype``.

Backends that are not installed, and devices this machine lacks (CUDA, GPU), appear as
skipped parameters with the reason. ``--backend NAME`` (repeatable) selects backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest

from ls_xp._tools import backends as _backends

# The suite runs with 64-bit JAX (its references are float64), switched on once here, before
# any test: a test of float32 JAX switches it off for its length (tests._devices.jax_x64).
_backends.enable_jax_x64()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        default=None,
        choices=list(_backends.BACKEND_NAMES),
        help="run only this backend (repeatable); default: every installed one",
    )


@dataclass(frozen=True)
class XB:
    """A backend on a device, with helpers to move NumPy data in and out.

    ``plan="accelerator"`` runs the backend under ``LS_XP_PLAN=accelerator``: the code path
    of a GPU (no values read back, few large blocks), forced on this CPU.
    """

    target: _backends.Target
    plan: str | None = None

    @property
    def xp(self) -> Any:
        return self.target.xp

    @property
    def name(self) -> str:
        return self.target.backend

    @property
    def device(self) -> Any:
        return self.target.device

    @property
    def eager(self) -> bool:
        """Values are read (so bad values raise instead of giving NaN)."""
        return self.name != "dask" and self.plan != "accelerator"

    def dtype(self, name: str) -> Any:
        return self.target.dtypes[name]

    def asarray(self, a: Any, dtype: str | None = None) -> Any:
        a = np.asarray(a)
        if dtype is None and a.dtype.kind == "f":
            dtype = str(a.dtype)
        if dtype is not None:
            return self.xp.asarray(a.astype(np.float64), dtype=self.dtype(dtype), device=self.device)
        if a.dtype.kind == "b":
            return self.xp.asarray(a, device=self.device)
        return self.xp.asarray(a.astype(np.int64), device=self.device)

    def np(self, x: Any) -> np.ndarray:
        return np.asarray(self.target.to_numpy(x), dtype=np.float64)

    def __str__(self) -> str:
        return self.target.label + ("" if self.plan is None else f"+{self.plan}-plan")


@cache
def _discovered(selected: tuple[str, ...] | None) -> list[Any]:
    params = []
    for t in _backends.discover(list(selected) if selected else None):
        if isinstance(t, _backends.Unavailable):
            params.append(pytest.param(None, id=t.label, marks=pytest.mark.skip(reason=t.reason)))
        elif t.backend == "array_api_strict" and t.device_label not in ("CPU_DEVICE", "device1"):
            continue  # CPU_DEVICE and device1 prove device placement; ls-xp check runs the rest
        else:
            params.append(pytest.param(XB(t), id=t.label))
            if t.backend in ("numpy", "torch") and "cpu" in t.label:
                params.append(pytest.param(XB(t, "accelerator"), id=f"{t.label}+accelerator-plan"))
    return params


@pytest.fixture(autouse=True)
def _execution_plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set ``LS_XP_PLAN`` for the tests of a backend run under a forced plan."""
    if "xb" in request.fixturenames:
        xb = request.getfixturevalue("xb")
        if isinstance(xb, XB) and xb.plan is not None:
            monkeypatch.setenv("LS_XP_PLAN", xb.plan)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "xb" in metafunc.fixturenames:
        selected = metafunc.config.getoption("--backend")
        metafunc.parametrize("xb", _discovered(tuple(selected) if selected else None))
    if "fdtype" in metafunc.fixturenames:
        metafunc.parametrize("fdtype", ["float32", "float64"])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261124)
