from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from a2v_search import taxonomy as tx
from a2v_search.errors import InputError
from a2v_search.training.hake_data import (
    CLIP_A2V,
    HAKE_INSTANCE,
    HICO_IMAGE,
    hoi_objects,
    hoi_verbs,
    load_annotations,
    part_flags,
)

ROOT = Path(__file__).resolve().parents[2]
#: The shared HAKE data: beside the checkout, or beside the folder of worktrees.
HAKE_DIR = next((d for d in (ROOT.parent / "shared" / "hake", ROOT.parents[1] / "shared" / "hake") if d.is_dir()),
                ROOT.parent / "shared" / "hake")
INSTANCE_TARBALL = HAKE_DIR / "hico-det-instance-level.tar.gz"
IMAGE_LEVEL_TARBALL = HAKE_DIR / "hico-image-level.tar.gz"


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ------------------------------------------------------------------ the real HICO-DET instance-level annotations


@pytest.fixture(scope="module")
def real_instance(tmp_path_factory):
    if not INSTANCE_TARBALL.is_file():
        pytest.skip(f"{INSTANCE_TARBALL} is absent")
    folder = tmp_path_factory.mktemp("hake")
    with tarfile.open(INSTANCE_TARBALL) as tar:
        tar.extractall(folder, filter="data")
    (path,) = folder.rglob("*.json")
    return path


def test_real_partstate_is_0_based_in_the_76_state_lists(real_instance):
    """The assumption the loader relies on: per PaSta part, partstate runs over 0 .. len(part's 76 list) - 2,
    i.e. 0-based, never the part's no_interaction (its last state)."""
    raw = json.loads(real_instance.read_text())
    seen: dict[str, set[int]] = defaultdict(set)
    for entry in raw.values():
        for label in entry["labels"]:
            for a in label.get("action_labels", []):
                seen[tx.PARTS[tx.BODY_PART_TO_PART[a["human_part"]]]].add(a["partstate"])
    for part in tx.PARTS:
        assert min(seen[part]) == 0 and max(seen[part]) == len(tx.PART_RANGES_76[part]) - 2, part


def test_real_instance_level_counts(real_instance):
    data = load_annotations(real_instance)
    assert data.format == HAKE_INSTANCE and data.problems == []
    assert data.entries == 38_118  # images in the file
    assert data.n_images == 37_633  # 485 images have an empty label list
    assert data.boxes_read == 108_114  # distinct image + human_bbox
    assert len(data) == 76_621  # persons: boxes of one image with IoU >= 0.7 merged
    assert data.labels_read == 224_332  # (part, state) labels before merging
    # 76 -> 93: the 17 states new in the 93 list and every no_interaction are never produced
    new_states = sorted(set(range(len(tx.PASTA_NAMES))) - set(tx.MAP_76_TO_93))
    assert len(new_states) == 17
    assert data.pasta[:, new_states].sum() == 0 and data.pasta[:, list(tx.NO_INTERACTION_PASTA)].sum() == 0
    assert data.verbs.sum(1).min() >= 1  # every person has the verb of at least one HOI
    # image 1: one person drawn four times, once per HOI (153-156: race, ride, sit on, straddle a motorcycle),
    # boxes [208, 33, 427, 300], [209, 26, 444, 317], [213, 20, 438, 357], [206, 33, 427, 306]: one person,
    # the mean box, the union of the labels (R/L hand 0, hip 0, R/L foot 0, R/L leg 6 in the 76 lists)
    first = data.images.index("hico_20160224_det/images/train2015/HICO_train2015_00000001.jpg")
    assert data.images.count(data.images[first]) == 1
    assert data.boxes[first] == (209.0, 28.0, 434.0, 320.0)
    names = {tx.PASTA_NAMES[i] for i in np.flatnonzero(data.pasta[first])}
    assert names == {"hand: hold", "hip: sit on", "foot: stand on", "leg: straddle"}
    assert tx.VERB_NAMES[hoi_verbs()[153 - 1]] == "race"
    assert {tx.VERB_NAMES[i] for i in np.flatnonzero(data.verbs[first])} == {"race", "ride", "sit_on", "straddle"}
    # a person riding a bicycle sits on it and treads on the pedals
    riders = data.verbs[:, tx.verb_index("ride")].astype(bool)
    assert data.pasta[riders, tx.pasta_index("foot: tread on")].sum() > 1000


# ------------------------------------------------------------------ instance-level: merging and problems


def instance_label(box, hoi, actions, w=100, h=80):
    return {"human_bbox": box, "object_bbox": [0, 0, 10, 10], "hoi_id": hoi, "width": w, "height": h,
            "action_labels": [{"human_part": p, "partstate": s} for p, s in actions]}


def test_instance_level_merges_persons_and_maps_states(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "imgs" / "sub" / "b.jpg").write_bytes(b"x")
    raw = {
        "a.jpg": {"dataset": "hico-det", "path_prefix": "sub", "labels": [
            instance_label([10, 10, 50, 70], 153, [(6, 0), (4, 0)]),  # R_hand hold, hip sit on; race
            instance_label([10, 10, 50, 70], 156, [(1, 6), (2, 6)]),  # same person: legs straddle; straddle
            instance_label([60, 5, 99, 80], 600, []),  # another person, no interaction
        ]},
        "b.jpg": {"dataset": "hico-det", "path_prefix": "sub", "labels": [
            instance_label([0, 0, 100, 80], 1, [(5, 11), (0, 10)]),  # head 11, foot 10; airplane board
        ]},
    }
    path = write(tmp_path / "inst.json", raw)
    data = load_annotations(path, tmp_path / "imgs")
    assert data.problems == [] and len(data) == 3 and data.entries == 2 and data.labels_read == 6
    assert data.images == ["sub/a.jpg", "sub/a.jpg", "sub/b.jpg"]
    assert data.boxes[0] == (10.0, 10.0, 50.0, 70.0)
    names = [{tx.PASTA_NAMES[i] for i in np.flatnonzero(row)} for row in data.pasta]
    assert names[0] == {"hand: hold", "hip: sit on", "leg: straddle"} and names[1] == set()
    # 76-state head 11 and foot 10 keep their names in the 93-state list
    assert names[2] == {tx.PASTA76_NAMES[tx.PART_RANGES_76["head"][11]],
                        tx.PASTA76_NAMES[tx.PART_RANGES_76["foot"][10]]}
    verbs = [{tx.VERB_NAMES[i] for i in np.flatnonzero(row)} for row in data.verbs]
    assert verbs == [{"race", "straddle"}, {"no_interaction"}, {"board"}]  # HOI 1: airplane board
    # the HOIs of each merged person: verb and object together (hoi_verbs / hoi_objects)
    assert data.hois == [frozenset({153, 156}), frozenset({600}), frozenset({1})]
    assert [(tx.VERB_NAMES[hoi_verbs()[h - 1]], tx.OBJECT_NAMES[hoi_objects()[h - 1]]) for h in (1, 153, 600)] == [
        ("board", "airplane"), ("race", "motorcycle"), ("no_interaction", "zebra")]
    assert data.subset([2, 0]).hois == [frozenset({1}), frozenset({153, 156})]
    assert data.parts.tolist() == [[0, 1, 1, 1, 0, 0], [0] * 6, [1, 0, 0, 0, 0, 1]]
    # the images root may also be the image folder itself
    assert load_annotations(path, tmp_path / "imgs" / "sub").images == ["a.jpg", "a.jpg", "b.jpg"]


def test_instance_level_bad_entries_are_reported_and_skipped(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    raw = {
        "a.jpg": {"labels": [
            instance_label([10, 10, 50, 70], 1, [(6, 0)]),  # good
            instance_label([10, 10, 150, 70], 1, [(6, 0)]),  # box outside the 100x80 image
            instance_label([10, 10, 50, 70], 1, [(10, 0)]),  # human_part out of range
            instance_label([10, 10, 50, 70], 1, [(4, 5)]),  # hip has 5 states in the 76 list: 0..4
            instance_label([10, 10, 50, 70], "1", [(6, 0)]),  # wrong type
            instance_label([50, 10, 10, 70], 1, [(6, 0)]),  # empty box
        ]},
        "missing.jpg": {"labels": [instance_label([10, 10, 50, 70], 1, [(6, 0)])]},
        "odd.jpg": ["not", "an", "object"],
    }
    path = write(tmp_path / "inst.json", raw)
    data = load_annotations(path, tmp_path)
    assert len(data) == 1 and data.labels_read == 1
    got = {(p.entry, p.file) for p in data.problems}
    assert got == {(f"image a.jpg, label {j}", str(path)) for j in range(1, 6)} | {
        ("image missing.jpg", str(path)), ("image odd.jpg", str(path))}
    text = "\n".join(map(str, data.problems))
    for needle in ("outside the 100x80 image", "human_part 10 is out of range", "hip partstate 5 is out of range",
                   "hoi_id must be an integer", "empty", "image not found under"):
        assert needle in text
    assert str(data.problems[0]).startswith(f"{path}: image ")
    # without an images root, the missing image is not a problem
    assert len(load_annotations(path).problems) == 6


# ------------------------------------------------------------------ CLIP-Activity2Vec format


def test_clip_a2v_format(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    good = {"img_path": "a.png", "image_heigh": 64, "image_width": 64, "gt_verbs": [3, tx.NO_INTERACTION_VERB],
            "gt_pasta_foot": [15], "gt_pasta_leg": [], "gt_pasta_hip": [0], "gt_pasta_hand": [0, 33],
            "gt_pasta_arm": [7], "gt_pasta_head": [13]}
    anns = [good,
            {**good, "img_path": "b.png", "gt_pasta_arm": [8]},  # arm has 8 states: 0..7
            {**good, "img_path": "c.png"},  # no such image
            {**good, "img_path": "b.png", "gt_verbs": "3"},  # wrong type
            {k: v for k, v in good.items() if k != "gt_pasta_hip"} | {"img_path": "b.png"},  # missing key
            {**good, "img_path": "b.png", "image_width": -3},  # bad size
            {**good},  # duplicate of a.png
            "junk"]
    path = write(tmp_path / "clip.json", {"annotations": anns})
    data = load_annotations(path, tmp_path)
    assert data.format == CLIP_A2V and len(data) == 1 and data.entries == 8 and data.boxes == [None]
    assert [p.entry for p in data.problems] == ["annotation 1 (b.png)", "annotation 2 (c.png)", "annotation 3 (b.png)",
                                                "annotation 4 (b.png)", "annotation 5 (b.png)", "annotation 6 (a.png)",
                                                "annotation 7"]
    assert "gt_pasta_arm index 8 is out of range 0..7" in data.problems[0].message
    assert "missing 'gt_pasta_hip'" in data.problems[3].message
    pasta = set(np.flatnonzero(data.pasta[0]))
    assert pasta == {15, 31, 37, 70, 78, 92}  # within-part indices offset by each part's start
    assert set(np.flatnonzero(data.verbs[0])) == {3, tx.NO_INTERACTION_VERB}
    # no_interaction states do not raise a part flag: only hip and hand are active
    assert data.parts.tolist() == [[0, 0, 1, 1, 0, 0]]


def test_part_flags_ignore_no_interaction():
    pasta = np.zeros((2, 93), np.uint8)
    pasta[0, list(tx.NO_INTERACTION_PASTA)] = 1
    pasta[1, tx.pasta_index("head: eat")] = 1
    assert part_flags(pasta).tolist() == [[0] * 6, [0, 0, 0, 0, 0, 1]]


def test_unreadable_or_unknown_files_raise_with_the_fix(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_annotations(tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"annotations": [')
    with pytest.raises(InputError, match="not valid JSON"):
        load_annotations(broken)
    with pytest.raises(InputError, match="neither a CLIP-Activity2Vec JSON"):
        load_annotations(write(tmp_path / "list.json", [1, 2]))
    with pytest.raises(InputError, match="holds 0 .json files"):
        with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
            pass
        load_annotations(tmp_path / "empty.tar.gz")
    with pytest.raises(InputError, match="not a folder"):
        load_annotations(write(tmp_path / "ok.json", {"annotations": []}), tmp_path / "nowhere")



# ------------------------------------------------------------------ HICO image-level (76 states)


def hico_image_entry(hois, **active):
    """An image-level entry: per part a 76-state multi-hot list, the last flag set when the part is idle."""
    entry = {"hoi_id": hois, "parts_list": [0] * 10}
    for part in tx.PARTS:
        flags = [0] * len(tx.PART_RANGES_76[part])
        for k in active.get(part, []):
            flags[k] = 1
        if not any(flags):
            flags[-1] = 1
        entry[f"{part}_list"] = flags
    return entry


def test_hico_image_level_maps_76_to_93(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    raw = {"a.jpg": hico_image_entry([153, 156], hand=[0], hip=[0], leg=[6]),
           "b.jpg": hico_image_entry([]),  # nobody interacts: every part idle
           "c.jpg": hico_image_entry([1], head=[11]),  # no such image under the root
           "d.jpg": {**hico_image_entry([1]), "hip_list": [1, 0]}}  # hip has 5 states in the 76 list
    path = write(tmp_path / "il.json", raw)
    data = load_annotations(path, tmp_path)
    assert data.format == HICO_IMAGE and data.images == ["a.jpg", "b.jpg"] and data.boxes == [None, None]
    assert [p.entry for p in data.problems] == ["image c.jpg", "image d.jpg"]
    assert "hip_list must be a list of 5 0/1 flags" in data.problems[1].message
    names = [{tx.PASTA_NAMES[i] for i in np.flatnonzero(row)} for row in data.pasta]
    assert names[0] == {"hand: hold", "hip: sit on", "leg: straddle", "foot: no_interaction", "arm: no_interaction",
                        "head: no_interaction"}
    # the 76-state no_interaction (last of each part) lands on the 93-state no_interaction
    assert names[1] == {f"{p}: no_interaction" for p in tx.PARTS}
    assert {tx.VERB_NAMES[i] for i in np.flatnonzero(data.verbs[0])} == {"race", "straddle"}
    assert data.verbs[1].sum() == 0 and data.parts.tolist() == [[0, 1, 1, 1, 0, 0], [0] * 6]


def test_real_hico_image_level_loads():
    if not IMAGE_LEVEL_TARBALL.is_file():
        pytest.skip(f"{IMAGE_LEVEL_TARBALL} is absent")
    data = load_annotations(IMAGE_LEVEL_TARBALL)  # read straight from the archive
    assert data.format == HICO_IMAGE and data.problems == [] and len(data) == data.n_images == 38_118
    assert data.labels_read == 233_079  # multi-hot flags set, no_interaction included
    first = data.images.index("HICO_train2015_00000001.jpg")
    assert data.verbs[first, tx.verb_index("race")] == 1
    assert {tx.PASTA_NAMES[i] for i in np.flatnonzero(data.pasta[first])} >= {"hand: hold", "hip: sit on",
                                                                               "foot: stand on"}
    new_states = sorted(set(range(len(tx.PASTA_NAMES))) - set(tx.MAP_76_TO_93))
    assert data.pasta[:, new_states].sum() == 0
