"""Training and evaluation of the PaSta heads, end to end through the CLI, on generated images whose part states
are visible in the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from a2v_search import taxonomy as tx
from a2v_search.cli import app
from a2v_search.hake_data import load_annotations
from a2v_search.metrics import EVAL_HEADS
from a2v_search.models import ModelSpec, load_encoder
from a2v_search.models.checkpoint import save_checkpoint
from a2v_search.models.heads import PastaHeads

SIZE = 64
#: Where each part's mark is drawn (x1, y1, x2, y2): roughly where the part is on a standing person.
PART_BOXES = {"head": (16, 0, 48, 16), "arm": (0, 16, 16, 48), "hand": (48, 16, 64, 48), "hip": (16, 24, 48, 40),
              "leg": (16, 40, 48, 52), "foot": (16, 52, 48, 64)}
#: The state of a part is the colour of its mark (states 0..3 of the part).
COLOURS = ((230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30))
_Y, _X = np.mgrid[0:SIZE, 0:SIZE]
#: Each part draws its mark with its own stripe pattern (in PARTS order), which the tiny random tower keeps
#: better than plain blocks.
PATTERNS = ((_Y // 2) % 2, (_X // 2) % 2, ((_X + _Y) // 2) % 2, (_X // 2 + _Y // 2) % 2, (_Y // 4) % 2, (_X // 4) % 2)
PART_HEADS = tx.PARTS
TRAIN_ARGS = ["--epochs", "40", "--lr", "1e-2", "--hidden", "128"]


def make_split(root: Path, name: str, n: int, seed: int) -> Path:
    """n images; each part is active with probability 1/2, in one of 4 states; the verb follows the hand."""
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True)
    annotations = []
    for i in range(n):
        pixels = np.full((SIZE, SIZE, 3), 128, np.uint8)
        ann = {"img_path": f"{name}/{i:04d}.png", "image_heigh": SIZE, "image_width": SIZE}
        for p, part in enumerate(tx.PARTS):
            state = int(rng.integers(len(COLOURS))) if rng.random() < 0.5 else tx.PART_SIZES[part] - 1
            if state < len(COLOURS):
                x1, y1, x2, y2 = PART_BOXES[part]
                region = pixels[y1:y2, x1:x2]
                region[PATTERNS[p][y1:y2, x1:x2] == 1] = COLOURS[state]
            ann[f"gt_pasta_{part}"] = [state]  # the last state is the part's no_interaction
        hand = ann["gt_pasta_hand"][0]
        ann["gt_verbs"] = [hand] if hand < len(COLOURS) else [tx.NO_INTERACTION_VERB]
        Image.fromarray(pixels).save(root / ann["img_path"])
        annotations.append(ann)
    path = root / f"{name}.json"
    path.write_text(json.dumps({"annotations": annotations}))
    return path


def cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def part_mean(ap: dict) -> float:
    return float(np.mean([ap[h] for h in PART_HEADS]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip_dir):
    base = tmp_path_factory.mktemp("synthetic")
    images = base / "images"
    train = make_split(images, "train", 300, seed=1)
    val = make_split(images, "val", 120, seed=2)
    common = ["--images", images, "--model", tiny_clip_dir, "--data-dir", base / "data", "--device", "cpu"]
    trained = cli("train-heads", train, *common, "--out", base / "ckpt", *TRAIN_ARGS)
    return {"base": base, "images": images, "train": train, "val": val, "common": common, "ckpt": base / "ckpt",
            "train_output": trained}


def evaluate_json(setup, *args) -> dict:
    result = cli("evaluate", setup["val"], *setup["common"], "--json", *args)
    return json.loads(result.stdout)  # stdout holds the JSON document and nothing else


def test_training_beats_untrained_heads(setup, tiny_clip_dir):
    assert f"wrote {setup['ckpt']}" in setup["train_output"].stdout
    trained = evaluate_json(setup, "--checkpoint", setup["ckpt"])
    zero_shot = evaluate_json(setup)
    torch.manual_seed(0)
    random_ckpt = save_checkpoint(setup["base"] / "random", PastaHeads(dim_in=16, dim_hidden=128),
                                  backbone_ref=str(tiny_clip_dir))
    random_init = evaluate_json(setup, "--checkpoint", random_ckpt)
    for doc in (trained, zero_shot, random_init):
        assert set(doc) == {"ap11", "ap_all", "images"} and doc["images"] == 120
        for method in ("ap11", "ap_all"):
            assert tuple(doc[method]) == EVAL_HEADS
            assert all(0.0 <= v <= 1.0 for v in doc[method].values())
    baseline = max(part_mean(zero_shot["ap11"]), part_mean(random_init["ap11"]))
    print(f"\npart-head mAP (11-point) on held-out images: zero-shot {part_mean(zero_shot['ap11']):.3f}, "
          f"random init {part_mean(random_init['ap11']):.3f}, trained {part_mean(trained['ap11']):.3f}")
    print("trained:", json.dumps(trained))
    assert part_mean(trained["ap11"]) > baseline + 0.2
    assert part_mean(trained["ap_all"]) > max(part_mean(zero_shot["ap_all"]), part_mean(random_init["ap_all"])) + 0.2
    assert trained["ap11"]["pasta_binary"] > zero_shot["ap11"]["pasta_binary"]


def test_saved_heads_match_the_encoder_path(setup):
    """Evaluation applies the heads to cached tower features; the encoder loaded from the checkpoint gives the
    same probabilities from the images."""
    from a2v_search.evaluate import head_probabilities
    from a2v_search.train import cached_features

    encoder = load_encoder(ModelSpec(checkpoint=str(setup["ckpt"])), device="cpu", with_language=False)
    data = load_annotations(setup["val"], setup["images"])
    features, _, hit = cached_features(encoder, data, setup["images"], setup["base"] / "data")
    assert hit  # evaluate --checkpoint cached them
    probs = head_probabilities(encoder, features[:8])
    images = [Image.open(setup["images"] / name) for name in data.images[:8]]
    direct = encoder.encode_persons(images, [None] * 8)
    assert np.abs(direct.pasta - probs["pasta"]).max() < 1e-5
    assert np.abs(direct.parts - probs["parts"]).max() < 1e-5
    config = json.loads((setup["ckpt"] / "a2v_config.json").read_text())
    assert config["training"]["epochs"] == 40 and config["training"]["samples"] == 300


def test_features_are_cached_and_training_is_deterministic(setup, monkeypatch):
    from a2v_search import train

    cache = setup["base"] / "data" / "cache" / "features"
    assert len(list(cache.glob("*.npy"))) == 2  # train and val: zero-shot, trained and random heads share them
    monkeypatch.setattr(train, "compute_features", lambda *a, **k: pytest.fail("features computed again"))

    def train_once(out: str, *extra: str) -> bytes:
        result = cli("train-heads", setup["train"], *setup["common"], "--out", setup["base"] / out, "--epochs", "1",
                     *extra)
        assert "read from" in result.stderr
        return (setup["base"] / out / "heads.safetensors").read_bytes()

    first = train_once("again")
    assert train_once("again2") == first  # same seed, same heads
    assert train_once("seed1", "--seed", "1") != first
    # nothing was written beside the images
    assert {p.name for p in setup["images"].iterdir()} == {"train", "val", "train.json", "val.json"}


def test_default_out_is_under_the_data_dir_and_refuses_to_overwrite(setup, tmp_path, tiny_clip_dir):
    data_dir = tmp_path / "dd"
    common = ["--images", setup["images"], "--model", tiny_clip_dir, "--data-dir", data_dir, "--device", "cpu"]
    small = tmp_path / "small.json"
    doc = json.loads(setup["train"].read_text())
    small.write_text(json.dumps({"annotations": doc["annotations"][:40]}))
    result = cli("train-heads", small, *common, "--epochs", "1")
    (out,) = (data_dir / "checkpoints").iterdir()
    assert out.name.startswith("heads-") and f"wrote {out}" in result.stdout
    again = CliRunner().invoke(app, ["train-heads", str(small), *map(str, common), "--out", str(out)])
    assert again.exit_code != 0 and "not an empty folder" in str(again.exception)


def test_bad_annotations_are_reported_and_the_rest_evaluates(setup, tmp_path):
    doc = json.loads(setup["val"].read_text())
    annotations = doc["annotations"][:30]
    annotations[3] = {**annotations[3], "img_path": "val/nope.png"}
    annotations[5] = {**annotations[5], "gt_pasta_hand": [40]}
    annotations[7] = {**annotations[7], "gt_verbs": None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"annotations": annotations}))
    result = cli("evaluate", path, *setup["common"], "--checkpoint", setup["ckpt"], "--json")
    assert json.loads(result.stdout)["images"] == 27
    assert f"{path}: annotation 3 (val/nope.png): image not found" in result.stderr
    assert f"{path}: annotation 5 ({annotations[5]['img_path']}): gt_pasta_hand index 40" in result.stderr
    assert f"{path}: annotation 7 ({annotations[7]['img_path']}): gt_verbs must be a list" in result.stderr
    assert "3 annotation entries skipped" in result.stderr


def test_instance_level_samples_are_person_crops(setup, tmp_path, tiny_clip_dir):
    def label(box, hoi, actions):
        return {"human_bbox": box, "object_bbox": box, "hoi_id": hoi, "width": SIZE, "height": SIZE,
                "action_labels": [{"human_part": p, "partstate": s} for p, s in actions]}

    raw = {f"{i:04d}.png": {"dataset": "hico-det", "path_prefix": "val", "labels": [
        label([0, 0, 32, 64], 1, [(6, 0), (9, 0)]), label([0, 0, 32, 64], 2, [(5, 1)]),  # one person, two HOIs
        label([32, 0, 64, 64], 3, [(0, 2)])]} for i in range(10)}
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(raw))
    data_dir = tmp_path / "data"
    common = ["--images", setup["images"], "--model", tiny_clip_dir, "--data-dir", data_dir, "--device", "cpu"]
    doc = json.loads(cli("evaluate", path, *common, "--checkpoint", setup["ckpt"], "--json").stdout)
    assert doc["images"] == 10
    assert doc["ap11"]["hand"] is not None and doc["ap11"]["leg"] is None  # leg has no positive: no valid class
    (cache,) = (data_dir / "cache" / "features").glob("*.npy")
    features = np.load(cache)
    assert features.shape == (20, 16) and np.abs(features[0] - features[1]).max() > 1e-3  # left vs right crop


def test_evaluate_prints_a_table(setup):
    result = cli("evaluate", setup["val"], *setup["common"], "--checkpoint", setup["ckpt"])
    for head in EVAL_HEADS:
        assert head in result.stdout
    assert "11-point" in result.stdout and "120 samples" in result.stdout


def test_reference_loss_and_targets(tmp_path):
    from a2v_search.train import head_targets, reference_loss

    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    bce = torch.log1p(torch.exp(-logits * (2 * target - 1)))  # elementwise BCE with logits
    expected = (3 * (1 - torch.exp(-bce)) * bce).mean()
    assert reference_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)

    ann = {"img_path": "x.png", "gt_verbs": [3, tx.NO_INTERACTION_VERB], "gt_pasta_foot": [15], "gt_pasta_leg": [],
           "gt_pasta_hip": [], "gt_pasta_hand": [0], "gt_pasta_arm": [], "gt_pasta_head": []}
    (tmp_path / "one.json").write_text(json.dumps({"annotations": [ann]}))
    targets = head_targets(load_annotations(tmp_path / "one.json"))
    assert list(targets) == ["verb", "foot", "leg", "hip", "hand", "arm", "head", "pasta_binary"]
    assert targets["foot"][0, -1] == 0 and targets["verb"][0, tx.NO_INTERACTION_VERB] == 0  # forced to 0
    assert targets["hand"][0, 0] == 1 and targets["verb"][0, 3] == 1
    assert targets["pasta_binary"][0].tolist() == [0, 0, 0, 1, 0, 0]
