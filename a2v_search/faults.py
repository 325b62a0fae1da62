"""Fault points for the reliability tests: ``A2V_FAULT=point:N`` kills the process (SIGKILL) the N-th time the
named point is reached; ``A2V_HANG=TEXT`` makes decoding any file whose path contains TEXT hang (a decoder that
spins). Unset (always, outside tests), a fault point is one dictionary lookup."""

from __future__ import annotations

import os
import signal
import time

_hits: dict[str, int] = {}


def _plan() -> dict[str, int]:
    plan = {}
    for item in filter(None, os.environ.get("A2V_FAULT", "").split(",")):
        point, _, n = item.partition(":")
        plan[point.strip()] = int(n or 1)
    return plan


_PLAN = _plan()


def fault_point(point: str) -> None:
    """Kill this process here if ``A2V_FAULT`` asks for it (test harness only)."""
    if point not in _PLAN:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == _PLAN[point]:
        os.kill(os.getpid(), signal.SIGKILL)


def arm(plan: dict[str, int]) -> None:
    """Replace the plan (point -> the hit that kills) and forget the hits so far: how a forked test child arms a
    fault point without an environment variable."""
    _PLAN.clear()
    _PLAN.update(plan)
    _hits.clear()


_HANG = os.environ.get("A2V_HANG")


def hang_point(path: str) -> None:
    """Never return if ``A2V_HANG`` names part of ``path`` (test harness only: a decoder stuck on a file)."""
    while _HANG and _HANG in path:
        time.sleep(3600)


def kill_once(point: str) -> None:
    """Kill this process here if a test armed ``point`` by creating the file ``$A2V_KILL_ONCE_DIR/point``; the
    process that removes the file dies, so it happens once across all processes (a Ray worker or actor that dies
    once and is retried). Unset (always, outside tests), one environment lookup."""
    folder = os.environ.get("A2V_KILL_ONCE_DIR")
    if not folder:
        return
    try:
        os.unlink(os.path.join(folder, point))
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
