"""A store's vector space: its identity and checks, the vectors computed from stored values, and the models that
make it.

- **Identity**: the fields of :data:`SPACE_FIELDS` (models, phrases, dims, pooling, language vector formula), hashed
  into the space's fingerprint; a store holds one space, recorded on its first write (:meth:`VectorSpace.ensure`).
  Model flags are resolved against it (:func:`model_spec`), and a store made with an older language formula is
  refused with the fix or migrated (:meth:`VectorSpace.migrate_language`).
- **Vectors**: visual (the stored unit vector), language (the stored probabilities in the language space, see
  models/language.py) and activity, below; computed from the values SQLite stores, so an index built at ingest and
  one rebuilt from SQLite are identical.

A2V's visual feature and the activity space built on it: HAKE's Activity2Vec takes its visual feature from the
PaSta classifiers. With trained heads (Linear-ReLU-Linear-ReLU-Linear per part) that is the last hidden layer of
each of the six part heads, (6, h) per person (h = 512 for the published heads), computed on the heads' input: the
unnormalised tower output, which the store recovers as ``visual * visual_norm`` (unit vector and norm, both
stored). Zero-shot heads (cosines with CLIP text prompts) have no hidden layers, so a store made with them has no
such feature and no activity space.

The activity space's vector of a person is ``normalise(concat(normalise(f_part) for the six parts))``: each part
counts the same whatever the scale of its activations, and a part whose layer is all zero drops out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from db import repo
from db.blobs import f16, unf16
from db.schema import Space

from .errors import LegacySpaceError, ModelError, QueryError, SpaceMismatchError, StoreError
from .models import prompts
from .models.language import (
    FORMULAS,
    LANGUAGE_VECTOR,
    LanguageSpace,
    PhraseBasis,
    TextEncoder,
    build_matrices,
    legacy_pooling,
)

if TYPE_CHECKING:
    from .models import ModelSpec
    from .store import Store

log = logging.getLogger("a2v_search")

ACTIVITY = "activity"
INDEX_NAMES = ("visual", "language")  # the spaces every store has, each with its FAISS index
ALL_INDEX_NAMES = (*INDEX_NAMES, ACTIVITY)  # with trained heads
#: (unit visual (N, P), norms (N,)) -> A2V features (N, 6, h)
PartFeatures = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: the fields that identify a vector space; two stores (or a store and a set of model flags) with the same
#: values produce comparable vectors.
SPACE_FIELDS = ("visual_model", "heads", "text_model", "phrases", "visual_dim", "pooling", "language_vector")

ZERO_SHOT_NOTE = ("no A2V classifier feature: this store's PaSta heads are zero-shot (cosines with CLIP text "
                  "prompts), which have no hidden layers; a store ingested with trained heads (--checkpoint) has it")


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 1e-12, x / np.maximum(n, 1e-12), 0.0).astype(np.float32)


def space_vectors(features: np.ndarray) -> np.ndarray:
    """A2V features (N, 6, h) -> activity-space vectors (N, 6h), unit length (zero when every part is zero)."""
    f = np.asarray(features, np.float32)
    return _normalise(_normalise(f).reshape(len(f), -1))


def trained_heads(heads_ref: str | None) -> bool:
    """True when a space's heads are trained MLPs (``checkpoint:...``), the only ones with A2V features."""
    return bool(heads_ref) and str(heads_ref).startswith("checkpoint:")


def space_fingerprint(space: dict) -> str:
    """A short hash of the fields that identify a vector space."""
    key = json.dumps({k: space.get(k) for k in SPACE_FIELDS}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def older_prompts(stored: str | None, asked: str | None) -> tuple[str, str] | None:
    """(stored, asked) prompt versions when both heads refs are zero-shot (``zero-shot:<prompts>:<model>``) of the
    same model with other prompts, else None."""
    if not (stored and asked and stored.startswith("zero-shot:") and asked.startswith("zero-shot:")):
        return None
    _, old, model = stored.split(":", 2) if stored.count(":") >= 2 else ("", "", stored)
    _, new, model_asked = asked.split(":", 2) if asked.count(":") >= 2 else ("", "", asked)
    return (old, new) if model == model_asked and old != new else None


def phrases_of(formula: str | None) -> str:
    """The phrases a recorded formula's matrices were made of (stores before formulas were recorded: v1)."""
    return FORMULAS[formula].phrases if formula in FORMULAS else "v1"


def embed_phrases(text_model: str, pooling: str) -> tuple[np.ndarray, np.ndarray]:
    """This version's phrase matrices, embedded by a store's text model (a migration whose phrases changed)."""
    try:
        encoder = TextEncoder(text_model, pooling=pooling)
    except ModelError as e:
        raise ModelError(f"migrating the language space needs the store's text model to embed this version's "
                         f"phrases: {e}. Make {text_model} loadable here (the folder it was made from, or a hub "
                         "id in the cache) and run reindex again; nothing was changed") from e
    return build_matrices(encoder)


def as_stored_visual(visual: np.ndarray) -> np.ndarray:
    """Unit visual vectors (N, P) as SQLite keeps them (float16), back in float32: what a stored person's vectors
    are computed from."""
    return unf16(f16(visual)).reshape(len(visual), -1)


def finite_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (n, d) with every row that holds a NaN or an infinity replaced by zeros."""
    bad = ~np.all(np.isfinite(x), axis=1)
    if bad.any():
        x = x.copy()
        x[bad] = 0.0
    return x


# ---------------------------------------------------------------------- the models of a space


def model_spec(flags: dict, trust: bool, default_text_model: str, space: dict) -> ModelSpec:
    """The models to use: the ones ``space`` (a store's recorded space, {} for none) names, overridden by the
    ``flags`` given (``model``, ``checkpoint``, ``text_model``; checked against it). ``trust``: this process's
    consent to unpickle, never the store's."""
    from .models import ModelSpec
    from .models.factory import model_ref

    stored = space.get("spec")
    f = flags
    if stored is None:
        return ModelSpec(model=f["model"], checkpoint=f["checkpoint"], trust_checkpoint=trust,
                         text_model=f["text_model"] or default_text_model)
    for key in ("model", "text_model"):
        if f[key] and stored.get(key) and model_ref(f[key]) != model_ref(stored[key]):
            raise SpaceMismatchError(
                f"--{key.replace('_', '-')} {f[key]} contradicts this store, whose vectors were made with "
                f"{stored[key]}; omit the flag to use the store's models, or use another --data-dir")
    spec = ModelSpec(model=f["model"] or stored.get("model"),
                     checkpoint=f["checkpoint"] or stored.get("checkpoint"),
                     trust_checkpoint=trust,  # consent is this process's flag, never the store's
                     text_model=f["text_model"] or stored.get("text_model") or default_text_model,
                     expect_checkpoint=recorded_identity(space.get("heads"), "checkpoint"),
                     expect_model=recorded_identity(space.get("visual_model"), "openai-state-dict"))
    check_recorded_identity(spec.checkpoint, space.get("heads"), "checkpoint", bool(f["checkpoint"]))
    check_recorded_identity(spec.model, space.get("visual_model"), "openai-state-dict", bool(f["model"]))
    return spec


def recorded_identity(recorded: str | None, kind: str) -> str | None:
    """The content identity in a store's ``kind:identity`` model reference, or None for another kind."""
    return recorded.split(":", 1)[1] if recorded and recorded.startswith(f"{kind}:") else None


def check_recorded_identity(path: str | None, recorded: str | None, kind: str, flagged: bool) -> None:
    """A checkpoint (or OpenAI state dict) file must be the one the store recorded (``kind:identity``), checked
    by content before anything in it is read: a file swapped in at the recorded path is refused."""
    flag = "--checkpoint" if kind == "checkpoint" else "--model"
    if not path or not recorded or not Path(path).exists():
        return
    if not recorded.startswith(f"{kind}:"):
        if flagged and kind == "checkpoint":
            raise SpaceMismatchError(f"--checkpoint {path} contradicts this store, whose PaSta comes from {recorded}; "
                                     "omit the flag, or use another --data-dir")
        return
    from .models.checkpoint import checkpoint_identity

    got = checkpoint_identity(Path(path))
    if got != recorded_identity(recorded, kind):
        what = f"{flag} {path}" if flagged else f"the file at this store's recorded path {path}"
        raise SpaceMismatchError(f"{what} is not the one this store's vectors were made with (content identity "
                                 f"{got}, store has {recorded}); pass {flag} with the original file (or its "
                                 "converted folder), or use another --data-dir")


# ---------------------------------------------------------------------- a store's space


class VectorSpace:
    """The vector space of a store (``store.space``): read from SQLite once (a space never changes once written,
    but by a migration), with its language space and, with trained heads, its activity space."""

    def __init__(self, store: Store):
        self._store = store
        self._row: Space | None = None
        self._language: LanguageSpace | None = None
        self._basis: PhraseBasis | None = None
        self._basis_recorded = False
        self._activity_source: Callable[[], PartFeatures] | None = None
        self._part_features: PartFeatures | None = None
        self._without_norm: int | None = None

    @property
    def _where(self) -> Path:
        return self._store.data_dir

    def row(self) -> Space | None:
        """The store's vector space (read once; a space never changes once written)."""
        if self._row is None:
            with self._store.db.session() as s:
                rows = repo.spaces(s)
            if len(rows) > 1:
                raise StoreError(f"store {self._where} holds {len(rows)} vector spaces; this version supports one")
            self._row = rows[0] if rows else None
        return self._row

    def config(self) -> dict | None:
        """The recorded space (models, dims, model flags) or None for an empty store."""
        row = self.row()
        return json.loads(row.config) if row else None

    @property
    def fingerprint(self) -> str | None:
        row = self.row()
        return row.fingerprint if row else None

    def check(self, space: dict) -> None:
        """Raise SpaceMismatchError when ``space`` (from loaded models) differs from the store's space."""
        stored = self.config()
        if stored is None or space_fingerprint(space) == space_fingerprint(stored):
            return
        self.require_current_language()
        diffs = [f"{k}: store has {stored.get(k)!r}, asked for {space.get(k)!r}"
                 for k in SPACE_FIELDS if stored.get(k) != space.get(k)]
        prompts = older_prompts(stored.get("heads"), space.get("heads"))
        if prompts and len(diffs) == 1:  # the same CLIP model; only this version's zero-shot prompts differ
            raise SpaceMismatchError(
                f"store {self._where} holds zero-shot PaSta made with the {prompts[0]} prompts; this version's "
                f"zero-shot heads use the {prompts[1]} prompts, so new images can be neither compared with nor added "
                f"to its persons: ingest the images again into a new --data-dir (text and structured queries on "
                f"this store keep working)")
        raise SpaceMismatchError(
            f"the models asked for differ from the ones this store's vectors were made with ({'; '.join(diffs)}). "
            f"Omit the model flags to use the store's models, or use another --data-dir for these models")

    def ensure(self, space: dict, language: LanguageSpace) -> Space:
        """Register the space on first write, or check it matches."""
        row = self.row()
        if row is not None:
            self.check({**space, **language.record()})
            return row
        config = {**space, "language_dim": language.dim, **language.record()}
        with self._store.db.session() as s:
            row = repo.add_space(s, space_fingerprint(config), config, language.m_pasta, language.m_verb,
                                 language.basis.arrays())
        self._language, self._row, self._basis, self._basis_recorded = language, row, language.basis, True
        return row

    def record_spec(self, spec: dict) -> None:
        """Replace the model paths recorded with the space (writers; the vectors' identity is unchanged)."""
        self._store.require_lock()
        row = self.row()
        with self._store.db.session() as s:
            repo.set_space_config(s, row.id, {**json.loads(row.config), "spec": spec})
        self._row = None

    def language(self) -> LanguageSpace:
        """The store's language space, from its stored matrices and recorded pooling (the text model loads only
        for free text)."""
        if self._language is None:
            row = self.row()
            if row is None:
                raise StoreError(f"store {self._where} is empty; ingest something first")
            self.require_current_language()
            m_pasta, m_verb = repo.space_matrices(row)
            self._language = LanguageSpace(m_pasta.copy(), m_verb.copy(), text_model=row.text_model,
                                           pooling=self.config()["pooling"], vector=self.config()["language_vector"],
                                           basis=self.phrase_basis())
        return self._language

    def set_language(self, language: LanguageSpace) -> None:
        """Use an already-loaded language space (same matrices) so its text model is not loaded twice."""
        self._language = language

    def phrase_basis(self) -> PhraseBasis:
        """The language space's compact basis as the store records it. A store made before it was recorded (schema
        < 4) gets it computed from its matrices (signs fixed, so the same on every machine), recorded by the next
        writer's save; a language index built in another basis is rebuilt when loaded (indexes.py)."""
        if self._basis is None:
            row = self.row()
            try:
                recorded = repo.space_basis(row)
            except ValueError as e:  # blobs of the wrong length
                raise StoreError(f"the language basis recorded in {self._where} is damaged ({e}); restore a "
                                 "backup, or ingest again into a new --data-dir") from e
            self._basis_recorded = recorded is not None
            self._basis = PhraseBasis(*recorded) if recorded else PhraseBasis.of(*repo.space_matrices(row))
        return self._basis

    def record_basis(self) -> None:
        """Writers: record the basis of a store made before it was kept (the one this process's vectors used)."""
        if self._basis is not None and not self._basis_recorded:
            with self._store.db.session() as s:
                repo.set_space_basis(s, self.row().id, self._basis.arrays())
            self._basis_recorded = True
            log.info("store %s: recorded its language basis", self._where)

    def require_current_language(self) -> None:
        """Refuse a store whose language vectors were made with another formula than this version's."""
        space = self.config()
        if space is None:
            return
        recorded = space.get("language_vector")
        if recorded is None or (recorded != LANGUAGE_VECTOR and recorded in FORMULAS):
            made = "before language vectors kept the strongest states" if recorded is None else \
                f"with language vectors of the older formula {recorded!r}"
            how = ("no model is loaded" if phrases_of(recorded) == FORMULAS[LANGUAGE_VECTOR].phrases else
                   f"its text model {space.get('text_model')} embeds this version's phrases")
            raise LegacySpaceError(
                f"store {self._where} was made {made}; this version makes {LANGUAGE_VECTOR!r}: migrate it once "
                f"with `python manage.py reindex --data-dir {self._where}` "
                f"(rebuilds the indexes from SQLite; {how}; nothing is lost)")
        if recorded != LANGUAGE_VECTOR:
            raise StoreError(f"store {self._where} holds language vectors of formula {recorded!r}, this version "
                             f"makes {LANGUAGE_VECTOR!r}; use the a2v-search release that wrote it")

    def migrate_language(self) -> bool:
        """Record this version's language vector in a store made with an older formula or before it was recorded
        (writers; the indexes must then be rebuilt from the stored probabilities). Its matrices stay when the
        formulas share their phrases; otherwise the store's text model embeds this version's phrases (ModelError
        naming the fix when it cannot be loaded). A store without a recorded formula was pooled the old way
        (``legacy_pooling``), which is recorded so that free-text queries are pooled the same. True when something
        was migrated."""
        config = self.config()
        recorded = None if config is None else config.get("language_vector")
        if config is None or recorded == LANGUAGE_VECTOR or (recorded is not None and recorded not in FORMULAS):
            return False
        self._store.require_lock()
        if recorded is None:
            config = {**config, "pooling": legacy_pooling(config["text_model"])}
        config = {**config, "language_vector": LANGUAGE_VECTOR}
        matrices = None
        if phrases_of(recorded) != FORMULAS[LANGUAGE_VECTOR].phrases:  # new phrases: new matrices and basis
            m_pasta, m_verb = embed_phrases(config["text_model"], config["pooling"])
            language = LanguageSpace(m_pasta, m_verb, text_model=config["text_model"], pooling=config["pooling"])
            matrices = (m_pasta, m_verb, language.basis.arrays())
            config = {**config, "phrases": prompts.phrases_ref(), "language_dim": language.dim}
        else:  # same phrases and basis; the formula alone may change the dimension (an object block)
            language = LanguageSpace(*repo.space_matrices(self.row()), text_model=config["text_model"],
                                     pooling=config["pooling"], basis=self.phrase_basis())
            config = {**config, "language_dim": language.dim}
        fingerprint = space_fingerprint(config)
        with self._store.db.session() as s:
            repo.update_space(s, self.row().id, fingerprint, config, matrices)
        log.warning("store %s: language vectors migrated to %s; rebuilding the indexes", self._where,
                    LANGUAGE_VECTOR)
        self._row = self._language = None  # the basis stays unless the phrases changed
        if matrices is not None:
            self._basis, self._basis_recorded = None, False
        return True

    # ------------------------------------------------------------------ activity space

    def set_activity_source(self, loader: Callable[[], PartFeatures]) -> None:
        """How to get the heads' feature function (called once, when the activity space is first needed)."""
        self._activity_source = loader

    def activity_problem(self) -> str | None:
        """Why this store has no activity space (A2V's classifier feature), or None when it has one."""
        row = self.row()
        if row is None:
            return f"store {self._where} is empty"
        if not trained_heads(row.heads):
            return ZERO_SHOT_NOTE
        if self._without_norm is None:
            with self._store.db.session() as s:
                self._without_norm = repo.count_without_norm(s)
        if self._without_norm:
            return (f"{self._without_norm} persons of this store were stored before it kept the tower-output norm "
                    "(schema 1), so their A2V features cannot be recomputed; re-encode them with `manage.py ingest "
                    "PATHS --force`")
        if self._activity_source is None:
            return "the store was opened without its heads (use the A2VSearch API)"
        return None

    def persons_changed(self, without_norm: bool = False, removed: int = 0) -> None:
        """Writers: persons were written (``without_norm``: some without a stored norm) or ``removed``, so the count
        of persons without a norm is read again where it may have changed."""
        if without_norm or (self._without_norm and removed):
            self._without_norm = None

    def index_names(self) -> tuple[str, ...]:
        """The spaces this store keeps indexes of: visual, language, and activity when it has that space."""
        return ALL_INDEX_NAMES if self.activity_problem() is None else INDEX_NAMES

    def part_features(self, visual: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """A2V features (N, 6, h) of stored values: unit visual (N, P) float16 values and norms (N,)."""
        problem = self.activity_problem()
        if problem is not None:
            raise QueryError(f"no activity space: {problem}")
        if self._part_features is None:
            self._part_features = self._activity_source()
        return self._part_features(np.asarray(visual, np.float32), np.asarray(norms, np.float32))

    def activity_vectors(self, visual: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """Activity-space vectors (N, 6h) of stored values (see the module's docstring)."""
        return space_vectors(self.part_features(visual, norms))

    def dim(self, name: str) -> int:
        """The dimension of the space ``name``."""
        row = self.row()
        if name == ACTIVITY:
            return int(self.part_features(np.ones((1, row.visual_dim), np.float32), np.ones(1, np.float32)).size)
        return {"visual": row.visual_dim, "language": row.language_dim}[name]

    # ------------------------------------------------------------------ vectors

    def index_vectors(self, visual: np.ndarray, pasta: np.ndarray, verbs: np.ndarray,
                      norms: np.ndarray | None = None, names: Sequence[str] = INDEX_NAMES,
                      objects: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The FAISS vectors of new persons in the spaces ``names``, computed from the values SQLite stores
        (float16 vectors, float32 norms), so that an index built at ingest and one rebuilt from SQLite are
        identical."""
        return self.vectors(as_stored_visual(visual),
                            np.asarray(pasta, np.float16).astype(np.float32),
                            np.asarray(verbs, np.float16).astype(np.float32), norms, names, objects)

    def vectors(self, visual: np.ndarray, pasta: np.ndarray, verbs: np.ndarray, norms: np.ndarray | None = None,
                names: Sequence[str] = INDEX_NAMES, objects: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Vectors of persons in the spaces ``names`` from their stored values (``objects``: (N, 80) the largest p
        of each object class, ``values.object_probs``; None = no objects). A person without a direction in a
        space (all-zero probabilities, or values that are damaged: NaN, wrong length) gets the zero vector there,
        which scores 0 against every query; nothing here raises on a row."""
        n, dim = len(visual), self.row().visual_dim
        v = np.asarray(visual, np.float32)
        v = finite_rows(v) if v.shape == (n, dim) else np.zeros((n, dim), np.float32)
        out = {}
        if "visual" in names:
            out["visual"] = np.ascontiguousarray(v)
        if "language" in names:
            out["language"] = finite_rows(self.language().embed(
                finite_rows(np.asarray(pasta, np.float32)), finite_rows(np.asarray(verbs, np.float32)),
                None if objects is None else finite_rows(np.asarray(objects, np.float32))))
        if ACTIVITY in names:
            out[ACTIVITY] = finite_rows(self.activity_vectors(v, np.asarray(norms, np.float32)))
        return out
