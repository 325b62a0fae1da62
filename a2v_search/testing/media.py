"""Generated media for the ingest and reliability tests: valid images of every odd kind, a short video, and
broken files of every kind the ingest issue lists."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
from PIL import Image


def noise(seed: int, w: int = 64, h: int = 48) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)


def write_images(folder: Path, n: int, start: int = 0, w: int = 64, h: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(noise(i, w, h)).save(p)
        paths.append(p)
    return paths


def write_video(path: Path, seconds: float = 3.0, fps: int = 10, w: int = 64, h: int = 48) -> Path:
    """An MPEG-4 video whose frames change every frame."""
    import av

    with av.open(str(path), "w") as c:
        stream = c.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(noise(1000 + i, w, h), format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path


def write_odd_images(folder: Path) -> dict[str, Path]:
    """Valid but unusual images: palette, alpha, 16-bit, grayscale, CMYK, EXIF-rotated, animated GIF, JPEG, WebP,
    TIFF, BMP and an extensionless PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(noise(7, 60, 40))
    out = {}

    def save(name, img, **kw):
        out[name] = folder / name
        img.save(out[name], **kw)

    save("palette.png", rgb.convert("P", palette=Image.ADAPTIVE, colors=16))
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    save("palette_transparent.png", pal)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (40, 1))))
    save("alpha.png", rgba)
    save("gray16.png", Image.fromarray((np.random.RandomState(1).rand(40, 60) * 65535).astype(np.uint16)))
    save("gray.jpg", rgb.convert("L"))
    save("cmyk.jpg", rgb.convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save("rotated.jpg", rgb, exif=exif.tobytes())
    frames = [Image.fromarray(noise(20 + i, 60, 40)) for i in range(3)]
    out["animated.gif"] = folder / "animated.gif"
    frames[0].save(out["animated.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("photo.webp", rgb)
    save("scan.tiff", rgb)
    save("old.bmp", rgb)
    out["no_extension"] = folder / "no_extension"
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    out["no_extension"].write_bytes(buf.getvalue())
    return out


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One file of each broken kind. Keys name the kind."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {}
    bad["zero_byte"] = folder / "empty.jpg"
    bad["zero_byte"].write_bytes(b"")
    good = io.BytesIO()
    Image.fromarray(noise(3, 200, 150)).save(good, format="JPEG", quality=90)
    bad["truncated"] = folder / "truncated.jpg"
    bad["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    bad["corrupt"] = folder / "corrupt.png"
    bad["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    bad["text_as_jpg"] = folder / "notes.jpg"
    bad["text_as_jpg"].write_text("this is not an image\n")
    bad["too_many_pixels"] = folder / "huge.png"
    Image.new("L", (5000, 4000)).save(bad["too_many_pixels"])  # 20 MP: over a test limit of 10 MP
    bad["unreadable"] = folder / "socket.jpg"  # open() fails even for root
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(bad["unreadable"]))
    sock.close()
    bad["broken_symlink"] = folder / "dangling.jpg"
    os.symlink(folder / "does-not-exist.jpg", bad["broken_symlink"])
    bad["empty_video"] = folder / "noframes.mp4"
    bad["empty_video"].write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64)
    bad["undecodable_name"] = Path(os.fsdecode(os.path.join(os.fsencode(folder), b"bad-\xff\xfe.jpg")))
    with open(os.path.join(os.fsencode(folder), b"bad-\xff\xfe.jpg"), "wb") as f:
        f.write(good.getvalue())
    return bad


def person_look(seed: int, w: int, h: int) -> np.ndarray:
    """A person stand-in: a (h, w, 3) pattern of 6 x 6-pixel coloured blocks, the same for the same seed."""
    blocks = np.random.RandomState(seed).randint(0, 256, ((h + 5) // 6, (w + 5) // 6, 3), np.uint8)
    return np.repeat(np.repeat(blocks, 6, 0), 6, 1)[:h, :w]


def write_people_video(path: Path, scenes: list[dict], fps: int = 10, w: int = 160, h: int = 120) -> dict:
    """An MPEG-4 video of people (see :func:`person_look`) on flat backgrounds, and its COCO boxes per frame.

    ``scenes``: one dict per second of video: ``{"background": gray level, "people": {seed: (x, y, pw, ph)}}``;
    every frame of that second shows those people. Returns a COCO boxes document whose image entries name this
    video's file and give ``frame_index`` (every frame, so any sampling rate finds its boxes)."""
    import av

    images, annotations = [], []
    with av.open(str(path), "w") as c:
        stream = c.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 4_000_000
        for second, scene in enumerate(scenes):
            for j in range(fps):
                index = second * fps + j
                img = np.full((h, w, 3), scene.get("background", 128), np.uint8)
                images.append({"id": index, "file_name": path.name, "frame_index": index})
                for seed, (x, y, pw, ph) in scene["people"].items():
                    img[y:y + ph, x:x + pw] = person_look(seed, pw, ph)
                    annotations.append({"id": len(annotations), "image_id": index, "category_id": 1,
                                        "bbox": [x, y, pw, ph]})
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
