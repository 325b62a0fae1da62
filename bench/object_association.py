"""How well the rule that ties detected objects to persons (a2v_search/objects.py) finds the object a person really
acts on, measured on HICO-DET's real boxes (HAKE's instance-level file).

Every label entry of the file is one human-object pair of an image (human_bbox, object_bbox, the HOI's object
class). Persons are merged as the training loader merges them (IoU >= 0.7, mean box), and so are the object boxes of
one class (the same object is drawn again for every interaction). Then every object of the image is a candidate for
every person (score 1, as a perfect detector), the rule ties them, and we count, over the (person, interacted
object) pairs (HOIs other than ``no_interaction``):

- ``kept@N``: the person's true object is among its top N tied objects;
- ``class@N``: an object of the true class is among them (what a filter or a text query sees);
- ``precision``: share of the tied objects that the person really acts on; ``objects``: tied per person.

Rows: the rule at several reaches, and two alternatives (every object of the image ranked by the distance of its
centre to the person's, no cut; IoU with the person's box, cut at 0). "hard" repeats the numbers over persons whose
image holds at least two objects (where choosing matters):

    python bench/object_association.py [--annotations /work/shared/hake/hico-det-instance-level.tar.gz]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from a2v_search import objects as ob  # noqa: E402
from a2v_search import taxonomy as tx  # noqa: E402
from a2v_search.person_boxes import iou, merge_boxes  # noqa: E402
from a2v_search.training.hake_data import read_json  # noqa: E402


def hoi_objects() -> list[tuple[int, bool]]:
    """For each HICO HOI (id - 1): its object class (0..79) and whether it is an interaction."""
    return [(obj, verb != tx.NO_INTERACTION_VERB) for obj, verb in tx.hico_hois()]


def images(raw: dict):
    """Per image: person boxes, candidate objects (cls, 1.0, box), and per person the set of true object indices."""
    hois = hoi_objects()
    for entry in raw.values():
        labels = [lab for lab in entry.get("labels", []) if _ok(lab.get("human_bbox")) and _ok(lab.get("object_bbox"))]
        if not labels:
            continue
        persons, owner = merge_boxes([tuple(lab["human_bbox"]) for lab in labels])
        by_class: dict[int, list[int]] = defaultdict(list)
        for j, lab in enumerate(labels):
            by_class[hois[lab["hoi_id"] - 1][0]].append(j)
        objects, object_of = [], {}
        for cls, members in by_class.items():
            merged, own = merge_boxes([tuple(labels[j]["object_bbox"]) for j in members])
            base = len(objects)
            objects += [(cls, 1.0, box) for box in merged]
            object_of.update({j: base + o for j, o in zip(members, own, strict=True)})
        truth: list[set[int]] = [set() for _ in persons]
        for j, lab in enumerate(labels):
            if hois[lab["hoi_id"] - 1][1]:
                truth[owner[j]].add(object_of[j])
        yield persons, objects, truth


def _ok(box) -> bool:
    return isinstance(box, list) and len(box) == 4 and box[2] > box[0] and box[3] > box[1]


def rule(reach: float):
    def tie(persons, objects):
        tied = ob.tie_objects(persons, objects, max_objects=len(objects), reach=reach)
        index = {(o[0], tuple(o[2])): k for k, o in enumerate(objects)}
        return [[index[(c, box)] for c, _, box in t] for t in tied]
    return tie


def by_centre(persons, objects):
    def centre(b):
        return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2

    out = []
    for p in persons:
        (px, py), size = centre(p), max(p[2] - p[0], p[3] - p[1])
        d = [math.dist((px, py), centre(o[2])) / size for o in objects]
        out.append(sorted(range(len(objects)), key=lambda k: d[k]))
    return out


def by_iou(persons, objects):
    return [[k for k in sorted(range(len(objects)), key=lambda k: -iou(p, objects[k][2])) if iou(p, objects[k][2]) > 0]
            for p in persons]


def measure(data, tie, n_max: int) -> dict[str, dict[str, float]]:
    counts = {g: defaultdict(float) for g in ("all", "hard")}
    for persons, objects, truth in data:
        ranked = tie(persons, objects)
        hard = len(objects) >= 2
        for ranks, true in zip(ranked, truth, strict=True):
            for g in ("all", "hard") if hard else ("all",):
                c = counts[g]
                kept = ranks[:n_max]
                c["persons"] += 1
                c["tied"] += len(kept)
                c["right"] += len(set(kept) & true)
                for t in true:
                    c["pairs"] += 1
                    for n in range(1, n_max + 1):
                        c[f"kept@{n}"] += t in ranks[:n]
                        c[f"class@{n}"] += objects[t][0] in {objects[k][0] for k in ranks[:n]}
    out = {}
    for g, c in counts.items():
        row = {k: c[k] / max(c["pairs"], 1) for k in c if "@" in k}
        row["precision"] = c["right"] / max(c["tied"], 1)
        row["objects"] = c["tied"] / max(c["persons"], 1)
        row["persons"], row["pairs"] = c["persons"], c["pairs"]
        out[g] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", default="/work/shared/hake/hico-det-instance-level.tar.gz")
    ap.add_argument("-n", type=int, default=ob.MAX_OBJECTS_PER_PERSON, help="objects kept per person")
    args = ap.parse_args()
    data = list(images(read_json(Path(args.annotations))))
    n = args.n
    rows = [(f"rule, reach {r}{' (default)' if r == ob.REACH else ''}", rule(r)) for r in (0.25, 0.5, 1.0, 1e9)]
    rows += [("centre distance, no cut", by_centre), ("IoU > 0", by_iou)]
    for group in ("all", "hard"):
        print(f"\n### {group} persons (N = {n})\n")
        print(f"| rule | kept@1 | kept@{n} | class@1 | class@{n} | precision | objects / person |")
        print("|---|---|---|---|---|---|---|")
        for name, tie in rows:
            m = measure(data, tie, n)[group]
            print(f"| {name} | {m['kept@1']:.3f} | {m[f'kept@{n}']:.3f} | {m['class@1']:.3f} | {m[f'class@{n}']:.3f} "
                  f"| {m['precision']:.3f} | {m['objects']:.2f} |")
        print(f"\n{int(m['persons']):,} persons, {int(m['pairs']):,} (person, interacted object) pairs")


if __name__ == "__main__":
    main()
