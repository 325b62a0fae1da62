"""Average precision as in the CLIP-Activity2Vec evaluation, and per-head mAP.

Per class, all samples are ranked by probability. Ties: samples with equal probability enter the ranking
together, as one group: precision and recall are only taken after a whole group, so the result does not depend
on the order of the samples (a constant score gives precision = prevalence at recall 1).

``ap_11point``: mean over recall thresholds 0, 0.1, ..., 1.0 of the max precision at recall >= threshold
(0 when no point reaches it): the reference protocol. ``ap_all_point``: area under the interpolated
precision-recall curve (VOC2010+), for comparison. A class without positives has no AP (NaN) and is skipped.
"""

from __future__ import annotations

import numpy as np

from .. import taxonomy as tx

#: The heads evaluated, in the reference's report order.
EVAL_HEADS: tuple[str, ...] = (*tx.PARTS, "pasta_binary", "verb")
AP_METHODS: tuple[str, ...] = ("ap11", "ap_all")


def pr_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) after each group of tied scores, best score first. Needs at least one positive."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
    tp = tp[ends].astype(np.float64)
    return tp / (ends + 1), tp / labels.sum()


def ap_11point(scores: np.ndarray, labels: np.ndarray) -> float:
    """11-point interpolated AP of one class; NaN when ``labels`` has no positive."""
    if not np.asarray(labels).astype(bool).any():
        return float("nan")
    precision, recall = pr_points(scores, labels)
    total = 0.0
    for k in range(11):
        reached = precision[recall >= k / 10]
        total += float(reached.max()) if reached.size else 0.0
    return total / 11


def ap_all_point(scores: np.ndarray, labels: np.ndarray) -> float:
    """All-point AP of one class (area under the interpolated PR curve, VOC2010+); NaN without positives."""
    if not np.asarray(labels).astype(bool).any():
        return float("nan")
    precision, recall = pr_points(scores, labels)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at recall >= r
    steps = np.diff(np.r_[0.0, recall])
    return float((steps * envelope).sum())


AP_FUNCTIONS = {"ap11": ap_11point, "ap_all": ap_all_point}


def class_aps(probs: np.ndarray, targets: np.ndarray, method: str = "ap11", skip: tuple[int, ...] = ()) -> np.ndarray:
    """AP per class (column) of (N, C) probabilities against (N, C) 0/1 targets; NaN for skipped classes and
    classes without positives."""
    ap = AP_FUNCTIONS[method]
    probs, targets = np.asarray(probs), np.asarray(targets)
    if probs.shape != targets.shape:
        raise ValueError(f"probabilities {probs.shape} and targets {targets.shape} differ in shape")
    return np.array([float("nan") if c in skip else ap(probs[:, c], targets[:, c]) for c in range(probs.shape[1])])


def mean_ap(aps: np.ndarray) -> float | None:
    """Mean of the valid (non-NaN) APs; None when there is none."""
    valid = aps[~np.isnan(aps)]
    return float(valid.mean()) if valid.size else None


def head_columns() -> dict[str, tuple[str, slice, tuple[int, ...]]]:
    """For each evaluated head: (array: pasta|parts|verbs, its columns, columns skipped within them)."""
    cols: dict[str, tuple[str, slice, tuple[int, ...]]] = {}
    for part, rng in tx.PART_RANGES.items():
        cols[part] = ("pasta", slice(rng.start, rng.stop), (len(rng) - 1,))  # no_interaction is last
    cols["pasta_binary"] = ("parts", slice(0, len(tx.PARTS)), ())
    cols["verb"] = ("verbs", slice(0, len(tx.VERB_NAMES)), (tx.NO_INTERACTION_VERB,))
    return cols


def evaluate_heads(probs: dict[str, np.ndarray], targets: dict[str, np.ndarray]
                   ) -> dict[str, dict[str, float | None]]:
    """Per-head mAP by both AP methods: ``{"ap11": {head: mAP}, "ap_all": {...}}``.

    ``probs`` and ``targets`` hold ``"pasta"`` (N, 93), ``"parts"`` (N, 6) and ``"verbs"`` (N, 157).
    Each part's no_interaction, verb 57 and classes without positives are skipped; a head with no valid class
    has mAP None.
    """
    out: dict[str, dict[str, float | None]] = {m: {} for m in AP_METHODS}
    for head, (key, cols, skip) in head_columns().items():
        for method in AP_METHODS:
            aps = class_aps(probs[key][:, cols], targets[key][:, cols], method, skip)
            out[method][head] = mean_ap(aps)
    return out
