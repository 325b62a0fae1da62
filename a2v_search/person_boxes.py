"""Merging the boxes one person was given several times within an image (HICO-DET draws a new box per interaction).

Rule: two boxes of the same image are the same person when their IoU is >= ``MERGE_IOU`` (0.7). Grouping is
complete-linkage and greedy in file order: a box joins the group whose *every* member it overlaps by >= 0.7 (the
group with the highest such minimum when there are several), else it starts a new group. So no chain of small
steps can merge two distant boxes, and the result does not depend on rounding of unrelated boxes.

The merged box is the coordinate-wise mean of the group's distinct boxes: each is one annotator's drawing of the
same person, the mean is the least-squares estimate of the true corners, and it always contains the intersection of
the drawings (nothing every drawing saw is cut) and lies inside their union (nothing none of them saw is added).
"""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels

#: IoU at or above which two boxes of one image are one person.
MERGE_IOU = 0.7


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either is empty."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def group_boxes(boxes: Sequence[Box], threshold: float = MERGE_IOU) -> list[list[int]]:
    """Indices of ``boxes`` grouped into persons (complete linkage at IoU >= threshold, greedy in order).

    Groups are listed in the order of their first box. Give distinct boxes (:func:`merge_boxes` does).
    """
    groups: list[list[int]] = []
    for i, box in enumerate(boxes):
        best, best_iou = None, threshold
        for g in groups:
            worst = min(iou(box, boxes[j]) for j in g)
            if worst >= best_iou:
                best, best_iou = g, worst
        if best is None:
            groups.append([i])
        else:
            best.append(i)
    return groups


def mean_box(boxes: Sequence[Box]) -> Box:
    """The coordinate-wise mean of the distinct boxes (exact duplicates count once)."""
    distinct = list(dict.fromkeys(tuple(float(v) for v in b) for b in boxes))
    x1, y1, x2, y2 = (sum(b[k] for b in distinct) / len(distinct) for k in range(4))
    return x1, y1, x2, y2


def merge_boxes(boxes: Sequence[Box], threshold: float = MERGE_IOU) -> tuple[list[Box], list[int]]:
    """Merge one image's person boxes: (merged boxes, for each input box the index of its merged box).

    Exact duplicates are one drawing and always end in the same person.
    """
    distinct = list(dict.fromkeys(tuple(float(v) for v in b) for b in boxes))
    groups = group_boxes(distinct, threshold)
    owner_of = {}
    for g, members in enumerate(groups):
        for i in members:
            owner_of[distinct[i]] = g
    owner = [owner_of[tuple(float(v) for v in b)] for b in boxes]
    return [mean_box([distinct[i] for i in g]) for g in groups], owner
