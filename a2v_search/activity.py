"""A2V's visual feature and the activity space built on it.

HAKE's Activity2Vec takes its visual feature from the PaSta classifiers. With trained heads
(Linear-ReLU-Linear-ReLU-Linear per part) that is the last hidden layer of each of the six part heads, (6, h) per
person (h = 512 for the published heads), computed on the heads' input: the unnormalised tower output, which the
store recovers as ``visual * visual_norm`` (unit vector and norm, both stored). Zero-shot heads (cosines with
CLIP text prompts) have no hidden layers, so a store made with them has no such feature and no activity space.

The activity space's vector of a person is ``normalise(concat(normalise(f_part) for the six parts))``: each part
counts the same whatever the scale of its activations, and a part whose layer is all zero drops out.
"""

from __future__ import annotations

import numpy as np

ACTIVITY = "activity"

ZERO_SHOT_NOTE = ("no A2V classifier feature: this store's PaSta heads are zero-shot (cosines with CLIP text "
                  "prompts), which have no hidden layers; a store ingested with trained heads (--checkpoint) has it")


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 1e-12, x / np.maximum(n, 1e-12), 0.0).astype(np.float32)


def space_vectors(features: np.ndarray) -> np.ndarray:
    """A2V features (N, 6, h) -> activity-space vectors (N, 6h), unit length (zero when every part is zero)."""
    f = np.asarray(features, np.float32)
    return _normalise(_normalise(f).reshape(len(f), -1))


def trained_heads(heads_ref: str | None) -> bool:
    """True when a space's heads are trained MLPs (``checkpoint:...``), the only ones with A2V features."""
    return bool(heads_ref) and str(heads_ref).startswith("checkpoint:")
