"""Discovery of the installed array backends and their devices (used by ``ls-xp check``
and the test suite). This is the adapter layer: it may name frameworks, the math may not.

Nothing is imported at module import time; each backend is imported only when probed.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "jax", "dask", "cupy")
DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Target:
    """One backend on one device: the namespace, the device object and a label."""

    backend: str
    xp: ModuleType
    device: Any
    device_label: str
    dtypes: dict[str, Any]
    to_numpy: Callable[[Any], np.ndarray]
    skipped_dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.device_label}"


@dataclass(frozen=True)
class Unavailable:
    """A backend or device that cannot run here, and why."""

    backend: str
    device_label: str
    reason: str

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.device_label}"


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _dtypes(xp: ModuleType, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(xp, n) for n in names if hasattr(xp, n)}


def _numpy() -> list[Target | Unavailable]:
    from array_api_compat import numpy as xp

    return [Target("numpy", xp, "cpu", "cpu", _dtypes(xp, DTYPE_NAMES), np.asarray)]


def _strict() -> list[Target | Unavailable]:
    xp = importlib.import_module("array_api_strict")
    out: list[Target | Unavailable] = []
    for dev in xp.__array_namespace_info__().devices():
        label = str(getattr(dev, "_device", dev))
        out.append(Target("array_api_strict", xp, dev, label, _dtypes(xp, DTYPE_NAMES), np.from_dlpack))
    return out


def _torch() -> list[Target | Unavailable]:
    torch = importlib.import_module("torch")
    from array_api_compat import torch as xp

    def to_numpy(x: Any) -> np.ndarray:
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.numpy()

    out: list[Target | Unavailable] = [
        Target("torch", xp, torch.device("cpu"), "cpu", _dtypes(xp, DTYPE_NAMES), to_numpy)
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            dev = torch.device("cuda", i)
            out.append(Target("torch", xp, dev, f"cuda:{i}", _dtypes(xp, DTYPE_NAMES), to_numpy))
    else:
        out.append(Unavailable("torch", "cuda", "no CUDA device"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names = tuple(n for n in DTYPE_NAMES if n != "float64")
        out.append(
            Target(
                "torch",
                xp,
                torch.device("mps"),
                "mps",
                _dtypes(xp, names),
                to_numpy,
                {"float64": "MPS has no float64"},
            )
        )
    return out


def enable_jax_x64(backends: tuple[str, ...] | list[str] | None = None) -> None:
    """Switch ``jax_enable_x64`` on where JAX is installed and among ``backends`` (None:
    all), for the float64 cells. A setting of the whole process: for processes that are
    the tool's own (``ls-xp check``, the test suite); :func:`discover` never changes it."""
    if (backends is None or "jax" in backends) and _installed("jax"):
        importlib.import_module("jax").config.update("jax_enable_x64", True)


def _jax() -> list[Target | Unavailable]:
    jax = importlib.import_module("jax")
    xp = importlib.import_module("jax.numpy")
    names: tuple[str, ...] = DTYPE_NAMES
    skipped: dict[str, str] = {}
    if not jax.config.jax_enable_x64:  # (JAX would make float64 arrays float32)
        names = tuple(n for n in DTYPE_NAMES if n != "float64")
        skipped = {"float64": "jax_enable_x64 is off"}
    out: list[Target | Unavailable] = []
    for dev in jax.devices():
        label = f"{dev.platform}:{dev.id}"
        out.append(Target("jax", xp, dev, label, _dtypes(xp, names), np.asarray, skipped))
    if not any(d.platform == "gpu" for d in jax.devices()):
        out.append(Unavailable("jax", "gpu", "no GPU visible to jax"))
    return out


def _dask() -> list[Target | Unavailable]:
    from array_api_compat.dask import array as xp

    def to_numpy(x: Any) -> np.ndarray:
        return np.asarray(x.compute())

    return [Target("dask", xp, "cpu", "cpu", _dtypes(xp, DTYPE_NAMES), to_numpy)]


def _cupy() -> list[Target | Unavailable]:
    cupy = importlib.import_module("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any CUDA runtime failure means "no GPU"
        return [Unavailable("cupy", "cuda", f"no CUDA device ({type(exc).__name__})")]
    if count == 0:
        return [Unavailable("cupy", "cuda", "no CUDA device")]
    from array_api_compat import cupy as xp

    return [
        Target(
            "cupy",
            xp,
            cupy.cuda.Device(i),
            f"cuda:{i}",
            _dtypes(xp, ("float16", "float32", "float64")),
            lambda x: x.get(),
        )
        for i in range(count)
    ]


_PROBES: dict[str, tuple[str, Callable[[], list[Target | Unavailable]]]] = {
    "numpy": ("numpy", _numpy),
    "array_api_strict": ("array_api_strict", _strict),
    "torch": ("torch", _torch),
    "jax": ("jax", _jax),
    "dask": ("dask", _dask),
    "cupy": ("cupy", _cupy),
}


def discover(backends: tuple[str, ...] | list[str] | None = None) -> list[Target | Unavailable]:
    """Every backend/device this machine can run, plus the ones it cannot, with reasons."""
    out: list[Target | Unavailable] = []
    for name in backends or BACKEND_NAMES:
        if name not in _PROBES:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKEND_NAMES)}")
        module, probe = _PROBES[name]
        if not _installed(module):
            out.append(Unavailable(name, "-", f"{module} is not installed"))
            continue
        try:
            out.extend(probe())
        except Exception as exc:  # noqa: BLE001 - report, don't crash the whole check
            out.append(Unavailable(name, "-", f"import failed: {type(exc).__name__}: {exc}"))
    return out
