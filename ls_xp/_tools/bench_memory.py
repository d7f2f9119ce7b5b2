"""The memory figures of ``ls-xp bench``, read inside one worker process.

- Host: the resident set (``/proc/self/statm``) and its peak (``ru_maxrss``, or ``VmHWM``
  after a reset through ``/proc/self/clear_refs``). These count pages, so they include what
  the C allocator keeps resident after a free: glibc keeps a freed block of a few tens of
  MiB in its heap, and whether the next block of that size reuses it depends on the whole
  history of the process.
- PyTorch tensors on the CPU: the largest rise, during one call, of the bytes alive in
  PyTorch's allocator, from the profiler's memory events. It does not see
  the C allocator at all, so it is the same number in every process that runs the same
  graph: the host's analogue of ``torch.cuda.max_memory_allocated``.
- Devices: ``torch.cuda.max_memory_allocated`` and JAX's ``memory_stats``.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Starts a new peak of resident memory (Linux: ``/proc/self/clear_refs``); False where
    that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> int:
    """The peak resident memory since :func:`reset_peak_rss` (``VmHWM``)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def rss_bytes() -> int:
    """Current resident memory; ``ru_maxrss`` where /proc is missing (an upper bound)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def tensor_peak_bytes(prof: Any) -> int | None:
    """The most the CPU tensor bytes alive rise during a profile, above any earlier point.

    ``prof`` is a finished ``torch.profiler.profile(profile_memory=True)``. Its memory
    events are the allocations (+bytes) and frees (-bytes) of PyTorch's CPU allocator in
    time order; the figure is the largest rise of their running sum. The profiler reports
    the free of a block allocated before it began only where it knew the block's size (an
    earlier profile in the same process); taking the rise from the lowest point before the
    peak, not from zero, makes such a free at the start of the call change nothing. None
    where this PyTorch has no such events.
    """
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        cpu = [(e.start_ns(), e.nbytes()) for e in events if str(e.device_type()).endswith("CPU")]
    except AttributeError:
        return None
    live = lowest = rise = 0
    for _, nbytes in sorted(cpu, key=lambda change: change[0]):  # stable: ties keep their order
        live += nbytes
        lowest = min(lowest, live)
        rise = max(rise, live - lowest)
    return rise


class DeviceMemory:
    """Peak device memory beyond what existed before the first run (non-CPU devices)."""

    def __init__(self, backend: str, device: str) -> None:
        self.backend, self.device, self.base = backend, device, 0
        if device == "cpu":
            return
        if backend == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif backend == "jax":
            self.base = self._jax_stats().get("bytes_in_use", 0)

    def _jax_stats(self) -> dict[str, int]:
        import jax

        return jax.devices(self.device)[0].memory_stats() or {}

    def peak(self) -> int | None:
        if self.device == "cpu":
            return None
        if self.backend == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated() - self.base)
        if self.backend == "jax":
            return int(self._jax_stats().get("peak_bytes_in_use", 0) - self.base)
        return None
