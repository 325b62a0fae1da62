"""How should a moment (a video track) be scored from the scores of its frames? Mean average precision of
ranking synthetic tracks for a query, for the max, the mean of the best 2, 3 or 5 frames, and the mean of all.

The synthetic case (seeded, numpy only): 512-d unit vectors like CLIP's. Per query, 200 tracks of 3..20 sampled
frames; a track's frames are its person's vector plus frame noise. 40 tracks are *relevant*: for a contiguous
stretch of 1..all of their frames the person does the query's activity (their vector leans towards the query).
Distractors: 40 tracks of a similar activity all along (a weaker lean), and in every irrelevant track each frame
may be a *glitch* (a crop that drifts onto someone else doing the activity: for that one frame, the same lean
as a relevant frame), with a chance of 0, 5 or 10 %. Scores are cosines with the query, as in search. Each case
is also scored with only the relevant tracks whose stretch is 1-2 frames (brief actions).

    python bench/track_score_ablation.py [--queries 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from a2v_search.tracks import moment_score  # noqa: E402

DIM = 512
GLITCH = (0.0, 0.05, 0.1)
AGGREGATES = {"max": 1, "top-2 mean": 2, "top-3 mean": 3, "top-5 mean": 5, "mean of all": 10_000}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


def one_query(rng: np.random.Generator, glitch: float, n_tracks: int = 200, n_rel: int = 40, n_similar: int = 40):
    """Frame scores of each track, which tracks are relevant, and the relevant stretch's share of each track."""
    q = unit(rng.normal(size=DIM))
    tracks, relevant, share = [], [], []
    for i in range(n_tracks):
        n = int(rng.integers(3, 21))
        person = unit(rng.normal(size=DIM))
        lean = np.zeros(n)
        if i < n_rel:
            length = int(rng.integers(1, n + 1))
            start = int(rng.integers(0, n - length + 1))
            lean[start:start + length] = 0.45
            share.append(length)
        elif i < n_rel + n_similar:
            lean[:] = 0.3
        if i >= n_rel:
            lean[rng.random(n) < glitch] = 0.45
        frames = unit(person[None] * (1 - lean[:, None]) + lean[:, None] * q[None]
                      + 0.02 * rng.normal(size=(n, DIM)))  # (n, DIM)
        tracks.append(frames @ q)
        relevant.append(i < n_rel)
    return tracks, np.array(relevant), share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{args.queries} queries x 200 tracks each; mAP of the track ranking (all relevant tracks | only those whose "
          "stretch is 1-2 frames)")
    print(f"{'aggregate':<14}" + "".join(f"{f'glitch {g:.0%}':>20}" for g in GLITCH))
    table = {name: [] for name in AGGREGATES}
    for glitch in GLITCH:
        rng = np.random.default_rng(args.seed)
        ap_all = {name: [] for name in AGGREGATES}
        ap_short = {name: [] for name in AGGREGATES}
        for _ in range(args.queries):
            tracks, relevant, share = one_query(rng, glitch)
            short = np.array([s <= 2 for s in share] + [False] * (len(tracks) - len(share)))
            keep = short | ~relevant  # relevant tracks with longer stretches left out
            for name, top in AGGREGATES.items():
                scores = np.array([moment_score(t, top) for t in tracks])
                ap_all[name].append(average_precision(scores, relevant))
                if short.any():
                    ap_short[name].append(average_precision(scores[keep], short[keep]))
        for name in AGGREGATES:
            table[name].append(f"{np.mean(ap_all[name]):.3f} | {np.mean(ap_short[name]):.3f}")
    for name, cells in table.items():
        print(f"{name:<14}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
