"""The CLIP-A2V activity model: image tower, PaSta heads (trained or zero-shot), language space, checkpoints.

Names are imported lazily: ``LanguageSpace`` needs only numpy, the rest pulls torch and transformers.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "ActivityEncoder": "encoder", "PersonVectors": "encoder", "ModelSpec": "factory", "load_encoder": "factory",
    "LanguageSpace": "language", "TextEncoder": "language", "TextQuery": "language",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
