"""What people are doing in a collection: the activity overview of ``manage.py activities`` and ``/api/activities``.

A person *shows* a PaSta or verb when its probability is at least ``min_p`` (default ``COUNT_MIN_P`` = 0.5, the
usual cut of the independent sigmoids of trained heads; zero-shot heads give distributions that sum to 1 within a
part or over the 157 verbs, so lower it there, e.g. ``--min-p 0.2``). The overview lists the most frequent verbs,
PaSta and verb + PaSta pairs (no_interaction left out) with their counts, their share of the persons counted, and
a few example persons each (the highest probability first; of a pair, the highest probability of its verb).
Counting is the store's (:meth:`Store.activity_counts`).
"""

from __future__ import annotations

import numpy as np

from db.schema import COUNT_MIN_P
from db.values import Counts, Filters

from . import taxonomy as tx
from .errors import QueryError
from .store import Store

TOP = 20  # labels per list
EXAMPLES = 4  # example persons per label
MAX_TOP = 250
MAX_EXAMPLES = 50
_SKIP_PASTA = np.isin(np.arange(tx.N_PASTA), tx.NO_INTERACTION_PASTA)  # (93,)
_SKIP_VERB = np.arange(tx.N_VERBS) == tx.NO_INTERACTION_VERB  # (157,)


def _top(counts: np.ndarray, skip: np.ndarray, n: int) -> list:
    """Indices (flat) of the ``n`` largest non-zero counts not skipped, largest first, ties by index."""
    flat = np.where(skip, 0, counts).ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    return [int(i) for i in order[:n] if flat[i] > 0]


def choose(counts: Counts, top: int) -> list[tuple]:
    """The labels and pairs an overview lists (keys as :meth:`Store.activity_counts` takes them)."""
    skip_pairs = _SKIP_VERB[:, None] | _SKIP_PASTA[None, :]  # (157, 93)
    return ([("verbs", v) for v in _top(counts.verbs, _SKIP_VERB, top)]
            + [("pasta", c) for c in _top(counts.pasta, _SKIP_PASTA, top)]
            + [("pair", *divmod(i, tx.N_PASTA)) for i in _top(counts.verb_pasta, skip_pairs, top)])


def check_args(min_p: float, top: int, examples: int) -> None:
    if not (isinstance(min_p, (int, float)) and 0.0 < min_p <= 1.0):
        raise QueryError(f"--min-p must be a probability above 0 and at most 1, not {min_p!r}")
    if not 1 <= top <= MAX_TOP:
        raise QueryError(f"--top must be from 1 to {MAX_TOP}, not {top}")
    if not 0 <= examples <= MAX_EXAMPLES:
        raise QueryError(f"--examples must be from 0 to {MAX_EXAMPLES}, not {examples}")


def overview(store: Store, filters: Filters | None = None, min_p: float = COUNT_MIN_P, top: int = TOP,
             examples: int = EXAMPLES) -> dict:
    """The activity overview of the persons passing ``filters`` (the schema of ``activities --json``)."""
    check_args(min_p, top, examples)
    counts, found, how = store.activity_counts(filters, float(min_p), examples, lambda c: choose(c, top))
    n = counts.persons

    def entry(key: tuple, count: int, **names) -> dict:
        return {**names, "count": int(count), "share": round(count / n, 4) if n else 0.0,
                "examples": [int(i) for i in found.get(key, [])]}

    verbs, pasta, pairs = [], [], []
    for key in found:
        if key[0] == "verbs":
            verbs.append(entry(key, counts.verbs[key[1]], name=tx.VERB_NAMES[key[1]]))
        elif key[0] == "pasta":
            pasta.append(entry(key, counts.pasta[key[1]], name=tx.PASTA_NAMES[key[1]]))
        else:
            pairs.append(entry(key, counts.verb_pasta[key[1], key[2]], verb=tx.VERB_NAMES[key[1]],
                               pasta=tx.PASTA_NAMES[key[2]]))
    return {"persons": int(n), "min_p": float(min_p), "counted": how, "verbs": verbs, "pasta": pasta,
            "pairs": {"verb_pasta": pairs}}
