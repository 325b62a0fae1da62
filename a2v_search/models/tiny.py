"""Tiny seeded random models for tests and benchmarks, saved like hub models (no downloads, no GPU).

They have the real architectures (CLIP, BERT, YOLOS) at toy sizes, so every code path of loading, encoding and
detection runs in seconds; their outputs mean nothing. The test suite builds them once per session
(tests/conftest.py); bench/ uses them where the model's own cost must be negligible.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

#: Input size of the tiny CLIP's image tower unless asked otherwise.
TINY_IMAGE_SIZE = 32


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
