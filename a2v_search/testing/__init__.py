"""Seeded synthetic data for the tests and the benchmarks (as ``numpy.testing`` ships with numpy): media files of
every kind, good, odd and broken (:mod:`.media`), activity profiles with free-text and structured queries
(:mod:`.profiles`), and a case that separates appearance from activity (:mod:`.activity_case`). Nothing here is
used by ingest or search; the tiny random models are in :mod:`a2v_search.models.tiny`.
"""
