"""Option types shared by the CLI commands (same flag, same help, everywhere), and the flag groups that several
commands take together (:class:`ModelFlags`, :class:`DetectorFlags`; see :func:`flag_groups`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Store folder (env A2V_DATA_DIR; default ./a2v_data).",
                                              show_default=False)]
Model = Annotated[str | None, typer.Option(help="CLIP model: hub id, local folder, or OpenAI state dict file (env "
                                                "A2V_MODEL; default: the store's, else openai/clip-vit-base-patch16).",
                                           show_default=False)]
Checkpoint = Annotated[str | None, typer.Option(help="Trained PaSta heads: ckpt_4.pth or a converted/trained folder. "
                                                     "Without one, PaSta is zero-shot.", show_default=False)]
Trust = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow a pickled checkpoint to run code when loading "
                                                                "(only for files you trust).")]
TextModel = Annotated[str | None, typer.Option(help="BERT-family text model of the language space (env "
                                                    "A2V_TEXT_MODEL; default: the store's, else "
                                                    "sentence-transformers/all-MiniLM-L6-v2; bert-base-uncased is "
                                                    "closest to HAKE's original).",
                                               show_default=False)]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (env A2V_DEVICE; default auto).",
                                            show_default=False)]
Detector = Annotated[str | None, typer.Option(help="none (whole image = one person), boxes:FILE (COCO or HAKE JSON), "
                                                   "or a transformers detector (env A2V_DETECTOR; default: "
                                                   "the store's, else PekingU/rtdetr_r50vd).", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Threshold = Annotated[float, typer.Option(help="Detector score threshold.")]
MaxPersons = Annotated[int, typer.Option(help="Detector: at most this many persons per image.")]
MinSize = Annotated[float, typer.Option(help="Detector: minimum box side in pixels.")]


class PrecisionName(str, Enum):
    """Precisions of the image tower (``models.encoder.PRECISIONS``)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


Precision = Annotated[PrecisionName, typer.Option(help="Precision of the image tower (autocast): auto = bf16 on CUDA, "
                                                       "fp32 on the CPU. The heads always run in fp32.")]


@dataclass(frozen=True)
class ModelFlags:
    """--model, --checkpoint, --trust-checkpoint, --text-model, --device: the models a command loads."""

    model: Model = None
    checkpoint: Checkpoint = None
    trust_checkpoint: Trust = False
    text_model: TextModel = None
    device: Device = None


@dataclass(frozen=True)
class DetectorFlags:
    """--threshold, --max-persons, --min-size: how a detector model keeps persons."""

    threshold: Threshold = 0.5
    max_persons: MaxPersons = 20
    min_size: MinSize = 16.0


@dataclass(frozen=True)
class FilterFlags:
    """--collection, --path, --where, --kind, --cluster: which stored persons a command reads (search, export, ...)."""

    collection: Annotated[str | None, typer.Option(help="Only this collection.", show_default=False)] = None
    path: Annotated[str | None, typer.Option(help="Only media whose path matches this glob.",
                                             show_default=False)] = None
    where: Annotated[list[str] | None, typer.Option(help="Filter on a PaSta or verb probability, e.g. "
                                                         "'hand: hold>=0.5', or an object: 'object: cup', "
                                                         "'object: cup>=0.5' (repeatable).",
                                                    show_default=False)] = None
    kind: Annotated[str | None, typer.Option(help="image or video.", show_default=False)] = None
    cluster: Annotated[str | None, typer.Option(help="Only the persons of one cluster NAME:ID of a stored "
                                                     "clustering (`manage.py clusters`).", show_default=False)] = None

    def as_dict(self) -> dict:
        """The filters as keyword arguments of the search and export calls (no --where: None)."""
        return {"collection": self.collection, "path": self.path, "where": self.where or None, "kind": self.kind,
                "cluster": self.cluster}


GROUPS = (ModelFlags, DetectorFlags, FilterFlags)


def flag_groups(command: Callable) -> Callable:
    """Let a command take a flag group (a parameter annotated :class:`ModelFlags`, :class:`DetectorFlags` or
    :class:`FilterFlags`):
    typer sees the group's flags in its place, and the command gets them as one group object."""
    signature = inspect.signature(command, eval_str=True)
    params, grouped = [], {}
    for p in signature.parameters.values():
        if p.annotation not in GROUPS:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))  # typer passes every value by name
            continue
        group = p.annotation
        hints = inspect.get_annotations(group, eval_str=True)
        grouped[p.name] = (group, [f.name for f in fields(group)])
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                     annotation=hints[f.name]) for f in fields(group)]

    @functools.wraps(command)
    def run(**kwargs):
        for name, (group, names) in grouped.items():
            kwargs[name] = group(**{n: kwargs.pop(n) for n in names})
        return command(**kwargs)

    run.__signature__ = signature.replace(parameters=params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run
