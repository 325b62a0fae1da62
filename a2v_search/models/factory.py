"""One factory: model flags -> a ready :class:`ActivityEncoder` (image tower, heads, preprocessing, language space).

``model``      a transformers CLIP model (hub id or local folder), or a file with an OpenAI CLIP state dict
               (``visual.*`` keys) for the image tower alone.
``checkpoint`` trained heads: the published CLIP-Activity2Vec ``ckpt_4.pth`` (image tower + heads) or a folder in
               the project's own format. Without one, PaSta heads are zero-shot from CLIP's text tower.
``text_model`` the BERT-family model of the language space.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection
from transformers.initialization import no_init_weights

from .. import taxonomy as tx
from ..errors import CheckpointError, ModelError, first_line
from ..preprocess import CLIP_MEAN, CLIP_STD, Preprocess
from ..settings import DEFAULT_CLIP_MODEL, DEFAULT_TEXT_MODEL, get_device
from . import checkpoint as ckpt
from . import prompts
from .encoder import ActivityEncoder
from .heads import PastaHeads, ZeroShotHeads
from .language import LanguageSpace, quiet_transformers
from .network import ActivityModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What to load. ``model=None`` means the default CLIP model (or the one a heads-only checkpoint names)."""

    model: str | None = None
    checkpoint: str | None = None
    trust_checkpoint: bool = False
    text_model: str = DEFAULT_TEXT_MODEL
    #: the content identities a store recorded for the checkpoint and for an OpenAI state dict file given as
    #: ``model``: the bytes loaded must have them (checked on those bytes, before anything reads them)
    expect_checkpoint: str | None = None
    expect_model: str | None = None


def model_ref(name: str) -> str:
    """How a model is recorded: a hub id as given, a local path made absolute."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def _load_clip(name: str) -> tuple[CLIPModel, object, Preprocess]:
    """A full CLIP model with its tokenizer and preprocessing."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:  # OSError (not found / offline), ValueError (unknown type)
        raise ModelError(f"cannot load CLIP model {name!r}: {first_line(e)}. "
                         "Give a hub id (downloaded on first use), a local folder, or an OpenAI CLIP state dict file "
                         "(--model)") from e
    if config.model_type != "clip":
        raise ModelError(f"{name!r} is a {config.model_type!r} model, not CLIP; --model takes a CLIP model such as "
                         f"{DEFAULT_CLIP_MODEL}")
    try:
        clip = CLIPModel.from_pretrained(name).eval()
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise ModelError(f"cannot load CLIP model {name!r}: {first_line(e)}") from e
    return clip, tokenizer, Preprocess(size=int(config.vision_config.image_size), **_mean_std(name))


def _mean_std(name: str) -> dict:
    """Normalisation from the model's preprocessor_config.json when it has one, else CLIP's."""
    from transformers.utils import cached_file

    try:
        path = cached_file(name, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except Exception:  # offline without the file: CLIP's constants
        path = None
    if path:
        cfg = json.loads(Path(path).read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return {"mean": tuple(cfg["image_mean"]), "std": tuple(cfg["image_std"])}
    return {"mean": CLIP_MEAN, "std": CLIP_STD}


def split_clip(clip: CLIPModel) -> tuple[CLIPVisionModelWithProjection, CLIPTextModelWithProjection]:
    """The two towers of a CLIPModel as standalone modules sharing its weights."""
    vcfg, tcfg = clip.config.vision_config, clip.config.text_config
    vcfg.projection_dim = tcfg.projection_dim = clip.config.projection_dim
    with no_init_weights():  # the modules are replaced by the CLIP model's own right below
        vision = CLIPVisionModelWithProjection(vcfg)
        text = CLIPTextModelWithProjection(tcfg)
    vision.vision_model, vision.visual_projection = clip.vision_model, clip.visual_projection
    text.text_model, text.text_projection = clip.text_model, clip.text_projection
    return vision.eval(), text.eval()


@torch.inference_mode()
def zero_shot_heads(text: CLIPTextModelWithProjection, tokenizer, logit_scale: float) -> ZeroShotHeads:
    """Zero-shot PaSta/verb heads: each class is the normalised mean of its prompt embeddings (prompts.py)."""
    def embed(groups: list[list[str]]) -> torch.Tensor:
        flat = [p for g in groups for p in g]
        embs = []
        for i in range(0, len(flat), 128):
            batch = tokenizer(flat[i:i + 128], padding=True, truncation=True, return_tensors="pt")
            embs.append(torch.nn.functional.normalize(text(**batch).text_embeds.float(), dim=-1))
        e = torch.cat(embs)
        out, start = [], 0
        for g in groups:
            out.append(torch.nn.functional.normalize(e[start:start + len(g)].mean(0), dim=-1))
            start += len(g)
        return torch.stack(out)

    pasta = embed([prompts.pasta_prompts(i) for i in range(len(tx.PASTA_NAMES))])  # (93, P)
    verbs = embed([prompts.verb_prompts(i) for i in range(len(tx.VERB_NAMES))])  # (157, P)
    return ZeroShotHeads(pasta, verbs, logit_scale)


@dataclass
class Parts:
    """What the checkpoint and the CLIP model give, step by step: the image tower, the heads, the preprocessing,
    how the tower and heads are recorded in a store's space, and CLIP's text tower (None: there is none)."""

    vision: CLIPVisionModelWithProjection | None = None
    heads: PastaHeads | ZeroShotHeads | None = None
    preprocess: Preprocess | None = None
    visual_ref: str | None = None
    heads_ref: str | None = None
    backbone: str | None = None  # the CLIP model an own-format checkpoint was made from
    clip_text: ClipTextTower | None = None


@dataclass
class ClipTextTower:
    """CLIP's text tower and tokenizer (``clip_text`` queries), loaded on the first call unless given loaded."""

    name: str
    device: torch.device
    loaded: tuple[CLIPTextModelWithProjection, object] | None = None

    def __call__(self) -> tuple[CLIPTextModelWithProjection, object]:
        if self.loaded is None:
            clip, tokenizer, _ = _load_clip(self.name)
            self.loaded = (split_clip(clip)[1].to(self.device), tokenizer)
        return self.loaded


def load_encoder(spec: ModelSpec | None = None, device: str | torch.device = "auto", with_language: bool = True,
                 language: LanguageSpace | None = None, precision: str = "auto",
                 compile: str = "off") -> ActivityEncoder:
    """Load everything the spec names and return a ready encoder on ``device``.

    Precedence (the one place it is decided; :meth:`A2VSearch.model_spec` first fills the spec from the flags,
    else the store's recorded models, else the defaults):

    - image tower: the checkpoint's when it holds one, else the CLIP model's;
    - heads: the checkpoint's, else zero-shot from the CLIP model's text tower;
    - CLIP model: ``spec.model``, else the one an own-format checkpoint was made from, else the default.

    ``precision`` (auto|fp32|fp16|bf16) is the image tower's dtype on CUDA (auto: bf16 where supported); the CPU
    always runs fp32. ``compile``: off (default), default, max-autotune or reduce-overhead (torch.compile).
    ``language`` reuses an existing language space (e.g. the matrices stored with a store) instead of embedding
    the phrases again; ``with_language=False`` skips the text model entirely.
    """
    quiet_transformers()
    spec = spec or ModelSpec()
    spec = replace(spec, **{k: os.fspath(v) for k, v in asdict(spec).items() if isinstance(v, os.PathLike)})
    dev = device if isinstance(device, torch.device) else get_device(device)
    parts = _from_checkpoint(spec)
    clip_name = spec.model or parts.backbone or DEFAULT_CLIP_MODEL
    _complete_from_clip(parts, clip_name, spec.trust_checkpoint, dev, spec.expect_model)
    _check_heads(parts)
    if language is None and with_language:
        language = LanguageSpace.from_text_model(spec.text_model, dev)
    model = ActivityModel(parts.vision, parts.heads)
    return ActivityEncoder(model, parts.preprocess, dev, language=language, space=_space(spec, parts, model, language),
                           precision=precision, clip_text_loader=parts.clip_text, compile=compile)


def _from_checkpoint(spec: ModelSpec) -> Parts:
    """The heads (and, when it holds one, the image tower) of ``spec.checkpoint``; nothing without one."""
    if not spec.checkpoint:
        return Parts()
    path = Path(spec.checkpoint).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    parts = Parts()
    if ckpt.is_own_checkpoint(path):
        parts.vision, parts.heads, config = ckpt.load_checkpoint(path, spec.expect_checkpoint)
        ident = config["identity"]
        parts.backbone = config.get("backbone_ref")
        if config.get("preprocess"):
            parts.preprocess = Preprocess(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in config["preprocess"].items()})
    elif path.is_dir():
        raise CheckpointError(f"{path} is a folder without {ckpt.CONFIG_NAME}; --checkpoint takes ckpt_4.pth or "
                              "a folder written by `manage.py convert-checkpoint` or `train-heads`")
    else:
        parts.vision, parts.heads, info = ckpt.load_official(path, spec.trust_checkpoint, spec.expect_checkpoint)
        ident = info["identity"]
    parts.heads_ref = f"checkpoint:{ident}"  # the identity of the bytes loaded
    if parts.vision is not None:
        parts.visual_ref = f"checkpoint:{ident}"
        parts.preprocess = parts.preprocess or Preprocess(size=int(parts.vision.config.image_size))
    return parts


def _complete_from_clip(parts: Parts, clip_name: str, trust: bool, dev: torch.device,
                        expect: str | None = None) -> None:
    """Fill in what the checkpoint did not give from the CLIP model: an OpenAI state dict file gives an image
    tower only; a transformers CLIP model gives the tower, zero-shot heads and the text tower (loaded now when
    the tower or heads are needed, else on the first ``clip_text`` query)."""
    path = Path(clip_name).expanduser()
    if path.is_file():
        if parts.vision is None:
            parts.vision, ident = ckpt.load_openai_visual(path, trust, expect)
            parts.visual_ref = f"openai-state-dict:{ident}"
            parts.preprocess = Preprocess(size=int(parts.vision.config.image_size))
        return
    parts.clip_text = ClipTextTower(clip_name, dev)
    if parts.vision is not None and parts.heads is not None:
        return
    clip, tokenizer, clip_pre = _load_clip(clip_name)
    clip_vision, clip_text = split_clip(clip)
    if parts.vision is None:
        parts.vision, parts.preprocess, parts.visual_ref = clip_vision, clip_pre, model_ref(clip_name)
    if parts.heads is None:
        parts.heads = zero_shot_heads(clip_text, tokenizer, float(clip.logit_scale.detach().exp()))
        parts.heads_ref = f"zero-shot:{prompts.PROMPTS_VERSION}:{model_ref(clip_name)}"
    parts.clip_text.loaded = (clip_text.to(dev), tokenizer)


def _check_heads(parts: Parts) -> None:
    """Heads exist and take what the image tower outputs (ModelError / CheckpointError naming the fix)."""
    if parts.heads is None:
        raise ModelError("zero-shot PaSta needs CLIP's text tower, which an OpenAI image-tower state dict lacks; "
                         "pass --checkpoint with trained heads or a full CLIP model with --model")
    if isinstance(parts.heads, PastaHeads) and parts.heads.dim_in != parts.vision.config.projection_dim:
        raise CheckpointError(f"the heads take {parts.heads.dim_in}-d features but the image tower outputs "
                              f"{parts.vision.config.projection_dim}-d; use the CLIP model the heads were trained on")


def _space(spec: ModelSpec, parts: Parts, model: ActivityModel, language: LanguageSpace | None) -> dict:
    """What a store records of these models (store.py compares it field by field)."""
    return {
        "visual_model": parts.visual_ref, "heads": parts.heads_ref,
        "text_model": model_ref(language.text_model) if language else model_ref(spec.text_model),
        "phrases": prompts.phrases_ref(),
        "visual_dim": model.visual_dim, "language_dim": language.dim if language else None,
        **(language.record() if language else {}),
        "image_size": parts.preprocess.size,
        # what made the vectors (paths; identities are in visual_model / heads), never the consent to unpickle
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("trust_checkpoint", "expect_checkpoint",
                                                                     "expect_model")},
    }
