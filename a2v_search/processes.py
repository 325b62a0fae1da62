"""Child processes that die with this one and never run its main module: the decode workers of an ingest
(ingest/decode_pool.py) and the reader of an import (records_reader.py).

multiprocessing's spawn re-runs the caller's main module in every child (a script without ``if __name__ ==
"__main__":`` would start its work again there, and ``python - <<EOF`` names a ``<stdin>`` file that does not
exist): :class:`CleanSpawnContext` launches each child as if the main module were empty. A child calls
:func:`die_with_parent` first: it is killed when this process dies, even by SIGKILL (``PR_SET_PDEATHSIG`` on Linux,
a watch on the parent's pid elsewhere).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import types
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1
_LAUNCH = threading.Lock()  # one launch at a time hides (and restores) the main module


@contextmanager
def _empty_main():
    """While a worker is launched, ``__main__`` is an empty module: spawn then passes the worker no main module to
    re-run (neither a script's path nor ``-m``'s module name). Nothing of the caller's main is pickled for it."""
    with _LAUNCH:
        real = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if real is not None:
                sys.modules["__main__"] = real


class CleanSpawnProcess(mp.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        with _empty_main():
            return mp.context.SpawnProcess._Popen(process_obj)


class CleanSpawnContext(mp.context.SpawnContext):
    """The spawn start method, without the caller's main module in the workers."""

    Process = CleanSpawnProcess


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit as soon as ``parent_pid`` is gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            _watch_parent(parent_pid)
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
