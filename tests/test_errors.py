"""The small shared helpers: the first line of an error, the file hasher."""

from __future__ import annotations

import hashlib

from a2v_search.errors import first_line
from a2v_search.hashing import file_sha256


def test_first_line_of_an_error() -> None:
    assert first_line(OSError("disk full\n  at block 7\n")) == "disk full"
    assert first_line(ValueError("")) == "ValueError('')"  # empty message: the repr names the type
    assert first_line(KeyError(), "unreadable") == "unreadable"
    assert first_line(RuntimeError("\nsecond")) == ""  # what str(e).splitlines()[0] gave the six copies


def test_file_sha256_whole_and_prefix(tmp_path) -> None:
    data = bytes(range(256)) * 9000  # 2.3 MB: more than two 1 MiB chunks
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path), limit=1_500_000) == hashlib.sha256(data[:1_500_000]).hexdigest()
    assert file_sha256(path, limit=10**9) == hashlib.sha256(data).hexdigest()
