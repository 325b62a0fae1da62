from __future__ import annotations

import pytest

from a2v_search import taxonomy as tx
from a2v_search.errors import UnknownNameError


def test_counts_and_ranges():
    assert len(tx.PASTA_NAMES) == 93 and len(tx.VERB_NAMES) == 157 and len(tx.PASTA76_NAMES) == 76
    assert [tx.PART_SIZES[p] for p in tx.PARTS] == [16, 15, 6, 34, 8, 14]
    assert [(r.start, r.stop - 1) for r in tx.PART_RANGES.values()] == [
        (0, 15), (16, 30), (31, 36), (37, 70), (71, 78), (79, 92)]
    assert [len(tx.PART_RANGES_76[p]) for p in tx.PARTS] == [12, 10, 5, 31, 5, 13]


def test_no_interaction_positions():
    assert tx.NO_INTERACTION_PASTA == (15, 30, 36, 70, 78, 92)
    for part, rng in tx.PART_RANGES.items():
        assert tx.PASTA_NAMES[rng[-1]] == f"{part}: no_interaction"
        assert all("no_interaction" not in tx.PASTA_NAMES[i] for i in rng[:-1])
    assert tx.VERB_NAMES[tx.NO_INTERACTION_VERB] == "no_interaction" == tx.VERB_NAMES[57]
    assert tx.VERB_NAMES.count("no_interaction") == 1


def test_body_parts_merge_into_pasta_parts():
    merged = {p: [tx.BODY_PARTS[i] for i, j in enumerate(tx.BODY_PART_TO_PART) if tx.PARTS[j] == p]
              for p in tx.PARTS}
    assert merged == {"foot": ["R_foot", "L_foot"], "leg": ["R_leg", "L_leg"], "hip": ["Hip"],
                      "hand": ["R_hand", "L_hand"], "arm": ["R_arm", "L_arm"], "head": ["Head"]}


def test_every_76_name_maps_to_the_same_name_in_93():
    assert len(set(tx.MAP_76_TO_93)) == 76
    for i76, i93 in enumerate(tx.MAP_76_TO_93):
        assert tx.PASTA_NAMES[i93] == tx.PASTA76_NAMES[i76]
    # the 17 new states are inserted before no_interaction, so the mapping is not the identity
    assert tx.pasta_76_to_93("foot", 11) == 15  # foot: no_interaction
    assert tx.pasta_76_to_93("leg", 0) == 16  # leg: walk with
    assert tx.pasta_76_to_93("hand", 30) == 70  # hand: no_interaction
    assert tx.pasta_76_to_93(5, 9) == tx.pasta_index("head: drink with") == 88
    assert tx.pasta_76_to_93("head", 12) == 92
    with pytest.raises(UnknownNameError, match="out of range"):
        tx.pasta_76_to_93("hip", 5)


@pytest.mark.parametrize("name", ["hand: hold", "Hand: Hold", "hand:hold", " HAND :  hold ", "hand_:_hold"])
def test_lookup_is_tolerant(name):
    assert tx.pasta_index(name) == 37


def test_verb_lookup_tolerant():
    assert tx.verb_index("drink with") == tx.verb_index("Drink_With") == tx.VERB_NAMES.index("drink_with")
    assert tx.verb_index("No Interaction") == 57


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownNameError) as err:
        tx.pasta_index("hand: hodl")
    assert "hand: hold" in str(err.value) and "closest" in str(err.value)
    with pytest.raises(UnknownNameError, match="drink_with"):
        tx.verb_index("drink wiht")
    with pytest.raises(UnknownNameError, match="head: "):
        tx.pasta_index("head: zzzz")


def test_resolve_label_and_parts():
    assert tx.resolve_label("arm: hug") == ("pasta", 73)
    assert tx.resolve_label("kick") == ("verb", tx.VERB_NAMES.index("kick"))
    assert tx.part_of("leg: kneel") == "leg" and tx.state_of(88) == "drink with"


def test_sizes_are_written_once_and_the_store_agrees():
    from a2v_search.models.heads import HEAD_SIZES
    from db.values import N_PARTS, N_PASTA, N_VERBS

    assert (tx.N_PASTA, tx.N_VERBS, tx.N_PARTS) == (93, 157, 6)
    assert (N_PASTA, N_VERBS, N_PARTS) == (tx.N_PASTA, tx.N_VERBS, tx.N_PARTS)  # db stands alone
    assert HEAD_SIZES == {"verb": 157, "foot": 16, "leg": 15, "hip": 6, "hand": 34, "arm": 8, "head": 14,
                          "pasta_binary": 6}  # the reference's eight heads, in its order
    assert list(HEAD_SIZES) == ["verb", *tx.PARTS, "pasta_binary"]
