"""The ingest wing: discovery (``discover``), decoding in worker processes (``decode``, ``decode_pool``; the GPU
path in ``jpeg_info`` and ``gpu_decode``), the per-file bookkeeping (``assembly``), and the streaming driver
(``driver``) that plans, assembles and writes through the store over a ``Workers`` object (``workers``: the
protocol and the local decode processes and models). ``ray_engine``'s ``RayWorkers`` do that work on a Ray cluster;
it is imported only for ``--engine ray``.

This package's door is what api.py uses: :func:`run_ingest` and its options, progress and report.
"""

from .driver import IngestOptions, IngestProgress, IngestReport, run_ingest

__all__ = ["IngestOptions", "IngestProgress", "IngestReport", "run_ingest"]
