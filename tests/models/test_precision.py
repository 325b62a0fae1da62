"""Heads in fp32 whatever the tower's precision: checked on the CPU with bf16 autocast for the tower (the CUDA
path uses the same code with CUDA autocast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from a2v_search.models import ModelSpec, load_encoder
from a2v_search.models.checkpoint import save_checkpoint
from a2v_search.models.heads import HEAD_SIZES, PastaHeads

#: Bias of the trained heads' last layer: sigmoid(8) = 0.99966 is 1.0 in bf16 (8 bits) but not in fp32.
CONFIDENT = 8.0


@pytest.fixture(scope="module")
def trained_ckpt(tiny_clip_dir, tmp_path_factory):
    torch.manual_seed(0)
    heads = PastaHeads(dim_in=16, dim_hidden=32)
    with torch.no_grad():
        for name in HEAD_SIZES:
            getattr(heads, f"{name}_fc").layers[2].bias.fill_(CONFIDENT)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "heads", heads, backbone_ref=str(tiny_clip_dir))


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["zero-shot", "trained"])
def test_heads_run_in_fp32_under_bf16_autocast(kind, tiny_clip_dir, trained_ckpt, pixels):
    spec = ModelSpec(model=str(tiny_clip_dir), checkpoint=str(trained_ckpt) if kind == "trained" else None)
    bf16 = load_encoder(spec, device="cpu", with_language=False, precision="bf16")
    model = bf16.model
    x = bf16.preprocess.to_tensor(torch.from_numpy(pixels))  # (6, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        feat = model.features(x)  # (6, 16)
        out = model(x)
    assert feat.dtype == torch.bfloat16  # the tower did run in bf16
    with torch.inference_mode():
        ref = model.heads(feat.float())  # a plain fp32 forward of the heads on the same features
    for key in ("pasta", "verbs", "parts"):
        assert out[key].dtype == torch.float32 and torch.equal(out[key], ref[key]), key
    assert out["visual"].dtype == torch.float32
    # the encoder asked for bf16 gives the same numbers
    assert bf16.amp_dtype == torch.bfloat16
    vectors = bf16.encode_pixels(pixels)
    assert np.array_equal(vectors.pasta, ref["pasta"].numpy()) and np.array_equal(vectors.verbs, ref["verbs"].numpy())
    if kind == "trained":  # confident classes keep their ranking: no probability rounds to exactly 1.0
        assert (vectors.pasta < 1.0).all() and len(np.unique(vectors.pasta)) > vectors.pasta.size // 2


def test_precision_choices(tiny_clip_dir):
    assert load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cpu", with_language=False).amp_dtype is None
    with pytest.raises(ValueError, match="not one of auto, fp32, bf16, fp16"):
        load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cpu", with_language=False, precision="fp64")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the default bf16 autocast of the tower")
def test_heads_run_in_fp32_on_cuda_with_the_default_precision(tiny_clip_dir, trained_ckpt, pixels):
    spec = ModelSpec(model=str(tiny_clip_dir), checkpoint=str(trained_ckpt))
    enc = load_encoder(spec, device="cuda", with_language=False)  # auto: bf16 (or fp16) autocast on CUDA
    assert enc.amp_dtype in (torch.bfloat16, torch.float16)
    x = enc.preprocess.to_tensor(torch.from_numpy(pixels).to("cuda"))
    with torch.inference_mode(), torch.autocast("cuda", dtype=enc.amp_dtype):
        feat = enc.model.features(x)
    with torch.inference_mode():
        ref = enc.model.heads(feat.float())
    vectors = enc.encode_pixels(pixels)
    assert np.allclose(vectors.pasta, ref["pasta"].cpu().numpy(), atol=1e-6) and (vectors.pasta < 1.0).all()
