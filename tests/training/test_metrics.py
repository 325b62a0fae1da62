from __future__ import annotations

import math

import numpy as np
import pytest

from a2v_search import taxonomy as tx
from a2v_search.training.metrics import (
    EVAL_HEADS,
    ap_11point,
    ap_all_point,
    class_aps,
    evaluate_heads,
    mean_ap,
    pr_points,
)


def test_hand_worked_ranking():
    # ranked: +, -, +, -, +  (3 positives)
    # points (recall, precision): (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2), (1, 3/5)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 1])
    precision, recall = pr_points(scores, labels)
    assert np.allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    assert np.allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    # 11-point: t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> 2/3; t = .7 .. 1.0 -> 3/5: (4 + 2 + 2.4) / 11
    assert ap_11point(scores, labels) == pytest.approx(8.4 / 11)
    # all-point: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45
    assert ap_all_point(scores, labels) == pytest.approx(34 / 45)
    # the order of the input does not matter, only the scores
    perm = np.array([3, 0, 4, 2, 1])
    assert ap_11point(scores[perm], labels[perm]) == pytest.approx(8.4 / 11)


def test_ties_are_ranked_as_one_group_whatever_the_input_order():
    # 0.9 (+), then a tie at 0.5 of one positive and one negative, then 0.1 (-); 2 positives.
    # Grouped: (r 1/2, p 1) then (r 1, p 2/3) then (r 1, p 1/2).
    # 11-point: t <= .5 -> 1 (6 thresholds), t >= .6 -> 2/3 (5 thresholds) = 28/33; all-point: 1/2 + 1/2 * 2/3 = 5/6.
    # A stable order would give 1.0 with the positive first in the tie and 28/33 with it second.
    for labels in ([1, 1, 0, 0], [1, 0, 1, 0]):
        scores = np.array([0.9, 0.5, 0.5, 0.1])
        assert ap_11point(scores, np.array(labels)) == pytest.approx(28 / 33)
        assert ap_all_point(scores, np.array(labels)) == pytest.approx(5 / 6)


def test_constant_scores_give_the_prevalence():
    scores = np.full(5, 0.3)
    labels = np.array([0, 1, 0, 1, 0])
    assert ap_11point(scores, labels) == pytest.approx(0.4)
    assert ap_all_point(scores, labels) == pytest.approx(0.4)


def test_all_positives_is_one_and_no_positive_is_skipped():
    scores = np.array([0.2, 0.9, 0.4])
    assert ap_11point(scores, np.ones(3)) == 1.0 and ap_all_point(scores, np.ones(3)) == 1.0
    assert math.isnan(ap_11point(scores, np.zeros(3))) and math.isnan(ap_all_point(scores, np.zeros(3)))
    aps = class_aps(np.stack([scores, scores], 1), np.stack([np.ones(3), np.zeros(3)], 1))
    assert aps[0] == 1.0 and math.isnan(aps[1]) and mean_ap(aps) == 1.0
    assert mean_ap(np.array([np.nan, np.nan])) is None


def test_perfect_and_reversed_rankings():
    labels = np.array([1, 1, 0, 0, 0])
    assert ap_11point(np.array([5, 4, 3, 2, 1.0]), labels) == 1.0
    # reversed: three negatives at recall 0, then (r 1/2, p 1/4), (r 1, p 2/5): the max precision at any
    # recall >= t is 2/5 for every threshold, and the interpolated curve is 2/5 over the whole recall range
    reversed_scores = np.array([1, 2, 3, 4, 5.0])
    assert ap_11point(reversed_scores, labels) == pytest.approx(0.4)
    assert ap_all_point(reversed_scores, labels) == pytest.approx(0.4)


def test_heads_skip_no_interaction_and_verb_57():
    rng = np.random.default_rng(0)
    n = 40
    targets = {"pasta": np.zeros((n, 93), np.uint8), "verbs": np.zeros((n, 157), np.uint8),
               "parts": np.zeros((n, 6), np.uint8)}
    probs = {"pasta": rng.random((n, 93)), "verbs": rng.random((n, 157)), "parts": rng.random((n, 6))}
    # foot: state 0 ranked perfectly; foot's no_interaction ranked worst -> ignored
    targets["pasta"][:10, 0] = 1
    probs["pasta"][:, 0] = np.r_[np.ones(10), np.zeros(30)]
    foot_no = tx.NO_INTERACTION_PASTA[0]
    targets["pasta"][:10, foot_no] = 1
    probs["pasta"][:, foot_no] = np.r_[np.zeros(10), np.ones(30)]
    # verb 3 perfect, verb 57 worst -> ignored
    targets["verbs"][:5, 3] = 1
    probs["verbs"][:, 3] = np.r_[np.ones(5), np.zeros(35)]
    targets["verbs"][:5, tx.NO_INTERACTION_VERB] = 1
    probs["verbs"][:, tx.NO_INTERACTION_VERB] = np.r_[np.zeros(5), np.ones(35)]
    # part flag of the hand: constant score -> prevalence 0.25
    targets["parts"][:10, 3] = 1
    probs["parts"][:, 3] = 0.5
    result = evaluate_heads(probs, targets)
    assert set(result) == {"ap11", "ap_all"} and tuple(result["ap11"]) == EVAL_HEADS
    for method in ("ap11", "ap_all"):
        assert result[method]["foot"] == 1.0 and result[method]["verb"] == 1.0
        assert result[method]["pasta_binary"] == pytest.approx(0.25)
        assert all(result[method][h] is None for h in ("leg", "hip", "hand", "arm", "head"))
