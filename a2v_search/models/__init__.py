"""The CLIP-A2V activity model: image tower, PaSta heads (trained or zero-shot), language space, checkpoints."""

from __future__ import annotations

from .encoder import ActivityEncoder, PersonVectors
from .factory import ModelSpec, load_encoder
from .language import LanguageSpace, TextEncoder, TextQuery
from .preprocess import Preprocess

__all__ = ["ActivityEncoder", "LanguageSpace", "ModelSpec", "PersonVectors", "Preprocess", "TextEncoder",
           "TextQuery", "load_encoder"]

