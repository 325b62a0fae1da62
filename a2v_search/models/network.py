"""The CLIP-A2V network: CLIP image tower -> (visual embedding, PaSta / verb / part probabilities)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModelWithProjection

from .heads import PastaHeads, ZeroShotHeads, run_fp32


class ActivityModel(nn.Module):
    """Image tower plus PaSta heads (trained or zero-shot). The tower uses SDPA attention (see ``use_sdpa``).

    forward(pixel_values (B, 3, S, S)) -> {"visual": (B, P) L2-normalised projection output, "visual_norm": (B,)
    its norm, "pasta": (B, 93), "verbs": (B, 157), "parts": (B, 6)} probabilities. Trained heads see the
    unnormalised projection output (= visual * visual_norm), as in the reference. The tower may run under autocast
    (bf16/fp16); the heads always run in float32 (:meth:`run_heads`).
    """

    def __init__(self, vision: CLIPVisionModelWithProjection, heads: PastaHeads | ZeroShotHeads):
        super().__init__()
        self.vision = use_sdpa(vision)
        self.heads = heads

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    @property
    def visual_dim(self) -> int:
        return int(self.vision.config.projection_dim)

    @property
    def tower_dtype(self) -> torch.dtype:
        """The image tower's weight dtype: float32 as loaded (the encoder uses autocast); bf16 if cast by hand."""
        return self.vision.visual_projection.weight.dtype

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, P) unnormalised projection output (the reference's 512-d feature). The input is cast
        to the tower's weight dtype (a no-op for the fp32 tower as loaded)."""
        return self.vision(pixel_values=pixel_values.to(self.tower_dtype)).image_embeds

    def run_heads(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, P) features -> float32 probabilities, the normalised visual vector and its norm, whatever autocast
        is on."""
        out = run_fp32(self.heads, feat)
        with torch.autocast(feat.device.type, enabled=False):
            out["visual"] = F.normalize(feat.float(), dim=-1)  # (B, P)
            out["visual_norm"] = feat.float().norm(dim=-1)  # (B,)
        return out

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run_heads(self.features(pixel_values))


def use_sdpa(vision: CLIPVisionModelWithProjection) -> CLIPVisionModelWithProjection:
    """The tower with torch's scaled_dot_product_attention (flash / memory-efficient kernels on CUDA); same math
    as eager attention. transformers' default already, made explicit for towers built from a config."""
    if getattr(vision.config, "_attn_implementation", None) != "sdpa":
        vision.set_attn_implementation("sdpa")
    return vision
