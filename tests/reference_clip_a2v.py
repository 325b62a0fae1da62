"""An independent plain-torch CLIP-Activity2Vec forward in the OpenAI / official layout, for tests only.

It reads the official state dict directly (``backbone.image_model.*``, ``head.*``): no transformers, no project code
in the math. Random weights in that layout: :func:`a2v_search.models.tiny.random_official_state_dict`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

HEADS = {"verb": 157, "foot": 16, "leg": 15, "hip": 6, "hand": 34, "arm": 8, "head": 14, "pasta_binary": 6}
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def reference_transform(image) -> torch.Tensor:
    """RGB, Resize((224, 224)) bilinear on the PIL image, ToTensor, Normalize: (1, 3, 224, 224)."""
    from PIL import Image

    x = np.asarray(image.convert("RGB").resize((224, 224), Image.BILINEAR), np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


@torch.no_grad()
def reference_forward(sd, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """OpenAI VisionTransformer (pre-norm, QuickGELU, ln_post on the class token, @ proj) + 8 MLP heads, sigmoid."""
    p = "backbone.image_model."
    w = sd[p + "conv1.weight"]
    width, patch = w.shape[0], w.shape[-1]
    heads_n = width // 64
    t = F.conv2d(x, w, stride=patch).flatten(2).transpose(1, 2)  # (B, N, W)
    cls = sd[p + "class_embedding"].expand(t.shape[0], 1, width)
    t = torch.cat([cls, t], 1) + sd[p + "positional_embedding"]
    t = F.layer_norm(t, (width,), sd[p + "ln_pre.weight"], sd[p + "ln_pre.bias"], 1e-5)
    i = 0
    while f"{p}transformer.resblocks.{i}.ln_1.weight" in sd:
        b = f"{p}transformer.resblocks.{i}."
        h = F.layer_norm(t, (width,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"], 1e-5)
        qkv = h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]
        q, k, v = qkv.chunk(3, -1)
        B, N, _ = q.shape
        q, k, v = (z.reshape(B, N, heads_n, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, N, width)
        t = t + o @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
        h = F.layer_norm(t, (width,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"], 1e-5)
        h = h @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        t = t + h @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]
        i += 1
    feat = F.layer_norm(t[:, 0], (width,), sd[p + "ln_post.weight"], sd[p + "ln_post.bias"], 1e-5) @ sd[p + "proj"]
    out = {}
    for name in HEADS:
        h = feat
        for j in range(3):
            h = h @ sd[f"head.{name}_fc.layers.{j}.weight"].T + sd[f"head.{name}_fc.layers.{j}.bias"]
            if j < 2:
                h = F.relu(h)
        out[name] = torch.sigmoid(h)
    out["feature"] = feat
    return out
