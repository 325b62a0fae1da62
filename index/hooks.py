"""The fault hook: the places where a crash must still leave a loadable index call :func:`fault_point` with their
name. Nothing happens unless a harness installed a hook (a2v-search's reliability tests kill the process there)."""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(point)`` at every fault point from now on (None: no hook)."""
    global _hook
    _hook = hook


def fault_point(point: str) -> None:
    """The named fault point: runs the installed hook, if any."""
    if _hook is not None:
        _hook(point)
