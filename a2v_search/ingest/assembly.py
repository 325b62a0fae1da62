"""`Assembly`: one media file between decode and write, the ingest driver's per-file bookkeeping in one place.

A file is decoded in one or more segments (videos); each decoded segment that holds persons (or frames for a
detector) gets a slot that the workers fill with its persons once they are detected and encoded; the file is
complete when every segment is back and every slot is filled, and then it becomes a :class:`~db.values.NewMedia`
row. The driver (``driver.Ingestor``) changes a file's state only through these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from db.values import MediaState, NewMedia, NewPerson

from .decode import DecodeResult, DecodeTask
from .discover import Candidate


@dataclass
class Assembly:
    """A media file between decode and write."""

    cand: Candidate
    state: MediaState | None  # what SQLite holds at its path (None: a new path)
    task: DecodeTask | None = None  # the first one; a video's next segments are copies of it
    segments: int = 1  # decode tasks asked for so far
    received: int = 0  # of them, decoded
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    seen_until: float | None = None  # video: end of the footage really decoded
    frames: int = 0
    persons: list[list[NewPerson] | None] = field(default_factory=list)  # per slot (segment): its persons
    waiting: int = 0  # slots not filled yet
    decided: bool = False  # its content hash is known and the skip/duplicate rule was applied
    dropped: bool = False  # failed, skipped, duplicate, or already queued for writing

    @property
    def complete(self) -> bool:
        return not self.dropped and self.received == self.segments and self.waiting == 0

    def receive(self) -> None:
        """Count a decoded (or failed) segment."""
        self.received += 1

    def decide(self, r: DecodeResult) -> bool:
        """Take the file's content hash, sizes and kind (its decoder's sniff may have corrected its name's guess)
        from its first result; True that first time."""
        if self.decided:
            return False
        self.decided = True
        if r.kind != self.cand.kind:  # e.g. a video named .jpg: its next segments are video tasks
            self.cand.kind = r.kind
            self.task = replace(self.task, kind=r.kind)
        self.content_hash, self.width, self.height, self.duration = r.content_hash, r.width, r.height, r.duration
        return True

    def add_footage(self, r: DecodeResult) -> None:
        """Note the frames and the footage a decoded segment really held."""
        if r.seen_until is not None:
            self.seen_until = max(self.seen_until or 0.0, r.seen_until)
        self.frames += r.frames

    def next_segment(self, segment_s: float) -> DecodeTask:
        """The task of the video's next segment (the stream goes on: its claimed duration is never trusted)."""
        start = self.segments * segment_s
        self.segments += 1
        return replace(self.task, segment=(start, start + segment_s), want_hash=False, sniff=False)

    def open_slot(self) -> int:
        """A slot for a segment's persons, filled later; returns its number."""
        self.persons.append(None)
        self.waiting += 1
        return len(self.persons) - 1

    def fill(self, slot: int, persons: list[NewPerson]) -> None:
        self.persons[slot] = persons
        self.waiting -= 1

    def all_persons(self) -> list[NewPerson]:
        """The persons of every slot, in order (once complete)."""
        return [person for group in self.persons for person in group]

    def row(self, collection: str, duplicate_of: int | None = None,
            persons: list[NewPerson] | None = None) -> NewMedia:
        """The media row to store (a duplicate holds no persons; ``persons``: ``all_persons()`` when known)."""
        c = self.cand
        if self.seen_until is not None:  # a header may claim years of footage: keep what was really there
            self.duration = min(self.duration, self.seen_until) if self.duration else round(self.seen_until, 3)
        return NewMedia(path=c.path, content_hash=self.content_hash, size=c.size, mtime=c.mtime, kind=c.kind,
                        collection=collection, width=self.width, height=self.height,
                        persons=[] if duplicate_of else self.all_persons() if persons is None else persons,
                        duplicate_of=duplicate_of,
                        frames=self.frames if c.kind == "video" else None, duration=self.duration,
                        replaces=self.state.id if self.state else None)
