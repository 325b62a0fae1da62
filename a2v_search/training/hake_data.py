"""Loaders for HAKE annotations, into one in-memory form (:class:`HakeData`).

Accepted files (JSON, or a ``.tar.gz`` / ``.tgz`` / ``.tar`` holding one JSON; the format is detected from the
content):

``clip-a2v``       the CLIP-Activity2Vec training JSON, one entry per image (whole-image samples):
                   ``{"annotations": [{"img_path", "image_heigh" (sic), "image_width", "gt_verbs", "gt_pasta_foot",
                   ..., "gt_pasta_head"}]}``, 0-based indices within each head's list (93-state / 157-verb setting).
``hake-instance``  the HAKE instance-level JSON, a dict keyed by image file name:
                   ``{"dataset", "path_prefix", "labels": [{"human_bbox", "object_bbox", "hoi_id", "width", "height",
                   "action_labels": [{"human_part": 0..9, "partstate": k}]}]}``, one label entry per human-object pair.
                   The image is ``<path_prefix>/<name>`` under the images root, or ``<name>`` when the root is the
                   image folder itself.
                   One person is drawn again for every interaction, each time with a slightly different box: the
                   boxes of an image are merged into persons (IoU >= 0.7, union of their labels, mean box; see
                   :mod:`a2v_search.person_boxes`).
                   ``human_part`` (10 body parts) merges into the 6 PaSta parts, ``partstate`` indexes that part's
                   list in the 76-state setting and is mapped to the 93-state list; ``hoi_id`` (HICO, 1..600) gives
                   the verb.
``hico-image``     the HICO image-level JSON, a dict keyed by image file name: ``{"hoi_id": [...], "parts_list": [10],
                   "foot_list": [12], "leg_list": [10], "hip_list": [5], "hand_list": [31], "arm_list": [5],
                   "head_list": [13]}``, multi-hot in the 76-state setting (last entry = the part's no_interaction),
                   mapped to the 93-state list; whole-image samples; verbs from ``hoi_id``.

Bad entries (unknown image, box outside the image, index out of range, wrong types) are skipped and reported as
:class:`Problem` s naming the file and the entry; the rest loads.
"""

from __future__ import annotations

import json
import math
import tarfile
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from .. import taxonomy as tx
from ..errors import InputError
from ..person_boxes import Box, merge_boxes

CLIP_A2V = "clip-a2v"
HAKE_INSTANCE = "hake-instance"
HICO_IMAGE = "hico-image"
#: How far (pixels) a box may pass the image border: HICO-DET boxes are 1-based, so x2 == width is common.
BOX_TOLERANCE = 1.0


@dataclass(frozen=True)
class Problem:
    """One skipped annotation entry: the file, the entry (image name / index) and what is wrong with it."""

    file: str
    entry: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.entry}: {self.message}"


@dataclass
class HakeData:
    """Samples read from one annotation file; row i of every array is sample i."""

    source: Path
    format: str  # CLIP_A2V, HAKE_INSTANCE or HICO_IMAGE
    images: list[str]  # image path as written in the annotation, relative to the images root
    boxes: list[Box | None]  # person box; None = whole image
    pasta: np.ndarray  # (N, 93) uint8 multi-hot, 93-state list
    verbs: np.ndarray  # (N, 157) uint8 multi-hot; all zero when the file has no verbs
    problems: list[Problem]
    entries: int  # image entries in the file (instance-level: images, with or without persons)
    labels_read: int  # labels of the loaded entries before merging: (part, state) pairs or indices
    boxes_read: int = -1  # samples before merging persons (instance-level: distinct image + box); -1: = len
    #: instance-level: the HICO HOI ids (1..600: a verb and its object, ``hoi_objects``) of each sample; else None
    hois: list[frozenset[int]] | None = None

    def __post_init__(self) -> None:
        if self.boxes_read < 0:
            self.boxes_read = len(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: np.ndarray | list[int]) -> HakeData:
        """The samples at ``rows`` (indices or a boolean mask), same source and format; counts of the file kept."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
        return replace(self, images=[self.images[i] for i in idx], boxes=[self.boxes[i] for i in idx],
                       pasta=self.pasta[idx], verbs=self.verbs[idx],
                       hois=None if self.hois is None else [self.hois[i] for i in idx])

    @property
    def parts(self) -> np.ndarray:
        """(N, 6) uint8 part flags: 1 when the part has any state other than no_interaction."""
        return part_flags(self.pasta)

    @property
    def n_images(self) -> int:
        """Number of distinct images."""
        return len(set(self.images))


def part_flags(pasta: np.ndarray) -> np.ndarray:
    """(N, 93) multi-hot -> (N, 6) flags, one per part: any state of the part other than its no_interaction."""
    active = np.asarray(pasta).astype(bool)
    active[:, list(tx.NO_INTERACTION_PASTA)] = False
    return np.stack([active[:, r.start:r.stop].any(axis=1) for r in tx.PART_RANGES.values()], axis=1).astype(np.uint8)


@cache
def hoi_verbs() -> tuple[int, ...]:
    """For each HICO HOI (id 1..600 at position id - 1), its verb's index in the 157-verb list."""
    return tuple(verb for _, verb in tx.hico_hois())


@cache
def hoi_objects() -> tuple[int, ...]:
    """For each HICO HOI (id 1..600 at position id - 1), its object's index in ``taxonomy.OBJECT_NAMES``."""
    return tuple(obj for obj, _ in tx.hico_hois())


def load_annotations(path: str | Path, images_root: str | Path | None = None) -> HakeData:
    """Read a CLIP-Activity2Vec, HAKE instance-level or HICO image-level JSON (detected from its content).

    With ``images_root``, entries whose image is not a file under it are reported and skipped.
    """
    path = Path(path)
    raw = read_json(path)
    root = _check_root(images_root)
    if isinstance(raw, dict) and isinstance(raw.get("annotations"), list):
        return _load_clip_a2v(path, raw["annotations"], root)
    if _keyed_by_image(raw, "labels"):
        return _load_instance(path, raw, root)
    if _keyed_by_image(raw, "parts_list"):
        return _load_hico_image(path, raw, root)
    raise InputError(f"{path} is neither a CLIP-Activity2Vec JSON ({{'annotations': [...]}}), a HAKE instance-level "
                     "JSON ({image: {'labels': [...]}}) nor a HICO image-level JSON ({image: {'parts_list': [...]}}); "
                     "see docs/training.md for the formats")


# ---------------------------------------------------------------- reading and checking


def _keyed_by_image(raw: object, key: str) -> bool:
    """True for a dict some of whose first values are objects holding ``key`` (the others are reported later)."""
    if not isinstance(raw, dict):
        return False
    first = [v for _, v in zip(range(50), raw.values(), strict=False)]
    return any(isinstance(v, dict) and key in v for v in first)


class _BadEntry(ValueError):
    """An annotation entry that cannot be used; the message says why."""


def read_json(path: Path) -> object:
    """A HAKE annotation file (JSON, or JSON inside a .tar.gz) as Python objects; InputError naming the problem."""
    if not path.is_file():
        raise InputError(f"annotation file {path} does not exist; give the path of a HAKE JSON file")
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                         "fix the file or extract it again") from e
    except (OSError, UnicodeDecodeError, tarfile.TarError) as e:
        raise InputError(f"cannot read {path}: {e}") from e


def _read_text(path: Path) -> str:
    """The file's text; for a tar archive (``.tar``, ``.tar.gz``, ``.tgz``), its one ``.json`` member."""
    if not path.name.endswith((".tar", ".tar.gz", ".tgz")):
        return path.read_text(encoding="utf-8")
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".json")]
        if len(members) != 1:
            raise InputError(f"{path} holds {len(members)} .json files; give an archive with exactly one, or the "
                             "extracted JSON file")
        return tar.extractfile(members[0]).read().decode("utf-8")


def _check_root(images_root: str | Path | None) -> Path | None:
    if images_root is None:
        return None
    root = Path(images_root).expanduser()
    if not root.is_dir():
        raise InputError(f"images root {root} is not a folder; --images takes the folder the annotation's image "
                         "paths are relative to")
    return root


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadEntry(f"{what} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise _BadEntry(f"{what} {value} is out of range {lo}..{hi}")
    return value


def _index_list(value: object, what: str, size: int) -> list[int]:
    if not isinstance(value, list):
        raise _BadEntry(f"{what} must be a list of 0-based indices, got {type(value).__name__}")
    return [_int(v, f"{what} index", 0, size - 1) for v in value]


def _box(value: object, width: int, height: int) -> Box:
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise _BadEntry(f"human_bbox must be 4 numbers [x1, y1, x2, y2], got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        raise _BadEntry(f"human_bbox {value} is empty or not finite (needs x2 > x1, y2 > y1)")
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
        raise _BadEntry(f"human_bbox {value} lies outside the {width}x{height} image")
    return x1, y1, x2, y2


def _missing_image(root: Path | None, image: str) -> bool:
    return root is not None and not (root / image).is_file()


# ---------------------------------------------------------------- the two formats


def _load_clip_a2v(path: Path, annotations: list, root: Path | None) -> HakeData:
    images: list[str] = []
    pasta_rows: list[list[int]] = []
    verb_rows: list[list[int]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    labels = 0
    for i, ann in enumerate(annotations):
        name = ann.get("img_path") if isinstance(ann, dict) else None
        where = f"annotation {i}" + (f" ({name})" if isinstance(name, str) else "")
        try:
            if not isinstance(ann, dict):
                raise _BadEntry(f"expected an object, got {type(ann).__name__}")
            if not isinstance(name, str) or not name:
                raise _BadEntry(f"img_path must be a non-empty string, got {name!r}")
            for key in ("image_heigh", "image_height", "image_width"):
                if key in ann:
                    _int(ann[key], key, 1, 1 << 20)
            if name in seen:
                raise _BadEntry("duplicate entry for this image (one entry per image)")
            if _missing_image(root, name):
                raise _BadEntry(f"image not found under {root}")
            row: list[int] = []
            for part, rng in tx.PART_RANGES.items():
                key = f"gt_pasta_{part}"
                if key not in ann:
                    raise _BadEntry(f"missing {key!r} (a list of 0-based {part} state indices, may be empty)")
                row += [rng.start + k for k in _index_list(ann[key], key, len(rng))]
            if "gt_verbs" not in ann:
                raise _BadEntry("missing 'gt_verbs' (a list of 0-based verb indices, may be empty)")
            verbs = _index_list(ann["gt_verbs"], "gt_verbs", len(tx.VERB_NAMES))
        except _BadEntry as e:
            problems.append(Problem(str(path), where, str(e)))
            continue
        seen.add(name)
        images.append(name)
        pasta_rows.append(row)
        verb_rows.append(verbs)
        labels += len(row) + len(verbs)
    return HakeData(path, CLIP_A2V, images, [None] * len(images), _multi_hot(pasta_rows, len(tx.PASTA_NAMES)),
                    _multi_hot(verb_rows, len(tx.VERB_NAMES)), problems, len(annotations), labels)


def _instance_label(label: object) -> tuple[Box, list[int], list[int], list[int]]:
    """One label entry -> (person box, 93-state indices, verb indices, HOI ids)."""
    if not isinstance(label, dict):
        raise _BadEntry(f"expected an object, got {type(label).__name__}")
    for key in ("human_bbox", "width", "height"):
        if key not in label:
            raise _BadEntry(f"missing {key!r}")
    width = _int(label["width"], "width", 1, 1 << 20)
    height = _int(label["height"], "height", 1, 1 << 20)
    box = _box(label["human_bbox"], width, height)
    verbs, hois = [], []
    if "hoi_id" in label:
        hois.append(_int(label["hoi_id"], "hoi_id", 1, len(hoi_verbs())))
        verbs.append(hoi_verbs()[hois[0] - 1])
    actions = label.get("action_labels", [])
    if not isinstance(actions, list):
        raise _BadEntry(f"action_labels must be a list, got {type(actions).__name__}")
    states = []
    for a in actions:
        if not isinstance(a, dict) or "human_part" not in a or "partstate" not in a:
            raise _BadEntry(f"action label {a!r} needs 'human_part' and 'partstate'")
        part = tx.BODY_PART_TO_PART[_int(a["human_part"], "human_part", 0, len(tx.BODY_PARTS) - 1)]
        n76 = len(tx.PART_RANGES_76[tx.PARTS[part]])
        states.append(tx.pasta_76_to_93(part, _int(a["partstate"], f"{tx.PARTS[part]} partstate", 0, n76 - 1)))
    return box, states, verbs, hois


def _image_name(path: Path, root: Path | None, image: str, prefix: object, problems: list[Problem]) -> str | None:
    """Where the entry's image is under the root: ``<prefix>/<image>``, else ``<image>`` (the root is the image
    folder itself); None, with a problem reported, when it is neither."""
    name = f"{prefix.rstrip('/')}/{image}" if isinstance(prefix, str) and prefix else image
    if root is None or (root / name).is_file():
        return name
    if (root / image).is_file():
        return image
    where = f"{name} or {image}" if name != image else image
    problems.append(Problem(str(path), f"image {image}", f"image not found under {root} (as {where})"))
    return None


def _load_instance(path: Path, raw: dict, root: Path | None) -> HakeData:
    images: list[str] = []
    boxes: list[Box] = []
    pasta_rows: list[set[int]] = []
    verb_rows: list[set[int]] = []
    hoi_rows: list[set[int]] = []
    problems: list[Problem] = []
    labels = boxes_read = 0
    for image, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("labels"), list):
            problems.append(Problem(str(path), f"image {image}", "expected {'labels': [...]}"))
            continue
        name = _image_name(path, root, image, entry.get("path_prefix"), problems)
        if name is None:
            continue
        drawn: dict[Box, tuple[set[int], set[int], set[int]]] = {}  # each distinct box -> (pasta, verbs, hois)
        for j, label in enumerate(entry["labels"]):
            try:
                box, states, verbs, hois = _instance_label(label)
            except _BadEntry as e:
                problems.append(Problem(str(path), f"image {image}, label {j}", str(e)))
                continue
            pasta_set, verb_set, hoi_set = drawn.setdefault(box, (set(), set(), set()))
            pasta_set.update(states)
            verb_set.update(verbs)
            hoi_set.update(hois)
            labels += len(states)
        boxes_read += len(drawn)
        merged, owner = merge_boxes(list(drawn))
        first = len(images)
        for box in merged:
            images.append(name)
            boxes.append(box)
            pasta_rows.append(set())
            verb_rows.append(set())
            hoi_rows.append(set())
        for (pasta_set, verb_set, hoi_set), g in zip(drawn.values(), owner, strict=True):
            pasta_rows[first + g] |= pasta_set
            verb_rows[first + g] |= verb_set
            hoi_rows[first + g] |= hoi_set
    return HakeData(path, HAKE_INSTANCE, images, boxes, _multi_hot(pasta_rows, len(tx.PASTA_NAMES)),
                    _multi_hot(verb_rows, len(tx.VERB_NAMES)), problems, len(raw), labels, boxes_read,
                    hois=[frozenset(h) for h in hoi_rows])


#: Keys of the HICO image-level file, one per PaSta part, in PARTS order.
HICO_PART_KEYS = tuple(f"{p}_list" for p in tx.PARTS)


def _hico_image_labels(entry: object) -> tuple[list[int], list[int]]:
    """One image-level entry -> (93-state indices, verb indices)."""
    if not isinstance(entry, dict):
        raise _BadEntry(f"expected an object, got {type(entry).__name__}")
    states = []
    for part, key in zip(tx.PARTS, HICO_PART_KEYS, strict=True):
        flags = entry.get(key)
        n76 = len(tx.PART_RANGES_76[part])
        if (not isinstance(flags, list) or len(flags) != n76
                or not all(isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for v in flags)):
            raise _BadEntry(f"{key} must be a list of {n76} 0/1 flags (76-state setting), got {flags!r}")
        states += [tx.pasta_76_to_93(part, k) for k, v in enumerate(flags) if v]
    hois = entry.get("hoi_id", [])
    if not isinstance(hois, list):
        raise _BadEntry(f"hoi_id must be a list of HICO HOI ids, got {hois!r}")
    verbs = [hoi_verbs()[_int(h, "hoi_id", 1, len(hoi_verbs())) - 1] for h in hois]
    return states, verbs


def _load_hico_image(path: Path, raw: dict, root: Path | None) -> HakeData:
    images: list[str] = []
    pasta_rows: list[list[int]] = []
    verb_rows: list[list[int]] = []
    problems: list[Problem] = []
    labels = 0
    for image, entry in raw.items():
        try:
            states, verbs = _hico_image_labels(entry)
        except _BadEntry as e:
            problems.append(Problem(str(path), f"image {image}", str(e)))
            continue
        name = _image_name(path, root, image, None, problems)
        if name is None:
            continue
        images.append(name)
        pasta_rows.append(states)
        verb_rows.append(verbs)
        labels += len(states)
    return HakeData(path, HICO_IMAGE, images, [None] * len(images), _multi_hot(pasta_rows, len(tx.PASTA_NAMES)),
                    _multi_hot(verb_rows, len(tx.VERB_NAMES)), problems, len(raw), labels)


def _multi_hot(rows: list, size: int) -> np.ndarray:
    out = np.zeros((len(rows), size), np.uint8)
    for i, row in enumerate(rows):
        out[i, list(row)] = 1
    return out


def head_classes() -> dict[str, tuple[str, list[str], range]]:
    """For each head in the report order (parts, pasta_binary, verb): (array: pasta|parts|verbs, class names,
    columns in that array)."""
    out: dict[str, tuple[str, list[str], range]] = {
        part: ("pasta", [tx.state_of(i) for i in rng], rng) for part, rng in tx.PART_RANGES.items()}
    out["pasta_binary"] = ("parts", list(tx.PARTS), range(len(tx.PARTS)))
    out["verb"] = ("verbs", list(tx.VERB_NAMES), range(len(tx.VERB_NAMES)))
    return out


def dataset_summary(data: HakeData) -> dict:
    """What a file gives to train on: ``images``, ``boxes`` (samples before merging persons), ``persons`` (after),
    ``positives`` ({head: {class: samples labelled with it}}), and the file's format, entries and problems."""
    arrays = {"pasta": data.pasta, "parts": data.parts, "verbs": data.verbs}
    positives = {head: dict(zip(names, arrays[key][:, cols.start:cols.stop].sum(axis=0).tolist(), strict=True))
                 for head, (key, names, cols) in head_classes().items()}
    return {"file": str(data.source), "format": data.format, "entries": data.entries, "images": data.n_images,
            "boxes": data.boxes_read, "persons": len(data), "labels": data.labels_read,
            "problems": len(data.problems), "positives": positives}
