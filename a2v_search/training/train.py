"""Training the eight PaSta heads on HAKE annotations, as CLIP-Activity2Vec does, on a frozen CLIP image tower.

The tower is frozen, so its features are computed once per (model, samples, image files) and cached in
``<data_dir>/cache/features/<key>.npy``, with those of the mirrored inputs beside them for the reference's
horizontal-flip augmentation; samples whose image cannot be read are reported and left out. The heads then train
on the cached features:
per head ``bce = BCEWithLogits(logit, y)`` elementwise, ``pt = exp(-bce)``, ``loss = mean(3 * (1 - pt) * bce)``,
the eight head losses summed; no_interaction targets (last state of each part, verb 57) forced to 0;
AdamW (lr 1e-3, weight decay 1e-5), cosine schedule to 1e-6 per iteration, 5 epochs, batch 32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .. import taxonomy as tx
from ..errors import CheckpointError, InputError
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.encoder import ActivityEncoder
from ..models.heads import HEAD_SIZES, PastaHeads
from .hake_data import HakeData

FEATURE_CACHE = Path("cache") / "features"
#: Focusing factor and weight of the reference loss: mean(3 * (1 - pt) * bce).
LOSS_WEIGHT = 3.0


# ---------------------------------------------------------------- features of the frozen tower


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on stderr (stdout stays clean for --json)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"), console=Console(stderr=True), disable=not enabled)


def autocast(encoder: ActivityEncoder) -> AbstractContextManager:
    """The encoder's autocast context (bf16/fp16 on CUDA, none on CPU), as used at ingest."""
    if encoder.amp_dtype is None:
        return nullcontext()
    return torch.autocast(encoder.device.type, dtype=encoder.amp_dtype)


def _file_stats(paths: list[Path]) -> list[tuple[str, int, int]]:
    return [(p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in paths if p.is_file()]


def feature_key(encoder: ActivityEncoder, data: HakeData, images_root: Path) -> str:
    """Cache key of the features: the image tower and its preprocessing, every (image, box), the image files."""
    ref = str(encoder.space.get("visual_model"))
    local = Path(ref)
    model_files = sorted(local.iterdir()) if local.is_dir() else [local]
    root = Path(images_root).resolve()
    h = hashlib.sha256()
    h.update(json.dumps({"model": ref, "model_files": _file_stats(model_files), "preprocess": repr(encoder.preprocess),
                         "amp": str(encoder.amp_dtype), "root": str(root)}).encode())
    for image, box in zip(data.images, data.boxes, strict=True):
        h.update(f"{image}|{box}\n".encode())
    for image in sorted(set(data.images)):
        path = root / image
        st = path.stat() if path.is_file() else None
        h.update(f"{image}|{st and st.st_size}|{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _load_pixels(encoder: ActivityEncoder, path: Path, box: tuple[float, ...] | None) -> np.ndarray:
    """(S, S, 3) uint8 input of one sample; InputError naming the file and the reason when it cannot be used."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")  # a truncated file fails here: it is reported, not filled with grey
        return encoder.preprocess.pixels(image, box)  # (S, S, 3) uint8
    except InputError as e:
        raise InputError(f"{path}: {e}; fix the annotation's box or image size") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read image {path}: {e}; replace the file or remove its entry from the "
                         "annotations") from e


def _try_pixels(encoder: ActivityEncoder, path: Path, box: tuple[float, ...] | None) -> np.ndarray | str:
    """The sample's pixels, or the reason they cannot be had."""
    try:
        return _load_pixels(encoder, path, box)
    except InputError as e:
        return str(e)


@dataclass
class Features:
    """Frozen-tower features of every sample, row i = sample i. Rows of samples whose image could not be used are
    NaN, with the reason in ``unreadable``."""

    plain: np.ndarray  # (N, P) float32, unnormalised tower output
    mirrored: np.ndarray | None  # (N, P) the same of the horizontally mirrored input; None when not asked for
    unreadable: dict[int, str]  # sample index -> why it has no features
    path: Path  # the cache file of ``plain``
    hit: bool  # whether everything came from the cache

    @property
    def readable(self) -> np.ndarray:
        """(N,) bool: samples that have features."""
        return ~np.isnan(self.plain).any(axis=1)


def compute_features(encoder: ActivityEncoder, data: HakeData, images_root: Path, batch_size: int = 32,
                     progress: bool = False, mirrored: bool = False
                     ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
    """(N, P) float32 unnormalised tower features of every sample: whole image when its box is None, else the
    person crop; with ``mirrored``, also of the horizontally mirrored input (flipped after resizing, as the
    reference's ``RandomHorizontalFlip`` after ``Resize``). Images are decoded by a few threads; the tower runs in
    batches on the encoder's device. A sample whose image cannot be read (missing, truncated, corrupt, box
    outside it) gets a NaN row and its reason in the returned dict."""
    root = Path(images_root)
    out = np.full((len(data), encoder.model.visual_dim), np.nan, np.float32)
    out_m = out.copy() if mirrored else None
    unreadable: dict[int, str] = {}
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, progress_bar(progress) as bar:
        task = bar.add_task("features", total=len(data), info="")
        for start in range(0, len(data), batch_size):
            idx = range(start, min(start + batch_size, len(data)))
            loaded = list(pool.map(lambda i: _try_pixels(encoder, root / data.images[i], data.boxes[i]), idx))
            ok = [i for i, px in zip(idx, loaded, strict=True) if not isinstance(px, str)]
            unreadable.update({i: px for i, px in zip(idx, loaded, strict=True) if isinstance(px, str)})
            if ok:
                pixels = np.stack([px for px in loaded if not isinstance(px, str)])  # (B, S, S, 3) uint8
                out[ok] = _tower(encoder, pixels)  # (B, P)
                if out_m is not None:
                    out_m[ok] = _tower(encoder, np.ascontiguousarray(pixels[:, :, ::-1]))  # mirrored: flip width
            bar.advance(task, len(idx))
    return out, out_m, unreadable


def _tower(encoder: ActivityEncoder, pixels: np.ndarray) -> np.ndarray:
    """uint8 (B, S, S, 3) -> (B, P) float32 tower features, under the encoder's autocast."""
    with torch.inference_mode(), autocast(encoder):
        x = encoder.preprocess.to_tensor(torch.from_numpy(pixels).to(encoder.device))  # (B, 3, S, S)
        return encoder.model.features(x).float().cpu().numpy()


def _save_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")  # unpredictable name
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    try:
        with path.open("rb") as f:
            feats = np.load(f)
        return feats if feats.shape == shape else None
    except (OSError, ValueError):  # absent, truncated or foreign: compute again
        return None


def cached_features(encoder: ActivityEncoder, data: HakeData, images_root: Path, data_dir: Path,
                    batch_size: int = 32, progress: bool = False, mirrored: bool = False) -> Features:
    """Features from ``<data_dir>/cache/features/<key>.npy`` (mirrored: ``<key>.mirrored.npy``; reasons of
    unreadable samples: ``<key>.unreadable.json``), computed and written there when absent."""
    folder = Path(data_dir) / FEATURE_CACHE
    key = feature_key(encoder, data, images_root)
    path, path_m, path_bad = folder / f"{key}.npy", folder / f"{key}.mirrored.npy", folder / f"{key}.unreadable.json"
    shape = (len(data), encoder.model.visual_dim)
    plain = _read_cache(path, shape)
    flipped = _read_cache(path_m, shape) if mirrored else None
    if plain is not None and (flipped is not None or not mirrored):
        try:
            unreadable = {int(k): v for k, v in json.loads(path_bad.read_text()).items()}
        except (OSError, ValueError):
            unreadable = {}
        for i in np.flatnonzero(np.isnan(plain).any(axis=1)):
            unreadable.setdefault(int(i), "image could not be read (reason not recorded)")
        return Features(plain, flipped, unreadable, path, True)
    plain, flipped, unreadable = compute_features(encoder, data, images_root, batch_size, progress, mirrored)
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomic(path_bad, lambda p: p.write_text(json.dumps({str(k): v for k, v in unreadable.items()})))
    if flipped is not None:
        _save_atomic(path_m, lambda p: _save_npy(p, flipped))
    _save_atomic(path, lambda p: _save_npy(p, plain))  # last: its presence marks a complete entry
    return Features(plain, flipped, unreadable, path, False)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, array)


def split_by_image(data: HakeData, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a seeded ``fraction`` of the distinct images held out with all their samples,
    so no image (and no person of it) is on both sides."""
    images = sorted(set(data.images))
    n_val = round(fraction * len(images))
    if not 0 < fraction < 1 or n_val < 1 or n_val >= len(images):
        raise InputError(f"--val-split {fraction} holds out {n_val} of {len(images)} images; give a fraction in (0, 1) "
                         "that leaves at least one image on each side")
    order = np.random.default_rng(seed).permutation(len(images))
    held = {images[i] for i in order[:n_val]}
    mask = np.array([im in held for im in data.images], bool)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# ---------------------------------------------------------------- the heads


def head_targets(data: HakeData) -> dict[str, np.ndarray]:
    """Training targets per head (float32 (N, C)), no_interaction forced to 0 (last state of each part, verb 57)."""
    targets = {"verb": data.verbs.astype(np.float32)}
    targets["verb"][:, tx.NO_INTERACTION_VERB] = 0.0
    for part, rng in tx.PART_RANGES.items():
        targets[part] = data.pasta[:, rng.start:rng.stop].astype(np.float32)
        targets[part][:, -1] = 0.0
    targets["pasta_binary"] = data.parts.astype(np.float32)
    return {h: targets[h] for h in HEAD_SIZES}


def reference_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's loss of one head: mean(3 * (1 - pt) * bce), bce elementwise, pt = exp(-bce)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, C)
    return (LOSS_WEIGHT * (1.0 - torch.exp(-bce)) * bce).mean()


@dataclass
class TrainResult:
    """Trained heads (CPU, eval mode) and the mean loss of every epoch."""

    heads: PastaHeads
    epoch_losses: list[float] = field(default_factory=list)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


@contextmanager
def _cpu_threads(device: torch.device, n: int = 1) -> Iterator[None]:
    """Limit torch's intra-op threads on the CPU: the heads' matmuls are small, and threads gain little there but
    thrash (measured 100x slower) when other processes keep the cores busy."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_heads(features: np.ndarray, data: HakeData, *, mirrored: np.ndarray | None = None, epochs: int = 5,
                batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-5, min_lr: float = 1e-6,
                hidden: int = 512, seed: int = 0, device: str | torch.device = "cpu",
                progress: bool = False) -> TrainResult:
    """Train fresh PastaHeads on (N, P) frozen features with the reference loss and schedule; seeded and
    deterministic on the CPU. With ``mirrored`` (N, P), every sample of every batch uses its mirrored features with
    probability 1/2 (the reference's ``RandomHorizontalFlip``; part states and verbs do not change with a flip)."""
    n = len(data)
    if features.shape[0] != n or n == 0:
        raise InputError(f"{features.shape[0]} feature rows for {n} samples; nothing to train on")
    if epochs < 1 or batch_size < 1 or lr <= 0 or hidden < 1:
        raise InputError("--epochs, --batch-size and --hidden must be >= 1 and --lr > 0")
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = PastaHeads(dim_in=features.shape[1], dim_hidden=hidden)
    heads = heads.to(dev).train()
    x_all = torch.from_numpy(np.ascontiguousarray(features, np.float32)).to(dev)  # (N, P)
    if mirrored is not None and mirrored.shape != features.shape:
        raise InputError(f"mirrored features {mirrored.shape} do not match the features {features.shape}")
    x_flip = None if mirrored is None else torch.from_numpy(np.ascontiguousarray(mirrored, np.float32)).to(dev)
    y_all = {h: torch.from_numpy(t).to(dev) for h, t in head_targets(data).items()}  # (N, C) per head
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=min_lr)
    generator = torch.Generator().manual_seed(seed)
    flips = torch.Generator().manual_seed(seed + 1)  # its own stream: flips do not change the batches
    result = TrainResult(heads)
    with _cpu_threads(dev), progress_bar(progress) as bar:
        task = bar.add_task("training", total=steps, info="")
        for epoch in range(epochs):
            total, seen = 0.0, 0
            for idx in _batches(n, batch_size, generator):
                flip = torch.rand(len(idx), generator=flips) < 0.5 if x_flip is not None else None  # (B,)
                idx = idx.to(dev)
                x = x_all[idx]  # (B, P)
                if flip is not None:
                    x = torch.where(flip.to(dev)[:, None], x_flip[idx], x)
                logits = heads.logits(x)  # {head: (B, C)}
                loss = sum(reference_loss(logits[h], y_all[h][idx]) for h in HEAD_SIZES)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                total, seen = total + loss.item() * len(idx), seen + len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {total / seen:.4f}")
            result.epoch_losses.append(total / seen)
    result.heads = heads.cpu().eval()
    return result


def save_heads(out: Path, heads: PastaHeads, backbone_ref: str, features: np.ndarray, info: dict) -> Path:
    """Save in the own checkpoint format and check that the saved heads reproduce ``heads`` on ``features``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder; choose a new --out")
    save_checkpoint(out, heads, vision=None, backbone_ref=backbone_ref, extra={"training": info})
    _, loaded, _ = load_checkpoint(out)
    x = torch.from_numpy(np.ascontiguousarray(features[:256], np.float32))  # (<=256, P)
    with torch.inference_mode():
        a, b = heads.eval()(x), loaded(x)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    if diff > 1e-6:
        raise CheckpointError(f"the heads saved in {out} differ from the trained ones (max {diff:.2e}); "
                              "check the disk and train again")
    return out
