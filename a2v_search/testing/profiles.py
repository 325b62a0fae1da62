"""Persons with known activity profiles (PaSta and verb probabilities), for semantic search tests and the
language-space ablation in bench/language_ablation.py."""

from __future__ import annotations

import numpy as np

from a2v_search import taxonomy as tx

#: name -> (PaSta probabilities, verb probabilities); everything else gets a small background probability.
PROFILES: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "drink": ({"hand: hold": 0.9, "head: drink with": 0.9}, {"drink_with": 0.9, "hold": 0.6}),
    "kick": ({"foot: kick": 0.9, "leg: run with": 0.4}, {"kick": 0.9}),
    "sit_chair": ({"hip: sit on": 0.9, "foot: stand on": 0.1}, {"sit_on": 0.9}),
    "hug": ({"arm: hug": 0.9, "arm: be close to": 0.5}, {"hug": 0.9}),
    "ride_bike": ({"hip: sit on": 0.8, "foot: tread on": 0.7, "hand: hold": 0.6, "leg: straddle": 0.6},
                  {"ride": 0.9, "sit_on": 0.5}),
    "phone": ({"hand: hold": 0.8, "head: talk with something": 0.9}, {"talk_on": 0.9, "hold": 0.6}),
    "carry_shoulder": ({"arm: shoulder carry": 0.9, "hand: carry": 0.7}, {"carry": 0.9}),
    "kneel": ({"leg: kneel": 0.9}, {"crouch/kneel": 0.9}),
    "eat": ({"head: eat": 0.9, "hand: hold": 0.5}, {"eat": 0.9}),
    "throw": ({"hand: throw": 0.9, "arm: swing": 0.5}, {"throw": 0.9}),
    "stand": ({"foot: stand on": 0.9}, {"stand_on": 0.6}),
    "walk": ({"foot: walk with": 0.8, "leg: walk with": 0.8}, {"walk": 0.9}),
}

#: free-text query -> the profile it must rank first
FREE_TEXT = {
    "drinking from a cup": "drink",
    "kicking a ball": "kick",
    "sitting on a chair": "sit_chair",
    "hugging someone": "hug",
    "riding a bike": "ride_bike",
    "talking on the phone": "phone",
    "carrying a bag on the shoulder": "carry_shoulder",
    "kneeling": "kneel",
    "eating a sandwich": "eat",
    "throwing a frisbee": "throw",
}

#: structured PaSta query -> the profile it must rank first
STRUCTURED = {
    "hand: hold; head: drink with": "drink",
    "foot: kick": "kick",
    "arm: hug=2; arm: be close to": "hug",
    "arm: shoulder carry; hand: carry": "carry_shoulder",
    "leg: kneel": "kneel",
    "head: eat": "eat",
    "hand: throw; arm: swing=0.5": "throw",
    "head: talk with something; hand: hold": "phone",
}


def profile_vectors(name: str, seed: int = 0, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(pasta (93,), verbs (157,)) probabilities of a profile with a little seeded background noise."""
    rng = np.random.default_rng(seed)
    pasta = rng.uniform(0, noise, 93).astype(np.float32)
    verbs = rng.uniform(0, noise, 157).astype(np.float32)
    p, v = PROFILES[name]
    for k, val in p.items():
        pasta[tx.pasta_index(k)] = val
    for k, val in v.items():
        verbs[tx.verb_index(k)] = val
    return pasta, verbs


def profile_records(visual_dim: int, copies: int = 3, seed: int = 0, noise: float = 0.02) -> list[dict]:
    """Import records: ``copies`` persons per profile, each in its own image ``/profiles/<name>/<i>.jpg``, with
    a background U(0, noise) on every other PaSta and verb."""
    rng = np.random.default_rng(seed)
    records = []
    for name in PROFILES:
        for i in range(copies):
            pasta, verbs = profile_vectors(name, seed=seed * 1000 + len(records), noise=noise)
            visual = rng.normal(size=visual_dim)
            records.append({"path": f"/profiles/{name}/{i}.jpg", "collection": "even" if i % 2 == 0 else "odd",
                            "width": 100, "height": 200,
                            "persons": [{"box": [10, 10, 90, 190], "pasta": pasta.tolist(), "verbs": verbs.tolist(),
                                         "visual": visual.tolist()}]})
    return records
