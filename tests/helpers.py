"""Small builders shared by the store, search and reliability tests, and the helpers that run the CLI in this
process (``run_main``) or a function in a forked child with a fault point armed (``in_child``)."""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from a2v_search import faults
from a2v_search import taxonomy as tx
from a2v_search.detect import WholeImage
from a2v_search.errors import A2VError
from a2v_search.ingest import IngestOptions, run_ingest
from a2v_search.models.language import LanguageSpace
from a2v_search.store import Store
from db.values import NewMedia, NewPerson

VISUAL_DIM = 16
SPACE = {"visual_model": "test-visual", "heads": "test-heads", "text_model": "test-text", "phrases": "v1",
         "visual_dim": VISUAL_DIM, "spec": {"model": None, "checkpoint": None, "trust_checkpoint": False,
                                            "text_model": "test-text"}}


def random_language(seed: int = 0, dim: int = 24) -> LanguageSpace:
    rng = np.random.default_rng(seed)
    m_pasta = rng.normal(size=(93, dim)).astype(np.float32)
    m_verb = rng.normal(size=(157, dim)).astype(np.float32)
    m_pasta[list(tx.NO_INTERACTION_PASTA)] = 0
    m_verb[tx.NO_INTERACTION_VERB] = 0
    return LanguageSpace(m_pasta, m_verb, text_model="test-text")


def random_person(rng: np.random.Generator, dim: int = VISUAL_DIM, **kw) -> NewPerson:
    visual = rng.normal(size=dim).astype(np.float32)
    return NewPerson(box=kw.pop("box", [1, 2, 30, 40]), pasta=rng.random(93).astype(np.float32),
                     verbs=rng.random(157).astype(np.float32), parts=rng.random(6).astype(np.float32),
                     visual=visual / np.linalg.norm(visual), visual_norm=float(np.linalg.norm(visual)), **kw)


def media(path: str, persons: list[NewPerson], collection: str = "default", kind: str = "image") -> NewMedia:
    return NewMedia(path=path, content_hash=f"hash-{path}", size=1, mtime=1.0, kind=kind, collection=collection,
                    width=64, height=48, persons=persons)


def writable_store(data_dir, language: LanguageSpace | None = None) -> Store:
    """A store holding the write lock, with the test space registered."""
    store = Store(data_dir, create=True).lock("test")
    store.space.ensure(SPACE, language or random_language())
    return store


class _Ready:
    """A submitted batch whose result is already there (as on the CPU)."""

    ready = True

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def result(self) -> dict[str, np.ndarray]:
        return self.arrays


class StubEncoder:
    """A deterministic numpy stand-in for ActivityEncoder (no torch: safe in forked children). Same interface as
    far as ingest is concerned: preprocess, space, language, device (its type), encode_pixels, submit, vectors."""

    device = SimpleNamespace(type="cpu")

    def __init__(self, language: LanguageSpace | None = None, size: int = 16):
        from a2v_search.preprocess import Preprocess

        self.preprocess = Preprocess(size=size)
        self.language = language or random_language()
        self.space = dict(SPACE)
        self.model = type("M", (), {"visual_dim": VISUAL_DIM})()
        rng = np.random.default_rng(0)
        self._proj = rng.normal(size=(size * size * 3, VISUAL_DIM + 93 + 157)).astype(np.float32)

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 32):
        from a2v_search.models.encoder import PersonVectors

        x = pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0 - 0.5
        z = x @ self._proj  # (N, P + 93 + 157)
        norm = np.linalg.norm(z[:, :VISUAL_DIM], axis=1)
        visual = z[:, :VISUAL_DIM] / norm[:, None]
        sig = 1.0 / (1.0 + np.exp(-z[:, VISUAL_DIM:] / 10.0))
        pasta, verbs = sig[:, :93], sig[:, 93:]
        parts = np.stack([pasta[:, r.start:r.stop - 1].max(1) for r in tx.PART_RANGES.values()], 1)
        return PersonVectors(visual=visual.astype(np.float32), pasta=pasta.astype(np.float32),
                             verbs=verbs.astype(np.float32), parts=parts.astype(np.float32),
                             language=self.language.embed(pasta, verbs), visual_norm=norm.astype(np.float32))

    def submit(self, pixels: np.ndarray, pad_to: int | None = None) -> _Ready:
        out = self.encode_pixels(np.asarray(pixels))
        return _Ready({"visual": out.visual, "pasta": out.pasta, "verbs": out.verbs, "parts": out.parts,
                       "visual_norm": out.visual_norm})

    def vectors(self, parts: list[dict[str, np.ndarray]]):
        from a2v_search.models.encoder import PersonVectors

        keys = ("visual", "pasta", "verbs", "parts", "visual_norm")
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
        return PersonVectors(**arrays, language=self.language.embed(arrays["pasta"], arrays["verbs"]))


def downgrade(db_file, version: int) -> None:
    """Turn a store into what an older schema version wrote: 8 = without the indexes of duplicates and of a
    chunk's label columns; 7 = also activity counts without objects and verb + object pairs; 6 = without activity
    counts and clusterings; 5 = also without objects (no ``objects`` table); 4 = also labels as one row per person
    and class >= 0.05 (``labels``) instead of chunks by class; 3 = also without the recorded language basis (no
    basis columns on ``spaces``); 2 = also without tracks (no ``tracks`` table, no ``persons.track_id``); 1 = also
    without ``persons.visual_norm``."""
    import sqlite3

    from sqlalchemy import MetaData, Table
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateTable

    from db.schema import Media, Person, Space

    con = sqlite3.connect(db_file)
    con.executescript("DROP INDEX ix_media_duplicate_of; DROP INDEX ix_label_columns_chunk;")
    if version == 7:
        con.execute("DELETE FROM activity_counts WHERE facet IN ('objects', 'verb_object')")
    elif version < 7:
        con.executescript("DROP TABLE activity_counts; DROP TABLE cluster_members; DROP TABLE clusterings;")
    if version < 6:
        con.executescript("DROP TABLE objects;")
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(int(version)),))
    con.commit()
    if version < 5:
        rows = []
        for pid, pasta, verbs in con.execute("SELECT id, pasta, verbs FROM persons"):
            for kind, blob in ((0, pasta), (1, verbs)):
                p = np.frombuffer(blob, np.float16).astype(np.float32)
                rows += [(pid, kind, int(c), float(p[c])) for c in np.flatnonzero(p >= 0.05)]
        con.executescript("DROP TABLE label_columns; DROP TABLE label_chunks; CREATE TABLE labels (person_id "
                          "INTEGER NOT NULL, kind INTEGER NOT NULL, cls INTEGER NOT NULL, p FLOAT NOT NULL, PRIMARY "
                          "KEY (person_id, kind, cls), FOREIGN KEY(person_id) REFERENCES persons (id) ON DELETE "
                          "CASCADE); CREATE INDEX ix_labels_kind_cls_p ON labels (kind, cls, p);")
        con.executemany("INSERT INTO labels VALUES (?, ?, ?, ?)", rows)
        con.commit()
    if version < 4:
        con.executescript("ALTER TABLE spaces DROP COLUMN basis_pasta; ALTER TABLE spaces DROP COLUMN basis_verb;"
                          "ALTER TABLE spaces DROP COLUMN sv_pasta; ALTER TABLE spaces DROP COLUMN sv_verb;")
    if version < 3:
        dropped = {"track_id"} | ({"visual_norm"} if version < 2 else set())
        md = MetaData()
        Media.__table__.to_metadata(md)
        Space.__table__.to_metadata(md)
        old = Table("persons_old", md, *[c._copy() for c in Person.__table__.columns if c.name not in dropped],
                    sqlite_autoincrement=True)
        cols = ", ".join(c.name for c in old.columns)
        norm_index = "" if version < 2 else "CREATE INDEX ix_persons_no_norm ON persons (id) WHERE visual_norm IS NULL;"
        con.executescript(f"PRAGMA foreign_keys=OFF; {CreateTable(old).compile(dialect=sqlite.dialect())};"
                          f"INSERT INTO persons_old ({cols}) SELECT {cols} FROM persons; DROP TABLE persons;"
                          "ALTER TABLE persons_old RENAME TO persons; DROP TABLE tracks;"
                          "CREATE INDEX ix_persons_media_id ON persons (media_id);"
                          f"CREATE INDEX ix_persons_space_id ON persons (space_id); {norm_index}")
    con.close()


def run_main(*args) -> tuple[int, str, str]:
    """The CLI in this process (no interpreter start-up): exit code, stdout, stderr."""
    import contextlib
    import io

    from a2v_search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            return int(e.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def ingest(data_dir: Path, inputs: list[Path], detector=None, **opts):
    """One ingest run with the stand-in encoder; the store is closed (and its indexes saved) afterwards."""
    store = Store(data_dir, create=True).lock("test-ingest")
    try:
        options = IngestOptions(**{"workers": 0, "batch_size": 2, "commit_every": 2, **opts})
        report = run_ingest(store, StubEncoder(), detector or WholeImage(), [str(p) for p in inputs], options)
    except BaseException:
        store.close(save=False)
        raise
    store.close()
    return report


def in_child(fn, fault: str | None = None, setup=None) -> tuple[int, str]:
    """Run ``fn`` in a forked child, optionally with a fault point armed; returns (exit code, stderr text).
    A child killed by SIGKILL returns -9."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code, message = 0, ""
        try:
            point, _, n = (fault or "").partition(":")
            faults.arm({point: int(n or 1)} if fault else {})
            if setup:
                setup()
            fn()
        except A2VError as e:  # what the CLI would print
            code, message = 1, f"error: {e}\n"
        except BaseException:
            code, message = 3, traceback.format_exc()
        os.write(w, message.encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "r", errors="replace") as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err
