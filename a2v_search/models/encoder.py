"""Batch encoding: persons (image + box) -> visual, PaSta, verb, part and language vectors as numpy arrays."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import taxonomy as tx
from ..errors import ModelError
from ..preprocess import Box, Preprocess, normalised, normalised_crops
from ..settings import COMPILE_MODES, check_choice
from .device_io import PendingBatch, Uploader
from .heads import PastaHeads
from .language import LanguageSpace
from .network import ActivityModel

OUTPUT_KEYS = ("visual", "pasta", "verbs", "parts", "visual_norm")


@dataclass
class PersonVectors:
    """Per-person outputs, row i = person i, float32."""

    visual: np.ndarray  # (N, P) unit length
    pasta: np.ndarray  # (N, 93)
    verbs: np.ndarray  # (N, 157)
    parts: np.ndarray  # (N, 6)
    language: np.ndarray | None = None  # (N, r_p + r_v) unit length (LanguageSpace.embed)
    visual_norm: np.ndarray | None = None  # (N,) norm of the tower output: heads' input = visual * visual_norm

    def __len__(self) -> int:
        return len(self.visual)


class ActivityEncoder:
    """The activity model with its preprocessing, device and language space: everything ingest and search use.

    Build it with :func:`a2v_search.models.load_encoder`. On CUDA the image tower runs under bf16 autocast by default
    (fp16 where bf16 is not supported; ``precision`` by name on any device) with SDPA attention; the heads always
    run in fp32. ``compile`` wraps the model in ``torch.compile`` (off by default, see ``settings.COMPILE_MODES``).
    """

    def __init__(self, model: ActivityModel, preprocess: Preprocess, device: torch.device,
                 language: LanguageSpace | None = None, space: dict | None = None, precision: str = "auto",
                 clip_text_loader: Callable[[], tuple] | None = None, compile: str = "off"):
        check_choice("--compile", compile, COMPILE_MODES)
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self.device = device
        self.language = language
        self.space = dict(space or {})
        self._clip_text_loader = clip_text_loader
        self._clip_text = None
        self.amp_dtype = _amp_dtype(device, precision)  # autocast dtype of the tower; None = fp32
        self.compile = compile
        #: the model, or its torch.compile wrapper (``compile``): what each batch runs
        self.forward = self.model if compile == "off" else torch.compile(
            self.model, mode=None if compile == "default" else compile, dynamic=False)
        self._uploader = Uploader(device)
        self._scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None  # Preprocess.scale_shift on the device
        self._input: torch.Tensor | None = None  # CPU: the model input of crops given as a list, reused

    @property
    def clip_text_loader(self) -> Callable[[], tuple] | None:
        """What loads CLIP's text tower when a CLIP text query first needs it (None: this encoder has none)."""
        return self._clip_text_loader

    @property
    def image_size(self) -> int:
        return self.preprocess.size

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray | torch.Tensor, batch_size: int = 32) -> PersonVectors:
        """uint8 (N, S, S, 3) preprocessed persons -> PersonVectors (language included when a space is set).

        ``pixels`` is a numpy array or a tensor on any device. Eval and inference mode; the tower under autocast when
        the precision asks for it (bf16/fp16 on CUDA by default), the heads in fp32; rows do not depend on batch size
        or order. On CUDA the next batch is queued before the previous one is collected, so uploads and copies back
        overlap the tower.
        """
        size = max(1, batch_size)
        parts: list[dict[str, np.ndarray]] = []
        inflight: deque[PendingBatch] = deque()
        for i in range(0, len(pixels), size):
            inflight.append(self.submit(pixels[i:i + size], pad_to=size))
            if len(inflight) > 1:
                parts.append(inflight.popleft().result())
        parts += [p.result() for p in inflight]
        return self.vectors(parts)

    @torch.inference_mode()
    def submit(self, pixels: np.ndarray | torch.Tensor | Sequence[np.ndarray],
               pad_to: int | None = None) -> PendingBatch:
        """Start encoding one batch of uint8 (B, S, S, 3) persons, or of B uint8 (S, S, 3) crops as a list (left
        where they lie: on the CPU each is normalised straight into the model's input, on CUDA stacked straight
        into pinned memory); ``.result()`` of the returned batch waits for it.

        On CUDA the work is queued and this returns at once: a numpy batch is copied from pinned memory on a side
        stream, the outputs are copied back into pinned memory, an event marks the end. On the CPU it runs now.
        With ``compile`` on, a batch smaller than ``pad_to`` is padded (rows are independent) so that one
        compiled graph serves every batch.
        """
        pad = self.compile != "off" and pad_to and 0 < len(pixels) < pad_to
        if isinstance(pixels, (list, tuple)) and self.device.type == "cpu":
            n = len(pixels)
            x = self._normalise_crops(pixels, pad_to if pad else n)  # (B, 3, S, S) float32
        else:
            x = self._uploader.upload(pixels)  # (B, S, S, 3) uint8 on the device
            n = len(x)
            if pad:
                x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
            x = self._normalise(x)  # (B, 3, S, S) float32
        if self.compile == "reduce-overhead":  # a new CUDA graph replay; the last outputs are already copied out
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            out = self.forward(x)  # the tower under autocast, the heads in fp32
        return PendingBatch({k: out[k][:n] for k in OUTPUT_KEYS}, self.device)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> normalised float32 (B, 3, S, S), as ``Preprocess.to_tensor``, with its scale and shift
        kept on the device (a fresh host-to-device copy per batch would wait for the batch before)."""
        return normalised(x, *self._scale_shift_on(x.device))

    def _scale_shift_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``Preprocess.scale_shift`` on ``device``, made once."""
        if self._scale_shift is None or self._scale_shift[0].device != device:
            self._scale_shift = self.preprocess.scale_shift(device)
        return self._scale_shift

    def _normalise_crops(self, crops: Sequence[np.ndarray], rows: int) -> torch.Tensor:
        """B uint8 (S, S, 3) crops -> normalised float32 (rows, 3, S, S) on the CPU (rows >= B: the padding rows
        hold zeros or an earlier batch's values), in memory kept from batch to batch: the model is done with its
        input when ``submit`` returns, and fresh pages would cost more than the conversion."""
        size = crops[0].shape[0]
        if self._input is None or self._input.shape[0] < rows or self._input.shape[2] != size:
            self._input = torch.zeros((rows, 3, size, size), dtype=torch.float32)
        normalised_crops(crops, *self._scale_shift_on(self._input.device), out=self._input)
        return self._input[:rows]

    def vectors(self, parts: Sequence[dict[str, np.ndarray]]) -> PersonVectors:
        """Collected batches (``PendingBatch.result()``, in order) -> PersonVectors, the language space applied."""
        empty = {"visual": (0, self.model.visual_dim), "pasta": (0, tx.N_PASTA), "verbs": (0, tx.N_VERBS),
                 "parts": (0, tx.N_PARTS), "visual_norm": (0,)}
        arrays = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(empty[k], np.float32)
                  for k in OUTPUT_KEYS}
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


def default_batch_size(device: torch.device) -> int:
    """Persons per batch when none is given: 32 on the CPU; on CUDA 256 with 16 GiB of memory or more, else 64
    (ViT-B/16 in bf16 with SDPA needs a few MB of activations per person; bench/gpu_check.sh measures 32-512)."""
    if device.type != "cuda":
        return 32
    total = torch.cuda.get_device_properties(device).total_memory
    return 256 if total >= 16 * 2**30 else 64


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
