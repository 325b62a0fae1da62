"""The metadata store's schema (SQLAlchemy 2.0). SQLite is the truth; FAISS indexes are derived from it.

Probabilities and the visual embedding are float16 blobs (``np.float16(...).tobytes()``), and beside the unit
visual embedding the float32 norm of the tower output it came from, so trained heads' input (unit * norm) and so
their hidden layers (A2V's visual feature) can be recomputed. For ``--where`` filters and per-class counts the
PaSta and verb probabilities are also kept by class (db/labels.py): ``label_chunks`` cuts the persons into runs
of ``LABEL_CHUNK`` ids, and ``label_columns`` holds, per class and chunk, the chunk's float16 probabilities (one
blob) and how many reach 0.01, 0.02, ... 1.0 (another); persons after the last chunk are read from their own
blobs. A person's id is its FAISS id and is never reused (AUTOINCREMENT). The persons of a video are linked into
``tracks`` (the tracker of a2v-search, passed to ``repo.add_media``); image persons have no track.

Version history (db/migrations.py upgrades older stores on open): 1 = first release; 2 = ``persons.visual_norm``
(older persons have NULL there); 3 = video tracks; 4 = the language space's compact basis on ``spaces``
(NULL in older stores until a writer records it); 5 = labels by class in chunks (``label_chunks``,
``label_columns``) instead of one row per person and class (``labels``); 6 = ``objects``, the objects of a
person's activity (older persons have none); 7 = ``activity_counts`` (how many persons show each PaSta, verb and
verb + PaSta pair, kept by every write: the activity overview of a whole collection reads a few rows) and named
clusterings (``clusterings``, ``cluster_members``); 8 = ``activity_counts`` also count objects and verb + object
pairs (recounted from every person on upgrade).
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 9
LABEL_PASTA, LABEL_VERB = 0, 1
#: The kind of a filter on a person's objects (``Filters.where``); objects live in their own table.
LABEL_OBJECT = 2
#: A person shows a PaSta, verb or object in ``activity_counts`` (and the activity overview) when its probability is at
#: least this: the usual cut of independent sigmoid outputs (trained heads); zero-shot distributions rarely reach it.
COUNT_MIN_P = 0.5


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key-value settings of the store (schema version, index spec...)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Space(Base):
    """A vector space: the models that produced the vectors, and the language matrices (float32 blobs)."""

    __tablename__ = "spaces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String, unique=True)
    visual_model: Mapped[str] = mapped_column(Text)
    heads: Mapped[str] = mapped_column(Text)
    text_model: Mapped[str] = mapped_column(Text)
    phrases: Mapped[str] = mapped_column(Text)
    visual_dim: Mapped[int] = mapped_column(Integer)
    language_dim: Mapped[int] = mapped_column(Integer)
    config: Mapped[str] = mapped_column(Text)  # JSON: the model flags and everything above
    m_pasta: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (93, D)
    m_verb: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (157, D)
    # the compact basis of the language space (a2v_search.models.language.PhraseBasis), recorded so that it is never
    # recomputed (another machine's SVD may return other signs); NULL in stores older than version 4 until a writer
    # records it
    basis_pasta: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 (r_p, D)
    basis_verb: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 (r_v, D)
    sv_pasta: Mapped[bytes | None] = mapped_column(LargeBinary)  # float64 (r_p,): singular values
    sv_verb: Mapped[bytes | None] = mapped_column(LargeBinary)  # float64 (r_v,)
    created_at: Mapped[float] = mapped_column(Float)


class Media(Base):
    """An image or video file. ``duplicate_of`` marks the same content already stored under another path."""

    __tablename__ = "media"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    content_hash: Mapped[str | None] = mapped_column(String, index=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime: Mapped[float] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String)  # "image" | "video"
    collection: Mapped[str] = mapped_column(String, index=True)
    ingested_at: Mapped[float] = mapped_column(Float)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("media.id", ondelete="SET NULL"))
    frames: Mapped[int | None] = mapped_column(Integer)  # video: frames sampled
    duration: Mapped[float | None] = mapped_column(Float)  # video: seconds

    persons: Mapped[list[Person]] = relationship(back_populates="media", cascade="all, delete-orphan",
                                                 passive_deletes=True)

    # the duplicates of a media: a media's deletion sets their ``duplicate_of`` NULL (without this index SQLite scans
    # the whole table for each deleted media: removing 100k media from a store of 1M took hours)
    __table_args__ = (Index("ix_media_kind_collection", "kind", "collection"),
                      Index("ix_media_duplicate_of", "duplicate_of", sqlite_where=text("duplicate_of IS NOT NULL")))


class Person(Base):
    """One person in an image or a video frame, with its probabilities and visual embedding."""

    __tablename__ = "persons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_id: Mapped[int] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), index=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id"), index=True)
    frame_index: Mapped[int | None] = mapped_column(Integer)
    t_sec: Mapped[float | None] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)  # detector score (1 for whole image / given boxes)
    pasta: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (93,)
    verbs: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (157,)
    parts: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (6,)
    visual: Mapped[bytes] = mapped_column(LargeBinary)  # float16 (P,), unit length
    visual_norm: Mapped[float | None] = mapped_column(Float)  # norm of the tower output (float32 value); NULL: unknown
    track_id: Mapped[int | None] = mapped_column(ForeignKey("tracks.id", ondelete="SET NULL"), index=True)

    media: Mapped[Media] = relationship(back_populates="persons")

    __table_args__ = (Index("ix_persons_no_norm", "id", sqlite_where=text("visual_norm IS NULL")),
                      {"sqlite_autoincrement": True})


class Track(Base):
    """A person followed through consecutive sampled frames of a video: its time range and number of persons."""

    __tablename__ = "tracks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_id: Mapped[int] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 0, 1, ... within its video, in order of first appearance
    t_start: Mapped[float] = mapped_column(Float)  # time of its first frame, seconds
    t_end: Mapped[float] = mapped_column(Float)  # time of its last frame
    persons: Mapped[int] = mapped_column(Integer)

    __table_args__ = {"sqlite_autoincrement": True}


class LabelChunk(Base):
    """A run of person ids whose probabilities are stored by class in ``label_columns``: the columns' positions
    are the ids from ``first_id`` to ``last_id`` (``ids`` NULL) or those in ``ids`` (int64 blob); ``dead``: the
    ids deleted since (int64, sorted), ``dead_counts`` their level counts (uint16 (250, 100), PaSta then verbs)."""

    __tablename__ = "label_chunks"
    first_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(Integer)
    ids: Mapped[bytes | None] = mapped_column(LargeBinary)
    dead: Mapped[bytes | None] = mapped_column(LargeBinary)
    dead_counts: Mapped[bytes | None] = mapped_column(LargeBinary)


class LabelColumn(Base):
    """The PaSta (kind 0) or verb (kind 1) probabilities of class ``cls`` of one chunk's persons: ``p`` float16
    (n,) in the chunk's id order; ``hist`` uint16 (100,): how many reach 0.01, 0.02, ..., 1.0."""

    __tablename__ = "label_columns"
    kind: Mapped[int] = mapped_column(Integer, primary_key=True)
    cls: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk: Mapped[int] = mapped_column(ForeignKey("label_chunks.first_id", ondelete="CASCADE"), primary_key=True)
    p: Mapped[bytes] = mapped_column(LargeBinary)
    hist: Mapped[bytes] = mapped_column(LargeBinary)

    # a chunk's columns, read and replaced when the chunk is rewritten without its removed persons (a scan of every
    # column without it: 14-23 ms a chunk at 1M persons, growing with the store)
    __table_args__ = (Index("ix_label_columns_chunk", "chunk"),)


class PersonObject(Base):
    """An object a person acts on (a cup, a bicycle...): its class (0..79, HICO-DET's / COCO's 80 objects), how
    sure (``p`` in (0, 1]), its box in media pixels (NULL when unknown), and its ``rank`` among the person's objects
    (0 = best). A person has a few (a2v-search keeps at most 4); filters look them up by (cls, p)."""

    __tablename__ = "objects"
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    cls: Mapped[int] = mapped_column(Integer)
    p: Mapped[float] = mapped_column(Float)
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_objects_cls_p", "cls", "p"),)


class Failure(Base):
    """A file that could not be ingested: where it failed and why."""

    __tablename__ = "failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, index=True)
    stage: Mapped[str] = mapped_column(String)
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)


class ActivityCount(Base):
    """How many persons of a collection and media kind show each PaSta / verb / object / verb + PaSta pair / verb +
    object pair (probability >= COUNT_MIN_P): ``facet`` names an int64 blob (``persons`` (1,), ``pasta`` (93,),
    ``verbs`` (157,), ``objects`` (80,), ``verb_pasta`` (157 * 93,), ``verb_object`` (157 * 80,), row-major by
    verb). Kept in the same transaction as the persons it counts."""

    __tablename__ = "activity_counts"
    collection: Mapped[str] = mapped_column(String, primary_key=True)
    kind: Mapped[str] = mapped_column(String, primary_key=True)
    facet: Mapped[str] = mapped_column(String, primary_key=True)
    counts: Mapped[bytes] = mapped_column(LargeBinary)


class Clustering(Base):
    """A named k-means clustering of (some) persons in one vector space: its centroids, and per cluster a name,
    size, distinctive labels and example persons (JSON). ``max_person_id``: the newest person when it was made."""

    __tablename__ = "clusterings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    space: Mapped[str] = mapped_column(String)
    k: Mapped[int] = mapped_column(Integer)
    filters: Mapped[str] = mapped_column(Text)  # JSON: the search filters it was made with
    persons: Mapped[int] = mapped_column(Integer)
    max_person_id: Mapped[int] = mapped_column(Integer)
    centroids: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (k, D), unit rows
    clusters: Mapped[str] = mapped_column(Text)  # JSON list, one dict per cluster
    info: Mapped[str] = mapped_column(Text)  # JSON: how k was chosen, timings, seed
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = {"sqlite_autoincrement": True}


class ClusterMember(Base):
    """A person's cluster in a clustering; goes with the person (or the clustering) by ON DELETE CASCADE."""

    __tablename__ = "cluster_members"
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), primary_key=True)
    clustering_id: Mapped[int] = mapped_column(ForeignKey("clusterings.id", ondelete="CASCADE"), primary_key=True)
    cluster: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_cluster_members_cluster", "clustering_id", "cluster", "person_id"),
                      {"sqlite_with_rowid": False})
