"""PyTorch profiler events as the measuring notes count them: the ``aten::`` events of a
profile, and the top-level ones among them (whose parent is not itself an ``aten::``
event; a custom operator's own event is not, so the aten operations inside it count)."""

from __future__ import annotations

from typing import Any


def aten_events(prof: Any) -> list[Any]:
    """The ``aten::`` events of a finished ``torch.profiler.profile``."""
    return [e for e in prof.events() or [] if e.name.startswith("aten::")]


def top_level(events: list[Any]) -> list[Any]:
    """The events of ``events`` whose parent is not an ``aten::`` event."""
    return [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
