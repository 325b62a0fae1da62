"""Build the verb -> PaSta co-occurrence table P(pasta | verb) from the real HAKE instance-level annotations.

Each label entry of HICO-DET's instance-level file is one person in one interaction: one verb (from its HOI) and the
part states annotated for it. Counting over the 117,654 entries gives, per verb, how often each of the 93 PaSta is
on. The 40 extra verbs of the 157 list (117-156) and states the 76-state annotations do not have (e.g. ``leg:
kneel``, ``head: listen``) get no counts. Written to ``bench/verb_pasta_v1.json`` (the version is in the name: a
changed table is a new file), read by ``bench/language_ablation.py --verb-first``:

    python bench/verb_pasta_table.py [--annotations /work/shared/hake/hico-det-instance-level.tar.gz]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from a2v_search import taxonomy as tx  # noqa: E402
from a2v_search.training.hake_data import hoi_verbs, read_json  # noqa: E402

OUT = ROOT / "bench" / "verb_pasta_v1.json"


def count(raw: dict) -> tuple[list[int], list[dict[int, int]]]:
    """Per verb (157): the entries with that verb, and per PaSta index how many of them have it on."""
    n_verb = [0] * len(tx.VERB_NAMES)
    pairs: list[dict[int, int]] = [{} for _ in tx.VERB_NAMES]
    verb_of = hoi_verbs()
    for entry in raw.values():
        for label in entry.get("labels", []):
            v = verb_of[int(label["hoi_id"]) - 1]
            n_verb[v] += 1
            states = {tx.pasta_76_to_93(tx.BODY_PART_TO_PART[a["human_part"]], a["partstate"])
                      for a in label.get("action_labels", [])}
            for s in states:
                pairs[v][s] = pairs[v].get(s, 0) + 1
    return n_verb, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", default="/work/shared/hake/hico-det-instance-level.tar.gz")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    n_verb, pairs = count(read_json(Path(args.annotations)))
    table = {"version": 1, "what": "HICO-DET instance-level label entries: per verb, entries and PaSta counts",
             "verbs": {tx.VERB_NAMES[v]: {"entries": n_verb[v],
                                          "pasta": {tx.PASTA_NAMES[s]: c for s, c in sorted(pairs[v].items())}}
                       for v in range(len(tx.VERB_NAMES)) if n_verb[v]}}
    Path(args.out).write_text(json.dumps(table, indent=0, sort_keys=False) + "\n")
    print(f"{args.out}: {len(table['verbs'])} verbs, {sum(n_verb)} entries")


if __name__ == "__main__":
    main()
