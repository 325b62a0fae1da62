"""Pictures for people. Small and fast: a person's crop with context and its box drawn, a media image or video
frame scaled down, as JPEG bytes (the server's image endpoints, contact sheets). Drawn: persons on an image
(``show``) and contact sheets of search hits (``--sheet``).

Paths come from SQLite rows only, and are reopened with care (:func:`open_stored`): never through a symbolic link,
never anything but a regular file (a FIFO would block), and only while it is the file that was ingested. JPEGs are
decoded at a reduced scale when the output is small (``Image.draft``: 1/2, 1/4 or 1/8 of the pixels), so a
thumbnail of a 24-megapixel photo does not decode all of it.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageDraw, ImageFont

from .errors import FileChangedError, InputError, NotFoundError
from .media import DEFAULT_MAX_PIXELS, DecodeError, open_image
from .search import Hit

BOX_COLOR = (230, 25, 75)
BACKGROUND = (38, 41, 48)
CONTEXT = 1.2  # crop side = CONTEXT x the longer side of the box


def open_stored(path: str, size: int | None = None, mtime: float | None = None) -> BinaryIO:
    """The stored media file at ``path`` (a real path: symlinks were resolved at ingest), opened for reading without
    following a link and without blocking. NotFoundError when it is gone, a link now, or not a regular file;
    FileChangedError when ``size`` or ``mtime`` (as stored; 0 or None: not recorded) differ from the file's."""
    if os.path.realpath(path) != path:
        raise NotFoundError(f"the file of this media is now reached through a symbolic link; not followed: {path}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise NotFoundError(f"the file of this media is missing or unreadable ({e.strerror or e}): {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"the file of this media is no longer a regular file: {path}")
        if size and st.st_size != size or mtime and abs(st.st_mtime - mtime) > 1e-3:
            raise FileChangedError(f"the file of this media changed since it was ingested (size or modification "
                                   f"time); ingest it again to see it: {path}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_scaled(path: str | BinaryIO, need_scale: float = 1.0,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, float]:
    """An image file as upright RGB, decoded at no less than ``need_scale`` of its size where that suffices, and
    never over REDUCE_ABOVE_PIXELS (:func:`media.open_image`). Returns (image, scale): pixel coordinates of the
    file times ``scale`` are coordinates in the image."""
    img, size = open_image(path, max_pixels, need_scale)
    return img, img.width / size[0]


def video_frame(path: str | BinaryIO, t_sec: float | None) -> Image.Image:
    """The first decoded frame of a video at or after ``t_sec`` seconds (the start when None), as RGB."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            t = max(float(t_sec or 0.0), 0.0)
            if t > 0 and stream.time_base:
                container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= t - 1e-3:
                    return frame.to_image().convert("RGB")
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise DecodeError("decode", f"cannot read a frame of this video ({e})") from None
    raise InputError(f"no frame at {t_sec} s in this video")


def media_frame(path: str | BinaryIO, kind: str, t_sec: float | None = None,
                need_scale: float = 1.0) -> tuple[Image.Image, float]:
    """(the image, or the video frame at ``t_sec``; its scale relative to the stored pixel coordinates)."""
    if kind == "video":
        return video_frame(path, t_sec), 1.0
    return open_scaled(path, need_scale)


def crop_region(box, context: float = CONTEXT) -> tuple[float, float, float, float]:
    """The square around a box (x1, y1, x2, y2) with context: side = context x the box's longer side."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1, 1.0) * context
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def person_crop(frame: Image.Image, box, size: int, scale: float = 1.0, context: float = CONTEXT) -> Image.Image:
    """A ``size`` x ``size`` crop of a person with context (outside the image: dark grey) and its box drawn.
    ``box`` is in stored pixel coordinates, ``scale`` maps them to ``frame``."""
    box = [v * scale for v in box]
    region = crop_region(box, context)
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    canvas = Image.new("RGB", (max(x1 - x0, 1), max(y1 - y0, 1)), BACKGROUND)  # context outside the image: grey
    canvas.paste(frame, (-x0, -y0))
    crop = canvas.resize((size, size), Image.BILINEAR)
    k = size / max(region[2] - region[0], 1e-6)
    x1, y1, x2, y2 = ((box[0] - region[0]) * k, (box[1] - region[1]) * k, (box[2] - region[0]) * k,
                      (box[3] - region[1]) * k)
    ImageDraw.Draw(crop).rectangle([x1, y1, x2, y2], outline=BOX_COLOR, width=max(2, size // 64))
    return crop


def person_thumbnail(path: str | BinaryIO, kind: str, box, t_sec: float | None, size: int = 256) -> Image.Image:
    """The crop of a stored person (see :func:`person_crop`), decoding only as many pixels as it needs."""
    side = crop_region(box)[2] - crop_region(box)[0]
    frame, scale = media_frame(path, kind, t_sec, need_scale=min(1.0, size / max(side, 1.0)))
    return person_crop(frame, box, size, scale)


def scaled_image(path: str | BinaryIO, kind: str, width: int | None, height: int | None, max_side: int,
                 t_sec: float | None = None) -> Image.Image:
    """A media image (or the video frame at ``t_sec``) whose longer side is at most ``max_side``."""
    need = min(1.0, max_side / max(width or 0, height or 0, 1)) if width and height else 1.0
    img, _ = media_frame(path, kind, t_sec, need_scale=need)
    img.thumbnail((max_side, max_side), Image.BILINEAR)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


# ------------------------------------------------------------------ drawn pictures: show, contact sheets

COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _save(img: Image.Image, out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InputError(f"output {out} must end in .png, .jpg or .webp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def draw_persons(image: Image.Image, persons: list[dict], out: str | os.PathLike, top: int = 3) -> Path:
    """The image with each person's box, its top PaSta (per part, best first) and top verbs written beside it, and
    the boxes of its objects (dashed, in its colour, with the object's name)."""
    img = image.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    font = _font(max(12, img.width // 60))
    width = max(2, img.width // 300)
    for i, p in enumerate(persons):
        color = COLORS[i % len(COLORS)]
        for o in p.get("objects", []):
            if o["box"] is not None:
                _dashed(draw, o["box"], color, max(1, width // 2))
                draw.text((o["box"][0] + 3, o["box"][1] + 3), f"{o['name']} {o['p']:.2f}", fill=color, font=font)
        x1, y1, x2, y2 = p["box"]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        pasta = sorted(((n, v) for n, v in p["pasta"].items() if "no_interaction" not in n), key=lambda t: -t[1])
        verbs = sorted(((n, v) for n, v in p["verbs"].items() if n != "no_interaction"), key=lambda t: -t[1])
        lines = [f"#{i} {p.get('score', 1.0):.2f}"] + [f"{n} {v:.2f}" for n, v in pasta[:top]] \
            + [f"verb {n} {v:.2f}" for n, v in verbs[:top]]
        text = "\n".join(lines)
        box = draw.multiline_textbbox((x1 + 3, y1 + 3), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.multiline_text((x1 + 3, y1 + 3), text, fill=color, font=font)
    return _save(img, out)


def _dashed(draw: ImageDraw.ImageDraw, box, color, width: int, dash: int = 6) -> None:
    x1, y1, x2, y2 = box
    for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
        for t in range(0, int(length), 2 * dash):
            s, e = t / max(length, 1), min(t + dash, length) / max(length, 1)
            draw.line([(a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s),
                       (a[0] + (b[0] - a[0]) * e, a[1] + (b[1] - a[1]) * e)], fill=color, width=width)


def contact_sheet(hits: list[Hit], out: str | os.PathLike, tile: int = 224, columns: int = 5) -> Path:
    """A grid of the hits: each the person's crop with its box, rank, score and top PaSta. A moment (grouped
    search) shows its best frame, its time range, and a strip of a few of its frames under the crop."""
    if not hits:
        raise InputError("no results to draw")
    rows = (len(hits) + columns - 1) // columns
    thumb = tile // 5
    moments = any(h.moment is not None for h in hits)
    caption = 46 + (thumb + 16 if moments else 0)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    for i, hit in enumerate(hits):
        x0, y0 = (i % columns) * tile, (i // columns) * (tile + caption)
        try:
            frame, scale = media_frame(hit.path, hit.kind, hit.t_sec)
            sheet.paste(person_crop(frame, hit.box, tile, scale), (x0, y0))
        except Exception as e:  # a moved or unreadable file must not stop the sheet
            draw.text((x0 + 4, y0 + tile // 2), f"unreadable: {type(e).__name__}", fill=(200, 0, 0), font=font)
        top = hit.pasta[0][0] if hit.pasta else ""
        m = hit.moment
        head = f"track {m.track}" if m is not None else f"id {hit.person_id}"
        draw.text((x0 + 4, y0 + tile + 2), f"#{hit.rank}  {hit.score:.3f}  {head}", fill=(0, 0, 0), font=font)
        draw.text((x0 + 4, y0 + tile + 18), top[:34], fill=(60, 60, 60), font=font)
        if m is not None:
            draw.text((x0 + 4, y0 + tile + 34), f"{m.t_start:.1f}-{m.t_end:.1f} s, best at {hit.t_sec:.1f} s",
                      fill=(0, 0, 160), font=font)
            for j, f in enumerate(m.strip[:5]):
                try:
                    frame, scale = media_frame(hit.path, hit.kind, f["t_sec"])
                    sheet.paste(person_crop(frame, f["box"], thumb, scale), (x0 + j * thumb, y0 + tile + 50))
                except Exception:  # a missing strip frame leaves a blank
                    continue
    return _save(sheet, out)


def draw_track(track: dict, out: str | os.PathLike, height: int = 160, frames: int = 6) -> Path:
    """A strip of a track's frames (up to ``frames``, spread over its time range), each with the person's box and
    its time, under a title with the video and the range. ``track`` is :meth:`A2VSearch.track`'s dict."""
    persons = track["persons"]
    if not persons:
        raise InputError(f"track {track['track']} has no persons")
    n = min(frames, len(persons))
    picks = [persons[round(j * (len(persons) - 1) / max(n - 1, 1))] for j in range(n)]
    font = _font(12)
    tiles = []
    for p in picks:
        try:
            frame = video_frame(track["path"], p["t_sec"])
        except InputError as e:  # moved, deleted or unreadable since it was ingested
            raise InputError(f"cannot read the frame at {p['t_sec']} s of {track['path']}: {e}") from None
        scale = height / frame.height
        img = frame.resize((max(1, round(frame.width * scale)), height), Image.BILINEAR)
        d = ImageDraw.Draw(img)
        d.rectangle([v * scale for v in p["box"]], outline=COLORS[0], width=2)
        d.text((4, 4), f"{p['t_sec']:.1f} s", fill=(255, 255, 0), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
        tiles.append(img)
    title = 20
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (n - 1), height + title), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 3), f"track {track['track']}: {Path(track['path']).name}  "
                               f"{track['t_start']:.1f}-{track['t_end']:.1f} s", fill=(0, 0, 0), font=font)
    x = 0
    for t in tiles:
        strip.paste(t, (x, title))
        x += t.width + 4
    return _save(strip, out)


def labelled_rows(rows: list[tuple[str, list]], out: str | os.PathLike, tile: int = 128, columns: int = 6) -> Path:
    """A sheet of captioned rows of persons (``activities --sheet``): each row a caption (a label, its count) and
    the crops of up to ``columns`` stored persons (rows of ``Store.persons``)."""
    if not rows:
        raise InputError("nothing to draw: no label has a person")
    caption = 20
    width = max(columns * tile, 480)
    sheet = Image.new("RGB", (width, len(rows) * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for r, (text, persons) in enumerate(rows):
        y0 = r * (tile + caption)
        draw.text((4, y0 + 3), text[:110], fill=(0, 0, 0), font=font)
        for j, p in enumerate(persons[:columns]):
            try:
                frame, scale = media_frame(p.path, p.kind, p.t_sec)
                sheet.paste(person_crop(frame, p.box, tile, scale), (j * tile, y0 + caption))
            except Exception as e:  # a moved or unreadable file must not stop the sheet
                draw.text((j * tile + 4, y0 + caption + tile // 2), f"unreadable: {type(e).__name__}",
                          fill=(200, 0, 0), font=font)
    return _save(sheet, out)
