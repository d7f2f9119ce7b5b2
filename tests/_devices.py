"""JAX settings for tests: scripts on emulated JAX devices (the device count must be set
before JAX is imported, so the checks of a file run in one fresh interpreter that prints
its findings as JSON), and ``jax_enable_x64`` for the length of a test."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def jax_x64(enabled: bool) -> Iterator[None]:
    """``jax_enable_x64`` set to ``enabled`` inside, and back to what it was after."""
    import jax

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def run_on_cpu_devices(script: str, *, devices: int = 4, timeout: int = 600) -> Any:
    """Run ``script`` with ``devices`` emulated CPU devices; its last line starting with
    ``RESULT`` holds the findings (JSON)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-4000:]
    return json.loads(line[-1][len("RESULT") :])
