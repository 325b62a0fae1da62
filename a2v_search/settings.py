"""Settings in one place. Precedence: explicit argument (CLI flag) > environment variable > default."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

DEFAULT_DATA_DIR = "a2v_data"
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"
#: a 6-layer BERT trained for sentence similarity: ~15 ms a query on two cores; `bert-base-uncased` is the choice
#: closest to HAKE's original language features (docs/design.md)
DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: A COCO detector that transformers runs natively (RT-DETR, ResNet-50 backbone, no timm needed).
DEFAULT_DETECTOR_MODEL = "PekingU/rtdetr_r50vd"
DEVICES = ("auto", "cpu", "cuda")
#: ``torch.compile`` modes of the encoder: off (the default), default, max-autotune, reduce-overhead (CUDA graphs).
COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")
#: JPEG decoding at ingest: auto (on the GPU when the encoder runs on CUDA and torchvision is installed), gpu, cpu.
JPEG_DECODERS = ("auto", "gpu", "cpu")

#: field -> environment variable
ENV = {
    "data_dir": "A2V_DATA_DIR",
    "model": "A2V_MODEL",
    "text_model": "A2V_TEXT_MODEL",
    "detector": "A2V_DETECTOR",
    "device": "A2V_DEVICE",
}


@dataclass(frozen=True)
class Settings:
    """Resolved settings. Build with :meth:`Settings.resolve`."""

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    model: str = DEFAULT_CLIP_MODEL
    text_model: str = DEFAULT_TEXT_MODEL
    detector: str = DEFAULT_DETECTOR_MODEL
    device: str = "auto"

    @staticmethod
    def given(**flags: str | None) -> dict[str, str | None]:
        """Only what the user chose: each flag, else its ``A2V_*`` variable, else None (no default). A store's
        recorded models stand in for the defaults."""
        return {name: value if value is not None else (os.environ.get(ENV[name]) or None)
                for name, value in flags.items()}

    @classmethod
    def resolve(cls, **given: object) -> Settings:
        """Settings from explicit values (``None`` = not given), then ``A2V_*`` variables, then defaults."""
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        values: dict[str, object] = {}
        for f in fields(cls):
            value = given.get(f.name)
            if value is None:
                value = os.environ.get(ENV[f.name]) or None
            if value is not None:
                values[f.name] = value
        if "data_dir" in values:
            values["data_dir"] = Path(str(values["data_dir"])).expanduser()
        device = str(values.get("device", "auto")).lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise InputError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")
        values["device"] = device
        return cls(**values)  # type: ignore[arg-type]


def get_device(name: str = "auto") -> torch.device:
    """The torch device for ``auto|cpu|cuda|cuda:N``; ``auto`` takes CUDA when present. Nothing else picks one."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def check_choice(flag: str, value: str, valid: tuple[str, ...]) -> str:
    """``value`` when it is one of ``valid``; else an InputError naming the flag and the valid values."""
    if value not in valid:
        raise InputError(f"unknown {flag} {value!r}; valid: {', '.join(valid)}")
    return value
