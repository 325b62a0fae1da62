"""a2v-search: per-person HAKE activity vectors (PaSta, verbs, CLIP visual, BERT language), stored and searched."""

from __future__ import annotations

__version__ = "0.1.0"
