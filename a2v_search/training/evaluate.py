"""Evaluation of PaSta heads (trained or zero-shot) on HAKE annotations with the reference AP protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import taxonomy as tx
from ..errors import InputError
from ..models.encoder import ActivityEncoder
from ..models.heads import run_fp32
from .hake_data import HakeData
from .metrics import evaluate_heads
from .train import cached_features


@dataclass
class Evaluation:
    """Per-head mAP (fractions; None for a head without a valid class) by both AP methods."""

    ap11: dict[str, float | None]
    ap_all: dict[str, float | None]
    images: int
    samples: int
    unreadable: dict[str, str] = field(default_factory=dict)  # "image [box]" -> why it was left out

    def as_dict(self) -> dict:
        """The ``evaluate --json`` document."""
        return {"ap11": self.ap11, "ap_all": self.ap_all, "images": self.images}


def head_probabilities(heads: nn.Module, features: np.ndarray, device: str | torch.device = "cpu",
                       batch_size: int = 256) -> dict[str, np.ndarray]:
    """Heads (trained or zero-shot) on (N, P) tower features -> {"pasta": (N, 93), "verbs": (N, 157),
    "parts": (N, 6)}, in fp32 whatever the tower's precision was (as at ingest)."""
    outs: dict[str, list[np.ndarray]] = {"pasta": [], "verbs": [], "parts": []}
    with torch.inference_mode():
        for i in range(0, len(features), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(features[i:i + batch_size], np.float32)).to(device)
            out = run_fp32(heads, x)  # same heads, same features, same fp32 as encode_persons
            for k in outs:
                outs[k].append(out[k].cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0, n), np.float32)
            for (k, v), n in zip(outs.items(), (tx.N_PASTA, tx.N_VERBS, tx.N_PARTS), strict=True)}


def evaluate_features(heads: nn.Module, features: np.ndarray, data: HakeData,
                      device: str | torch.device = "cpu") -> Evaluation:
    """Per-head mAP of ``heads`` on (N, P) features of ``data``'s samples."""
    probs = head_probabilities(heads, features, device)
    result = evaluate_heads(probs, {"pasta": data.pasta, "parts": data.parts, "verbs": data.verbs})
    return Evaluation(result["ap11"], result["ap_all"], data.n_images, len(data))


def unreadable_samples(data: HakeData, unreadable: dict[int, str]) -> dict[str, str]:
    """Sample index -> reason, as ``"image"`` (whole image) or ``"image [x1, y1, x2, y2]"`` -> reason."""
    def name(i: int) -> str:
        box = data.boxes[i]
        return data.images[i] + ("" if box is None else f" [{', '.join(f'{v:g}' for v in box)}]")
    return {name(i): reason for i, reason in sorted(unreadable.items())}


def evaluate(encoder: ActivityEncoder, data: HakeData, images_root: Path, data_dir: Path, batch_size: int = 32,
             progress: bool = False) -> Evaluation:
    """Run the encoder over every sample (tower features cached under ``data_dir``) and compute per-head mAP.
    Samples whose image cannot be read are left out and listed in ``Evaluation.unreadable``."""
    feats = cached_features(encoder, data, images_root, data_dir, batch_size, progress)
    keep = feats.readable
    if not keep.any():
        raise InputError(f"none of the {len(data)} samples' images could be read under {images_root}; check --images")
    result = evaluate_features(encoder.model.heads, feats.plain[keep], data.subset(keep), encoder.device)
    result.unreadable = unreadable_samples(data, feats.unreadable)
    return result
