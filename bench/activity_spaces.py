"""What does each space find for search by example? A synthetic case that separates appearance from activity
(a2v_search/testing/activity_case.py: 6 appearances x 6 activities x 2 copies, trained PaSta heads on a tiny
CLIP), stored
through the import API; every person is the example once (search by person, itself left out), and the top k of
each space is counted: same activity in another appearance vs. same appearance with another activity.

    python bench/activity_spaces.py [--k 5] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from a2v_search.api import A2VSearch  # noqa: E402
from a2v_search.models.tiny import build_tiny_bert, build_tiny_clip  # noqa: E402
from a2v_search.testing import activity_case as sa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2", help="synthetic cases (comma-separated seeds)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    totals: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip, bert = build_tiny_clip(root / "clip"), build_tiny_bert(root / "bert")
        for seed in seeds:
            ckpt, records, apps, acts = sa.build(root / f"case{seed}", clip, dim=16, seed=seed)
            with A2VSearch.open(root / f"data{seed}", checkpoint=str(ckpt), text_model=str(bert),
                                device="cpu") as api:
                api.import_records(records)
                for space, r in sa.what_each_space_finds(api, apps, acts, args.k).items():
                    t = totals.setdefault(space, [0.0, 0.0])
                    t[0] += r["same_activity_other_appearance"] / len(seeds)
                    t[1] += r["same_appearance_other_activity"] / len(seeds)
    n = len(sa.ACTIVITIES) * sa.N_APPEARANCES * sa.COPIES
    print(f"{n} persons per case, {len(seeds)} cases (seeds {args.seeds}), top {args.k} of each example; the "
          f"example's own copy (same appearance and activity) counts in neither column, so a space that ranks it "
          f"first scores at most {(args.k - 1) / args.k:.2f}")
    print("| space (weights V,L,A) | same activity, other appearance | same appearance, other activity |")
    print("|---|---|---|")
    weights = {"visual": "1,0,0", "language": "0,1,0", "activity": "0,0,1", "visual+language": "0.5,0.5,0"}
    for space, (act, app) in totals.items():
        print(f"| {space} ({weights[space]}) | {act:.2f} | {app:.2f} |")


if __name__ == "__main__":
    main()
