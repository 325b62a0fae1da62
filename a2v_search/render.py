"""Pictures for people: persons drawn on an image (``show``) and contact sheets of search hits (``--sheet``)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .search import Hit
from .thumbnails import media_frame, person_crop

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
    """A grid of the hits: each the person's crop with its box, rank, score and top PaSta."""
    if not hits:
        raise InputError("no results to draw")
    rows = (len(hits) + columns - 1) // columns
    caption = 46
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
        draw.text((x0 + 4, y0 + tile + 2), f"#{hit.rank}  {hit.score:.3f}  id {hit.person_id}", fill=(0, 0, 0),
                  font=font)
        draw.text((x0 + 4, y0 + tile + 18), top[:34], fill=(60, 60, 60), font=font)
    return _save(sheet, out)
