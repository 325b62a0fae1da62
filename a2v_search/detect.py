"""Person detectors: the whole image (``none``), a boxes file (``boxes:FILE``), or a transformers object-detection
model (persons: score threshold, max persons, minimum box size; every other COCO class it finds is an object, tied
to the persons it is near by :func:`a2v_search.objects.tie_objects`). All three are a :class:`Detector`."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .errors import InputError, ModelError, UnknownNameError, first_line
from .objects import MAX_OBJECTS_PER_PERSON, PersonObject, tie_objects
from .person_boxes import merge_boxes
from .taxonomy import NO_INTERACTION_VERB, hico_hois, object_index

if TYPE_CHECKING:  # the ingest wing's discovery types (detect is imported by the wing, not the reverse)
    from .ingest.discover import Candidate, Found

#: A person: (x1, y1, x2, y2) pixels (None: the whole frame), score, and the objects it acts on, best first.
Detection = tuple[list[float] | None, float, tuple[PersonObject, ...]]


@dataclass
class DetectorOptions:
    threshold: float = 0.5
    max_persons: int = 20
    min_size: float = 16.0  # pixels, shorter side of the box
    batch_size: int = 8


FrameBoxes = dict[int, list[Detection]]  # a video's boxes per frame index (frames not named hold no person)
BoundBoxes = dict[str, list[Detection] | FrameBoxes]  # boxes per media path


@runtime_checkable
class Detector(Protocol):
    """Finds the persons of images. ``name`` is how it is recorded (``none``, ``boxes:FILE`` or the model);
    ``needs_frames``: whether :meth:`detect` must see decoded frames (a model) or the persons are known without
    looking (the whole image, a boxes file); ``binds_tree``: whether :meth:`bind` must see every file of the run
    before any work starts (a boxes file, whose every entry must name one of them)."""

    name: str
    needs_frames: bool
    binds_tree: bool

    def detect(self, frames: list[np.ndarray], scales: list[float] | None = None) -> list[list[Detection]]:
        """The persons of each (h, w, 3) uint8 frame, best first; a box None is the whole frame."""
        ...

    def bind(self, candidates: list[Candidate | Found]) -> BoundBoxes | None:
        """Boxes per candidate path known before decoding (a boxes file), or None (found by :meth:`detect`)."""
        ...


def detector_kind(spec: str | None) -> str:
    """``none``, ``boxes`` or ``model``: which detector a ``--detector`` value names (nothing is loaded)."""
    spec = (spec or "none").strip().lower()
    return "none" if spec == "none" else "boxes" if spec.startswith("boxes:") else "model"


class WholeImage:
    """Each image (or frame) is one person in whole-image mode, as the image-level CLIP-Activity2Vec."""

    name = "none"
    needs_frames = False
    binds_tree = False

    def detect(self, frames: list[np.ndarray], scales: list[float] | None = None) -> list[list[Detection]]:
        """One person per frame: the whole frame (box None), with no objects."""
        return [[(None, 1.0, ())] for _ in frames]

    def bind(self, candidates: list[Candidate | Found]) -> None:
        """Nothing to bind: the decoders take the whole frame."""
        return None


class BoxesFile:
    """Boxes given in a COCO-style JSON (``images`` + ``annotations`` with ``bbox`` xywh, person category) or a HAKE
    instance-level JSON (``{file: {"labels": [{"human_bbox": [x1,y1,x2,y2]}]}}``; a person's boxes, one per
    interaction, are merged as in training: IoU >= 0.7, mean box, see :mod:`a2v_search.person_boxes`).

    Objects: a COCO file's annotations of other categories named as one of the 80 COCO classes (others are left
    out) are tied to the persons of their image (or frame) by :func:`a2v_search.objects.tie_objects`, their
    ``score`` (default 1) as the detector's; a HAKE label's ``object_bbox`` with its HOI's object (``hoi_id``; HOIs
    of ``no_interaction`` give none) belongs to that label's person, p 1 (one box per object: the same object
    drawn for several interactions is merged like persons).

    In COCO files an image entry with ``"frame_index": N`` gives the boxes of frame N of a video (the source frame
    number, as stored with each person); a video without such entries uses the same boxes in every frame."""

    needs_frames = False
    binds_tree = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = f"boxes:{self.path}"
        self.boxes: dict[str, list[Detection] | FrameBoxes] = _read_boxes_file(self.path)

    def detect(self, frames: list[np.ndarray], scales: list[float] | None = None) -> list[list[Detection]]:
        """A boxes file names files, not frames: an InputError naming the fix."""
        raise InputError("a boxes file cannot be used for a query image; give --box x1,y1,x2,y2 instead")

    def bind(self, candidates: list[Candidate | Found]) -> BoundBoxes:
        """Boxes per candidate path. Every entry of the file must name one of the files being ingested (matched
        by its path under the folder given, or by its file name when that is unique)."""
        by_rel: dict[str, str] = {}
        by_name: dict[str, list[str]] = defaultdict(list)
        for c in candidates:
            rel = os.path.relpath(c.given, c.root).replace(os.sep, "/")
            by_rel[rel] = c.path
            by_name[os.path.basename(c.given)].append(c.path)
        out: BoundBoxes = {}
        unknown = []
        for key, dets in self.boxes.items():
            k = key.replace("\\", "/").lstrip("./")
            path = by_rel.get(k)
            if path is None and len(by_name.get(os.path.basename(k), [])) == 1:
                path = by_name[os.path.basename(k)][0]
            if path is None:
                unknown.append(key)
            elif isinstance(dets, dict):
                frames = out.setdefault(path, {})
                if not isinstance(frames, dict):
                    raise InputError(f"boxes file {self.path}: {key!r} has boxes with and without frame_index")
                for frame, frame_dets in dets.items():
                    frames.setdefault(frame, []).extend(frame_dets)
            else:
                target = out.setdefault(path, [])
                if not isinstance(target, list):
                    raise InputError(f"boxes file {self.path}: {key!r} has boxes with and without frame_index")
                target.extend(dets)
        if unknown:
            raise InputError(f"boxes file {self.path} names {len(unknown)} images that are not among the files to "
                             f"ingest (e.g. {', '.join(repr(u) for u in unknown[:5])}); ingest the folder that holds "
                             "them, or remove them from the boxes file")
        return out


def _read_boxes_file(path: Path) -> dict[str, list[Detection]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"boxes file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read boxes file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"boxes file {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise InputError(f"boxes file {path} nests its JSON too deeply to be a boxes file") from None
    if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
        return _coco_boxes(doc, path)
    if isinstance(doc, dict) and doc and all(isinstance(v, dict) and "labels" in v for v in doc.values()):
        return _hake_boxes(doc, path)
    raise InputError(f"boxes file {path} is neither COCO-style (images + annotations with bbox) nor HAKE "
                     "instance-level ({file: {labels: [{human_bbox: [x1,y1,x2,y2]}]}})")


def _box(values, where: str, path: Path, xywh: bool) -> list[float]:
    if not isinstance(values, list) or len(values) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise InputError(f"boxes file {path}: {where} has box {values!r}; a box is 4 finite numbers")
    x1, y1, a, b = (float(v) for v in values)
    x2, y2 = (x1 + a, y1 + b) if xywh else (a, b)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"boxes file {path}: {where} has an empty box {values!r}"
                         + (" (COCO boxes are x, y, width, height)" if xywh else " (x1, y1, x2, y2)"))
    return [x1, y1, x2, y2]


def _coco_boxes(doc: dict, path: Path) -> dict[str, list[Detection]]:
    images = doc.get("images")
    anns = doc.get("annotations")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise InputError(f"boxes file {path}: 'images' and 'annotations' must be lists")
    names, frames = {}, {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise InputError(f"boxes file {path}: images[{i}] needs 'id' and 'file_name'")
        names[im["id"]] = im["file_name"]
        if im.get("frame_index") is not None:
            fi = im["frame_index"]
            if not isinstance(fi, int) or isinstance(fi, bool) or fi < 0:
                raise InputError(f"boxes file {path}: images[{i}] has frame_index {fi!r}; use a whole number >= 0")
            frames[im["id"]] = fi
    cats = doc.get("categories") or []
    person_ids = {c.get("id") for c in cats if isinstance(c, dict) and str(c.get("name", "")).lower() == "person"}
    if cats and not person_ids:
        raise InputError(f"boxes file {path}: no category named 'person' in 'categories'")
    object_of = _coco_object_classes(cats)
    found: dict[tuple[object, int | None], list] = defaultdict(list)  # (image id, frame) -> objects
    out: dict[str, list[Detection] | FrameBoxes] = {}
    for image_id, name in names.items():
        entry = out.setdefault(name, {} if image_id in frames else [])
        if isinstance(entry, dict) != (image_id in frames):
            raise InputError(f"boxes file {path}: {name!r} has images with and without frame_index")
        if image_id in frames:
            entry.setdefault(frames[image_id], [])
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a:
            raise InputError(f"boxes file {path}: annotations[{i}] needs 'image_id' and 'bbox'")
        is_object = a.get("category_id") in object_of
        if person_ids and a.get("category_id") not in person_ids and not is_object:
            continue
        if a["image_id"] not in names:
            raise InputError(f"boxes file {path}: annotations[{i}] refers to unknown image_id {a['image_id']!r}")
        score = a.get("score", 1.0)
        score = float(score) if isinstance(score, (int, float)) and math.isfinite(score) and 0 < score <= 1 else 1.0
        box = _box(a["bbox"], f"annotations[{i}]", path, xywh=True)
        if is_object:
            found[(a["image_id"], frames.get(a["image_id"]))].append((object_of[a["category_id"]], score, box))
            continue
        entry = out[names[a["image_id"]]]
        (entry[frames[a["image_id"]]] if isinstance(entry, dict) else entry).append((box, score, ()))
    for (image_id, frame), objects in found.items():
        entry = out[names[image_id]]
        dets = entry[frame] if isinstance(entry, dict) else entry
        dets[:] = [(b, sc, objs) for (b, sc, _), objs in zip(dets, tie_objects([b for b, _, _ in dets], objects),
                                                               strict=True)]
    return out


def _coco_object_classes(cats: list) -> dict:
    """COCO category id -> object class (0..79) for the categories named as one of the 80 object classes."""
    out = {}
    for c in cats:
        if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"].lower() != "person":
            with suppress(UnknownNameError):
                out[c.get("id")] = object_index(c["name"])
    return out


def _hake_boxes(doc: dict, path: Path) -> dict[str, list[Detection]]:
    out: dict[str, list[Detection]] = {}
    for name, entry in doc.items():
        labels = entry.get("labels")
        if not isinstance(labels, list):
            raise InputError(f"boxes file {path}: {name!r} has no 'labels' list")
        boxes, objects = [], []
        for j, lab in enumerate(labels):
            if not isinstance(lab, dict) or "human_bbox" not in lab:
                raise InputError(f"boxes file {path}: {name!r} labels[{j}] has no 'human_bbox'")
            boxes.append(tuple(_box(lab["human_bbox"], f"{name!r} labels[{j}]", path, xywh=False)))
            objects.append(_hake_object(lab, f"{name!r} labels[{j}]", path))
        merged, owner = merge_boxes(boxes)  # one entry per human-object pair: the same person repeats
        mine: list[list] = [[] for _ in merged]
        for o, obj in zip(owner, objects, strict=True):
            if obj is not None:
                mine[o].append(obj)
        out[name] = [(list(box), 1.0, _one_per_object(objs)) for box, objs in zip(merged, mine, strict=True)]
    return out


def _hake_object(lab: dict, where: str, path: Path) -> tuple[int, tuple[float, ...]] | None:
    """(object class, box) of a HAKE label's HOI, or None (no object box, no HOI, or a no_interaction HOI)."""
    hoi = lab.get("hoi_id")
    if lab.get("object_bbox") is None or isinstance(hoi, bool) or not isinstance(hoi, int):
        return None
    if not 1 <= hoi <= len(hico_hois()):
        raise InputError(f"boxes file {path}: {where} has hoi_id {hoi!r}; HICO's HOIs are 1..{len(hico_hois())}")
    cls, verb = hico_hois()[hoi - 1]
    if verb == NO_INTERACTION_VERB:
        return None
    return cls, tuple(_box(lab["object_bbox"], where, path, xywh=False))


def _one_per_object(objects: list[tuple[int, tuple[float, ...]]]) -> tuple[PersonObject, ...]:
    """One person's HAKE objects, each object once (its boxes merged per class like persons), at most
    MAX_OBJECTS_PER_PERSON, p 1."""
    out: list[PersonObject] = []
    for cls in dict.fromkeys(c for c, _ in objects):
        merged, _ = merge_boxes([box for c, box in objects if c == cls])
        out += [(cls, 1.0, box) for box in merged]
    return tuple(out[:MAX_OBJECTS_PER_PERSON])


class ModelDetector:
    """A transformers object-detection model (hub id or folder): its ``person`` class gives the persons, and its
    other classes named as one of the 80 COCO classes (RT-DETR's, DETR's, YOLOS' are exactly those) the objects,
    above the same score threshold, tied to the persons by :func:`a2v_search.objects.tie_objects`."""

    needs_frames = True
    binds_tree = False

    def __init__(self, model: str, device, options: DetectorOptions | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        from .models.language import quiet_transformers

        quiet_transformers()
        self.name = str(Path(model).resolve()) if Path(model).exists() else model
        self.options = options or DetectorOptions()
        self.device = device
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = AutoModelForObjectDetection.from_pretrained(model).eval().to(device)
        except Exception as e:  # OSError / ValueError from transformers
            raise ModelError(f"cannot load detector {model!r}: {first_line(e)}. Use "
                             "--detector none, --detector boxes:FILE, or a transformers object-detection model") from e
        labels = {int(i): str(n).lower() for i, n in self.model.config.id2label.items()}
        self.person = [i for i, n in labels.items() if n == "person"]
        self.objects = _coco_object_classes([{"id": i, "name": n} for i, n in labels.items()])  # label -> class
        if not self.person:
            raise ModelError(f"detector {model!r} has no 'person' class (labels: {sorted(labels.values())[:8]}...)")
        self._torch = torch

    def detect(self, frames: list[np.ndarray], scales: list[float] | None = None) -> list[list[Detection]]:
        """Persons in each (h, w, 3) uint8 frame: boxes in that frame's pixels, best first. ``scales`` (frame
        pixels per original pixel) make ``min_size`` count original pixels."""
        torch = self._torch
        out: list[list[Detection]] = []
        o = self.options
        for i in range(0, len(frames), o.batch_size):
            batch = frames[i:i + o.batch_size]
            inputs = self.processor(images=list(batch), return_tensors="pt").to(self.device)
            with torch.inference_mode():
                outputs = self.model(**inputs)
            sizes = [(f.shape[0], f.shape[1]) for f in batch]
            batch_scales = (scales or [1.0] * len(frames))[i:i + o.batch_size]
            results = self.processor.post_process_object_detection(outputs, threshold=o.threshold,
                                                                   target_sizes=sizes)
            for r, (h, w), scale in zip(results, sizes, batch_scales, strict=True):
                persons, objects = [], []
                for box, label, score in zip(r["boxes"].tolist(), r["labels"].tolist(), r["scores"].tolist(),
                                             strict=True):
                    x1, y1, x2, y2 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(w)), min(box[3], float(h))
                    if x2 <= x1 or y2 <= y1:
                        continue
                    if int(label) in self.person and min(x2 - x1, y2 - y1) >= o.min_size * scale:
                        persons.append(([x1, y1, x2, y2], float(score)))
                    elif int(label) in self.objects:
                        objects.append((self.objects[int(label)], float(score), (x1, y1, x2, y2)))
                persons.sort(key=lambda d: -d[1])
                persons = persons[:o.max_persons]
                tied = tie_objects([b for b, _ in persons], objects)
                out.append([(b, sc, objs) for (b, sc), objs in zip(persons, tied, strict=True)])
        return out

    def bind(self, candidates: list[Candidate | Found]) -> None:
        """Nothing known before decoding: the model looks at each frame."""
        return None


def make_detector(spec: str, device=None, options: DetectorOptions | None = None) -> Detector:
    """``none`` -> WholeImage, ``boxes:FILE`` -> BoxesFile, anything else -> ModelDetector(model id or folder)."""
    spec = (spec or "none").strip()
    kind = detector_kind(spec)
    if kind == "none":
        return WholeImage()
    if kind == "boxes":
        return BoxesFile(spec[6:])
    return ModelDetector(spec, device, options)
