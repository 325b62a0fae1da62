"""Every command from the CLI, in process, on tiny models: output formats, files written, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_main
from PIL import Image

from a2v_search import taxonomy as tx
from a2v_search.models.tiny import official_checkpoint, random_official_state_dict
from a2v_search.testing.media import write_images


@pytest.fixture()
def models(tiny_clip_dir, tiny_bert_dir):
    return ["--model", str(tiny_clip_dir), "--text-model", str(tiny_bert_dir)]


def test_predict_json_has_every_class(tmp_path, models):
    [img] = write_images(tmp_path / "in", 1, w=80, h=60)
    code, out, err = run_main("predict", img, "--detector", "none", *models, "--data-dir", tmp_path / "d", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["image"] == str(img) and len(doc["persons"]) == 1
    person = doc["persons"][0]
    assert set(person) == {"box", "score", "objects", "pasta", "verbs", "parts"}
    assert person["objects"] == []  # --detector none: the whole image, no objects
    assert list(person["pasta"]) == list(tx.PASTA_NAMES) and list(person["verbs"]) == list(tx.VERB_NAMES)
    assert list(person["parts"]) == list(tx.PARTS) and person["box"] == [0, 0, 80, 60]
    code, out, _ = run_main("predict", img, "--box", "10,5,50,55", *models, "--data-dir", tmp_path / "d")
    assert code == 0 and "person 0" in out and "hand" in out
    code, _, err = run_main("predict", img, "--box", "10,5", *models, "--data-dir", tmp_path / "d")
    assert code == 1 and "four numbers" in err


def test_show_draws_the_persons(tmp_path, models):
    [img] = write_images(tmp_path / "in", 1, w=120, h=90)
    out_png = tmp_path / "shown.png"
    code, out, err = run_main("show", img, "--out", out_png, "--box", "20,10,80,85", *models,
                              "--data-dir", tmp_path / "d")
    assert code == 0, err
    drawn = np.asarray(Image.open(out_png))
    assert drawn.shape == (90, 120, 3) and (drawn != np.asarray(Image.open(img))).any()
    code, _, err = run_main("show", img, "--out", tmp_path / "shown.txt", "--detector", "none", *models,
                            "--data-dir", tmp_path / "d")
    assert code == 1 and ".png" in err


def test_list_files_stats_remove_reindex(tmp_path, models):
    imgs = write_images(tmp_path / "in", 4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two of them\n{imgs[0]}\nin/{imgs[1].name}\n\n")
    data = ["--data-dir", tmp_path / "data"]
    code, out, err = run_main("ingest", listing, *data, *models, "--detector", "none", "--workers", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["media_ingested"] == 2
    run_main("ingest", tmp_path / "in", *data, "--workers", "0")  # the store's models and detector
    code, out, _ = run_main("stats", *data, "--json")
    stats = json.loads(out)
    assert stats["media"] == 4 and stats["persons"] == 4 and stats["indexes"]["visual"]["count"] == 4
    assert stats["space"]["visual_model"] == str(models[1]) and stats["collections"] == {"default": 4}
    code, out, _ = run_main("remove", imgs[0], *data)
    assert code == 0 and "removed 1 media, 1 persons" in out
    code, _, _ = run_main("remove", tmp_path / "not-stored.jpg", *data)
    assert code == 1
    code, out, _ = run_main("reindex", *data, "--index-spec", "IVF4,Flat")
    assert code == 0 and "IVF4,Flat" in out
    code, out, _ = run_main("stats", *data, "--json")
    assert json.loads(out)["indexes"]["language"]["spec"] == "IVF4,Flat"
    code, _, err = run_main("reindex", *data, "--index-spec", "NoSuchIndex42")
    assert code == 1 and "error:" in err
    assert run_main("doctor", *data)[0] == 0


def test_import_command(tmp_path, models):
    rng = np.random.default_rng(0)
    good = {"path": "/remote/a.jpg", "width": 10, "height": 20,
            "persons": [{"box": [0, 0, 10, 20], "pasta": {"hand: hold": 0.9}, "verbs": {"hold": 0.8},
                         "visual": rng.normal(size=16).tolist()}]}
    bad = {"path": "/remote/b.jpg", "persons": [{"pasta": [2.0] * 93, "visual": [1.0] * 16}]}
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    code, out, err = run_main("import", records, "--data-dir", tmp_path / "data", *models, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["media_added"] == 1 and report["persons_added"] == 1
    assert len(report["failures"]) == 1 and "[0, 1]" in report["failures"][0]["error"]
    code, out, _ = run_main("search", "--text", "hand: hold", "--data-dir", tmp_path / "data", "--json")
    assert json.loads(out)["results"][0]["path"] == "/remote/a.jpg"
    code, out, err = run_main("import", records, "--data-dir", tmp_path / "data")  # the same records again
    assert code == 0 and "media added 1 | persons added 1 | failures 1" in out
    assert "import" in err and "2 records, 1 persons" in err  # its progress
    (tmp_path / "broken.jsonl").write_text("{not json")
    code, _, err = run_main("import", tmp_path / "broken.jsonl", "--data-dir", tmp_path / "data")
    assert code == 1 and "not valid JSON" in err


def test_convert_checkpoint_command(tmp_path):
    sd = random_official_state_dict(width=64, layers=1, patch=8, image=32, out=16, hidden=16)
    torch.save(official_checkpoint(sd), tmp_path / "ckpt_4.pth")
    code, out, err = run_main("convert-checkpoint", tmp_path / "ckpt_4.pth", tmp_path / "converted")
    assert code == 0, err
    assert (tmp_path / "converted" / "heads.safetensors").is_file() and "--checkpoint" in out
    code, _, err = run_main("convert-checkpoint", tmp_path / "ckpt_4.pth", tmp_path / "converted")
    assert code == 1 and "not empty" in err
