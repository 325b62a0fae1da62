"""CLI commands ``dataset-info``, ``train-heads`` and ``evaluate``: PaSta heads on HAKE annotations (see
docs/training.md).

Heavy imports (torch, transformers) happen inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..cli_options import Checkpoint, DataDir, Device, Json, Model, Precision, PrecisionName, Trust

if TYPE_CHECKING:
    from .evaluate import Evaluation
    from .hake_data import HakeData

#: Problems printed one per line before the count.
MAX_PROBLEMS_SHOWN = 20

AnnotationsArg = Annotated[Path, typer.Argument(help="HAKE annotations: CLIP-Activity2Vec, instance-level or HICO "
                                                     "image-level JSON (or a .tar.gz holding one).")]
ImagesOpt = Annotated[Path, typer.Option("--images", help="Folder the annotation's image paths are relative to.")]


def _load_data(annotations: Path, images: Path | None) -> HakeData:
    """Load the annotations; report skipped entries on stderr; fail when nothing is usable."""
    from ..errors import InputError
    from .hake_data import load_annotations

    data = load_annotations(annotations, images)
    for p in data.problems[:MAX_PROBLEMS_SHOWN]:
        typer.echo(f"warning: skipped {p}", err=True)
    if len(data.problems) > MAX_PROBLEMS_SHOWN:
        typer.echo(f"warning: ... and {len(data.problems) - MAX_PROBLEMS_SHOWN} more", err=True)
    if data.problems:
        typer.echo(f"warning: {len(data.problems)} annotation entries skipped in {annotations}", err=True)
    if len(data) == 0:
        raise InputError(f"no usable samples in {annotations} ({len(data.problems)} entries skipped); "
                         "check --images and the file format (docs/training.md)")
    return data


def dataset_info_command(
    annotations: AnnotationsArg,
    images: Annotated[Path | None, typer.Option("--images", help="Also check that every image is under this folder.",
                                                show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """Images, person boxes before and after merging, and positives per head and class of an annotation file."""
    from .hake_data import dataset_summary

    info = dataset_summary(_load_data(annotations, images))
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"{info['file']}: {info['format']}, {info['entries']:,} entries, {info['problems']:,} skipped")
    typer.echo(f"images {info['images']:,}, person boxes {info['boxes']:,}, persons after merging "
               f"{info['persons']:,}, (part, state) labels {info['labels']:,}")
    for head, counts in info["positives"].items():
        present = {k: v for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v}
        typer.echo(f"{head}: {len(present)} of {len(counts)} classes with positives, {sum(present.values()):,} "
                   f"positives: " + ", ".join(f"{k} {v:,}" for k, v in present.items()))


def _warn_unreadable(unreadable: dict[str, str]) -> None:
    """Report the samples left out because their image could not be used (stderr)."""
    for sample, reason in list(unreadable.items())[:MAX_PROBLEMS_SHOWN]:
        typer.echo(f"warning: skipped {sample}: {reason}", err=True)
    if len(unreadable) > MAX_PROBLEMS_SHOWN:
        typer.echo(f"warning: ... and {len(unreadable) - MAX_PROBLEMS_SHOWN} more", err=True)
    if unreadable:
        typer.echo(f"warning: {len(unreadable)} samples left out: their image could not be read", err=True)


def train_heads_command(
    annotations: AnnotationsArg,
    images: ImagesOpt,
    model: Model = None,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Batch size (training and feature extraction).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine to 1e-6).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-5,
    hidden: Annotated[int, typer.Option(help="Hidden width of the head MLPs.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the head init, the shuffling, the flips and --val-split.")] = 0,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Horizontal-flip augmentation, p = 1/2 per sample "
                                                                "and epoch, as the reference.")] = True,
    val_split: Annotated[float | None, typer.Option(
        "--val-split", help="Hold out this fraction of the images (seeded) and report the heads' mAP on them.",
        show_default=False)] = None,
    device: Device = None,
    precision: Precision = PrecisionName.auto,
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint folder (default <data-dir>/checkpoints/heads-<time>).")
                   ] = None,
) -> None:
    """Train the eight PaSta heads on a frozen CLIP image tower (features cached) and save a checkpoint."""
    import numpy as np

    from ..errors import InputError
    from ..models import ModelSpec, load_encoder
    from ..models.factory import model_ref
    from ..settings import Settings
    from .evaluate import evaluate_features, unreadable_samples
    from .train import cached_features, save_heads, split_by_image, train_heads

    settings = Settings.resolve(data_dir=data_dir, model=model, device=device)
    out = out or settings.data_dir / "checkpoints" / f"heads-{datetime.now():%Y%m%d-%H%M%S}"
    data = _load_data(annotations, images)
    if val_split is not None:
        split_by_image(data, val_split, seed)  # a bad fraction fails before the features are computed
    encoder = load_encoder(ModelSpec(model=settings.model), device=settings.device, with_language=False,
                           precision=precision.value)
    feats = cached_features(encoder, data, images, settings.data_dir, batch_size, progress=True, mirrored=flip)
    typer.echo(f"features of {len(data)} samples ({data.n_images} images{', and mirrored' if flip else ''}): "
               f"{'read from' if feats.hit else 'written to'} {feats.path}", err=True)
    _warn_unreadable(unreadable_samples(data, feats.unreadable))
    keep = feats.readable
    if not keep.any():
        raise InputError(f"no image of {annotations} could be read under {images}; check --images")
    data, plain = data.subset(keep), feats.plain[keep]
    mirrored = feats.mirrored[keep] if feats.mirrored is not None else None
    train_rows, val_rows = split_by_image(data, val_split, seed) if val_split else (np.arange(len(data)), None)
    train_data = data.subset(train_rows)
    result = train_heads(plain[train_rows], train_data, mirrored=None if mirrored is None else mirrored[train_rows],
                         epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, hidden=hidden,
                         seed=seed, device=encoder.device, progress=True)
    info = {"annotations": str(annotations), "format": data.format, "samples": len(train_data),
            "images": train_data.n_images, "unreadable": len(feats.unreadable), "flip": flip,
            "precision": precision.value, "epochs": epochs, "batch_size": batch_size, "lr": lr, "min_lr": 1e-6,
            "weight_decay": weight_decay, "seed": seed, "epoch_losses": [round(v, 6) for v in result.epoch_losses],
            "trained_at": datetime.now().isoformat(timespec="seconds")}
    held_out = None
    if val_rows is not None:
        held_out = evaluate_features(result.heads, plain[val_rows], data.subset(val_rows))
        info["val_split"] = {"fraction": val_split, "samples": held_out.samples, "images": held_out.images,
                             "ap11": held_out.ap11, "ap_all": held_out.ap_all}
    save_heads(out, result.heads, model_ref(settings.model), plain[train_rows], info)
    typer.echo(f"trained {epochs} epochs on {len(train_data)} samples ({train_data.n_images} images), loss "
               f"{result.epoch_losses[0]:.4f} -> {result.epoch_losses[-1]:.4f}")
    if held_out is not None:
        _print_table(held_out, f"held out by --val-split {val_split} (seed {seed})")
    typer.echo(f"wrote {out} (use it with --checkpoint {out})")


def evaluate_command(
    annotations: AnnotationsArg,
    images: ImagesOpt,
    model: Model = None,
    checkpoint: Checkpoint = None,
    trust_checkpoint: Trust = False,
    device: Device = None,
    precision: Precision = PrecisionName.auto,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Per-head mAP (11-point reference protocol and all-point AP) of trained or zero-shot heads."""
    from ..models import ModelSpec, load_encoder
    from ..settings import Settings
    from .evaluate import evaluate

    settings = Settings.resolve(data_dir=data_dir, model=model, device=device)
    data = _load_data(annotations, images)
    spec = ModelSpec(model=model if checkpoint else settings.model, checkpoint=checkpoint,
                     trust_checkpoint=trust_checkpoint)
    encoder = load_encoder(spec, device=settings.device, with_language=False, precision=precision.value)
    result = evaluate(encoder, data, images, settings.data_dir, batch_size, progress=not as_json)
    _warn_unreadable(result.unreadable)
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    _print_table(result, f"heads of {checkpoint}" if checkpoint else "zero-shot heads")


def _print_table(result: Evaluation, heads: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    table = Table(title="mAP (%)", caption=f"{result.samples} samples, {result.images} images; {heads}")
    table.add_column("head")
    table.add_column("11-point AP (reference)", justify="right")
    table.add_column("all-point AP", justify="right")
    for head in result.ap11:
        table.add_row(head, pct(result.ap11[head]), pct(result.ap_all[head]))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``dataset-info``, ``train-heads`` and ``evaluate`` to the CLI app."""
    app.command("dataset-info")(dataset_info_command)
    app.command("train-heads")(train_heads_command)
    app.command("evaluate")(evaluate_command)
