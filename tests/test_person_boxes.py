"""One person, one sample: merging a person's boxes within an image, and ``dataset-info``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_main

from a2v_search import taxonomy as tx
from a2v_search.detect import BoxesFile
from a2v_search.person_boxes import iou, merge_boxes
from a2v_search.training.hake_data import load_annotations


def test_iou_known_values():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_merge_is_complete_linkage_with_the_mean_box():
    a = (0.0, 0.0, 100.0, 100.0)
    b = (0.0, 0.0, 100.0, 120.0)  # IoU(a, b) = 100/120 = 0.83: the same person
    c = (0.0, 0.0, 100.0, 145.0)  # IoU(b, c) = 120/145 = 0.83 but IoU(a, c) = 0.69: no chaining through b
    d = (300.0, 0.0, 350.0, 90.0)  # someone else
    merged, owner = merge_boxes([a, b, c, d, a])
    assert owner == [0, 0, 1, 2, 0]  # the duplicate of a joins a's person
    assert merged[0] == (0.0, 0.0, 100.0, 110.0)  # mean of the distinct boxes a and b
    assert merged[1] == c and merged[2] == d
    # the mean box holds the intersection of its drawings and lies inside their union
    assert merged[0][3] >= min(a[3], b[3]) and merged[0][3] <= max(a[3], b[3])
    # at IoU 0.7 exactly, boxes merge; just below, they do not
    e = (0.0, 0.0, 100.0, 100.0 / 0.7)
    assert len(merge_boxes([a, e])[0]) == 1
    assert len(merge_boxes([a, (0.0, 0.0, 100.0, 100.0 / 0.69)])[0]) == 2


def instance_label(box, hoi, actions, w=400, h=300):
    return {"human_bbox": box, "object_bbox": [0, 0, 10, 10], "hoi_id": hoi, "width": w, "height": h,
            "action_labels": [{"human_part": p, "partstate": s} for p, s in actions]}


@pytest.fixture
def redrawn(tmp_path):
    """One person drawn twice (two HOIs, IoU 0.83), another person, and a second image with one person."""
    raw = {
        "a.jpg": {"labels": [
            instance_label([10, 10, 110, 110], 153, [(6, 0)]),  # hand: hold; race
            instance_label([10, 10, 110, 130], 156, [(4, 0), (1, 6)]),  # same person: hip sit on, leg straddle
            instance_label([200, 10, 260, 200], 1, [(5, 11)]),  # another person
        ]},
        "b.jpg": {"labels": [instance_label([0, 0, 100, 80], 153, [(6, 0)])]},
    }
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(raw))
    return path


def test_instance_loader_merges_a_redrawn_person(redrawn):
    data = load_annotations(redrawn)
    assert data.boxes_read == 4 and len(data) == 3 and data.n_images == 2
    assert data.boxes[0] == (10.0, 10.0, 110.0, 120.0)
    names = {tx.PASTA_NAMES[i] for i in np.flatnonzero(data.pasta[0])}
    assert names == {"hand: hold", "hip: sit on", "leg: straddle"}  # the union of both drawings' labels
    assert {tx.VERB_NAMES[i] for i in np.flatnonzero(data.verbs[0])} == {"race", "straddle"}


def test_boxes_file_merges_a_redrawn_person(redrawn):
    boxes = BoxesFile(redrawn).boxes
    obj = (0.0, 0.0, 10.0, 10.0)  # every label's object_bbox; HOIs 153 and 156 (race, straddle) name one motorcycle
    assert boxes["a.jpg"] == [([10.0, 10.0, 110.0, 120.0], 1.0, ((tx.object_index("motorcycle"), 1.0, obj),)),
                              ([200.0, 10.0, 260.0, 200.0], 1.0, ((tx.object_index("airplane"), 1.0, obj),))]
    assert len(boxes["b.jpg"]) == 1


def test_dataset_info_json_and_text(redrawn):
    code, out, err = run_main("dataset-info", redrawn, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert {"images", "boxes", "persons", "positives"} <= set(info)
    assert (info["images"], info["boxes"], info["persons"]) == (2, 4, 3)
    assert list(info["positives"]) == [*tx.PARTS, "pasta_binary", "verb"]
    assert info["positives"]["hand"]["hold"] == 2 and info["positives"]["leg"]["straddle"] == 1
    assert info["positives"]["pasta_binary"] == {"foot": 0, "leg": 1, "hip": 1, "hand": 2, "arm": 0, "head": 1}
    assert info["positives"]["verb"]["race"] == 2 and sum(info["positives"]["verb"].values()) == 4
    code, out, err = run_main("dataset-info", redrawn)
    assert code == 0 and "person boxes 4, persons after merging 3" in out and "hand: 1 of 34 classes" in out
    code, out, err = run_main("dataset-info", redrawn.parent / "none.json")
    assert code == 1 and "does not exist" in err and "Traceback" not in out + err
