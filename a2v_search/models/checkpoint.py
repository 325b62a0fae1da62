"""Checkpoints: safe reading of pickled files, the official CLIP-Activity2Vec layout, OpenAI ``visual.*`` state
dicts, and the project's own format (safetensors + JSON, no pickle).

Own format, a folder:
    a2v_config.json      {"format": "a2v-checkpoint", "version": 1, "heads": {...}, "backbone": ..., "preprocess": ...}
    heads.safetensors    the eight heads (PastaHeads state dict)
    backbone/            optional: a transformers CLIPVisionModelWithProjection (config.json + model.safetensors)
When ``backbone`` is absent, ``a2v_config.json`` names the CLIP model the heads were trained on.

Identity: a checkpoint's content identity is checked on the bytes that are loaded. A file is read once; its sha256
is taken of those bytes, compared with the identity a store recorded (``expect``) and only then are they unpickled,
so a file swapped in at the path in between is never loaded. A folder's identity is that of its weight files
(``heads.safetensors``, ``backbone/*.safetensors``), read once the same way; a converted folder keeps the identity
of its source (``identity`` in its config) only while its weights are the ones the converter wrote (``weights``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.initialization import no_init_weights

from ..errors import CheckpointError, first_line
from ..hashing import file_sha256
from .heads import HEAD_SIZES, PastaHeads

FORMAT = "a2v-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "a2v_config.json"
HEADS_NAME = "heads.safetensors"
BACKBONE_DIR = "backbone"
#: Globals a safe load may construct besides tensors and containers: the reference stores its argparse args.
SAFE_GLOBALS = [argparse.Namespace]
OFFICIAL_PREFIX = "backbone.image_model."


def _identity(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def read_once(path: Path, expect: str | None = None) -> tuple[bytes, str]:
    """A checkpoint file's bytes, read once, and their content identity; with ``expect`` (the identity a store
    recorded) other bytes are refused before anything reads them."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from e
    ident = _identity(data)
    if expect is not None and ident != expect:
        raise CheckpointError(f"{path} is not the one this store's vectors were made with (content identity {ident}, "
                              f"the store recorded {expect}); restore that file, or use another --data-dir")
    return data, ident


def read_torch_file(path: Path, trust: bool = False, expect: str | None = None) -> tuple[object, str]:
    """Load a ``torch.save`` file: (its object, the identity of the bytes loaded; ``expect`` as in ``read_once``).
    Without ``trust`` no pickled code can run: only tensors, containers and ``argparse.Namespace`` are allowed, and
    anything else is refused with the reason."""
    path = Path(path)
    data, ident = read_once(path, expect)
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); download it again")
    try:
        if trust:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False), ident
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), ident
    except pickle.UnpicklingError as e:
        reason = str(e).split("\n")[0] if trust else _unsafe_reason(e)
        if trust:
            raise CheckpointError(f"checkpoint {path} is corrupt: {reason}") from e
        raise CheckpointError(
            f"checkpoint {path} needs more than tensors to load ({reason}), which could run code from the file. "
            "Pass --trust-checkpoint (on each command; it is never remembered) only if you trust its source, or "
            f"convert it once with `manage.py convert-checkpoint {path} OUT --trust-checkpoint` and use "
            "--checkpoint OUT") from e
    except Exception as e:  # torch raises many types (RuntimeError, EOFError, IndexError...) for bad files
        raise CheckpointError(f"checkpoint {path} is not a readable torch file (truncated or corrupt?): "
                              f"{first_line(e, type(e).__name__)}") from e


def _unsafe_reason(e: Exception) -> str:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if m:
        return f"it pickles the global {m.group(1)}, which is not on the allow-list"
    m = re.search(r"Unsupported operand \d+", str(e))
    return m.group(0) if m else str(e).strip().splitlines()[-1][:200]


def _clean_keys(sd: dict) -> dict[str, torch.Tensor]:
    """Drop a DataParallel ``module.`` prefix; keep tensors only."""
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            out[k[7:] if k.startswith("module.") else k] = v
    return out


def state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint object (``{"model": sd, ...}``, ``{"state_dict": sd}`` or sd)."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                return _clean_keys(obj[key])
        sd = _clean_keys(obj)
        if sd:
            return sd
    raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors or {{'model': state_dict}})")


# ---------------------------------------------------------------- OpenAI layout -> transformers layout


def openai_visual_to_hf(sd: dict[str, torch.Tensor], prefix: str, source: str
                        ) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    """Convert an OpenAI CLIP image tower (keys ``{prefix}conv1.weight``...) into a transformers
    ``CLIPVisionModelWithProjection`` config and state dict, exactly. Dimensions come from the weights."""
    def get(key: str) -> torch.Tensor:
        return sd[prefix + key]

    required = ["class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight", "ln_pre.bias",
                "ln_post.weight", "ln_post.bias"]
    missing = [prefix + k for k in required if prefix + k not in sd]
    block = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    layers = sorted({int(m.group(1)) for k in sd if (m := block.match(k))})
    if missing or not layers:
        raise CheckpointError(f"{source}: not a CLIP image tower in the OpenAI layout; missing "
                              f"{', '.join(missing[:6]) or prefix + 'transformer.resblocks.*'}")
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{source}: resblocks are not numbered 0..{len(layers) - 1}: {layers}")
    conv = get("conv1.weight")  # (width, 3, patch, patch)
    width, patch = conv.shape[0], conv.shape[-1]
    n_pos = get("positional_embedding").shape[0]
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise CheckpointError(f"{source}: positional_embedding has {n_pos} rows, not 1 + a square grid")
    proj = get("proj")  # (width, out)
    if proj.shape[0] != width:
        raise CheckpointError(f"{source}: proj is {tuple(proj.shape)}, expected ({width}, output_dim)")
    mlp = get("transformer.resblocks.0.mlp.c_fc.weight").shape[0] if (
        prefix + "transformer.resblocks.0.mlp.c_fc.weight") in sd else 4 * width
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=mlp, projection_dim=proj.shape[1],
                              num_hidden_layers=len(layers), num_attention_heads=max(1, width // 64),
                              image_size=grid * patch, patch_size=patch, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5)
    out = {
        "vision_model.embeddings.class_embedding": get("class_embedding"),
        "vision_model.embeddings.position_embedding.weight": get("positional_embedding"),
        "vision_model.embeddings.patch_embedding.weight": conv,
        "vision_model.pre_layrnorm.weight": get("ln_pre.weight"),
        "vision_model.pre_layrnorm.bias": get("ln_pre.bias"),
        "vision_model.post_layernorm.weight": get("ln_post.weight"),
        "vision_model.post_layernorm.bias": get("ln_post.bias"),
        "visual_projection.weight": proj.T.contiguous(),
    }
    names = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for i in layers:
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        keys = ["attn.in_proj_weight", "attn.in_proj_bias", *(f"{n}.{p}" for n in names for p in ("weight", "bias"))]
        block_missing = [prefix + src + k for k in keys if prefix + src + k not in sd]
        if block_missing:
            raise CheckpointError(f"{source}: missing {', '.join(block_missing[:4])}")
        for part, t in zip(("q", "k", "v"), get(src + "attn.in_proj_weight").chunk(3, dim=0), strict=True):
            out[f"{dst}self_attn.{part}_proj.weight"] = t.contiguous()
        for part, t in zip(("q", "k", "v"), get(src + "attn.in_proj_bias").chunk(3, dim=0), strict=True):
            out[f"{dst}self_attn.{part}_proj.bias"] = t.contiguous()
        for a, b in names.items():
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = get(f"{src}{a}.{p}")
    return config, {k: v.float() for k, v in out.items()}


def build_vision(config: CLIPVisionConfig, state_dict: dict[str, torch.Tensor], source: str
                 ) -> CLIPVisionModelWithProjection:
    """A CLIPVisionModelWithProjection with exactly ``state_dict``; shape errors name the tensor."""
    with no_init_weights():  # every weight is loaded below (strictly), so skip the random init
        model = CLIPVisionModelWithProjection(config)
    expected = model.state_dict()
    for k, v in state_dict.items():
        if k in expected and expected[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"{source}: image tower does not match; missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    return model.eval()


def build_heads(state_dict: dict[str, torch.Tensor], source: str) -> PastaHeads:
    """PastaHeads from a state dict with keys ``{head}_fc.layers.{0,1,2}.*``; dims come from the weights."""
    missing = [f"{h}_fc.layers.{i}.{p}" for h in HEAD_SIZES for i in range(3) for p in ("weight", "bias")
               if f"{h}_fc.layers.{i}.{p}" not in state_dict]
    if missing:
        raise CheckpointError(f"{source}: PaSta heads incomplete; missing {', '.join(missing[:6])}"
                              + (f" and {len(missing) - 6} more" if len(missing) > 6 else ""))
    w0 = state_dict["verb_fc.layers.0.weight"]  # (hidden, d)
    heads = PastaHeads(dim_in=w0.shape[1], dim_hidden=w0.shape[0])
    for h, n in HEAD_SIZES.items():
        got = state_dict[f"{h}_fc.layers.2.weight"].shape[0]
        if got != n:
            raise CheckpointError(f"{source}: head {h} has {got} classes, expected {n} (93-state / 157-verb setting)")
    expected = heads.state_dict()
    for k, v in state_dict.items():
        if k in expected and expected[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    heads.load_state_dict({k: state_dict[k].float() for k in expected})
    return heads.eval()


def load_official(path: Path, trust: bool = False, expect: str | None = None
                  ) -> tuple[CLIPVisionModelWithProjection, PastaHeads, dict]:
    """The published CLIP-Activity2Vec checkpoint (``ckpt_4.pth``): its image tower and heads; the info holds the
    ``identity`` of the bytes loaded (``expect``: as in ``read_once``)."""
    obj, ident = read_torch_file(path, trust, expect)
    sd = state_dict_of(obj, path)
    if not any(k.startswith(OFFICIAL_PREFIX) for k in sd):
        raise CheckpointError(f"{path}: not a CLIP-Activity2Vec checkpoint (no '{OFFICIAL_PREFIX}*' keys); "
                              "for an OpenAI CLIP state dict use --model instead")
    config, vision_sd = openai_visual_to_hf(sd, OFFICIAL_PREFIX, str(path))
    heads_sd = {k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")}
    vision = build_vision(config, vision_sd, str(path))
    heads = build_heads(heads_sd, str(path))
    if heads.dim_in != config.projection_dim:
        raise CheckpointError(f"{path}: heads take {heads.dim_in}-d input but the image tower outputs "
                              f"{config.projection_dim}-d")
    info = {"source": "official", "epoch": obj.get("epoch") if isinstance(obj, dict) else None, "identity": ident}
    return vision, heads, info


def load_openai_visual(path: Path, trust: bool = False, expect: str | None = None
                       ) -> tuple[CLIPVisionModelWithProjection, str]:
    """The image tower of an OpenAI CLIP state dict (``visual.*`` keys; .pt/.pth/.bin or .safetensors) and the
    identity of the bytes loaded (``expect``: as in ``read_once``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        data, ident = read_once(path, expect)
        sd = _safetensors(data, path)
    else:
        try:
            obj, ident = read_torch_file(path, trust, expect)
        except CheckpointError:
            if not trust and zipfile.is_zipfile(path) and _is_torchscript(path):
                raise CheckpointError(f"{path} is a TorchScript archive (it carries code); pass --trust-checkpoint "
                                      "to read its weights") from None
            raise
        sd = state_dict_of(obj, path)
    if not any(k.startswith("visual.") for k in sd):
        raise CheckpointError(f"{path}: no 'visual.*' keys; expected an OpenAI CLIP state dict")
    config, vision_sd = openai_visual_to_hf(sd, "visual.", str(path))
    return build_vision(config, vision_sd, str(path)), ident


def _safetensors(data: bytes, source: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{source} is missing or corrupt: {first_line(e)}") from e


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


# ---------------------------------------------------------------- own format


def is_own_checkpoint(path: Path) -> bool:
    """True for a folder in the project's own checkpoint format."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()


def save_checkpoint(folder: Path, heads: PastaHeads, vision: CLIPVisionModelWithProjection | None = None,
                    backbone_ref: str | None = None, extra: dict | None = None) -> Path:
    """Write heads (and the image tower, when given) in the own format. ``backbone_ref`` names the CLIP model
    the heads were trained on when the tower is not included."""
    if vision is None and not backbone_ref:
        raise CheckpointError("a checkpoint without its image tower must name the CLIP model it belongs to")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in heads.state_dict().items()},
              str(folder / HEADS_NAME))
    if vision is not None:
        vision.save_pretrained(folder / BACKBONE_DIR)
    config = {"format": FORMAT, "version": FORMAT_VERSION,
              "heads": {"dim_in": heads.dim_in, "dim_hidden": heads.dim_hidden, "sizes": HEAD_SIZES},
              "backbone": BACKBONE_DIR if vision is not None else None, "backbone_ref": backbone_ref,
              **(extra or {}), "weights": _weights_identity(_weight_files(folder))}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return folder


def _weight_files(folder: Path) -> dict[str, bytes]:
    """The weight files of an own-format folder, each read once: heads, then the tower's in name order."""
    files = [folder / HEADS_NAME]
    backbone = folder / BACKBONE_DIR
    files += sorted(backbone.glob("*.safetensors")) if backbone.is_dir() else []
    out = {}
    for f in files:
        try:
            out[str(f.relative_to(folder))] = f.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{f} is missing or unreadable: {e.strerror}") from e
    return out


def _weights_identity(files: dict[str, bytes]) -> str:
    h = hashlib.sha256(hashlib.sha256(files[HEADS_NAME]).hexdigest().encode())
    for name in sorted(n for n in files if n != HEADS_NAME):
        h.update(hashlib.sha256(files[name]).hexdigest().encode())
    return h.hexdigest()[:16]


def _folder_config(folder: Path) -> dict:
    try:
        return json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME} is unreadable: {e}") from e


def _folder_identity(config: dict, files: dict[str, bytes]) -> str:
    """A converted folder's recorded source identity while its weights are the converter's, else its weights'."""
    weights = _weights_identity(files)
    recorded = config.get("identity")
    return str(recorded) if recorded and config.get("weights") == weights else weights


def load_checkpoint(folder: Path, expect: str | None = None
                    ) -> tuple[CLIPVisionModelWithProjection | None, PastaHeads, dict]:
    """Read an own-format checkpoint: (image tower or None, heads, config with the ``identity`` of the weights
    loaded). No pickle is involved; each weight file is read once, and with ``expect`` (the identity a store
    recorded) other weights are refused before they are loaded."""
    folder = Path(folder)
    config = _folder_config(folder)
    if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: format {config.get('format')} v{config.get('version')} is not "
                              f"{FORMAT} v{FORMAT_VERSION}")
    files = _weight_files(folder)
    ident = _folder_identity(config, files)
    if expect is not None and ident != expect:
        raise CheckpointError(f"{folder} is not the one this store's vectors were made with (content identity "
                              f"{ident}, the store recorded {expect}); restore it, or use another --data-dir")
    heads = build_heads(_safetensors(files[HEADS_NAME], folder / HEADS_NAME), str(folder))
    vision = None
    if config.get("backbone"):
        tower = folder / config["backbone"]
        try:
            vision_config = CLIPVisionConfig.from_pretrained(tower)
        except Exception as e:  # transformers raises OSError/ValueError for bad folders
            raise CheckpointError(f"{tower}: image tower unreadable: {first_line(e)}") from e
        sd = {k: v for name, data in files.items() if name != HEADS_NAME
              for k, v in _safetensors(data, folder / name).items()}
        vision = build_vision(vision_config, sd, str(tower))
        if vision.config.projection_dim != heads.dim_in:
            raise CheckpointError(f"{folder}: heads take {heads.dim_in}-d input, image tower outputs "
                                  f"{vision.config.projection_dim}-d")
    return vision, heads, {**config, "identity": ident}


def convert_checkpoint(src: Path, out: Path, trust: bool = False) -> Path:
    """Convert the published ``ckpt_4.pth`` once into the own format (image tower included), loadable without pickle."""
    vision, heads, info = load_official(Path(src), trust)
    if Path(out).exists() and any(Path(out).iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose a new output folder")
    return save_checkpoint(out, heads, vision, extra={"converted_from": Path(src).name, "epoch": info.get("epoch"),
                                                      "identity": info["identity"],
                                                      "preprocess": {"size": int(vision.config.image_size)}})


def checkpoint_identity(path: Path) -> str:
    """A short stable identity of a checkpoint's content: the sha256 of a file, or of a folder's weight files (a
    converted folder keeps its source's identity while its weights are the converter's: same weights, same vector
    space). Loading checks it again on the bytes it loads (``expect``)."""
    path = Path(path).resolve()
    if is_own_checkpoint(path):
        return _folder_identity(_folder_config(path), _weight_files(path))
    st = path.stat()
    return _file_identity(path, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=16)
def _file_identity(path: Path, _size: int, _mtime_ns: int, _ino: int) -> str:
    """The identity of a checkpoint file (streamed, not held in memory), hashed once per version of the file (the
    stat values are the key); loading hashes the bytes it loads again."""
    return file_sha256(path)[:16]
