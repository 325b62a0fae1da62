"""Pictures for people: persons drawn on an image (``show``) and contact sheets of search hits (``--sheet``)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .media import load_image
from .search import Hit

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


def _hit_frame(hit: Hit) -> Image.Image:
    if hit.kind != "video":
        return load_image(hit.path)
    import av

    with av.open(hit.path) as container:
        stream = container.streams.video[0]
        t = hit.t_sec or 0.0
        container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None or frame.time >= t - 1e-3:
                return frame.to_image().convert("RGB")
    raise InputError(f"frame at {hit.t_sec} s not found in {hit.path}")


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
            frame = _hit_frame(hit)
            x1, y1, x2, y2 = hit.box
            side = max(x2 - x1, y2 - y1) * 1.2
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            region = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
            crop = frame.crop(region).resize((tile, tile), Image.BILINEAR)
            scale = tile / max(region[2] - region[0], 1)
            ImageDraw.Draw(crop).rectangle([(x1 - region[0]) * scale, (y1 - region[1]) * scale,
                                            (x2 - region[0]) * scale, (y2 - region[1]) * scale],
                                           outline=COLORS[0], width=2)
            sheet.paste(crop, (x0, y0))
        except Exception as e:  # a moved or unreadable file must not stop the sheet
            draw.text((x0 + 4, y0 + tile // 2), f"unreadable: {type(e).__name__}", fill=(200, 0, 0), font=font)
        top = hit.pasta[0][0] if hit.pasta else ""
        draw.text((x0 + 4, y0 + tile + 2), f"#{hit.rank}  {hit.score:.3f}  id {hit.person_id}", fill=(0, 0, 0),
                  font=font)
        draw.text((x0 + 4, y0 + tile + 18), top[:34], fill=(60, 60, 60), font=font)
    return _save(sheet, out)
