"""Training and evaluation of the PaSta heads, end to end through the CLI, on generated images whose part states
are visible in the pixels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from a2v_search import taxonomy as tx
from a2v_search.cli import app
from a2v_search.models import ModelSpec, load_encoder
from a2v_search.models.checkpoint import save_checkpoint
from a2v_search.models.heads import PastaHeads
from a2v_search.training.hake_data import load_annotations
from a2v_search.training.metrics import EVAL_HEADS

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
    from a2v_search.training.evaluate import head_probabilities
    from a2v_search.training.train import cached_features

    encoder = load_encoder(ModelSpec(checkpoint=str(setup["ckpt"])), device="cpu", with_language=False)
    data = load_annotations(setup["val"], setup["images"])
    feats = cached_features(encoder, data, setup["images"], setup["base"] / "data")
    assert feats.hit and feats.unreadable == {} and feats.mirrored is None  # evaluate --checkpoint cached them
    probs = head_probabilities(encoder.model.heads, feats.plain[:8])
    images = [Image.open(setup["images"] / name) for name in data.images[:8]]
    direct = encoder.encode_persons(images, [None] * 8)
    assert np.abs(direct.pasta - probs["pasta"]).max() < 1e-5
    assert np.abs(direct.parts - probs["parts"]).max() < 1e-5
    config = json.loads((setup["ckpt"] / "a2v_config.json").read_text())
    assert config["training"]["epochs"] == 40 and config["training"]["samples"] == 300


def test_features_are_cached_and_training_is_deterministic(setup, monkeypatch):
    from a2v_search.training import train

    cache = setup["base"] / "data" / "cache" / "features"
    # train (plain and mirrored) and val (plain): zero-shot, trained and random heads share them
    assert len(list(cache.glob("*.mirrored.npy"))) == 1 and len(list(cache.glob("*.npy"))) == 3
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
    from a2v_search.training.train import head_targets, reference_loss

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


# ------------------------------------------------------------------ flips, unreadable images, --val-split, precision


def test_mirrored_features_are_those_of_the_mirrored_image(setup, tmp_path, tiny_clip_dir):
    """The cached mirrored features are the tower's features of the left-right mirrored input."""
    from a2v_search.training.train import cached_features

    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the tower's own size
    Image.fromarray(pixels).save(images / "a.png")
    Image.fromarray(np.ascontiguousarray(pixels[:, ::-1])).save(images / "a_mirror.png")
    anns = [{"img_path": name, "image_heigh": 32, "image_width": 32, "gt_verbs": [], **{
        f"gt_pasta_{p}": [] for p in tx.PARTS}} for name in ("a.png", "a_mirror.png")]
    (tmp_path / "ann.json").write_text(json.dumps({"annotations": anns}))
    data = load_annotations(tmp_path / "ann.json", images)
    encoder = load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cpu", with_language=False)
    feats = cached_features(encoder, data, images, tmp_path / "data", mirrored=True)
    assert np.abs(feats.mirrored[0] - feats.plain[1]).max() < 1e-5
    assert np.abs(feats.mirrored[1] - feats.plain[0]).max() < 1e-5
    assert np.abs(feats.plain[0] - feats.plain[1]).max() > 1e-3  # the flip does change the features
    again = cached_features(encoder, data, images, tmp_path / "data", mirrored=True)
    assert again.hit and np.array_equal(again.mirrored, feats.mirrored)


def test_flip_draws_the_mirrored_features_of_the_same_sample(setup):
    """Flips have their own random stream: with mirrored features equal to the plain ones, training is exactly the
    no-flip training (so every flipped row is the same sample's); with other mirrored features it differs."""
    from a2v_search.training.train import train_heads

    data = load_annotations(setup["train"], setup["images"]).subset(range(64))
    feats = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    kw = {"epochs": 2, "batch_size": 16, "hidden": 16, "seed": 3}

    def weights(**extra) -> torch.Tensor:
        return torch.cat([p.flatten() for p in train_heads(feats, data, **kw, **extra).heads.parameters()])

    plain = weights()
    assert torch.equal(weights(mirrored=feats.copy()), plain)
    assert not torch.equal(weights(mirrored=-feats), plain)
    assert torch.equal(weights(mirrored=-feats), weights(mirrored=-feats))  # seeded


def test_unreadable_images_are_reported_and_skipped(setup, tmp_path, tiny_clip_dir):
    images = tmp_path / "images"
    (images / "val").mkdir(parents=True)
    doc = json.loads(setup["val"].read_text())
    anns = doc["annotations"][:12]
    for ann in anns:
        (images / ann["img_path"]).write_bytes((setup["images"] / ann["img_path"]).read_bytes())
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (images / "val" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 3 // 4])  # truncated JPEG
    (images / "val" / "text.png").write_text("not an image")
    anns = anns + [{**anns[0], "img_path": "val/cut.jpg"}, {**anns[1], "img_path": "val/text.png"}]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"annotations": anns}))
    common = ["--images", images, "--model", tiny_clip_dir, "--data-dir", tmp_path / "data", "--device", "cpu"]
    for _ in range(2):  # computed, then from the cache: the same report
        result = cli("evaluate", path, *common, "--checkpoint", setup["ckpt"], "--json")
        assert json.loads(result.stdout)["images"] == 12
        assert "skipped val/cut.jpg: cannot read image" in result.stderr and "is truncated" in result.stderr
        assert "skipped val/text.png: cannot read image" in result.stderr
        assert "2 samples left out" in result.stderr
    trained = cli("train-heads", path, *common, "--epochs", "1", "--out", tmp_path / "ckpt")
    assert "trained 1 epochs on 12 samples" in trained.stdout and "2 samples left out" in trained.stderr


def test_split_by_image_is_seeded_and_disjoint(tmp_path):
    from a2v_search.errors import InputError
    from a2v_search.training.train import split_by_image

    raw = {f"{i:02d}.jpg": {"labels": [
        {"human_bbox": [0, 0, 10, 20], "hoi_id": 1, "width": 100, "height": 100, "action_labels": []},
        {"human_bbox": [50, 0, 60, 20], "hoi_id": 1, "width": 100, "height": 100, "action_labels": []}]}
        for i in range(20)}
    (tmp_path / "inst.json").write_text(json.dumps(raw))
    data = load_annotations(tmp_path / "inst.json")
    train, val = split_by_image(data, 0.25, seed=0)
    assert len(val) == 10 and len(train) == 30  # 5 of 20 images, two persons each
    assert not {data.images[i] for i in train} & {data.images[i] for i in val}
    assert np.array_equal(split_by_image(data, 0.25, seed=0)[1], val)
    assert not np.array_equal(split_by_image(data, 0.25, seed=1)[1], val)
    for bad in (0.0, 1.0, 0.01, 0.99):
        with pytest.raises(InputError, match="at least one image on each side"):
            split_by_image(data, bad)


def test_val_split_reports_held_out_map(setup):
    out = setup["base"] / "val-split"
    result = cli("train-heads", setup["train"], *setup["common"], "--out", out, "--val-split", "0.2",
                 *TRAIN_ARGS)
    assert "held out by --val-split 0.2" in result.stdout and "60 images" in result.stdout
    assert "trained 40 epochs on 240 samples (240 images)" in result.stdout
    held = json.loads((out / "a2v_config.json").read_text())["training"]["val_split"]
    assert held["images"] == 60 and held["samples"] == 60 and tuple(held["ap11"]) == EVAL_HEADS
    assert part_mean(held["ap11"]) > 0.4  # the synthetic states are learnable (untrained heads: ~0.23)
    bad = CliRunner().invoke(app, ["train-heads", str(setup["train"]), *map(str, setup["common"]),
                                   "--val-split", "1.5"])
    assert bad.exit_code != 0 and "at least one image on each side" in str(bad.exception)


def test_evaluate_precision_option(setup):
    bf16 = evaluate_json(setup, "--checkpoint", setup["ckpt"], "--precision", "bf16")
    fp32 = evaluate_json(setup, "--checkpoint", setup["ckpt"], "--precision", "fp32")
    assert bf16["images"] == fp32["images"] == 120
    # a bf16 tower moves the features a little, the fp32 heads keep the ranking close
    assert abs(part_mean(bf16["ap11"]) - part_mean(fp32["ap11"])) < 0.05
    bad = CliRunner().invoke(app, ["evaluate", str(setup["val"]), *map(str, setup["common"]), "--precision", "fp64"])
    assert bad.exit_code == 2 and "fp64" in bad.output
