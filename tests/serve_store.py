"""The store behind the server and page tests: persons with known activity profiles
(a2v_search/testing/profiles.py) in pictogram photos (tests/pictures.py), imported; plus pictures and a short video
through the real ingest. And :class:`LiveServer`: an app served by uvicorn on loopback."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from pictures import figure
from PIL import Image

from a2v_search.api import A2VSearch
from a2v_search.testing.profiles import profile_records


def build_serve_store(root: Path, clip_dir: Path, text_dir: Path, copies: int = 3) -> A2VSearch:
    """A store in ``root/data`` (collections ``even``/``odd`` for imported profiles, ``ingested`` for the rest), open
    with the detector ``none`` (a query image is one person)."""
    records = profile_records(visual_dim=16, copies=copies)
    for rec in records:
        _, _, name, file = rec["path"].split("/")
        img, box = figure(name, seed=int(file.split(".")[0]))
        path = root / "pictures" / name / file
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
        rec.update(path=str(path), width=img.width, height=img.height)
        rec["persons"][0]["box"] = box
    api = A2VSearch.open(root / "data", model=str(clip_dir), text_model=str(text_dir), device="cpu", detector="none")
    report = api.import_records(records)
    assert report.failures == [] and report.persons_added == len(records)
    ingested = root / "ingested"
    ingested.mkdir()
    for i, name in enumerate(("walk", "throw")):
        figure(name, seed=10 + i)[0].save(ingested / f"{name}.png")
    write_figure_video(ingested / "clip.mp4", ["walk", "walk", "kick"])
    report = api.ingest([ingested], collection="ingested", workers=0)
    assert report.failures == [] and report.persons_added == 5  # 2 pictures + 3 video frames (1 per second)
    return api


def write_figure_video(path: Path, activities: list[str], fps: int = 10, size: tuple[int, int] = (160, 120)) -> Path:
    """An MPEG-4 video of one pictogram per second (``activities[i]`` during second i)."""
    import av

    with av.open(str(path), "w") as c:
        stream = c.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for second, name in enumerate(activities):
            picture, _ = figure(name, seed=second, size=(size[1] * 3 // 4, size[1]))
            frame_img = Image.new("RGB", size, (200, 210, 220))
            frame_img.paste(picture, ((size[0] - picture.width) // 2, 0))
            for _ in range(fps):
                for packet in stream.encode(av.VideoFrame.from_image(frame_img)):
                    c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path


class LiveServer:
    """uvicorn serving an app in a thread, on a free loopback port (``options``: more uvicorn settings)."""

    def __init__(self, app, **options):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    **{"log_level": "warning", **options}))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
