"""Memory bounds of decoding (issue 29): no ingest worker and no server request takes more than PEAK_MB for any image
file inside the limits (100 M pixels), whatever its mode: 16-bit PNG, float and 32-bit TIFF, RGBA, palette, JPEG.

Measured, not timed: each case runs in a fresh Python process that reports its peak resident memory (``VmHWM`` in
``/proc/self/status``; around one request, the peak since ``/proc/self/clear_refs`` reset it, after ``malloc_trim``
returned freed memory, so that the RSS before is what is live)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")

PEAK_MB = 600
ROOT = Path(__file__).resolve().parents[1]
SIDE = 10_000  # 100 M pixels: the default --max-pixels

#: file name -> how to make it (in a child process: a 100-megapixel image takes up to 400 MB to make)
MAKERS = {
    "grey16.png": "Image.new('I;16', size, 40000).save(out)",  # ~200 KB of file, 200 MB decoded
    "float.tif": "Image.new('F', size, 0.25).save(out, compression='tiff_adobe_deflate')",
    "int32.tif": "Image.new('I', size, 70000).save(out, compression='tiff_adobe_deflate')",
    "rgba.png": "Image.new('RGBA', size, (200, 30, 60, 128)).save(out)",
    "rgb.png": "Image.new('RGB', size, (200, 30, 60)).save(out)",
    "palette.png": "Image.new('P', size, 3).save(out)",
    "rgb.jpg": "Image.new('RGB', size, (200, 30, 60)).save(out, quality=80)",
    "cmyk.jpg": "Image.new('CMYK', size, (10, 200, 30, 60)).save(out, quality=80)",
}
CASES = [pytest.param(name, marks=() if name == "grey16.png" else pytest.mark.slow) for name in MAKERS]

PEAK = """
def peak_mb(key='VmHWM'):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) / 1024

def reset_peak():
    import ctypes, gc
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)  # freed memory back to the OS: RSS is what is live
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
"""


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PEAK + code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("huge")
    return folder


def _file(folder: Path, name: str) -> Path:
    out = folder / name
    if not out.exists():
        _run(f"from PIL import Image\nsize = ({SIDE}, {SIDE})\nout = {str(out)!r}\n{MAKERS[name]}\nprint('{{}}')")
    return out


@pytest.mark.guarantee("G39")
@pytest.mark.parametrize("name", CASES)
def test_an_ingest_worker_decodes_any_image_within_the_limits_in_bounded_memory(huge, name):
    path = _file(huge, name)
    got = _run(f"""
import json
from a2v_search.ingest.decode import DecodeTask, decode
from a2v_search.preprocess import Preprocess
tasks = [DecodeTask({str(path)!r}, 'image', Preprocess(), boxes=None),
         DecodeTask({str(path)!r}, 'image', Preprocess(), boxes=[([4000.0, 1000.0, 6000.0, 9000.0], 0.9, ())]),
         DecodeTask({str(path)!r}, 'image', Preprocess(), for_detector=True)]
results = [decode(t) for t in tasks]
print(json.dumps({{'errors': [r.error for r in results], 'sizes': [[r.width, r.height] for r in results],
                   'boxes': [r.items[0].box for r in results], 'peak': peak_mb()}}))
""")
    assert got["errors"] == [None, None, None]
    assert got["sizes"] == [[SIDE, SIDE]] * 3  # stored sizes and boxes stay in the file's own pixels
    assert got["boxes"] == [[0.0, 0.0, SIDE, SIDE], [4000.0, 1000.0, 6000.0, 9000.0], [0.0, 0.0, SIDE, SIDE]]
    print(f"{name}: worker peak {got['peak']:.0f} MB")  # shown with -s
    assert got["peak"] < PEAK_MB, f"{name}: an ingest worker peaked at {got['peak']:.0f} MB"


@pytest.mark.guarantee("G39")
@pytest.mark.parametrize("name", CASES)
def test_no_server_request_takes_more_than_the_bound(huge, name, tiny_clip_dir, tiny_bert_dir, tmp_path):
    """Ingest the file (in process: the decode of a worker), then ask the server for its picture, a person's
    thumbnail and a search by uploading it; each request's own peak (above what the server held before) counts."""
    path = _file(huge, name)
    folder = tmp_path / "one"
    folder.mkdir()
    os.link(path, folder / name)
    small = tmp_path / "small"
    small.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 90, 90)).save(small / "warm.png")
    got = _run(f"""
import io, json
from fastapi.testclient import TestClient
from a2v_search.api import A2VSearch
from a2v_search.serve.server import create_app
api = A2VSearch.open({str(tmp_path / 'data')!r}, model={str(tiny_clip_dir)!r}, text_model={str(tiny_bert_dir)!r},
                     device='cpu', detector='none')
api.ingest([{str(small)!r}], workers=0)  # models loaded: what follows measures the decode
reset_peak(); before = peak_mb('VmRSS')
report = api.ingest([{str(folder)!r}], workers=0)
peaks = {{'ingest': peak_mb() - before}}
assert report.failures == [], report.failures
data = open({str(path)!r}, 'rb').read()
with TestClient(create_app(api, max_upload_mb=50), base_url='http://127.0.0.1') as c:
    assert c.get('/api/persons/1/thumbnail').status_code == 200  # the warm-up picture: threads and caches made
    media = [m for m in range(1, 4) if c.get(f'/api/media/{{m}}/image', params={{'size': 32}}).status_code == 200]
    for what, ask in (('image', lambda: c.get(f'/api/media/{{media[-1]}}/image', params={{'size': 1024}})),
                      ('thumbnail', lambda: c.get('/api/persons/2/thumbnail', params={{'size': 256}})),
                      ('upload', lambda: c.post('/api/search/image', files={{'image': ('q', data, 'image/png')}},
                                                data={{'box': '4000,1000,6000,9000'}}))):
        reset_peak(); before = peak_mb('VmRSS')
        r = ask()
        assert r.status_code == 200, (what, r.text)
        peaks[what] = peak_mb() - before
        if what == 'upload':
            assert r.json()['query']['box'] == [4000, 1000, 6000, 9000]
print(json.dumps(peaks))
""")
    print(f"{name}: request peaks (MB above the server's memory before) { {k: round(v) for k, v in got.items()} }")
    over = {k: round(v) for k, v in got.items() if v >= PEAK_MB}
    assert not over, f"{name}: over {PEAK_MB} MB: {over} (all: { {k: round(v) for k, v in got.items()} })"
