"""Evaluation of an encoder's heads (trained or zero-shot) on HAKE annotations with the reference AP protocol."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .hake_data import HakeData
from .metrics import evaluate_heads
from .models.encoder import ActivityEncoder
from .train import cached_features


@dataclass
class Evaluation:
    """Per-head mAP (fractions; None for a head without a valid class) by both AP methods."""

    ap11: dict[str, float | None]
    ap_all: dict[str, float | None]
    images: int
    samples: int

    def as_dict(self) -> dict:
        """The ``evaluate --json`` document."""
        return {"ap11": self.ap11, "ap_all": self.ap_all, "images": self.images}


def head_probabilities(encoder: ActivityEncoder, features: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The encoder's heads on (N, P) tower features -> {"pasta": (N, 93), "verbs": (N, 157), "parts": (N, 6)},
    float32 whatever the tower's precision (as at ingest)."""
    outs: dict[str, list[np.ndarray]] = {"pasta": [], "verbs": [], "parts": []}
    with torch.inference_mode():
        for i in range(0, len(features), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(features[i:i + batch_size], np.float32)).to(encoder.device)
            out = encoder.model.run_heads(x)  # same heads, same features, same fp32 as encode_persons
            for k in outs:
                outs[k].append(out[k].float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0, n), np.float32)
            for (k, v), n in zip(outs.items(), (93, 157, 6), strict=True)}


def evaluate(encoder: ActivityEncoder, data: HakeData, images_root: Path, data_dir: Path, batch_size: int = 32,
             progress: bool = False) -> Evaluation:
    """Run the encoder over every sample (tower features cached under ``data_dir``) and compute per-head mAP."""
    features, _, _ = cached_features(encoder, data, images_root, data_dir, batch_size, progress)
    probs = head_probabilities(encoder, features)
    targets = {"pasta": data.pasta, "parts": data.parts, "verbs": data.verbs}
    result = evaluate_heads(probs, targets)
    return Evaluation(result["ap11"], result["ap_all"], data.n_images, len(data))
