"""Pictogram photos for the server and page tests: a stick figure doing each activity of
a2v_search/testing/profiles.py (with its prop: a cup, a ball, a chair...), on a coloured background, so that pages
and screenshots show recognisable people."""

from __future__ import annotations

import math
import zlib

import numpy as np
from PIL import Image, ImageDraw

# limb angles in degrees (0 = straight down, positive = towards +x), upper then lower segment
POSES = {
    "drink": {"arm_r": (60, -160), "arm_l": (20, 10), "leg_r": (8, 0), "leg_l": (-8, 0)},
    "kick": {"arm_r": (60, 80), "arm_l": (-50, -60), "leg_r": (70, 90), "leg_l": (-5, 0)},
    "sit_chair": {"arm_r": (30, 90), "arm_l": (-20, 60), "leg_r": (90, 0), "leg_l": (80, 0), "lift": 40},
    "hug": {"arm_r": (100, 170), "arm_l": (100, 150), "leg_r": (10, 0), "leg_l": (-10, 0)},
    "ride_bike": {"arm_r": (60, 90), "arm_l": (50, 80), "leg_r": (60, -10), "leg_l": (30, -20), "lift": 30},
    "phone": {"arm_r": (20, 170), "arm_l": (15, 5), "leg_r": (8, 0), "leg_l": (-8, 0)},
    "carry_shoulder": {"arm_r": (170, 240), "arm_l": (-15, -5), "leg_r": (10, 0), "leg_l": (-10, 0)},
    "kneel": {"arm_r": (20, 30), "arm_l": (-20, -30), "leg_r": (90, 0), "leg_l": (0, 90), "lift": 45},
    "eat": {"arm_r": (40, 160), "arm_l": (-20, 40), "leg_r": (8, 0), "leg_l": (-8, 0)},
    "throw": {"arm_r": (150, 170), "arm_l": (-60, -30), "leg_r": (25, 0), "leg_l": (-20, 0)},
    "stand": {"arm_r": (12, 5), "arm_l": (-12, -5), "leg_r": (6, 0), "leg_l": (-6, 0)},
    "walk": {"arm_r": (35, 50), "arm_l": (-35, -20), "leg_r": (30, 10), "leg_l": (-25, -5)},
}


def _end(x: float, y: float, angle: float, length: float) -> tuple[float, float]:
    a = math.radians(angle)
    return x + length * math.sin(a), y + length * math.cos(a)


def _limb(draw: ImageDraw.ImageDraw, start, angles, length: float, width: int, color) -> tuple[float, float]:
    mid = _end(*start, angles[0], length)
    end = _end(*mid, angles[1], length)
    draw.line([start, mid, end], fill=color, width=width, joint="curve")
    return end


def figure(profile: str, seed: int = 0, size: tuple[int, int] = (240, 320)) -> tuple[Image.Image, list[float]]:
    """(a picture of a person doing ``profile``, the person's box [x1, y1, x2, y2])."""
    rng = np.random.default_rng([zlib.crc32(profile.encode()), seed])
    w, h = size
    hue = (sorted(POSES).index(profile) * 37 + seed * 11) % 360
    top = _hsv(hue, 0.25, 0.97)
    bottom = _hsv(hue, 0.45, 0.80)
    grad = np.linspace(0, 1, h)[:, None, None]
    bg = (np.array(top) * (1 - grad) + np.array(bottom) * grad) * np.ones((1, w, 1))
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    ground = int(h * 0.9)
    draw.rectangle([0, ground, w, h], fill=_hsv(hue, 0.5, 0.55))
    pose = POSES[profile]
    s = h / 320 * rng.uniform(0.85, 1.0)
    cx = w * rng.uniform(0.4, 0.55)
    lift = pose.get("lift", 0) * s
    hip = (cx, ground - 105 * s + lift)
    neck = (cx, hip[1] - 85 * s)
    head = (cx, neck[1] - 26 * s)
    ink, lw = (35, 38, 48), max(3, int(9 * s))
    props = ImageDraw.Draw(img)
    if profile == "sit_chair":
        props.rectangle([cx - 35 * s, hip[1] + 4, cx + 45 * s, hip[1] + 14 * s], fill=(120, 80, 50))
        props.line([(cx - 30 * s, hip[1]), (cx - 30 * s, ground)], fill=(120, 80, 50), width=lw)
        props.line([(cx + 40 * s, hip[1]), (cx + 40 * s, ground)], fill=(120, 80, 50), width=lw)
        props.line([(cx - 35 * s, hip[1]), (cx - 35 * s, hip[1] - 80 * s)], fill=(120, 80, 50), width=lw)
    if profile == "ride_bike":
        for wx in (cx - 55 * s, cx + 60 * s):
            props.ellipse([wx - 38 * s, ground - 76 * s, wx + 38 * s, ground], outline=(40, 40, 40), width=lw // 2 + 1)
        props.line([(cx - 55 * s, ground - 38 * s), (cx, hip[1] + 8), (cx + 60 * s, ground - 38 * s)],
                   fill=(200, 40, 40), width=lw // 2 + 2)
    draw.line([neck, hip], fill=ink, width=lw)
    hands = {side: _limb(draw, neck if side.startswith("arm") else hip, pose[side], (42 if side.startswith("arm")
                                                                                      else 52) * s, lw, ink)
             for side in ("arm_r", "arm_l", "leg_r", "leg_l")}
    r = 22 * s
    draw.ellipse([head[0] - r, head[1] - r, head[0] + r, head[1] + r], fill=(240, 200, 170), outline=ink, width=3)
    hx, hy = hands["arm_r"]
    if profile == "drink":
        props.rectangle([hx - 8 * s, hy - 12 * s, hx + 8 * s, hy + 8 * s], fill=(250, 250, 250), outline=ink, width=2)
    elif profile == "kick":
        fx, fy = hands["leg_r"]
        props.ellipse([fx + 4, fy - 30 * s, fx + 34 * s, fy], fill=(250, 250, 250), outline=ink, width=2)
    elif profile == "phone":
        props.rectangle([hx - 5 * s, hy - 14 * s, hx + 5 * s, hy + 6 * s], fill=(20, 20, 20))
    elif profile == "carry_shoulder":
        props.rounded_rectangle([cx + 6 * s, neck[1] - 10 * s, cx + 60 * s, neck[1] + 40 * s], radius=8,
                                fill=(70, 110, 200))
    elif profile == "eat":
        props.rectangle([hx - 14 * s, hy - 6 * s, hx + 14 * s, hy + 8 * s], fill=(230, 180, 90), outline=ink)
    elif profile == "throw":
        props.ellipse([hx + 20 * s, hy - 40 * s, hx + 70 * s, hy - 24 * s], fill=(250, 90, 60))
    elif profile == "hug":
        ox = cx + 58 * s
        draw.line([(ox, neck[1]), (ox, hip[1])], fill=(90, 60, 120), width=lw)
        draw.ellipse([ox - r, head[1] - r, ox + r, head[1] + r], fill=(200, 160, 130), outline=ink, width=3)
        for a in (-8, 8):
            _limb(draw, (ox, hip[1]), (a, 0), 52 * s, lw, (90, 60, 120))
    xs = [p[0] for p in hands.values()] + [head[0] - r, head[0] + r]
    ys = [p[1] for p in hands.values()] + [head[1] - r]
    box = [max(0.0, min(xs) - 8), max(0.0, min(ys) - 8), min(float(w), max(xs) + 8), min(float(h), max(ys) + 8)]
    return img, [round(v, 1) for v in box]


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h / 360, s, v)
    return int(r * 255), int(g * 255), int(b * 255)
