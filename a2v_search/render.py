"""Pictures for people: persons drawn on an image (``show``) and contact sheets of search hits (``--sheet``)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .search import Hit
from .thumbnails import media_frame, person_crop, video_frame

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
    """The image with each person's box, its top PaSta (per part, best first) and top verbs written beside it."""
    img = image.convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    font = _font(max(12, img.width // 60))
    for i, p in enumerate(persons):
        color = COLORS[i % len(COLORS)]
        x1, y1, x2, y2 = p["box"]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=max(2, img.width // 300))
        pasta = sorted(((n, v) for n, v in p["pasta"].items() if "no_interaction" not in n), key=lambda t: -t[1])
        verbs = sorted(((n, v) for n, v in p["verbs"].items() if n != "no_interaction"), key=lambda t: -t[1])
        lines = [f"#{i} {p.get('score', 1.0):.2f}"] + [f"{n} {v:.2f}" for n, v in pasta[:top]] \
            + [f"verb {n} {v:.2f}" for n, v in verbs[:top]]
        text = "\n".join(lines)
        box = draw.multiline_textbbox((x1 + 3, y1 + 3), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.multiline_text((x1 + 3, y1 + 3), text, fill=color, font=font)
    return _save(img, out)


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
