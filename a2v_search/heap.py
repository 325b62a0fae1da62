"""The garbage collector during a long ingest.

A full collection walks every object the process holds: ~440,000 once torch and a model are loaded, ~240 ms of
CPU on the 2-core test machine. Python runs one whenever the objects that survived since the last have grown by a
quarter: an ingest paid one every ~16,000 files, ~14 us a person (docs/benchmarks.md, tenth pass). The objects
alive once the models are loaded (the modules, the models) are not garbage before the run ends: :func:`frozen_heap`
moves them out of the collector's reach (``gc.freeze``) for the run and back at its end, so a run pays one full
walk, the first after it ends, instead of one every ~16,000 files.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects alive now until the block ends, unless the program froze objects of its own (e.g. before
    forking workers): its freeze is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
