"""Person tracks in videos: the persons of consecutive sampled frames linked by box overlap and visual similarity,
and the score of a track (a *moment*) for a query. Pure numpy, deterministic, no I/O.

The rule (docs/design.md, "Tracks"):

- Frames are visited in time order. A track is *alive* while it has missed at most ``max_missed`` sampled frames
  (default 2); the sampling step is the shortest interval between two frames of the video that hold persons.
- A person may join an alive track when their visual vectors have cosine >= ``cos_min`` and either the boxes
  overlap (IoU with the track's last box >= ``iou_min``) or the appearance alone is strong (cosine >=
  ``cos_strong``: fast motion, a short occlusion).
- Among the admissible pairs of a frame, the one with the highest ``cosine + IoU`` is linked first, then the next
  among those left (greedy, one person per track per frame); ties go to the older track and the earlier person.
  Persons left over start new tracks.

Tracks are numbered 0, 1, ... in order of first appearance. The visual vectors are compared as float16 values,
as SQLite stores them, so tracks computed at ingest and tracks recomputed from a store are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrackRule:
    """When a person continues a track. See the module docstring."""

    max_missed: int = 2  # sampled frames a track may miss and still continue; one more ends it
    iou_min: float = 0.1  # box overlap that, with cos_min, links a person to a track
    cos_min: float = 0.5  # visual similarity below which a person never joins a track
    cos_strong: float = 0.8  # visual similarity that links without box overlap


DEFAULT_RULE = TrackRule()
#: a moment's score: the mean of the best TOP_FRAMES frame scores of its track (fewer if the track is shorter);
#: chosen over the max by measurement (bench/track_score_ablation.py, docs/design.md).
TOP_FRAMES = 3
ALL_PAIRS_MAX = 300  # videos of up to this many persons get every box overlap at once (n x n floats)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (m, 4) with every box of ``b`` (n, 4) -> (m, n)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def sample_step(times: Sequence[float]) -> float:
    """The sampling step of a video: the shortest positive interval between two distinct frame times (1.0 s when
    fewer than two frames hold persons)."""
    t = np.unique(np.round(np.asarray(times, np.float64), 3))
    d = np.diff(t)
    d = d[d > 1e-6]
    return float(d.min()) if len(d) else 1.0


def link(times: Sequence[float], boxes: Sequence[Sequence[float]], visual: np.ndarray,
         rule: TrackRule = DEFAULT_RULE) -> list[int]:
    """Track numbers (0, 1, ... in order of first appearance) for the persons of one video.

    ``times`` (n,) frame times in seconds, ``boxes`` (n, 4), ``visual`` (n, P) unit vectors; persons with the same
    time are in the same frame. The input order breaks ties, so callers pass persons in storage order.
    """
    n = len(times)
    if n == 0:
        return []
    t = np.round(np.asarray(times, np.float64), 3)
    v = np.asarray(visual, np.float16).astype(np.float32).reshape(n, -1)  # (n, P), as stored
    b = np.asarray(boxes, np.float64).reshape(n, 4)
    step = sample_step(t)
    reach = (rule.max_missed + 1.5) * step  # half a step of tolerance for jittery frame times
    tl, bl = t.tolist(), b.tolist()
    order = sorted(range(n), key=lambda i: (tl[i], i))
    frames: list[list[int]] = []  # the persons of each frame, in input order
    for i in order:
        if frames and tl[frames[-1][0]] == tl[i]:
            frames[-1].append(i)
        else:
            frames.append([i])
    out = [-1] * n
    last: list[int] = []  # per track: the index of its latest person
    short = n <= ALL_PAIRS_MAX  # a short video: every overlap and similarity at once, two numpy calls
    every, sims = (_iou_matrix(b, b).tolist(), (v @ v.T).tolist()) if short else (None, None)  # (n, n) each
    for frame in frames:
        now = tl[frame[0]]
        alive = [k for k, j in enumerate(last) if now - tl[j] <= reach]
        pairs = []
        if alive:
            prev = [last[k] for k in alive]
            if short:
                cos, overlap = [sims[j] for j in prev], [every[j] for j in prev]  # rows (n,): read at the frame's i
                cols = frame
            else:
                cos = (v[prev] @ v[frame].T).tolist()  # (alive, in frame)
                overlap = _iou_matrix(b[prev], b[frame]).tolist() if len(prev) * len(frame) > 64 else \
                    [[_iou(bl[j], bl[i]) for i in frame] for j in prev]  # a few pairs: Python floats, same arithmetic
                cols = range(len(frame))
            for a, k in enumerate(alive):
                ca, oa = cos[a], overlap[a]
                for r, (i, col) in enumerate(zip(frame, cols, strict=True)):
                    c, o = ca[col], oa[col]
                    if c >= rule.cos_min and (o >= rule.iou_min or c >= rule.cos_strong):
                        pairs.append((-(c + o), k, r, i))
        pairs.sort()
        used_tracks: set[int] = set()
        for _, k, _, i in pairs:
            if k in used_tracks or out[i] >= 0:
                continue
            out[i] = k
            last[k] = i
            used_tracks.add(k)
        for i in frame:
            if out[i] < 0:
                out[i] = len(last)
                last.append(i)
    return out


def _iou(a: list[float], b: list[float]) -> float:
    """IoU of two boxes, the same operations as :func:`_iou_matrix`."""
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def moment_score(scores: np.ndarray, top: int = TOP_FRAMES) -> float:
    """The score of a moment from the scores of its frames: the mean of the ``top`` best (``top=1``: the max)."""
    s = np.sort(np.asarray(scores, np.float64))[::-1][:max(1, top)]
    return float(s.mean())
