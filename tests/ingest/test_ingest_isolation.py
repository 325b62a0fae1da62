"""No single file stops or stalls an ingest; odd names and links (issue 11, items 3 and 4).

Decoding runs in worker processes with a time limit per file; a video's header is never trusted; workers die with
the ingest process; names that are not UTF-8, links to them, list files that name themselves and links that lead
outside the folders being ingested are each reported once while the rest is ingested.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

import pytest
from helpers import in_child, ingest
from PIL import Image

from a2v_search.ingest import driver as driver_module
from a2v_search.ingest import workers as ingest_module
from a2v_search.store import Store
from a2v_search.testing.media import noise, write_images, write_video
from db import repo


def stored(data_dir: Path) -> dict[str, tuple]:
    store = Store(data_dir)
    with store.db.session() as s:
        rows = s.execute(repo.select(repo.Media.path, repo.Media.frames, repo.Media.duration)).all()
    store.close()
    return {p: (frames, duration) for p, frames, duration in rows}


def lying_mkv(path: Path, claimed_s: float) -> Path:
    """A 3-second Matroska video whose header claims ``claimed_s`` seconds."""
    write_video(path, seconds=3.0)
    data = bytearray(path.read_bytes())
    i = data.find(b"\x44\x89\x88")  # Segment Info / Duration, an 8-byte float in milliseconds
    assert i > 0
    data[i + 3:i + 11] = struct.pack(">d", claimed_s * 1000.0)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ 11.3: no file stops or stalls a run


@pytest.mark.guarantee("G29")
def test_a_video_header_claiming_hours_is_not_trusted(tmp_path, monkeypatch, reliability):
    import av

    (tmp_path / "in").mkdir()
    video = lying_mkv(tmp_path / "in" / "liar.mkv", claimed_s=30_000.0)  # 8 hours claimed, 3 s inside
    with av.open(str(video)) as c:
        assert c.duration / 1e6 == 30_000.0  # the container does claim it
    calls = []
    real_decode = ingest_module.decode

    def counting_decode(task):
        calls.append(task.segment)
        return real_decode(task)

    monkeypatch.setattr(ingest_module, "decode", counting_decode)
    report = ingest(tmp_path / "data", [tmp_path / "in"], segment_s=60.0)
    assert report.failures == [] and report.media_ingested == 1 and report.persons_added == 3  # 3 s at 1 fps
    assert calls == [(0.0, 60.0)]  # one segment decoded, not the 500 the header claims
    [(frames, duration)] = stored(tmp_path / "data").values()
    assert frames == 3 and duration == 3.0
    reliability["hostile files"] += 1


@pytest.mark.guarantee("G29")
def test_long_videos_are_decoded_segment_by_segment_while_frames_go_on(tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "clip.mp4", seconds=3.0, fps=10)
    calls = []
    real_decode = ingest_module.decode
    monkeypatch.setattr(ingest_module, "decode", lambda task: calls.append(task.segment) or real_decode(task))
    report = ingest(tmp_path / "data", [tmp_path / "in"], segment_s=1.0, video_fps=2.0)
    assert report.failures == [] and report.persons_added == 6  # 0.0, 0.5, ..., 2.5 s
    assert calls == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    [(frames, duration)] = stored(tmp_path / "data").values()
    assert frames == 6 and duration == 3.0


@pytest.mark.parametrize("workers", [0, 1])
def test_a_name_is_only_a_guess_that_the_decoder_checks(tmp_path, workers, monkeypatch):
    """Once a model is loaded (a first file was sniffed here), a file with an image or video name is not opened by
    the ingest process: its decoder reads its first bytes. What is stored and what fails are what sniffing here
    gives: a video named .jpg is a video (segment after segment), an image named .mp4 an image, a text named .png
    and an empty .jpg fail at discovery under the names they were given."""
    folder = tmp_path / "in"
    write_images(folder, 2)  # img000.png: sniffed here, loads the model
    (folder / "img001.png").rename(folder / "k_photo.mp4")
    write_video(tmp_path / "clip.mp4", seconds=3.0, fps=10)
    (tmp_path / "clip.mp4").rename(folder / "j_clip.jpg")
    (folder / "m_notes.png").write_text("not an image")
    (folder / "n_empty.jpg").write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "elsewhere" / "notes.txt", tmp_path / "named_link.jpg")  # named: reported by that name
    sniffed_here = []
    real_sniff = driver_module.sniff_found
    monkeypatch.setattr(driver_module, "sniff_found",
                        lambda f: sniffed_here.append(Path(f.given).name) or real_sniff(f))
    report = ingest(tmp_path / "data", [folder, tmp_path / "named_link.jpg"], segment_s=1.0, video_fps=2.0,
                    workers=workers)
    assert sniffed_here == ["img000.png"]  # the others were opened by their decoders only
    failures = {f["path"]: (f["stage"], f["error"]) for f in report.failures}
    not_media = "not an image or video (its content matches no supported format)"
    assert failures == {str(folder / "m_notes.png"): ("discover", not_media),
                        str(folder / "n_empty.jpg"): ("discover", "empty file (0 bytes)"),
                        str(tmp_path / "named_link.jpg"): ("discover", not_media)}
    assert report.media_ingested == 3 and report.persons_added == 1 + 6 + 1 and report.files_seen == 6
    store = Store(tmp_path / "data")
    with store.db.session() as s:
        kinds = {Path(p).name: (kind, frames) for p, kind, frames in s.execute(
            repo.select(repo.Media.path, repo.Media.kind, repo.Media.frames))}
    store.close()
    assert kinds == {"img000.png": ("image", None), "j_clip.jpg": ("video", 6), "k_photo.mp4": ("image", None)}


@pytest.mark.guarantee("G30")
def test_video_frames_over_max_pixels_are_refused_once(tmp_path, reliability):
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "big.mp4", seconds=2.0, w=64, h=48)  # 3,072 pixels a frame
    Image.fromarray(noise(1, 20, 20)).save(tmp_path / "in" / "small.png")  # 400 pixels
    report = ingest(tmp_path / "data", [tmp_path / "in"], max_pixels=1000, workers=1)
    assert [(Path(f["path"]).name, f["stage"]) for f in report.failures] == [("big.mp4", "decode")]
    assert "64x48" in report.failures[0]["error"] and "--max-pixels" in report.failures[0]["error"]
    assert report.media_ingested == 1 and report.persons_added == 1
    reliability["hostile files"] += 1


@pytest.mark.guarantee("G28")
def test_a_decoder_that_hangs_costs_one_file_not_the_run(tmp_path, monkeypatch, reliability):
    good = write_images(tmp_path / "in", 4)
    Image.fromarray(noise(9)).save(tmp_path / "in" / "stuck.png")
    write_images(tmp_path / "in" / "later", 2, start=10)
    monkeypatch.setenv("A2V_HANG", "stuck.png")  # read by the spawned decode workers: decoding it never returns
    report = ingest(tmp_path / "data", [tmp_path / "in"], workers=2, file_timeout=1.0)
    assert [(Path(f["path"]).name, f["stage"]) for f in report.failures] == [("stuck.png", "decode")]
    assert "--file-timeout" in report.failures[0]["error"]
    assert report.media_ingested == len(good) + 2 and report.persons_added == len(good) + 2
    reliability["hostile files"] += 1


def _processes_with(token: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if token.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


@pytest.mark.guarantee("G31")
def test_decode_workers_die_when_the_ingest_process_is_killed(tmp_path, reliability):
    write_images(tmp_path / "in", 12)
    token = f"A2V_TEST_RUN={os.getpid()}-{time.monotonic_ns()}"

    def setup():
        os.environ["A2V_TEST_RUN"] = token.split("=", 1)[1]  # inherited by the decode workers it spawns

    code, err = in_child(lambda: ingest(tmp_path / "data", [tmp_path / "in"], workers=2), fault="decode:3",
                         setup=setup)
    assert code == -signal.SIGKILL, err
    left = _processes_with(token)
    for _ in range(100):  # the kernel delivers the parent-death signal at once; allow slow reaping
        if not left:
            break
        time.sleep(0.1)
        left = _processes_with(token)
    for pid in left:  # do not leave orphans behind when this fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"decode workers outlived the killed ingest: {left}"
    reliability["kill points"] += 1


# ------------------------------------------------------------------ 11.4: odd names and links


@pytest.mark.guarantee("G32", "G33")
def test_odd_names_and_links_are_reported_once_and_the_rest_ingested(tmp_path, reliability):
    root = tmp_path / "photos"
    good = write_images(root / "good", 3)
    broot = os.fsencode(root)
    Image.fromarray(noise(5)).save(os.path.join(broot, b"bad-\xff.png").decode("utf-8", "surrogateescape"), "PNG")
    os.mkdir(os.path.join(broot, b"dir-\xfe"))
    Image.fromarray(noise(6)).save(os.fsdecode(os.path.join(broot, b"dir-\xfe", b"inside.png")), "PNG")
    os.symlink(os.path.join(broot, b"bad-\xff.png"), os.path.join(broot, b"alias.png"))  # a UTF-8 link to it
    outside = write_images(tmp_path / "elsewhere", 2, start=20)
    os.symlink(tmp_path / "elsewhere", root / "outside")  # a folder link leaving the roots
    os.symlink(outside[0], root / "outside_file.png")  # a file link leaving the roots
    os.symlink(root / "good", root / "again")  # a folder link inside the roots: followed, nothing doubled
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "a.txt").write_text(f"a.txt\nb.txt\n{good[0]}\nmissing.png\n")
    (lists / "b.txt").write_text(f"a.txt\nmissing.png\n{good[1]}\n")
    report = ingest(tmp_path / "data", [root, lists / "a.txt"])
    failed = [Path(f["path"]).name for f in report.failures]
    assert len(failed) == len(set(failed)), f"a problem was reported twice: {failed}"
    assert set(failed) == {"bad-\\xff.png", "dir-\\xfe", "alias.png", "outside", "outside_file.png", "a.txt",
                           "missing.png"}, failed
    assert all(f["stage"] == "discover" for f in report.failures)
    assert report.media_ingested == 3 and report.persons_added == 3
    assert set(stored(tmp_path / "data")) == {os.path.realpath(p) for p in good}
    reliability["hostile files"] += 7


@pytest.mark.guarantee("G33")
def test_a_named_link_is_followed_wherever_it_points(tmp_path):
    [img] = write_images(tmp_path / "elsewhere", 1)
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "in" / "linked")
    report = ingest(tmp_path / "data", [tmp_path / "in" / "linked"])  # named by the user: followed
    assert report.failures == [] and report.media_ingested == 1
    assert set(stored(tmp_path / "data")) == {os.path.realpath(img)}


# ------------------------------------------------------------------ 30.2: the README's example, run as users run it

#: the README's Python example with tiny models, as a user writes it: no ``if __name__ == "__main__":`` guard
_EXAMPLE = """
from a2v_search import A2VSearch
store = A2VSearch.open({data!r}, model={clip!r}, text_model={bert!r}, device="cpu")
report = store.ingest([{images!r}], detector="none", workers=2)
print("ingested", report.persons_added, "failed", len(report.failures), [f["error"] for f in report.failures])
print("hits", len(store.search_text("hand: hold; head: drink with", k=3).hits))
"""


@pytest.mark.guarantee("G36")
@pytest.mark.parametrize("how", ["script", "stdin", "notebook"])
def test_the_readme_example_ingests_as_a_script_from_stdin_and_in_a_notebook(tmp_path, tiny_clip_dir, tiny_bert_dir,
                                                                              how):
    import subprocess
    import sys

    write_images(tmp_path / "photos", 3)
    code = _EXAMPLE.format(data=str(tmp_path / "data"), clip=str(tiny_clip_dir), bert=str(tiny_bert_dir),
                           images=str(tmp_path / "photos"))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "A2V_TEST_MARK": str(tmp_path / "ran")}
    code = "import os; open(os.environ['A2V_TEST_MARK'], 'a').write('x')\n" + code  # counts runs of the code
    if how == "script":  # python script.py
        (tmp_path / "script.py").write_text(code)
        args, stdin = [sys.executable, str(tmp_path / "script.py")], None
    elif how == "stdin":  # python - <<EOF
        args, stdin = [sys.executable, "-"], code
    else:  # a notebook cell: code run by exec in a main module without a file
        args, stdin = [sys.executable, "-c", f"exec(compile({code!r}, '<cell>', 'exec'))"], None
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ingested 3 failed 0 []" in done.stdout and "hits 3" in done.stdout, done.stdout + done.stderr
    assert (tmp_path / "ran").read_text() == "x"  # the user's code ran once: never again in a decode worker
