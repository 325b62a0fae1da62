"""The GPU path (issue 15) on the CPU: the JPEG fallback rule, the GPU crop policy against the CPU one, batch
assembly, the encoder's submit / collect pipeline, the bf16 tower with fp32 heads, and the flags. The tests that
need a CUDA device compare the GPU path with the CPU fp32 path and skip without one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from a2v_search.api import A2VSearch
from a2v_search.errors import InputError
from a2v_search.ingest import gpu_decode
from a2v_search.ingest import workers as ingest
from a2v_search.ingest.decode import DecodeTask, decode
from a2v_search.ingest.gpu_decode import JpegCrop, assemble, crop_resize
from a2v_search.ingest.jpeg_info import gpu_fallback_reason, read_jpeg_info
from a2v_search.media import load_image
from a2v_search.models import ModelSpec, load_encoder
from a2v_search.models.encoder import default_batch_size
from a2v_search.preprocess import Preprocess

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (the GPU path is checked against the CPU fp32 "
                                                 "path there); this machine has none")


def photo(seed: int, w: int = 160, h: int = 120) -> Image.Image:
    """A smooth colour field with texture: JPEG-like content whose resizes are well conditioned."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)).resize((w, h),
                                                                                                      Image.BICUBIC)
    return Image.fromarray(np.clip(np.asarray(low, np.int16) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def pil_decode(datas, device):
    """Decoding by Pillow into (3, H, W) uint8 tensors: the CPU stand-in for torchvision's GPU decode_jpeg."""
    return [torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1).to(device)
            for d in datas]


# ------------------------------------------------------------------ the fallback rule (jpeg_info)


def test_plain_jpegs_go_to_the_gpu_with_their_size_read_from_the_header() -> None:
    for data in (jpeg_bytes(photo(0, 161, 97)), jpeg_bytes(photo(1), progressive=True),
                 jpeg_bytes(photo(2).convert("L")), jpeg_bytes(photo(3), exif=exif_with_orientation(1))):
        info = read_jpeg_info(data)
        assert (info.width, info.height) == Image.open(io.BytesIO(data)).size
        assert gpu_fallback_reason(info, max_pixels=10**8) is None


@pytest.mark.parametrize("case, reason", [
    ("exif6", "orientation 6 (EXIF or XMP)"),
    ("xmp8", "orientation 8 (EXIF or XMP)"),
    ("cmyk", "4 colour components (CMYK or YCCK)"),
    ("png", "not a JPEG, or its header does not parse"),
    ("truncated", "not a JPEG, or its header does not parse"),
    ("big", "size outside the pixel guard"),
])
def test_jpegs_the_gpu_cannot_honour_fall_back_to_the_cpu(case: str, reason: str) -> None:
    image = photo(4, 160, 120)
    data = {
        "exif6": lambda: jpeg_bytes(image, exif=exif_with_orientation(6)),
        "xmp8": lambda: jpeg_bytes(image, xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3'
                                              b'.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns'
                                              b'.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>'),
        "cmyk": lambda: jpeg_bytes(image.convert("CMYK")),
        "png": lambda: (image.save(buf := io.BytesIO(), format="PNG"), buf.getvalue())[1],
        "truncated": lambda: jpeg_bytes(image)[:60],
        "big": lambda: jpeg_bytes(image),
    }[case]()
    assert gpu_fallback_reason(read_jpeg_info(data), max_pixels=100 if case == "big" else 10**8) == reason
    if case in ("exif6", "xmp8"):  # Pillow turns it: the CPU path must decode it
        assert load_image(io.BytesIO(data)).size == (120, 160)


def test_decode_worker_passes_eligible_jpegs_through_and_decodes_the_rest(tmp_path) -> None:
    pre = Preprocess(size=32)
    plain, rotated, png = tmp_path / "plain.jpg", tmp_path / "rotated.jpg", tmp_path / "p.png"
    plain.write_bytes(jpeg_bytes(photo(5, 160, 120)))
    rotated.write_bytes(jpeg_bytes(photo(6, 160, 120), exif=exif_with_orientation(6)))
    photo(7).save(png)
    boxes = [([10.0, 5.0, 60.0, 200.0], 0.9, ())]  # the box runs past the bottom: clipped as on the CPU path
    gpu = decode(DecodeTask(path=str(plain), kind="image", preprocess=pre, boxes=boxes, gpu_jpeg=True))
    cpu = decode(DecodeTask(path=str(plain), kind="image", preprocess=pre, boxes=boxes))
    assert gpu.items[0].jpeg == plain.read_bytes() and gpu.items[0].pixels is None and not gpu.items[0].whole
    assert gpu.items[0].box == cpu.items[0].box == [10.0, 5.0, 60.0, 120.0]
    assert (gpu.width, gpu.height, gpu.content_hash) == (cpu.width, cpu.height, cpu.content_hash)
    turned = decode(DecodeTask(path=str(rotated), kind="image", preprocess=pre, gpu_jpeg=True))
    assert turned.items[0].jpeg is None and turned.items[0].pixels.shape == (32, 32, 3)
    whole = decode(DecodeTask(path=str(plain), kind="image", preprocess=pre, gpu_jpeg=True)).items[0]
    assert whole.whole and whole.box == [0.0, 0.0, 160.0, 120.0] and whole.jpeg is not None
    assert (turned.width, turned.height) == (120, 160)  # EXIF orientation applied by the CPU path
    assert decode(DecodeTask(path=str(png), kind="image", preprocess=pre, gpu_jpeg=True)).items[0].jpeg is None


# ------------------------------------------------------------------ the GPU crop policy, run on CPU tensors


@pytest.mark.parametrize("box", [None, [20.0, 10.0, 70.0, 110.0], [-30.0, 40.0, 150.0, 119.0], [0.0, 0.0, 5.0, 3.0]])
def test_crop_resize_follows_the_cpu_crop_policy(box) -> None:
    pre = Preprocess(size=48)
    image = photo(8, 160, 120)
    cpu = pre.pixels(image, box)  # (48, 48, 3) uint8
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (3, H, W)
    gpu = crop_resize(tensor, box, pre).numpy()
    diff = np.abs(gpu.astype(int) - cpu.astype(int))
    assert gpu.shape == cpu.shape and gpu.dtype == np.uint8
    assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())  # resampling rounding only
    if box is not None and box[0] < 0:  # the fill outside the image is the mean colour, exactly
        fill = [int(round(m * 255)) for m in pre.mean]
        assert (gpu[24, 0] == fill).all() and (cpu[24, 0] == fill).all()


def test_assemble_keeps_order_decodes_each_file_once_and_falls_back_per_file() -> None:
    pre = Preprocess(size=32)
    a, b, c = jpeg_bytes(photo(9)), jpeg_bytes(photo(10)), jpeg_bytes(photo(14))
    broken = jpeg_bytes(photo(11))[:400]  # header intact, data cut: refused by both decoders
    ready = pre.pixels(photo(12), None)  # a crop made on the CPU (e.g. a PNG)
    calls = []

    def decoder(datas, device):
        calls.append(len(datas))
        if broken in datas or c in datas and len(datas) == 1:
            raise RuntimeError("nvjpeg: bad data")  # c is refused alone too: it goes through the CPU path
        return pil_decode(datas, device)

    box = [30.0, 20.0, 90.0, 100.0]
    items = [JpegCrop(a, None), ready, JpegCrop(broken, None), JpegCrop(a, box), JpegCrop(b, None), JpegCrop(c, None)]
    batch, failed = assemble(items, pre, torch.device("cpu"), 10**8, decode=decoder)
    assert calls == [4, 1, 1, 1, 1]  # the batch of 4 distinct files failed, then each alone
    assert list(failed) == [2] and "truncated" in failed[2].lower()
    assert batch.shape == (5, 32, 32, 3) and batch.dtype == torch.uint8
    expected = [pre.pixels(load_image(io.BytesIO(a)), None), ready, pre.pixels(load_image(io.BytesIO(a)), box),
                pre.pixels(load_image(io.BytesIO(b)), None), pre.pixels(load_image(io.BytesIO(c)), None)]
    for row, want in zip(batch.numpy(), expected, strict=True):  # a and b resized together, c on the CPU path
        assert np.abs(row.astype(int) - want.astype(int)).max() <= 3
    assert np.array_equal(batch[1].numpy(), ready) and np.array_equal(batch[4].numpy(), expected[4])
    assert np.array_equal(batch[0].numpy(), crop_resize(pil_decode([a], "cpu")[0], None, pre).numpy())


# ------------------------------------------------------------------ encoder: submit / collect, bf16 tower, flags


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir, tiny_bert_dir):
    return load_encoder(ModelSpec(model=str(tiny_clip_dir), text_model=str(tiny_bert_dir)), device="cpu")


def test_submitted_batches_collect_to_the_same_rows_as_one_call(encoder) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    whole = encoder.encode_pixels(pixels, batch_size=7)
    pending = [encoder.submit(pixels[:3]), encoder.submit(torch.from_numpy(pixels[3:]))]  # numpy and tensor input
    assert all(p.ready for p in pending)  # the CPU runs at submit
    parts = encoder.vectors([p.result() for p in pending])
    split = encoder.encode_pixels(pixels, batch_size=2)  # three batches in flight behind each other
    for got in (parts, split):
        for name in ("visual", "pasta", "verbs", "parts", "language"):
            assert np.allclose(getattr(got, name), getattr(whole, name), atol=1e-5), name
    assert encoder.model.vision.config._attn_implementation == "sdpa"
    assert encoder.amp_dtype is None and encoder.model.tower_dtype == torch.float32  # the CPU default stays fp32


def test_bf16_tower_with_fp32_heads_stays_within_bf16_tolerance(tiny_clip_dir) -> None:
    """The CPU analogue of the CUDA check below: bf16 autocast for the tower (what CUDA runs by default) against
    fp32, the heads in fp32 either way."""
    fp32 = load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cpu", with_language=False)
    bf16 = load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cpu", with_language=False, precision="bf16")
    pixels = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    ref, out = fp32.encode_pixels(pixels, 4), bf16.encode_pixels(pixels, 4)
    assert bf16.amp_dtype == torch.bfloat16 and out.pasta.dtype == np.float32
    for k in ("pasta", "verbs", "parts"):
        assert np.abs(getattr(out, k) - getattr(ref, k)).max() < 0.02, k
    assert (out.visual * ref.visual).sum(1).min() > 0.995
    assert not np.array_equal(out.visual, ref.visual)  # the tower did run in bf16


def test_compile_and_jpeg_decoder_flags_are_checked_before_any_work(tmp_path, tiny_clip_dir) -> None:
    with pytest.raises(InputError, match="unknown --compile 'fast'; valid: off, default, max-autotune"):
        A2VSearch.open(tmp_path / "s", compile="fast")
    with pytest.raises(InputError, match="unknown --jpeg-decoder 'nvjpeg'; valid: auto, gpu, cpu"):
        A2VSearch.open(tmp_path / "s").ingest([str(tmp_path)], jpeg_decoder="nvjpeg")
    with pytest.raises(InputError, match="--jpeg-decoder gpu needs a CUDA device"):
        ingest.use_gpu_jpeg("gpu", torch.device("cpu"))
    assert not ingest.use_gpu_jpeg("auto", torch.device("cpu")) and not ingest.use_gpu_jpeg("cpu",
                                                                                             torch.device("cpu"))
    assert default_batch_size(torch.device("cpu")) == 32  # the CPU batch stays what it was
    enc = load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cpu", with_language=False,
                       compile="reduce-overhead")
    assert enc.compile == "reduce-overhead" and enc.forward is not enc.model  # wrapped, compiled on first call


def test_cli_ingest_takes_the_gpu_flags_and_refuses_bad_values_in_one_line(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    run = lambda *a: subprocess.run([sys.executable, "manage.py", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=root, timeout=300)
    helped = run("ingest", "--help")
    assert all(flag in helped.stdout for flag in ("--jpeg-decoder", "--compile", "--precision"))
    for flag, value in (("--compile", "fast"), ("--jpeg-decoder", "nvjpeg")):
        r = run("ingest", str(tmp_path), "--data-dir", str(tmp_path / "s"), flag, value)
        assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
        assert f"unknown {flag} {value!r}" in r.stderr + r.stdout


def test_cpu_path_never_imports_torchvision(tmp_path, tiny_clip_dir, tiny_bert_dir) -> None:
    import subprocess
    import sys

    folder = tmp_path / "imgs"
    folder.mkdir()
    photo(13).save(folder / "a.jpg")
    code = ("import sys; from a2v_search.api import A2VSearch; "
            f"a = A2VSearch.open({str(tmp_path / 's')!r}, model={str(tiny_clip_dir)!r}, "
            f"text_model={str(tiny_bert_dir)!r}, device='cpu'); "
            f"r = a.ingest([{str(folder)!r}], detector='none', workers=0); assert r.persons_added == 1, r; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------ ingest: batches in flight, JPEGs passed through


def _store_rows(data_dir) -> dict[str, np.ndarray]:
    import sqlite3

    with sqlite3.connect(data_dir / "a2v.sqlite") as db:
        rows = db.execute("SELECT m.path, p.visual FROM persons p JOIN media m ON m.id = p.media_id "
                          "ORDER BY m.path, p.id").fetchall()
    return {path: np.frombuffer(blob, np.float16).astype(np.float32) for path, blob in rows}  # (P,) unit length


def _ingest(data_dir, folder, clip, bert, **opts):
    from a2v_search.detect import WholeImage
    from a2v_search.ingest import IngestOptions, run_ingest

    a2v = A2VSearch.open(data_dir, model=str(clip), text_model=str(bert), device="cpu")
    with a2v.writer("ingest") as store:
        report = run_ingest(store, a2v.encoder(store), WholeImage(), [str(folder)],
                            IngestOptions(batch_size=2, workers=0, **opts))
    return report


def test_ingest_with_batches_in_flight_and_jpegs_cut_after_decode_stores_the_same_persons(
        tmp_path, tiny_clip_dir, tiny_bert_dir, monkeypatch) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(photo(20 + i)))
    (folder / "rotated.jpg").write_bytes(jpeg_bytes(photo(30), exif=exif_with_orientation(8)))
    photo(31).save(folder / "flat.png")
    (folder / "cut.jpg").write_bytes(jpeg_bytes(photo(32))[:500])  # header fine, data cut
    base = _ingest(tmp_path / "base", folder, tiny_clip_dir, tiny_bert_dir)
    flight = _ingest(tmp_path / "flight", folder, tiny_clip_dir, tiny_bert_dir, inflight=2)
    # JPEGs passed through undecoded and cut in the main process, as on CUDA, with Pillow standing in for nvjpeg
    monkeypatch.setattr(ingest, "available", lambda device: True)
    monkeypatch.setattr(gpu_decode, "decode_jpegs", pil_decode)
    monkeypatch.setattr(ingest, "assemble", lambda *a, **k: assemble(*a, **k, decode=pil_decode))
    passed = _ingest(tmp_path / "passed", folder, tiny_clip_dir, tiny_bert_dir, jpeg_decoder="gpu")
    for report in (base, flight, passed):
        assert report.persons_added == 7 and [f["path"].rsplit("/", 1)[1] for f in report.failures] == ["cut.jpg"]
    assert "truncated" in passed.failures[0]["error"].lower() and passed.stages["gpu_decode"] > 0
    rows = {name: _store_rows(tmp_path / name) for name in ("base", "flight", "passed")}
    assert rows["base"].keys() == rows["flight"].keys() == rows["passed"].keys()
    for path, visual in rows["base"].items():
        assert np.array_equal(rows["flight"][path], visual)  # collected later, same numbers
        assert visual @ rows["passed"][path] > 0.9995  # a grey level of resampling apart (stored as float16)
    visuals = np.stack(list(rows["base"].values()))
    assert (visuals @ visuals.T)[~np.eye(len(visuals), dtype=bool)].max() < 0.999  # other images are further


# ------------------------------------------------------------------ CUDA only: the GPU path against CPU fp32


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_cuda_encoder_matches_cpu_fp32_within_tolerance(tmp_path, precision) -> None:
    from a2v_search.models.tiny import official_checkpoint, random_official_state_dict

    path = tmp_path / "ckpt_4.pth"
    torch.save(official_checkpoint(random_official_state_dict()), path)
    cpu = load_encoder(ModelSpec(checkpoint=str(path)), device="cpu", with_language=False)
    gpu = load_encoder(ModelSpec(checkpoint=str(path)), device="cuda", with_language=False, precision=precision)
    assert gpu.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    assert all(p.dtype == torch.float32 for p in gpu.model.heads.parameters())
    pixels = np.random.default_rng(0).integers(0, 256, (20, 224, 224, 3), dtype=np.uint8)
    ref, out = cpu.encode_pixels(pixels, 8), gpu.encode_pixels(pixels, 8)
    tol = 1e-3 if precision == "fp32" else 0.03
    for k in ("pasta", "verbs", "parts"):
        assert np.abs(getattr(out, k) - getattr(ref, k)).max() < tol, k
    assert (out.visual * ref.visual).sum(1).min() > (0.9999 if precision == "fp32" else 0.99)


@needs_cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_compiled_encoder_matches_eager(tiny_clip_dir, mode) -> None:
    eager = load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cuda", with_language=False)
    compiled = load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cuda", with_language=False, compile=mode)
    pixels = np.random.default_rng(2).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    ref, out = eager.encode_pixels(pixels, 4), compiled.encode_pixels(pixels, 4)  # 4 + 4 + 3 (padded to 4)
    assert out.pasta.shape == ref.pasta.shape == (11, 93)
    assert np.abs(out.pasta - ref.pasta).max() < 0.02 and (out.visual * ref.visual).sum(1).min() > 0.99


@needs_cuda
def test_cuda_jpeg_decode_matches_the_cpu_path() -> None:
    pytest.importorskip("torchvision", reason="GPU JPEG decode needs torchvision (the gpu extra)")
    pre = Preprocess(size=224)
    images = [photo(40 + i, 640, 480) for i in range(4)] + [photo(50, 500, 375).convert("L")]
    datas = [jpeg_bytes(im) for im in images]
    batch, failed = assemble([JpegCrop(d, None if i % 2 else [40.0, 30.0, 300.0, 460.0]) for i, d in
                              enumerate(datas)], pre, torch.device("cuda"), 10**8)
    assert not failed and batch.device.type == "cuda"
    for i, d in enumerate(datas):
        cpu = pre.pixels(load_image(io.BytesIO(d)), None if i % 2 else [40.0, 30.0, 300.0, 460.0])
        diff = np.abs(batch[i].cpu().numpy().astype(int) - cpu.astype(int))
        assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6, (i, diff.mean())  # decoder + resize rounding


@needs_cuda
def test_cuda_ingest_matches_cpu_ingest(tmp_path, tiny_clip_dir, tiny_bert_dir) -> None:
    pytest.importorskip("torchvision", reason="GPU JPEG decode needs torchvision (the gpu extra)")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(photo(60 + i)))
    results = {}
    for device in ("cpu", "cuda"):
        a2v = A2VSearch.open(tmp_path / device, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                             device=device)
        report = a2v.ingest([str(folder)], detector="none", workers=0, batch_size=4)
        assert report.persons_added == 6 and not report.failures
        results[device] = _store_rows(tmp_path / device)
    for path, visual in results["cpu"].items():
        assert visual @ results["cuda"][path] > 0.99
