"""The language space: PaSta and verb probabilities, and query texts, as vectors of a BERT-family text model.

M_pasta (93, D) holds the text-model embedding of each PaSta phrase (``prompts.PASTA_PHRASE``), M_verb (157, D)
that of each verb phrase; no_interaction rows are zero. A person's language vector is

    concat(normalise(p_pasta @ M_pasta), normalise(p_verb @ M_verb)) / sqrt(2)        # (2D,), unit length

so its cosine with a query is the mean of a PaSta-block and a verb-block cosine. The verb block is there because
many activities have no PaSta of their own ("riding a bike" is a verb, not a part state); see docs/design.md.
Pooling: the pooling of a sentence-transformers model folder (``1_Pooling/config.json``) when there is one,
else the attention-masked mean of the last hidden states; embeddings are L2-normalised.

Query text: structured PaSta text (``"hand: hold=2; head: drink with; verb: drink with"``) maps each name to its
row with its weight; free text is embedded and mapped onto the phrases by ``softmax(cos / temperature)`` keeping
the strongest few; either way the query becomes the same ``p_q @ M`` vector, and the mapping is returned as the
interpretation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import taxonomy as tx
from ..errors import ModelError, QueryError, UnknownNameError
from . import prompts

FREE_TEXT_TEMPERATURE = 0.05
FREE_TEXT_TOP = 5
FREE_TEXT_MIN_WEIGHT = 0.05
STRUCTURED_PREFIXES = (*tx.PARTS, "verb")


class TextEncoder:
    """A BERT-family model (hub id or folder) that turns texts into L2-normalised vectors."""

    def __init__(self, name: str, device: torch.device | str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModel.from_pretrained(name).eval().to(self.device)
        except Exception as e:  # transformers raises OSError/ValueError/KeyError for missing or odd models
            raise ModelError(f"cannot load text model {name!r}: {str(e).splitlines()[0] if str(e) else e!r}. "
                             "Give a hub id (downloaded on first use) or a local folder with config.json, "
                             "weights and tokenizer (--text-model)") from e
        self.pooling = _pooling_mode(name)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N,) texts -> (N, D) float32 unit vectors, in input order."""
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # (B, T, D)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            elif self.pooling == "max":
                pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(F.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _pooling_mode(name: str) -> str:
    """``mean`` unless a sentence-transformers folder says ``cls`` or ``max``."""
    folder = Path(name)
    if not folder.is_dir():
        return "mean"
    configs = sorted(folder.glob("*Pooling*/config.json"))
    if not configs:
        return "mean"
    cfg = json.loads(configs[0].read_text())
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


def build_matrices(encoder: TextEncoder) -> tuple[np.ndarray, np.ndarray]:
    """(M_pasta (93, D), M_verb (157, D)) from the phrases; no_interaction rows zeroed."""
    m_pasta = encoder.encode(prompts.pasta_phrases())
    m_verb = encoder.encode(prompts.verb_phrases())
    m_pasta[list(tx.NO_INTERACTION_PASTA)] = 0.0
    m_verb[tx.NO_INTERACTION_VERB] = 0.0
    return m_pasta.astype(np.float32), m_verb.astype(np.float32)


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

    def as_dict(self) -> dict:
        return {"text": self.text, "mode": self.mode,
                "pasta": [[k, round(v, 4)] for k, v in self.pasta.items()],
                "verbs": [[k, round(v, 4)] for k, v in self.verbs.items()]}


class LanguageSpace:
    """The two matrices of the space, and the functions that put persons and texts into it."""

    def __init__(self, m_pasta: np.ndarray, m_verb: np.ndarray, text_model: str, encoder: TextEncoder | None = None):
        self.m_pasta = np.asarray(m_pasta, np.float32)  # (93, D)
        self.m_verb = np.asarray(m_verb, np.float32)  # (157, D)
        self.text_model = text_model
        self._encoder = encoder
        if self.m_pasta.shape[0] != len(tx.PASTA_NAMES) or self.m_verb.shape[0] != len(tx.VERB_NAMES):
            raise ModelError(f"language matrices have {self.m_pasta.shape[0]}/{self.m_verb.shape[0]} rows, "
                             "expected 93/157")

    @classmethod
    def from_text_model(cls, name: str, device: torch.device | str = "cpu") -> LanguageSpace:
        """Embed the phrases with the text model ``name`` (hub id or folder)."""
        encoder = TextEncoder(name, device)
        return cls(*build_matrices(encoder), text_model=name, encoder=encoder)

    @property
    def dim(self) -> int:
        """Dimension of a language vector: two blocks of the text model's width."""
        return 2 * self.m_pasta.shape[1]

    def encoder(self) -> TextEncoder:
        """The text model, loaded on first use (only free-text queries need it)."""
        if self._encoder is None:
            self._encoder = TextEncoder(self.text_model)
        return self._encoder

    def embed(self, pasta: np.ndarray, verbs: np.ndarray) -> np.ndarray:
        """Probabilities pasta (N, 93), verbs (N, 157) -> language vectors (N, 2D), unit length (zero if empty)."""
        a = _normalise(np.asarray(pasta, np.float32) @ self.m_pasta)  # (N, D)
        b = _normalise(np.asarray(verbs, np.float32) @ self.m_verb)  # (N, D)
        return _normalise(np.concatenate([a, b], axis=-1))

    def embed_query(self, query: TextQuery) -> np.ndarray:
        """The (2D,) language vector of an interpreted query."""
        p = np.zeros((1, len(tx.PASTA_NAMES)), np.float32)
        v = np.zeros((1, len(tx.VERB_NAMES)), np.float32)
        for name, w in query.pasta.items():
            p[0, tx.pasta_index(name)] = w
        for name, w in query.verbs.items():
            v[0, tx.verb_index(name)] = w
        return self.embed(p, v)[0]

    def interpret(self, text: str) -> TextQuery:
        """Read a query text as structured PaSta text when it names parts (``hand: hold``), else as free text."""
        if not text or not re.search(r"\w", text):
            raise QueryError("the query text is empty; try 'hand: hold; head: drink with' or 'drinking from a cup'")
        if is_structured(text):
            return parse_structured(text)
        return self._interpret_free(text)

    def _interpret_free(self, text: str) -> TextQuery:
        q = self.encoder().encode([text])[0]  # (D,)
        pasta = _soft_top(self.m_pasta @ q, tx.PASTA_NAMES, set(tx.NO_INTERACTION_PASTA))
        verbs = _soft_top(self.m_verb @ q, tx.VERB_NAMES, {tx.NO_INTERACTION_VERB})
        return TextQuery(text=text, mode="free", pasta=pasta, verbs=verbs)


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
    """``"hand: hold=2; head: drink with; verb: drink with"`` -> weights per PaSta and verb (default weight 1)."""
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
            else:
                target, label = query.pasta, tx.PASTA_NAMES[tx.pasta_index(key)]
        except UnknownNameError as e:
            raise QueryError(f"in query {text!r}: {e}") from None
        if label in (f"{p}: {tx.NO_INTERACTION}" for p in tx.PARTS) or label == tx.NO_INTERACTION:
            raise QueryError(f"{label!r} carries no meaning in the language space (its row is zero); "
                             "search for what the part does instead")
        target[label] = target.get(label, 0.0) + w
    if not any(w > 0 for w in (*query.pasta.values(), *query.verbs.values())):
        raise QueryError(f"query {text!r} has no PaSta or verb with a positive weight")
    return query
