"""The language space: PaSta and verb probabilities, and query texts, as vectors of a BERT-family text model.

M_pasta (93, D) holds the text-model embedding of each PaSta phrase (``prompts.PASTA_PHRASE``), M_verb (157, D)
that of each verb phrase; no_interaction rows are zero. A person's language vector is

    concat(normalise(p_pasta @ M_pasta), normalise(p_verb @ M_verb)) / sqrt(2)        # unit length

so its cosine with a query is the mean of a PaSta-block and a verb-block cosine. Each block lies in the span of
its phrase rows, so vectors are stored in an orthonormal basis of that span (``basis_pasta`` (r_p, D),
``basis_verb`` (r_v, D), from an SVD): the same cosines exactly, in r_p + r_v <= 243 dimensions instead of 2D
(1536 for bert-base). The verb block is there because
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
from typing import TYPE_CHECKING

import numpy as np

from .. import taxonomy as tx
from ..errors import ModelError, QueryError, UnknownNameError
from . import prompts

if TYPE_CHECKING:  # torch loads only when a text model is used: structured queries need numpy alone
    import torch

FREE_TEXT_TEMPERATURE = 0.05
FREE_TEXT_TOP = 5
FREE_TEXT_MIN_WEIGHT = 0.05
STRUCTURED_PREFIXES = (*tx.PARTS, "verb")


def quiet_transformers() -> None:
    """No per-load progress bars or info logs from transformers: the CLI prints its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class TextEncoder:
    """A BERT-family model (hub id or folder) that turns texts into L2-normalised vectors."""

    def __init__(self, name: str, device: torch.device | str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
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


def _row_basis(m: np.ndarray, rtol: float = 1e-5) -> np.ndarray:
    """Orthonormal basis (r, D) of the row space of ``m`` (float64 SVD, singular values above ``rtol * max``)."""
    _, s, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
    r = int((s > rtol * s.max()).sum()) if s.size and s.max() > 0 else 0
    return vt[:max(r, 1)].astype(np.float32)


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
        self.basis_pasta = _row_basis(self.m_pasta)  # (r_p, D) orthonormal rows
        self.basis_verb = _row_basis(self.m_verb)  # (r_v, D)
        self._red_pasta = self.m_pasta @ self.basis_pasta.T  # (93, r_p): M_pasta in that basis
        self._red_verb = self.m_verb @ self.basis_verb.T  # (157, r_v)

    @classmethod
    def from_text_model(cls, name: str, device: torch.device | str = "cpu") -> LanguageSpace:
        """Embed the phrases with the text model ``name`` (hub id or folder)."""
        encoder = TextEncoder(name, device)
        return cls(*build_matrices(encoder), text_model=name, encoder=encoder)

    @property
    def dim(self) -> int:
        """Dimension of a language vector: the ranks of the two phrase blocks."""
        return self.basis_pasta.shape[0] + self.basis_verb.shape[0]

    def encoder(self) -> TextEncoder:
        """The text model, loaded on first use (only free-text queries need it)."""
        if self._encoder is None:
            self._encoder = TextEncoder(self.text_model)
        return self._encoder

    def embed(self, pasta: np.ndarray, verbs: np.ndarray) -> np.ndarray:
        """Probabilities pasta (N, 93), verbs (N, 157) -> language vectors (N, r_p + r_v), unit length (zero if
        empty). ``to_full`` maps them back to the (N, 2D) form of the module docstring."""
        a = _normalise(np.asarray(pasta, np.float32) @ self._red_pasta)  # (N, r_p)
        b = _normalise(np.asarray(verbs, np.float32) @ self._red_verb)  # (N, r_v)
        return _normalise(np.concatenate([a, b], axis=-1))

    def to_full(self, vectors: np.ndarray) -> np.ndarray:
        """Language vectors (N, r_p + r_v) -> (N, 2D) in the text model's own coordinates (same inner products)."""
        r = self.basis_pasta.shape[0]
        return np.concatenate([vectors[:, :r] @ self.basis_pasta, vectors[:, r:] @ self.basis_verb], axis=-1)

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
