"""Batch encoding: persons (image + box) -> visual, PaSta, verb, part and language vectors as numpy arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelError
from ..preprocess import Box, Preprocess
from .heads import PastaHeads
from .language import LanguageSpace
from .network import ActivityModel


@dataclass
class PersonVectors:
    """Per-person outputs, row i = person i, float32."""

    visual: np.ndarray  # (N, P) unit length
    pasta: np.ndarray  # (N, 93)
    verbs: np.ndarray  # (N, 157)
    parts: np.ndarray  # (N, 6)
    language: np.ndarray | None = None  # (N, 2D) unit length
    visual_norm: np.ndarray | None = None  # (N,) norm of the tower output: heads' input = visual * visual_norm

    def __len__(self) -> int:
        return len(self.visual)


class ActivityEncoder:
    """The activity model with its preprocessing, device and language space: everything ingest and search use.

    Build it with :func:`a2v_search.models.load_encoder`.
    """

    def __init__(self, model: ActivityModel, preprocess: Preprocess, device: torch.device,
                 language: LanguageSpace | None = None, space: dict | None = None, precision: str = "auto",
                 clip_text_loader: Callable[[], tuple] | None = None):
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self.device = device
        self.language = language
        self.space = dict(space or {})
        self._clip_text_loader = clip_text_loader
        self._clip_text = None
        self.amp_dtype = _amp_dtype(device, precision)

    @property
    def image_size(self) -> int:
        return self.preprocess.size

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 32) -> PersonVectors:
        """uint8 (N, S, S, 3) preprocessed persons -> PersonVectors (language included when a space is set).

        Eval and inference mode; the tower under autocast when the precision asks for it (bf16/fp16 on CUDA by
        default), the heads in fp32; rows do not depend on batch size or order.
        """
        n = len(pixels)
        outs: dict[str, list[np.ndarray]] = {"visual": [], "pasta": [], "verbs": [], "parts": [], "visual_norm": []}
        for i in range(0, n, max(1, batch_size)):
            x = torch.from_numpy(np.ascontiguousarray(pixels[i:i + batch_size]))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = self.preprocess.to_tensor(x)  # (B, 3, S, S) float32 on the device
            ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
            with ctx:
                out = self.model(x)
            for k in outs:
                outs[k].append(out[k].float().cpu().numpy())
        empty = {"visual": (0, self.model.visual_dim), "pasta": (0, 93), "verbs": (0, 157), "parts": (0, 6),
                 "visual_norm": (0,)}
        arrays = {k: np.concatenate(v) if v else np.zeros(empty[k], np.float32) for k, v in outs.items()}
        vectors = PersonVectors(**arrays)
        if self.language is not None:
            vectors.language = self.language.embed(vectors.pasta, vectors.verbs)
        return vectors

    def encode_persons(self, images: Sequence[Image.Image], boxes: Sequence[Box | None],
                       batch_size: int = 32) -> PersonVectors:
        """One person per (image, box); ``box=None`` means whole-image mode (the reference transform)."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        size = self.preprocess.size
        pixels = np.stack([self.preprocess.pixels(im, b) for im, b in zip(images, boxes, strict=True)]) if images \
            else np.zeros((0, size, size, 3), np.uint8)
        return self.encode_pixels(pixels, batch_size)

    @property
    def has_part_features(self) -> bool:
        """True with trained heads: only they have hidden layers (A2V's visual feature); zero-shot heads do not."""
        return isinstance(self.model.heads, PastaHeads)

    @torch.inference_mode()
    def part_features(self, visual: np.ndarray, visual_norm: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """A2V's visual feature from stored values: unit visual (N, P) and norms (N,) -> the six part heads' last
        hidden layers (N, 6, h), float32, computed in fp32 on the heads' input ``visual * visual_norm``."""
        if not self.has_part_features:
            raise ModelError("these PaSta heads are zero-shot (CLIP text prompts): they have no hidden layers, so "
                             "there is no A2V classifier feature; use --checkpoint with trained heads")
        heads = self.model.heads
        h = heads.dim_hidden
        out = []
        for i in range(0, len(visual), batch_size):
            feat = np.asarray(visual[i:i + batch_size], np.float32) * np.asarray(visual_norm[i:i + batch_size],
                                                                                np.float32)[:, None]  # (B, P)
            x = torch.from_numpy(feat).to(self.device)
            with torch.autocast(self.device.type, enabled=False):  # fp32, as the heads run at ingest
                out.append(heads.part_features(x).float().cpu().numpy())  # (B, 6, h)
        return np.concatenate(out) if out else np.zeros((0, 6, h), np.float32)

    @torch.inference_mode()
    def clip_text(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text-tower embeddings (N, P), unit length, comparable with the visual vectors."""
        if self._clip_text is None:
            if self._clip_text_loader is None:
                raise ModelError("this model has no CLIP text tower; pass --model with a full CLIP model "
                                 "(e.g. openai/clip-vit-base-patch16) whose image tower matches")
            self._clip_text = self._clip_text_loader()
        text_model, tokenizer = self._clip_text
        batch = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        emb = text_model(**batch).text_embeds.float()
        return F.normalize(emb, dim=-1).cpu().numpy()


#: Tower precisions: ``auto`` (bf16 autocast on CUDA where supported, else fp16; fp32 elsewhere) or a fixed one.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype of the tower: None for ``fp32`` and for ``auto`` off CUDA; ``bf16``/``fp16`` asked for by name
    apply on any device (CPU autocast too). The heads run in fp32 regardless (ActivityModel.run_heads)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
