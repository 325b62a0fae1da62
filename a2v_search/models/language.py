"""The language space: PaSta and verb probabilities, and query texts, as vectors of a BERT-family text model.

M_pasta (93, D) holds the text-model embedding of each PaSta phrase (``prompts.PASTA_PHRASE``), M_verb (157, D)
each verb in its own sense: the normalised mean of the embeddings of its sentences (``prompts.verb_sense_phrases``:
a verb HICO labels, one sentence per object it takes there, "a person getting on a bus"; the 40 others, a sentence
of what the person does), not its bare name, which a sentence model often reads as a noun ("train", "board",
"park"); no_interaction rows are zero. A person's language vector (formula
``margin-v5:24/32+white0.75+gate+senses+objects``, ``LANGUAGE_VECTOR``) is

    concat(normalise(w_pasta @ W_pasta), normalise(w_verb @ W_verb), normalise(o)) / sqrt(3)    # each block 1/3
    w = margins(p): the 24 strongest PaSta of the whole body and the 32 strongest verbs (no_interaction left out),
        each weighted by its margin over the next strongest (the person's own background); the rest 0
    W = M whitened: M = U S V^T (SVD of each block), W = U S^0.25 V^T (singular values s -> s^(1 - 0.75))
    o = (81,): the largest p of each of the 80 object classes the person acts on, and a last coordinate that is 1
        when it acts on none (so every person's object block has unit length)

so its cosine with a query is the mean of a PaSta-block, a verb-block and an object-block cosine (unit length; a
person with no PaSta or no verb at all keeps the other blocks' shares rather than weighing them more: ``shares``,
a last coordinate, ``rest``, that no query holds takes the empty block's share, so vectors stay unit length as the
indexes want them; a person with no PaSta, no verb and no object has the zero vector). A query naming no
object has a zero object block: persons with and without objects score alike. One naming "cup" adds the cup
coordinate of the person's block: persons doing the activity with a cup come first. The margins make the vector hold
on real predictions: with ``p @ M`` every faint probability pulls toward the mean of all phrases. The whitening
makes it hold again where margins cannot: the phrases of a text model share a large common direction (two PaSta
phrases of all-MiniLM-L6-v2 have cosine 0.33 +- 0.17), so the background states a person keeps resemble every
query a little; flattening the spectrum makes distinct states more distinct while near-synonyms stay near
(docs/design.md, measured by bench/language_ablation.py). Each block lies in the span of its phrase rows, so
vectors are stored in an orthonormal basis of that span (``basis_pasta`` (r_p, D), ``basis_verb`` (r_v, D), the
SVD's V with each vector's sign fixed; ``PhraseBasis``): the same cosines exactly, in r_p + r_v + 82 <= 325
dimensions (the object block and the rest coordinate as they are) instead of 2D + 82 (1618 for bert-base). A store
records that basis with its matrices and never computes it again, so another machine's SVD (other signs, another
rotation) cannot put queries into another basis than its indexes. The verb block is there because many activities
have no PaSta of their own ("riding a bike" is a verb, not a part state); see docs/design.md. Everything the formula
uses is stored with the space (matrices, basis), so an index rebuilt from SQLite is the same (the object block reads
the stored objects) and an older store migrates without its text model (v4 -> v5 adds the object block from the
stored objects), unless the formulas' phrases differ (a store of bare verb names, ``phrases`` v1, needs its text
model once to embed the verb senses: ``manage.py reindex``).

Pooling: what a sentence-transformers model says (``modules.json`` -> its Pooling folder's ``config.json``: mean
over all tokens as it was trained, CLS or max), else the mean of the word tokens' last hidden states ([CLS], [SEP]
and padding left out: they carry a component shared by every phrase). Embeddings are L2-normalised. Both the
pooling and the vector formula are recorded in the store's space.

Query text: structured PaSta text (``"hand: hold=2; head: drink with; verb: drink with"``) maps each name to its
row with its weight; free text is embedded and mapped onto the (unwhitened) phrases by ``softmax(cos /
temperature)`` keeping the strongest few (returned as the interpretation); either way the query becomes the same
``w_q @ W`` vector, queries keeping their own weights (no margins). For free text the formula's ``gate`` then
weights the two blocks by how well the text matches each (its best cosine with a PaSta phrase, with a verb phrase;
``TextQuery.match``): "a woman driving a car" matches a verb far better than any PaSta phrase, and its PaSta
reading is a guess that should weigh little. Free text is read for objects too, against the 80 object phrases
("a cup", ``prompts.object_phrases``): the object block weighs by how much better the text's best object matches
than "a person" (``OBJECT_NULL``): "someone pedalling a bicycle" names a bicycle (0.34), "a person seated on
something" evokes a chair about as much as a person and names nothing (0.01; under ``OBJECT_MIN_MARGIN``, its
object block stays zero). The 40 verbs HICO never labels have their cosines lowered by the
formula's ``extra_prior`` (0.1) before the reading: a prior that they win only when clearly better.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import taxonomy as tx
from ..errors import ModelError, QueryError, UnknownNameError, first_line
from . import prompts

if TYPE_CHECKING:  # torch loads only when a text model is used: structured queries need numpy alone
    import torch

POOLINGS = ("words", "mean", "cls", "max")
FREE_TEXT_TEMPERATURE = 0.05
FREE_TEXT_TOP = 5
FREE_TEXT_MIN_WEIGHT = 0.05
STRUCTURED_PREFIXES = (*tx.PARTS, "verb", "object")
#: The phrase a free-text query's best object must beat to name an object at all: a text evokes objects a little
#: ("a person seated on something" matches "a chair" about as well as "a person"), it names one when its best
#: object matches clearly better than a person does (``OBJECT_NULL``, see ``TextQuery.match``)
OBJECT_NULL = "a person"
#: A free-text query whose best object beats ``OBJECT_NULL`` by less than this names no object
OBJECT_MIN_MARGIN = 0.05
#: the verbs HICO never labels (117-156 of the 157 list)
EXTRA_VERBS = np.array([i for i, v in enumerate(tx.VERB_NAMES) if v in prompts.EXTRA_VERB_SENSES])


def quiet_transformers() -> None:
    """No per-load progress bars or info logs from transformers: the CLI prints its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class TextEncoder:
    """A BERT-family model (hub id or folder) that turns texts into L2-normalised vectors."""

    def __init__(self, name: str, device: torch.device | str = "cpu", pooling: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
        self.name = name
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModel.from_pretrained(name).eval().to(self.device)
        except Exception as e:  # transformers raises OSError/ValueError/KeyError for missing or odd models
            raise ModelError(f"cannot load text model {name!r}: {first_line(e)}. "
                             "Give a hub id (downloaded on first use) or a local folder with config.json, "
                             "weights and tokenizer (--text-model)") from e
        self.pooling = pooling or pooling_mode(name)
        if self.pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {self.pooling!r} for text model {name!r}; valid: {', '.join(POOLINGS)}")

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N,) texts -> (N, D) float32 unit vectors, in input order."""
        import torch

        with torch.inference_mode():
            return self._encode(texts, batch_size)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        import torch.nn.functional as F

        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt", return_special_tokens_mask=True).to(self.device)
            special = batch.pop("special_tokens_mask")  # (B, T) 1 for [CLS], [SEP], padding
            hidden = self.model(**batch).last_hidden_state.float()  # (B, T, D)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            if self.pooling == "words":
                mask = mask * (1 - special).unsqueeze(-1).float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            elif self.pooling == "max":
                pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(F.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def pooling_mode(name: str, plain: str = "words") -> str:
    """The pooling a sentence-transformers model (folder or hub id) declares: ``mean`` (all tokens, as it was
    trained), ``cls`` or ``max``; ``plain`` (the word tokens' mean) for any other model."""
    cfg = _st_pooling_config(name)
    if cfg is None:
        return plain
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


def legacy_pooling(name: str) -> str:
    """The pooling of stores made before it was recorded: a local sentence-transformers folder's own, else the mean
    over all tokens ([CLS] and [SEP] included). Reads no network."""
    return pooling_mode(name, plain="mean") if Path(name).expanduser().is_dir() else "mean"


def _st_pooling_config(name: str) -> dict | None:
    """The Pooling module's config.json of a sentence-transformers model (local or in the hub cache), or None."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        found = [folder / sub / "config.json" for sub in _pooling_folders(folder / "modules.json")]
        found = [f for f in found if f.is_file()] or sorted(folder.glob("*Pooling*/config.json"))
        cfg = _read_json(found[0]) if found else None
        return cfg if isinstance(cfg, dict) else None
    from transformers.utils import cached_file

    def fetch(filename: str, subfolder: str = "") -> Path | None:
        try:
            path = cached_file(name, filename, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        except Exception:  # offline without the file, odd repo names: not a sentence-transformers model
            return None
        return Path(path) if path else None

    modules = fetch("modules.json")
    paths = _pooling_folders(modules) if modules else []
    config = fetch("config.json", paths[0]) if paths else None
    cfg = _read_json(config) if config else None
    return cfg if isinstance(cfg, dict) else None


def _pooling_folders(modules_json: Path) -> list[str]:
    """The folders of the Pooling modules a sentence-transformers ``modules.json`` lists (none if unreadable)."""
    modules = _read_json(modules_json)
    if not isinstance(modules, list):
        return []
    return [str(m["path"]) for m in modules if isinstance(m, dict) and "path" in m
            and str(m.get("type", "")).endswith("Pooling")]


def _read_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def build_matrices(encoder: TextEncoder, phrases: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M_pasta (93, D), M_verb (157, D)) from the phrases of version ``phrases`` (default: this version's,
    ``prompts.PHRASES_VERSION``); no_interaction rows zeroed. ``v1``: the bare verb names; ``v2``: each verb the
    normalised mean of its sense sentences (``prompts.verb_sense_phrases``)."""
    m_pasta = encoder.encode(prompts.pasta_phrases())
    if (phrases or prompts.PHRASES_VERSION) == "v1":
        m_verb = encoder.encode(prompts.verb_phrases())
    else:
        m_verb = sense_matrix(encoder, prompts.verb_sense_phrases())
    m_pasta[list(tx.NO_INTERACTION_PASTA)] = 0.0
    m_verb[tx.NO_INTERACTION_VERB] = 0.0
    return m_pasta.astype(np.float32), m_verb.astype(np.float32)


def sense_matrix(encoder: TextEncoder, sentences: list[list[str]]) -> np.ndarray:
    """(len(sentences), D): each row the normalised mean of its sentences' embeddings (zero for none)."""
    flat = [t for group in sentences for t in group]
    emb = encoder.encode(flat) if flat else np.zeros((0, encoder.dim), np.float32)
    out, i = np.zeros((len(sentences), emb.shape[1] if flat else encoder.dim), np.float32), 0
    for row, group in enumerate(sentences):
        if group:
            out[row] = emb[i:i + len(group)].mean(0)
            i += len(group)
    return _normalise(out)


#: the groups ``margins`` works in: PaSta by body part, verbs as one group (margin-v1); every PaSta and every verb
#: but no_interaction, each as one group (margin-v2)
PART_GROUPS = tuple(np.arange(r.start, r.stop) for r in tx.PART_RANGES.values())
VERB_GROUPS = (np.arange(len(tx.VERB_NAMES)),)
ALL_PASTA = (np.array([i for i in range(len(tx.PASTA_NAMES)) if i not in set(tx.NO_INTERACTION_PASTA)]),)
ALL_VERBS = (np.array([i for i in range(len(tx.VERB_NAMES)) if i != tx.NO_INTERACTION_VERB]),)


@dataclass(frozen=True)
class VectorFormula:
    """How probabilities become weights (``margins`` in ``pasta_groups``/``verb_groups`` keeping ``keep_pasta``/
    ``keep_verbs`` per group; ``None`` = the probabilities as they are), how far the phrase matrices are whitened
    (``whiten``: each block's singular values s become s^(1 - whiten); 0 = as embedded, 1 = every phrase
    orthogonal), how much of a free-text query's own embedding is blended into its vector (``text_blend``; 0 = only
    the phrases it was read as) and whether a free-text query's two blocks are weighted by how well the text
    matches each (``gate``: its best cosine with a PaSta phrase and with a verb phrase)."""

    name: str
    pasta_groups: tuple[np.ndarray, ...]
    verb_groups: tuple[np.ndarray, ...]
    keep_pasta: int | None
    keep_verbs: int | None
    text_blend: float
    whiten: float = 0.0
    gate: bool = False
    #: the phrases its matrices are made of (``build_matrices``): ``v1`` bare verb names, ``v2`` verb senses
    phrases: str = "v1"
    #: subtracted from the cosines of the 40 verbs HICO never labels when free text is read (a prior: they win a
    #: reading only when clearly better than every verb people were labelled with)
    extra_prior: float = 0.0
    #: an object block (the objects a person acts on: 80 class coordinates and one "none"), weighing as much as
    #: the PaSta and verb blocks; 0 = no object block
    objects: bool = False
    #: how much a free-text query's object block weighs against its other blocks, times how clearly it names an
    #: object (``TextQuery.match``)
    object_weight: float = 1.0
    #: each block of a person keeps its share (1/sqrt(blocks)) when another is empty, instead of the whole vector
    #: being normalised again: a person with nothing but an object (a bus it stands beside) must not weigh that
    #: object as much as a person's whole activity. A last coordinate (``rest``) that no query holds takes the
    #: empty blocks' shares, so persons' vectors keep unit length
    shares: bool = False

    def weights(self, pasta: np.ndarray, verbs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities pasta (N, 93), verbs (N, 157) -> weights of the same shapes."""
        return (pasta if self.keep_pasta is None else margins(pasta, self.pasta_groups, self.keep_pasta),
                verbs if self.keep_verbs is None else margins(verbs, self.verb_groups, self.keep_verbs))


#: every formula a store may record, by name; ``LANGUAGE_VECTOR`` is the one this version makes (stores recording an
#: older one, or none, are migrated by ``manage.py reindex``: every formula is computed from the stored matrices and
#: probabilities alone). ``p@M`` (the first formula) is kept for the bench.
FORMULAS = {f.name: f for f in (
    VectorFormula("p@M", PART_GROUPS, VERB_GROUPS, None, None, 0.0),
    VectorFormula("margin-v1:2/4", PART_GROUPS, VERB_GROUPS, 2, 4, 0.0),
    VectorFormula("margin-v2:12/8+text0.4", ALL_PASTA, ALL_VERBS, 12, 8, 0.4),
    VectorFormula("margin-v3:12/8+white0.75+gate", ALL_PASTA, ALL_VERBS, 12, 8, 0.0, whiten=0.75, gate=True),
    VectorFormula("margin-v4:24/32+white0.75+gate+senses", ALL_PASTA, ALL_VERBS, 24, 32, 0.0, whiten=0.75,
                  gate=True, phrases="v2", extra_prior=0.1),
    VectorFormula("margin-v5:24/32+white0.75+gate+senses+objects", ALL_PASTA, ALL_VERBS, 24, 32, 0.0, whiten=0.75,
                  gate=True, phrases="v2", extra_prior=0.1, objects=True, shares=True),
)}
LANGUAGE_VECTOR = "margin-v5:24/32+white0.75+gate+senses+objects"
#: coordinates of the object block: one per object class and one for "acts on no object"
OBJECT_BLOCK = tx.N_OBJECTS + 1
#: the least weight ``gate`` gives a block (a text that matches no phrase of a block still counts a little)
GATE_FLOOR = 0.01


def margins(p: np.ndarray, groups: tuple[np.ndarray, ...], keep: int) -> np.ndarray:
    """Probabilities (N, C) -> weights (N, C): in each group of columns, the ``keep`` strongest values minus the
    next strongest (ties give 0), everything else 0. Scale-free background removal: a person's faint probabilities
    (the tens of classes trained sigmoids leave at 0.05-0.3, the spread of a zero-shot softmax) weigh nothing."""
    p = np.asarray(p, np.float32)
    out = np.zeros_like(p)
    for cols in groups:
        sub = p[:, cols]  # (N, g)
        if sub.shape[1] <= keep:
            out[:, cols] = sub
            continue
        floor = -np.partition(-sub, keep, axis=1)[:, keep:keep + 1]  # (N, 1): the (keep+1)-th largest
        out[:, cols] = np.maximum(sub - floor, 0.0)
    return out


def _row_basis(m: np.ndarray, rtol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis (r, D) of the row space of ``m`` and its singular values (r,), largest first (float64 SVD,
    singular values above ``rtol * max``). Each basis vector's sign is fixed (its largest-magnitude entry is
    positive), so the result does not depend on which signs the LAPACK build's SVD happened to return."""
    _, s, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
    r = max(int((s > rtol * s.max()).sum()) if s.size and s.max() > 0 else 0, 1)
    vt = vt[:r]  # (r, D)
    signs = np.sign(vt[np.arange(r), np.abs(vt).argmax(axis=1)])  # (r,)
    return (vt * np.where(signs == 0, 1.0, signs)[:, None]).astype(np.float32), s[:r]


@dataclass(frozen=True)
class PhraseBasis:
    """The compact basis of a language space: orthonormal bases of the two phrase blocks' row spaces, pasta (r_p, D)
    and verb (r_v, D) float32, and their singular values (r_p,), (r_v,) float64 (the whitening scales each direction
    by them). A store records it with its space, so that queries are put into exactly the basis its indexes were
    built in, whatever another machine's SVD would return (signs, rotations within equal singular values)."""

    pasta: np.ndarray
    verb: np.ndarray
    s_pasta: np.ndarray
    s_verb: np.ndarray

    @classmethod
    def of(cls, m_pasta: np.ndarray, m_verb: np.ndarray) -> PhraseBasis:
        """Computed from the phrase matrices (a float64 SVD per block, signs fixed)."""
        (pasta, s_pasta), (verb, s_verb) = _row_basis(m_pasta), _row_basis(m_verb)
        return cls(pasta, verb, s_pasta, s_verb)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pasta, verb, s_pasta, s_verb) as stored: float32, float32, float64, float64."""
        return (np.asarray(self.pasta, np.float32), np.asarray(self.verb, np.float32),
                np.asarray(self.s_pasta, np.float64), np.asarray(self.s_verb, np.float64))

    def digest(self) -> str:
        """A short hash of the basis: an index records the one its language vectors were made in."""
        h = hashlib.sha256()
        for a in self.arrays():
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def check(self, dim: int) -> None:
        """Raise ModelError unless the basis fits phrase matrices of width ``dim``."""
        pasta, verb, s_pasta, s_verb = self.arrays()
        if (pasta.ndim != 2 or verb.ndim != 2 or pasta.shape[1] != dim or verb.shape[1] != dim
                or s_pasta.shape != (len(pasta),) or s_verb.shape != (len(verb),)):
            raise ModelError(f"the recorded language basis ({pasta.shape}, {verb.shape}) does not fit the phrase "
                             f"matrices (width {dim})")


def _whitening(s: np.ndarray, whiten: float) -> np.ndarray:
    """(r,) scale per basis direction that turns singular values s into s^(1 - whiten) (relative to the largest)."""
    if whiten == 0 or s.max() <= 0:
        return np.ones(len(s), np.float32)
    return ((s / s.max()) ** -whiten).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 1e-12, x / np.maximum(n, 1e-12), 0.0).astype(np.float32)


@dataclass
class TextQuery:
    """How a query text was read: ``mode`` is ``structured`` or ``free``; weights per PaSta and verb name."""

    text: str
    mode: str
    pasta: dict[str, float] = field(default_factory=dict)
    verbs: dict[str, float] = field(default_factory=dict)
    #: the free text's own (D,) embedding (None for structured text)
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: weights per object class name (``"cup"``) the query names; empty when it names none
    objects: dict[str, float] = field(default_factory=dict)
    #: how well free text matches each block: its best cosine with a PaSta phrase, with a verb phrase, and how much
    #: better its best object matches than ``OBJECT_NULL`` (0 when it names no object); None for structured text.
    #: A ``gate`` formula weights the query's blocks by them
    match: tuple[float, float, float] | None = None

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The weights as arrays: pasta (93,), verbs (157,), objects (80,), zero where the query names nothing."""
        pasta = np.zeros(len(tx.PASTA_NAMES), np.float32)
        verbs = np.zeros(len(tx.VERB_NAMES), np.float32)
        objects = np.zeros(tx.N_OBJECTS, np.float32)
        for name, w in self.pasta.items():
            pasta[tx.pasta_index(name)] = w
        for name, w in self.verbs.items():
            verbs[tx.verb_index(name)] = w
        for name, w in self.objects.items():
            objects[tx.object_index(name)] = w
        return pasta, verbs, objects

    def as_dict(self) -> dict:
        out = {"text": self.text, "mode": self.mode,
               "pasta": [[k, round(v, 4)] for k, v in self.pasta.items()],
               "verbs": [[k, round(v, 4)] for k, v in self.verbs.items()],
               "objects": [[k, round(v, 4)] for k, v in self.objects.items()]}
        if self.match is not None:
            out["match"] = {"pasta": round(self.match[0], 4), "verbs": round(self.match[1], 4),
                            "objects": round(self.match[2], 4)}
        return out


class LanguageSpace:
    """The two matrices of the space, and the functions that put persons and texts into it."""

    def __init__(self, m_pasta: np.ndarray, m_verb: np.ndarray, text_model: str, encoder: TextEncoder | None = None,
                 pooling: str | None = None, vector: str = LANGUAGE_VECTOR, basis: PhraseBasis | None = None):
        self.m_pasta = np.asarray(m_pasta, np.float32)  # (93, D)
        self.m_verb = np.asarray(m_verb, np.float32)  # (157, D)
        self.text_model = text_model
        self._encoder = encoder
        #: how the text model pools (queries must be pooled like the phrases were); None = decide on loading
        self.pooling = encoder.pooling if encoder is not None else pooling
        if vector not in FORMULAS:
            raise ModelError(f"unknown language vector formula {vector!r}; known: {', '.join(FORMULAS)}")
        self.vector = vector
        self.formula = FORMULAS[vector]
        if self.m_pasta.shape[0] != len(tx.PASTA_NAMES) or self.m_verb.shape[0] != len(tx.VERB_NAMES):
            raise ModelError(f"language matrices have {self.m_pasta.shape[0]}/{self.m_verb.shape[0]} rows, "
                             "expected 93/157")
        #: the compact basis: a store's recorded one, else computed from the matrices (``PhraseBasis.of``)
        self.basis = basis if basis is not None else PhraseBasis.of(self.m_pasta, self.m_verb)
        self.basis.check(self.m_pasta.shape[1])
        # (r_p, D), (r_v, D) orthonormal rows; (r_p,), (r_v,) singular values
        self.basis_pasta, self.basis_verb, s_pasta, s_verb = self.basis.arrays()
        self._white_pasta = _whitening(s_pasta, self.formula.whiten)  # (r_p,) scale per basis direction
        self._white_verb = _whitening(s_verb, self.formula.whiten)  # (r_v,)
        self._pasta_rows = self.m_pasta @ self.basis_pasta.T * self._white_pasta  # (93, r_p): W_pasta in the basis
        self._verb_rows = self.m_verb @ self.basis_verb.T * self._white_verb  # (157, r_v): W_verb in the basis
        self._m_object: np.ndarray | None = None  # (81, D): OBJECT_NULL and the 80 object phrases, on first use

    @classmethod
    def from_text_model(cls, name: str, device: torch.device | str = "cpu") -> LanguageSpace:
        """Embed the phrases with the text model ``name`` (hub id or folder)."""
        encoder = TextEncoder(name, device)
        return cls(*build_matrices(encoder), text_model=name, encoder=encoder)

    def record(self) -> dict:
        """What the store's space records about this language space (besides the matrices)."""
        return {"pooling": self.pooling, "language_vector": self.vector}

    @property
    def dim(self) -> int:
        """Dimension of a language vector: the ranks of the two phrase blocks (and the object block's 81)."""
        return (self.basis_pasta.shape[0] + self.basis_verb.shape[0] + (OBJECT_BLOCK if self.formula.objects else 0)
                + int(self.formula.shares))

    def encoder(self) -> TextEncoder:
        """The text model, loaded on first use (only free-text queries need it)."""
        if self._encoder is None:
            self._encoder = TextEncoder(self.text_model, pooling=self.pooling)
            self.pooling = self._encoder.pooling
        return self._encoder

    def embed(self, pasta: np.ndarray, verbs: np.ndarray, objects: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of persons, pasta (N, 93) and verbs (N, 157), and ``objects`` (N, 80), the largest p of
        each object class a person acts on (None: none) -> language vectors (N, dim) through the space's formula
        (``margins``): unit length, zero if empty (no PaSta, no verb and no object). ``to_full`` maps
        them back to the (N, 2D [+ 81]) form of the module docstring."""
        pasta = np.asarray(pasta, np.float32).reshape(-1, len(tx.PASTA_NAMES))
        verbs = np.asarray(verbs, np.float32).reshape(-1, len(tx.VERB_NAMES))
        if not self.formula.objects:
            return self.embed_weights(*self.formula.weights(pasta, verbs))
        objects = (np.zeros((len(pasta), tx.N_OBJECTS), np.float32) if objects is None else
                   np.asarray(objects, np.float32).reshape(len(pasta), tx.N_OBJECTS))
        none = ~objects.any(axis=1, keepdims=True)  # (N, 1): acts on no object
        wp, wv = self.formula.weights(pasta, verbs)
        out = self.embed_weights(wp, wv, np.concatenate([objects, none.astype(np.float32)], axis=1), rest=True)
        out[none[:, 0] & ~wp.any(axis=1) & ~wv.any(axis=1)] = 0.0  # nothing at all: no language direction
        return out

    def embed_weights(self, pasta: np.ndarray, verbs: np.ndarray, objects: np.ndarray | None = None,
                      rest: bool = False) -> np.ndarray:
        """Weights pasta (N, 93), verbs (N, 157) and, with an object block, objects (N, 81) taken as they are ->
        (N, dim): each block normalised (a block without weight stays zero), then the whole normalised, or with
        ``shares`` each block given 1/sqrt(blocks) of it and the last coordinate the empty blocks' shares when
        ``rest`` (a person's vector), else 0 (a query's)."""
        a = _normalise(np.asarray(pasta, np.float32) @ self._pasta_rows)  # (N, r_p)
        b = _normalise(np.asarray(verbs, np.float32) @ self._verb_rows)  # (N, r_v)
        blocks = [a, b]
        if self.formula.objects:
            o = np.zeros((len(a), OBJECT_BLOCK), np.float32) if objects is None else objects
            blocks.append(_normalise(np.asarray(o, np.float32).reshape(len(a), OBJECT_BLOCK)))  # (N, 81)
        if self.formula.shares:
            filled = sum((blk * blk).sum(axis=1) > 0.5 for blk in blocks)  # (N,): how many blocks hold something
            left = np.sqrt(np.maximum(len(blocks) - filled, 0.0))[:, None] if rest else np.zeros((len(a), 1))
            return np.concatenate([*blocks, left.astype(np.float32)], axis=-1) / np.float32(np.sqrt(len(blocks)))
        return _normalise(np.concatenate(blocks, axis=-1))

    def to_full(self, vectors: np.ndarray) -> np.ndarray:
        """Language vectors (N, dim) -> (N, 2D [+ 81 + 1]) in the text model's own coordinates (same inner
        products; with a whitening formula these are the coordinates of the whitened phrases; the object block and
        the rest coordinate as they are)."""
        r, rv = self.basis_pasta.shape[0], self.basis_verb.shape[0]
        return np.concatenate([vectors[:, :r] @ self.basis_pasta, vectors[:, r:r + rv] @ self.basis_verb,
                               vectors[:, r + rv:]], axis=-1)

    def embed_query(self, query: TextQuery) -> np.ndarray:
        """The (dim,) unit language vector of an interpreted query: its weights as they are (a block it names
        nothing in stays zero); for free text, as the formula says, blended with the text's own embedding projected
        onto the phrase spans (``text_blend``) and its blocks weighted by how well the text matches each (``gate``:
        ``query.match``)."""
        pasta, verbs, objects = query.weights()  # (93,), (157,), (80,)
        vec = self.embed_weights(pasta[None], verbs[None], np.append(objects, 0.0)[None])[0]  # (dim,)
        blend = self.formula.text_blend
        if query.embedding is not None and blend > 0:
            e = np.asarray(query.embedding, np.float32)  # (D,)
            own = np.concatenate([_normalise(e @ self.basis_pasta.T * self._white_pasta),
                                  _normalise(e @ self.basis_verb.T * self._white_verb)])
            vec = _normalise((1 - blend) * vec + blend * _normalise(own))
        if query.match is not None and self.formula.gate:
            r, rv = self.basis_pasta.shape[0], self.basis_verb.shape[0]
            vec = _normalise(np.concatenate([vec[:r] * max(query.match[0], GATE_FLOOR),
                                             vec[r:r + rv] * max(query.match[1], GATE_FLOOR),
                                             vec[r + rv:] * query.match[2] * self.formula.object_weight]))
        return _normalise(vec)

    def interpret(self, text: str) -> TextQuery:
        """Read a query text as structured PaSta text when it names parts (``hand: hold``), else as free text."""
        if not text or not re.search(r"\w", text):
            raise QueryError("the query text is empty; try 'hand: hold; head: drink with' or 'drinking from a cup'")
        if is_structured(text):
            return parse_structured(text)
        return self._interpret_free(text)

    def _interpret_free(self, text: str) -> TextQuery:
        q = self.encoder().encode([text])[0]  # (D,)
        sim_pasta, sim_verb = self.m_pasta @ q, self.m_verb @ q  # (93,), (157,) cosines with the phrases
        sim_verb[EXTRA_VERBS] -= self.formula.extra_prior
        skip_pasta, skip_verb = set(tx.NO_INTERACTION_PASTA), {tx.NO_INTERACTION_VERB}
        pasta = _soft_top(sim_pasta, tx.PASTA_NAMES, skip_pasta)
        verbs = _soft_top(sim_verb, tx.VERB_NAMES, skip_verb)
        objects, named = {}, 0.0
        if self.formula.objects:
            sim_object = self.object_phrases() @ q  # (81,): OBJECT_NULL, then the 80 objects
            named = float(sim_object[1:].max() - sim_object[0])
            if named >= OBJECT_MIN_MARGIN:
                objects = _soft_top(sim_object[1:], tx.OBJECT_NAMES, set())
            else:
                named = 0.0
        match = (_best(sim_pasta, skip_pasta), _best(sim_verb, skip_verb), named)
        return TextQuery(text=text, mode="free", pasta=pasta, verbs=verbs, objects=objects, embedding=q, match=match)

    def object_phrases(self) -> np.ndarray:
        """(81, D): the text model's embeddings of ``OBJECT_NULL`` and the 80 object phrases (``"a cup"``), which
        free text is read against for the objects it names (embedded on first use; persons' object blocks need no
        text model)."""
        if self._m_object is None:
            self._m_object = self.encoder().encode([OBJECT_NULL, *prompts.object_phrases()])
        return self._m_object


def _best(sims: np.ndarray, skip: set[int]) -> float:
    """The largest of ``sims`` outside the rows in ``skip``."""
    return float(np.delete(sims, sorted(skip)).max())


def _soft_top(sims: np.ndarray, names: tuple[str, ...], skip: set[int]) -> dict[str, float]:
    """softmax(sims / T) over the rows not in ``skip``; the strongest few (>= min weight), renormalised."""
    idx = np.array([i for i in range(len(names)) if i not in skip])
    logits = sims[idx] / FREE_TEXT_TEMPERATURE
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[:FREE_TEXT_TOP]
    keep = [o for o in order if p[o] >= FREE_TEXT_MIN_WEIGHT] or [order[0]]
    total = float(sum(p[o] for o in keep))
    return {names[idx[o]]: float(p[o]) / total for o in keep}


def is_structured(text: str) -> bool:
    """True when some ``;``-separated item starts with a part or ``verb`` followed by a colon."""
    items = [s.strip().lower() for s in re.split(r"[;\n]", text) if s.strip()]
    return any(re.match(rf"^({'|'.join(STRUCTURED_PREFIXES)})\s*:", s) for s in items)


def parse_structured(text: str) -> TextQuery:
    """``"hand: hold=2; head: drink with; verb: drink with; object: cup"`` -> weights per PaSta, verb and object
    (default weight 1)."""
    query = TextQuery(text=text, mode="structured")
    for item in (s.strip() for s in re.split(r"[;\n]", text)):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise QueryError(f"weight {weight.strip()!r} in {item!r} is not a number (write 'hand: hold=2')") from None
        if not np.isfinite(w) or w < 0:
            raise QueryError(f"weight in {item!r} must be a finite number >= 0")
        key = tx.normalize_name(name)
        try:
            if key.startswith("verb:"):
                target, label = query.verbs, tx.VERB_NAMES[tx.verb_index(key[5:])]
            elif key.startswith("object:"):
                target, label = query.objects, tx.OBJECT_NAMES[tx.object_index(key[7:].strip())]
            else:
                target, label = query.pasta, tx.PASTA_NAMES[tx.pasta_index(key)]
        except UnknownNameError as e:
            raise QueryError(f"in query {text!r}: {e}") from None
        if label in (f"{p}: {tx.NO_INTERACTION}" for p in tx.PARTS) or label == tx.NO_INTERACTION:
            raise QueryError(f"{label!r} carries no meaning in the language space (its row is zero); "
                             "search for what the part does instead")
        target[label] = target.get(label, 0.0) + w
    if not any(w > 0 for w in (*query.pasta.values(), *query.verbs.values(), *query.objects.values())):
        raise QueryError(f"query {text!r} has no PaSta, verb or object with a positive weight")
    return query
