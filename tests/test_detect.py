"""The one Detector protocol: the whole image, a boxes file and a detector model answer the same four questions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from a2v_search.api import A2VSearch
from a2v_search.detect import Detector, detector_kind, make_detector
from a2v_search.errors import InputError
from a2v_search.ingest import run_ingest


def test_every_detector_is_a_detector(tmp_path, tiny_detector_dir):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": {"labels": [{"human_bbox": [1, 2, 30, 40]}]}}))
    whole, from_file = make_detector("none"), make_detector(f"boxes:{boxes}")
    model = make_detector(str(tiny_detector_dir), "cpu")
    assert all(isinstance(d, Detector) for d in (whole, from_file, model))
    assert not isinstance("none", Detector)
    assert [d.needs_frames for d in (whole, from_file, model)] == [False, False, True]
    assert [d.binds_tree for d in (whole, from_file, model)] == [False, True, False]
    assert [detector_kind(d.name) for d in (whole, from_file, model)] == ["none", "boxes", "model"]
    frame = np.zeros((8, 6, 3), np.uint8)
    assert whole.detect([frame, frame]) == [[(None, 1.0, ())], [(None, 1.0, ())]]  # the whole frame, no objects
    assert whole.bind([]) is None and model.bind([]) is None
    with pytest.raises(InputError, match="--box x1,y1,x2,y2"):
        from_file.detect([frame])  # a boxes file names files, not frames


def test_a_boxes_file_cannot_cut_a_query_image_and_a_non_detector_is_refused(tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": {"labels": [{"human_bbox": [1, 2, 30, 40]}]}}))
    image = tmp_path / "q.png"
    Image.new("RGB", (32, 48), "white").save(image)
    with A2VSearch.open(tmp_path / "data") as api, pytest.raises(InputError, match="give --box"):
        api.predict(image, detector=f"boxes:{boxes}")
    with pytest.raises(InputError, match="unknown detector 'none'"):
        run_ingest(None, lambda: None, "none", [str(image)])
