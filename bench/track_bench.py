"""Speed of the video tracker (a2v_search/tracks.py): link the persons of a synthetic video of N people walking,
sampled at 1 fps, and print persons linked per second.

    python bench/track_bench.py [--minutes 60] [--people 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from a2v_search.tracks import link  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--people", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    frames, n = int(args.minutes * 60), args.people
    looks = rng.normal(size=(n, 512))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    times = np.repeat(np.arange(frames, dtype=np.float64), n)
    x = (np.arange(n)[None, :] * 60 + np.arange(frames)[:, None] * 3).ravel() % 1800.0
    boxes = np.stack([x, np.zeros_like(x), x + 50, np.full_like(x, 120.0)], 1)
    visual = np.tile(looks, (frames, 1)) + 0.01 * rng.normal(size=(frames * n, 512))
    visual /= np.linalg.norm(visual, axis=1, keepdims=True)
    t0 = time.perf_counter()
    tracks = link(times, boxes, visual)
    seconds = time.perf_counter() - t0
    print(f"{frames} frames x {n} people = {frames * n} persons -> {len(set(tracks))} tracks in {seconds:.2f} s "
          f"({frames * n / seconds:,.0f} persons/s)")


if __name__ == "__main__":
    main()
