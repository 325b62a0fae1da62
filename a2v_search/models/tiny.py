"""Tiny seeded random models for tests and benchmarks, saved like hub models (no downloads, no GPU).

They have the real architectures (CLIP, BERT, YOLOS) at toy sizes, so every code path of loading, encoding and
detection runs in seconds; their outputs mean nothing. The test suite builds them once per session
(tests/conftest.py); bench/ uses them where the model's own cost must be negligible. ``random_official_state_dict``
and ``official_checkpoint`` make random checkpoints in the released CLIP-Activity2Vec file layout (any size).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

#: Input size of the tiny CLIP's image tower unless asked otherwise.
TINY_IMAGE_SIZE = 32
#: The released checkpoint's heads and their output sizes, in its order (converted by models/checkpoint.py).
OFFICIAL_HEADS = {"verb": 157, "foot": 16, "leg": 15, "hip": 6, "hand": 34, "arm": 8, "head": 14, "pasta_binary": 6}


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


def random_official_state_dict(width: int = 768, layers: int = 12, patch: int = 16, image: int = 224, out: int = 512,
                               hidden: int = 512, seed: int = 0) -> dict:
    """Random weights with the shapes of the released ckpt_4.pth (ViT-B/16 by default), scaled to stay finite, in
    its key layout (``backbone.image_model.*`` OpenAI ViT, ``head.{name}_fc.layers.{0,1,2}`` MLPs)."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    grid = image // patch
    p = "backbone.image_model."
    sd = {
        p + "class_embedding": rnd(width), p + "positional_embedding": rnd(grid * grid + 1, width),
        p + "proj": rnd(width, out, std=width ** -0.5), p + "conv1.weight": rnd(width, 3, patch, patch),
        p + "ln_pre.weight": 1 + rnd(width, std=0.1), p + "ln_pre.bias": rnd(width),
        p + "ln_post.weight": 1 + rnd(width, std=0.1), p + "ln_post.bias": rnd(width),
    }
    for i in range(layers):
        b = f"{p}transformer.resblocks.{i}."
        sd.update({
            b + "attn.in_proj_weight": rnd(3 * width, width), b + "attn.in_proj_bias": rnd(3 * width),
            b + "attn.out_proj.weight": rnd(width, width), b + "attn.out_proj.bias": rnd(width),
            b + "ln_1.weight": 1 + rnd(width, std=0.1), b + "ln_1.bias": rnd(width),
            b + "ln_2.weight": 1 + rnd(width, std=0.1), b + "ln_2.bias": rnd(width),
            b + "mlp.c_fc.weight": rnd(4 * width, width), b + "mlp.c_fc.bias": rnd(4 * width),
            b + "mlp.c_proj.weight": rnd(width, 4 * width), b + "mlp.c_proj.bias": rnd(width),
        })
    for name, n in OFFICIAL_HEADS.items():
        dims = [(hidden, out), (hidden, hidden), (n, hidden)]
        for j, (o, i_) in enumerate(dims):
            sd[f"head.{name}_fc.layers.{j}.weight"] = rnd(o, i_, std=i_ ** -0.5)
            sd[f"head.{name}_fc.layers.{j}.bias"] = rnd(o, std=0.1)
    return sd


def official_checkpoint(sd: dict) -> dict:
    """The released file's dict layout around ``sd``, with an argparse Namespace as the reference stores."""
    import argparse

    return {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6, "weight_decay": 1e-5}]},
            "lr_scheduler": {"last_epoch": 4, "base_lrs": [1e-3]}, "epoch": 4,
            "args": argparse.Namespace(lr=1e-3, epochs=5, batch_size=32, model="ViT-B/16")}
