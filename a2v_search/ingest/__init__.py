"""The ingest wing: discovery (``discover``), decoding in worker processes (``decode``, ``decode_pool``; the GPU
path in ``jpeg_info`` and ``gpu_decode``), the per-file bookkeeping (``assembly``), and the streaming driver
(``driver``) that runs them and writes through the store. ``ray_engine`` runs the same driver on a Ray cluster; it
is imported only for ``--engine ray``.

This package's door is what api.py uses: :func:`run_ingest` and its options, progress and report.
"""

from .driver import IngestOptions, IngestProgress, IngestReport, run_ingest

__all__ = ["IngestOptions", "IngestProgress", "IngestReport", "run_ingest"]
