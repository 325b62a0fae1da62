"""Known-answer tests of the FAISS vector store (index/): small dims and sizes, no wall-clock assertions."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

import index.faiss_index as faiss_index
from index import (
    IndexCorruptError,
    IndexInputError,
    IndexMissingError,
    IndexSpecError,
    UnknownIdError,
    VectorIndex,
    VectorIndexError,
    choose_spec,
    exact_scores,
    orphan_files,
    saved_summary,
    set_fault_hook,
)

DIM = 32
ODD_IDS = np.array([1000, 7, 123456789], np.int64)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32))


def clustered(n: int, dim: int, n_centres: int, seed: int = 0, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(base (n, dim), queries (200, dim)) drawn around the same random centres."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_centres, dim), dtype=np.float32))

    def draw(m: int) -> np.ndarray:
        c = centres[rng.integers(0, n_centres, m)]
        return unit(c + noise * unit(rng.standard_normal((m, dim), dtype=np.float32)))

    return draw(n), draw(200)


def spread_ids(n: int, seed: int = 1) -> np.ndarray:
    """n distinct, non-contiguous, unsorted int64 ids."""
    rng = np.random.default_rng(seed)
    return rng.choice(10**9, size=n, replace=False).astype(np.int64)


def brute_force(queries: np.ndarray, base: np.ndarray, base_ids: np.ndarray, k: int,
                allow: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k ids and scores with numpy, restricted to `allow` when given."""
    if allow is not None:
        keep = np.isin(base_ids, allow)
        base, base_ids = base[keep], base_ids[keep]
    sims = queries @ base.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), base_ids[order]


@pytest.fixture(scope="module")
def clustered_20k() -> tuple[np.ndarray, np.ndarray]:
    return clustered(20_000, 64, 200)


# ------------------------------------------------------------------------------------------------- basics
@pytest.mark.parametrize("spec", ["flat", "IVF16,Flat", "IVF16,SQ8", "HNSW32"])
def test_vector_searched_by_itself_comes_first(spec: str) -> None:
    x = random_unit(2000)
    ids = spread_ids(2000)
    vi = VectorIndex.create(DIM, spec)
    vi.add(ids, x)
    assert not vi.needs_training and vi.ntotal == 2000
    scores, found = vi.search(x[:20], 5)
    assert scores.shape == found.shape == (20, 5) and scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_array_equal(found[:, 0], ids[:20])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=0.02)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_ids_are_the_given_ids_and_round_trip() -> None:
    x = random_unit(3)
    vi = VectorIndex.create(DIM)
    assert vi.spec == "Flat"
    vi.add(ODD_IDS, x)
    np.testing.assert_array_equal(vi.ids(), np.sort(ODD_IDS))
    assert 123456789 in vi and 8 not in vi
    scores, found = vi.search(x, 3)
    np.testing.assert_array_equal(found[:, 0], ODD_IDS)
    np.testing.assert_allclose(vi.reconstruct(ODD_IDS[::-1]), x[::-1], atol=1e-6)

    assert vi.remove(np.array([7, 424242])) == 1
    np.testing.assert_array_equal(vi.ids(), [1000, 123456789])
    scores, found = vi.search(x, 3)
    assert 7 not in found
    np.testing.assert_array_equal(found[:, 2], [-1, -1, -1])  # only 2 left: padded
    assert np.all(np.isneginf(scores[:, 2]))
    with pytest.raises(UnknownIdError, match="7"):
        vi.reconstruct(np.array([7]))
    assert vi.remove(np.array([7])) == 0


def test_search_pads_when_fewer_than_k_and_when_empty() -> None:
    vi = VectorIndex.create(DIM, "flat")
    scores, found = vi.search(random_unit(2), 4)
    assert found.shape == (2, 4) and np.all(found == -1) and np.all(np.isneginf(scores))
    vi.add(np.array([5]), random_unit(1))
    scores, found = vi.search(random_unit(2, seed=3), 4)
    np.testing.assert_array_equal(found[:, 0], [5, 5])
    assert np.all(found[:, 1:] == -1) and np.all(np.isneginf(scores[:, 1:]))


def test_unnormalised_vectors_are_normalised_and_bad_input_rejected() -> None:
    vi = VectorIndex.create(DIM, "flat")
    x = random_unit(4)
    vi.add(np.arange(4), 3 * x)
    scores, _ = vi.search(5 * x[:1], 1)
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(IndexInputError):
        vi.add(np.arange(2), np.zeros((2, DIM), np.float32))
    with pytest.raises(IndexInputError):
        vi.add(np.arange(3), x)  # 3 ids, 4 vectors
    with pytest.raises(IndexInputError):
        vi.add(np.array([-1]), x[:1])
    with pytest.raises(IndexInputError):
        vi.search(x[:, :5], 1)
    with pytest.raises(IndexInputError):
        vi.search(x, 0)


@pytest.mark.parametrize("spec", ["flat", "IVF16,Flat", "HNSW32"])
def test_re_adding_an_id_replaces_it_without_duplicate(spec: str) -> None:
    x = random_unit(1000)
    ids = spread_ids(1000)
    vi = VectorIndex.create(DIM, spec)
    vi.add(ids, x)
    new = random_unit(1, seed=9)
    vi.add(ids[:1], new)
    assert vi.ntotal == 1000 and len(np.unique(vi.ids())) == 1000
    _, found = vi.search(new, 3)
    assert found[0, 0] == ids[0] and ids[0] not in found[0, 1:]
    np.testing.assert_allclose(vi.reconstruct(ids[:1]), new, atol=1e-6)
    with pytest.raises(IndexInputError, match="same id twice"):
        vi.add(np.array([1, 1]), random_unit(2))


@pytest.mark.parametrize("spec", ["flat", "IVF16,SQ8", "HNSW32"])
def test_removing_ids_removes_them_from_search_and_ids(spec: str) -> None:
    x = random_unit(1500)
    ids = spread_ids(1500)
    vi = VectorIndex.create(DIM, spec)
    vi.add(ids, x)
    gone = ids[:300]
    assert vi.remove(np.concatenate([gone, gone[:5]])) == 300
    assert vi.ntotal == 1200
    np.testing.assert_array_equal(vi.ids(), np.sort(ids[300:]))
    _, found = vi.search(x[:300], 10)
    assert not np.isin(found, gone).any()
    _, found = vi.search(x[300:320], 1)
    np.testing.assert_array_equal(found[:, 0], ids[300:320])
    # removals between appends (a replaced file's batch): the ids move down in place, the next adds append
    expected = set(ids[300:].tolist())
    for round_ in range(3):
        new = np.arange(10, 60) + int(max(expected)) + 1
        vi.add(new, random_unit(50, seed=round_))
        expected |= set(new.tolist())
        gone = np.sort(np.random.default_rng(round_).choice(sorted(expected), 40, replace=False))
        assert vi.remove(gone) == 40
        expected -= set(gone.tolist())
        np.testing.assert_array_equal(vi.ids(), sorted(expected))
        assert vi.ntotal == len(expected) and gone[0] not in vi and new[-1] in vi
    _, found = vi.search(x[300:], 1)
    assert np.isin(found, sorted(expected)).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_omp_thread_count_set_by_caller_is_respected(tmp_path, threads: int) -> None:
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(threads)
        vi = VectorIndex.create(DIM, "IVF8,Flat")
        x = random_unit(500)
        vi.add(np.arange(500), x)  # trains the IVF (k-means runs multi-threaded)
        _, found = vi.search(x[:5], 1, allow=np.arange(100))
        np.testing.assert_array_equal(found[:, 0], np.arange(5))
        vi.save(tmp_path, "v", {})
        VectorIndex.load(tmp_path, "v")[0].search(x[:5], 3)
        assert faiss.omp_get_max_threads() == threads  # nothing in between changed the caller's choice
    finally:
        faiss.omp_set_num_threads(before)


# ------------------------------------------------------------------------------------------------- filtered search
@pytest.mark.parametrize("exact_allow_max", [0, 10**6])  # filtered inside FAISS / exact scoring of the allow-list
@pytest.mark.parametrize("dense_ids", [True, False])  # bitmap / hash-set selector
def test_filtered_search_flat_equals_brute_force(exact_allow_max: int, dense_ids: bool) -> None:
    x = random_unit(3000)
    ids = np.random.default_rng(3).permutation(3000) * 2 + 5 if dense_ids else spread_ids(3000)
    vi = VectorIndex.create(DIM, "flat")
    vi.add(ids, x)
    vi.exact_allow_max = exact_allow_max
    absent = np.array([124, 456])
    assert not np.isin(absent, ids).any()
    allow = np.concatenate([ids[::7], absent])  # plus ids that are not in the index
    queries = random_unit(30, seed=5)
    scores, found = vi.search(queries, 10, allow=allow)
    assert np.isin(found, ids[::7]).all() and (found >= 0).all()
    want_scores, want_ids = brute_force(queries, x, ids, 10, allow)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_filtered_search_with_fewer_allowed_than_k_pads() -> None:
    x = random_unit(500)
    vi = VectorIndex.create(DIM, "flat")
    vi.add(np.arange(500), x)
    scores, found = vi.search(x[:2], 5, allow=np.array([3, 4, 999]))
    np.testing.assert_array_equal(np.sort(found[:, :2], axis=1), [[3, 4], [3, 4]])
    assert np.all(found[:, 2:] == -1) and np.all(np.isneginf(scores[:, 2:]))
    _, found = vi.search(x[:2], 5, allow=np.array([], np.int64))
    assert np.all(found == -1)


@pytest.mark.parametrize("spec", ["IVF64,Flat", "IVF64,SQ8"])
def test_very_selective_allow_list_with_ivf_returns_k_allowed(spec: str) -> None:
    base, queries = clustered(5000, DIM, 50)
    ids = spread_ids(5000)
    vi = VectorIndex.create(DIM, spec, nprobe=1)
    vi.add(ids, base)
    assert not vi.needs_training
    vi.exact_allow_max = 0  # force the FAISS selector path with nprobe escalation
    allow = ids[np.random.default_rng(2).choice(5000, 15, replace=False)]  # 0.3% of the store
    scores, found = vi.search(queries[:20], 10, allow=allow)
    assert (found >= 0).all() and np.isin(found, allow).all()
    want_scores, want_ids = brute_force(queries[:20], base, ids, 10, allow)
    if spec.endswith("Flat"):  # nprobe / (allowed fraction) >= nlist: every list is probed, so exact
        np.testing.assert_array_equal(found, want_ids)
    else:  # SQ8 codes: nearly the same
        assert np.mean([len(set(a) & set(b)) for a, b in zip(found, want_ids, strict=True)]) >= 9
    assert vi.nprobe == 1  # escalation is per call, the default is unchanged


def test_ivf_search_escalates_nprobe_until_k_found() -> None:
    base, queries = clustered(2000, DIM, 20)
    vi = VectorIndex.create(DIM, "IVF32,Flat", nprobe=1)
    vi.add(np.arange(2000), base)
    _, found = vi.search(queries[:5], 500)  # far more than one list holds
    assert (found >= 0).all() and all(len(np.unique(row)) == 500 for row in found)


def test_filtered_search_ivf_large_allow_list_matches_brute_force(clustered_20k) -> None:
    base, queries = clustered_20k
    ids = np.arange(20_000, dtype=np.int64) * 3
    vi = VectorIndex.create(64, "IVF128,Flat", nprobe=16)
    vi.add(ids, base)
    allow = ids[::2]
    vi.exact_allow_max = 0
    _, found = vi.search(queries, 10, allow=allow)
    assert np.isin(found, allow).all() and (found >= 0).all()
    _, want = brute_force(queries, base, ids, 10, allow)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want, strict=True)])
    assert recall >= 0.9


# ------------------------------------------------------------------------------------------------- index types
def test_ivf_from_factory_string_trains_and_has_good_recall(clustered_20k) -> None:
    base, queries = clustered_20k
    ids = spread_ids(20_000)
    vi = VectorIndex.create(64, "IVF128,Flat")
    assert vi.spec == "IVF128,Flat" and vi.needs_training and vi.min_train == 39 * 128
    vi.add(ids, base)
    assert not vi.needs_training and vi.ntotal == 20_000
    _, found = vi.search(queries, 10)
    _, want = brute_force(queries, base, ids, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want, strict=True)])
    assert recall >= 0.9


@pytest.mark.parametrize("spec", ["IVF64,Flat", "IVF64,SQ8"])
def test_added_vectors_go_to_the_lists_faiss_would_choose(tmp_path, spec: str) -> None:
    """The IVF lists of added vectors are chosen by one matrix product (not FAISS's quantizer search): the same
    lists, whether the vectors arrive with the training, after it, in chunks larger than one product, or after a
    save and load; and they are searched and reconstructed as FAISS's own add would."""
    base, _ = clustered(12_000, 48, 100, seed=3)
    ids = spread_ids(12_000, seed=4)
    vi = VectorIndex.create(48, spec)
    vi.add(ids[:3_000], base[:3_000])  # 3,000 >= 39 x 64: trains, then moves them in
    vi.add(ids[3_000:9_000], base[3_000:9_000])
    vi.save(tmp_path, "v", {})
    vi, _ = VectorIndex.load(tmp_path, "v")
    vi.add(ids[9_000:], base[9_000:])
    ivf = vi.ivf
    _, want = ivf.quantizer.search(base, 1)  # (n, 1): FAISS's choice of list
    got = np.full(len(ids), -1)
    position = {int(i): n for n, i in enumerate(ids)}
    for list_no in range(ivf.nlist):
        size = ivf.invlists.list_size(list_no)
        if size:
            for pid in faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size):
                got[position[int(pid)]] = list_no
    assert (got >= 0).all() and (got == want[:, 0]).mean() >= 0.999  # exact ties aside
    reference = faiss.clone_index(ivf)
    reference.reset()
    reference.add_with_ids(base, ids)  # FAISS's own add, into the same trained lists
    reference.nprobe = ivf.nprobe
    scores, found = vi.search(base[:200], 5)
    ref_scores, ref_found = reference.search(base[:200], 5)
    np.testing.assert_array_equal(found, ref_found)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    np.testing.assert_allclose(vi.reconstruct(ids[::997]), reference.reconstruct_batch(ids[::997]), atol=1e-6)


def test_untrained_index_stages_vectors_exactly_until_enough_to_train(tmp_path) -> None:
    x = random_unit(1200)
    ids = spread_ids(1200)
    vi = VectorIndex.create(DIM, "IVF16,Flat")
    assert vi.min_train == 39 * 16
    vi.add(ids[:300], x[:300])
    assert vi.needs_training and vi.ntotal == 300
    scores, found = vi.search(x[:5], 3)
    np.testing.assert_array_equal(found[:, 0], ids[:5])
    assert vi.remove(ids[:1]) == 1 and vi.ntotal == 299
    vi.save(tmp_path, "v", {})
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert manifest["buffered"] is True and loaded.needs_training and loaded.spec == "IVF16,Flat"
    loaded.add(ids[300:], x[300:])  # 1199 >= 624: trains now
    assert not loaded.needs_training and loaded.ntotal == 1199
    _, found = loaded.search(x[1:50], 1)
    np.testing.assert_array_equal(found[:, 0], ids[1:50])


def test_explicit_train_on_a_sample() -> None:
    vi = VectorIndex.create(DIM, "IVF16,Flat")
    vi.add(np.arange(20), random_unit(20))
    vi.train(random_unit(800, seed=4))
    assert not vi.needs_training and vi.ntotal == 20
    with pytest.raises(IndexInputError, match="at least 16"):
        other = VectorIndex.create(DIM, "IVF16,Flat")
        other.add(np.arange(5), random_unit(5))
        other.train()


def test_invalid_factory_string_is_a_clear_error() -> None:
    with pytest.raises(IndexSpecError, match="IVF1024,Flat") as err:
        VectorIndex.create(DIM, "IVF-nonsense,Blah")
    assert isinstance(err.value, IndexInputError) and isinstance(err.value, VectorIndexError)
    with pytest.raises(IndexSpecError):
        VectorIndex.create(DIM, "")


def test_choose_spec_flat_for_small_and_approximate_for_large() -> None:
    assert choose_spec(0, 768) == "Flat"
    assert choose_spec(10_000, 512) == "Flat"
    assert choose_spec(100_000, 93) == "Flat"  # small vectors: exact for longer
    assert choose_spec(100_000, 768) == "IVF256,Flat"
    assert choose_spec(100_000, 768, memory_budget_mb=100) == "IVF256,SQ8"
    assert choose_spec(1_000_000, 768) == "IVF1024,SQ8"
    large = choose_spec(1_000_000, 768)
    assert large.startswith("IVF") and "Flat" not in large
    assert choose_spec(1_000_000, 768, memory_budget_mb=300).startswith("IVF")
    assert "PQ" in choose_spec(1_000_000, 768, memory_budget_mb=60)
    for n in (0, 5_000, 60_000, 150_000, 1_000_000, 5_000_000):
        for budget in (None, 50, 1000):
            VectorIndex.create(64, choose_spec(n, 64, budget))  # every choice builds
    assert VectorIndex.create(768, "auto", expected_n=2_000_000).spec.startswith("IVF")


# ------------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("spec", ["flat", "IVF16,SQ8", "HNSW32"])
def test_save_load_round_trip(tmp_path, spec: str) -> None:
    x = random_unit(1000)
    ids = spread_ids(1000)
    vi = VectorIndex.create(DIM, spec)
    vi.add(ids, x)
    vi.save(tmp_path, "visual", {"space": "clip-b32", "count": "ignored"})
    loaded, manifest = VectorIndex.load(tmp_path, "visual")
    assert manifest["space"] == "clip-b32" and manifest["count"] == 1000 and manifest["dim"] == DIM
    assert manifest["max_id"] == ids.max() and manifest["spec"] == vi.spec and manifest["file"] == "visual.1.faiss"
    assert manifest["faiss_version"] == faiss.__version__ and manifest["size"] > 0 and len(manifest["sha256"]) == 64
    assert json.loads((tmp_path / "visual.json").read_text()) == manifest
    np.testing.assert_array_equal(loaded.ids(), vi.ids())
    queries = random_unit(20, seed=7)
    for allow in (None, ids[::3]):
        a, b = vi.search(queries, 10, allow=allow), loaded.search(queries, 10, allow=allow)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert loaded.nprobe == vi.nprobe


def test_save_keeps_only_the_latest_generation(tmp_path) -> None:
    vi = VectorIndex.create(DIM, "flat")
    vi.add(ODD_IDS, random_unit(3))
    vi.save(tmp_path, "v", {})
    vi.remove(ODD_IDS[:1])
    vi.save(tmp_path, "v", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.2.faiss", "v.json"]
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert manifest["count"] == 2 and loaded.ntotal == 2 and orphan_files(tmp_path, "v") == []


def test_empty_index_round_trip(tmp_path) -> None:
    VectorIndex.create(DIM).save(tmp_path, "v", {})
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert loaded.ntotal == 0 and manifest["max_id"] == -1 and manifest["count"] == 0


def test_missing_index_raises_missing(tmp_path) -> None:
    with pytest.raises(IndexMissingError, match=r"visual\.json not found") as err:
        VectorIndex.load(tmp_path, "visual")
    assert isinstance(err.value, VectorIndexError)
    with pytest.raises(IndexMissingError):
        VectorIndex.load(tmp_path / "nowhere", "visual")


def _saved(tmp_path, n: int = 500) -> VectorIndex:
    vi = VectorIndex.create(DIM, "flat")
    vi.add(spread_ids(n), random_unit(n))
    vi.save(tmp_path, "v", {"note": "first"})
    return vi


def test_truncated_index_file_is_corrupt(tmp_path) -> None:
    _saved(tmp_path)
    path = tmp_path / "v.1.faiss"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match="is corrupt"):
        VectorIndex.load(tmp_path, "v")
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path, "v", verify_hash=False)


def test_truncated_file_matching_a_forged_manifest_is_still_corrupt(tmp_path) -> None:
    _saved(tmp_path)
    path, mpath = tmp_path / "v.1.faiss", tmp_path / "v.json"
    path.write_bytes(path.read_bytes()[:100])
    manifest = json.loads(mpath.read_text())
    manifest["size"] = 100
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="sha256"):
        VectorIndex.load(tmp_path, "v")
    with pytest.raises(IndexCorruptError, match="cannot read"):
        VectorIndex.load(tmp_path, "v", verify_hash=False)


def test_flipped_bytes_and_mismatched_manifest_are_corrupt(tmp_path) -> None:
    _saved(tmp_path)
    path, mpath = tmp_path / "v.1.faiss", tmp_path / "v.json"
    good_manifest = mpath.read_text()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="sha256"):
        VectorIndex.load(tmp_path, "v")
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    for key, value in (("count", 499), ("dim", 64), ("max_id", 5)):
        manifest = json.loads(good_manifest)
        manifest[key] = value
        mpath.write_text(json.dumps(manifest))
        with pytest.raises(IndexCorruptError):
            VectorIndex.load(tmp_path, "v")
    mpath.write_text("{not json")
    with pytest.raises(IndexCorruptError, match="unreadable"):
        VectorIndex.load(tmp_path, "v")


def test_manifest_pointing_to_a_missing_file_is_corrupt(tmp_path) -> None:
    _saved(tmp_path)
    (tmp_path / "v.1.faiss").unlink()
    with pytest.raises(IndexCorruptError, match="does not exist"):
        VectorIndex.load(tmp_path, "v")
    manifest = json.loads((tmp_path / "v.json").read_text())
    manifest["file"] = "../elsewhere.faiss"
    (tmp_path / "v.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="not a generation file"):
        VectorIndex.load(tmp_path, "v")


def test_crash_before_manifest_replace_leaves_old_pair_loadable(tmp_path, monkeypatch) -> None:
    old = _saved(tmp_path)
    new = VectorIndex.create(DIM, "flat")
    new.add(np.array([1, 2]), random_unit(2))
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        new.save(tmp_path, "v", {"note": "second"})
    monkeypatch.undo()
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert manifest["note"] == "first" and loaded.ntotal == old.ntotal
    np.testing.assert_array_equal(loaded.ids(), old.ids())
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert orphan_files(tmp_path, "v") == [tmp_path / "v.2.faiss"]  # complete but never committed
    new.save(tmp_path, "v", {"note": "third"})  # the next save commits and cleans up
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert manifest["file"] == "v.3.faiss" and loaded.ntotal == 2 and orphan_files(tmp_path, "v") == []


def _killed_at_index_save(save) -> None:
    """Run ``save()`` in a child process that the fault point inside the save SIGKILLs, through the hook a harness
    installs (the new file written, the manifest not yet)."""
    pid = os.fork()
    if pid == 0:
        set_fault_hook(lambda point: os.kill(os.getpid(), signal.SIGKILL) if point == "index_save" else None)
        try:
            save()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -9


def test_process_killed_between_index_file_and_manifest(tmp_path) -> None:
    old = _saved(tmp_path)

    def save_another() -> None:
        new = VectorIndex.create(DIM, "flat")
        new.add(np.array([1, 2]), random_unit(2))
        new.save(tmp_path, "v", {"note": "second"})

    _killed_at_index_save(save_another)
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert manifest["note"] == "first" and loaded.ntotal == old.ntotal
    assert orphan_files(tmp_path, "v") == [tmp_path / "v.2.faiss"]


def _ivf_with_changes(tmp_path) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """A trained IVF-SQ8 index of 5,000 vectors saved whole, then changed a little: 200 added, 50 removed, 10
    replaced. Returns (index, its ids, the vectors added since the save)."""
    base, _ = clustered(5_400, DIM, 60, seed=5)
    ids = spread_ids(5_400, seed=6)
    vi = VectorIndex.create(DIM, "IVF32,SQ8")
    vi.add(ids[:5_000], base[:5_000])
    vi.save(tmp_path, "v", {"note": "whole"})
    vi.add(ids[5_000:5_200], base[5_000:5_200])
    vi.remove(ids[:50])
    vi.add(ids[100:110], base[5_200:5_210])  # replaced vectors
    return vi, ids, base


def _same_index(a: VectorIndex, b: VectorIndex, queries: np.ndarray) -> None:
    np.testing.assert_array_equal(a.ids(), b.ids())
    sa, ia = a.search(queries, 10)
    sb, ib = b.search(queries, 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-6)
    np.testing.assert_array_equal(a.reconstruct(a.ids()[::37]), b.reconstruct(a.ids()[::37]))


def test_a_small_change_is_saved_as_a_tail_and_loads_as_the_same_index(tmp_path) -> None:
    vi, ids, base = _ivf_with_changes(tmp_path)
    vi.save(tmp_path, "v", {"note": "tail"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.1.1.tail", "v.1.faiss", "v.json"]
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert manifest["note"] == "tail" and manifest["base_count"] == 5_000 and manifest["count"] == 5_150
    assert [(t["added"], t["removed"]) for t in manifest["tail"]] == [(210, 60)]
    _same_index(vi, loaded, base[:300])
    assert ids[0] not in loaded and ids[100] in loaded
    loaded.add(ids[5_210:5_300], base[5_210:5_300])  # a second tail, onto the loaded index
    loaded.save(tmp_path, "v", {"note": "second tail"})
    again, manifest = VectorIndex.load(tmp_path, "v", verify_hash=True)
    assert [t["file"] for t in manifest["tail"]] == ["v.1.1.tail", "v.1.2.tail"] and again.ntotal == 5_240
    _same_index(loaded, again, base[:300])
    summary = saved_summary(tmp_path, "v")
    assert summary["tails"] == 2 and summary["bytes"] == sum(p.stat().st_size for p in tmp_path.glob("v.1.*"))


def test_a_tail_names_the_list_each_vector_is_in(tmp_path) -> None:
    """The lists a tail saves come from the adds that chose them, the last add of an id winning (an id added, removed
    and added again since the save, with another vector), and from FAISS's direct map where FAISS chose: always the
    list the vector is in."""
    import faiss

    vi, ids, base = _ivf_with_changes(tmp_path)
    vi.remove(ids[5_000:5_010])
    vi.add(ids[5_000:5_010], -base[5_000:5_010])  # again, elsewhere
    vi.save(tmp_path, "v", {})
    with np.load(tmp_path / "v.1.1.tail") as z:
        added, lists = z["ids"], z["lists"]
    inner = vi._index
    want = [faiss.lo_listno(inner.direct_map.get(int(i))) for i in added]
    assert len(added) == 210 and lists.tolist() == want and (lists >= 0).all()


def _rewrite_tail(folder: Path, **arrays) -> None:
    """Replace the first tail of index "v" with ``arrays``, its manifest entry updated to match (size, sha256)."""
    from index.files import file_sha256

    tail = folder / "v.1.1.tail"
    with open(tail, "wb") as f:
        np.savez(f, **arrays)
    manifest = json.loads((folder / "v.json").read_text())
    manifest["tail"][0].update(size=tail.stat().st_size, sha256=file_sha256(tail))
    (folder / "v.json").write_text(json.dumps(manifest))


def test_an_ivf_tail_holds_its_codes_and_a_tail_of_vectors_still_loads(tmp_path) -> None:
    """An IVF index's tail holds the codes the index stores, each led by its list (with SQ8: 33 bytes a vector of
    32 floats, not 128), and loading puts them into their lists as they are: the same index. A tail of float32
    vectors, as releases before wrote them, loads as the same index too; codes that lead with another list than
    the tail's are a corrupt tail."""
    vi, ids, base = _ivf_with_changes(tmp_path)
    vi.save(tmp_path, "v", {})
    with np.load(tmp_path / "v.1.1.tail") as z:
        assert sorted(z.files) == ["codes", "ids", "lists", "removed"]
        removed, added, lists, codes = z["removed"], z["ids"], z["lists"], z["codes"]
    assert codes.dtype == np.uint8 and codes.shape == (210, 1 + DIM)
    loaded, _ = VectorIndex.load(tmp_path, "v")
    _same_index(vi, loaded, base[:300])

    _rewrite_tail(tmp_path, removed=removed, ids=added, vectors=vi.reconstruct(added), lists=lists)
    older, _ = VectorIndex.load(tmp_path, "v")
    _same_index(vi, older, base[:300])

    other = codes.copy()
    other[0, 0] = (int(lists[0]) + 1) % 32
    _rewrite_tail(tmp_path, removed=removed, ids=added, codes=other, lists=lists)
    with pytest.raises(IndexCorruptError, match="v.1.1.tail: its codes do not fit the index"):
        VectorIndex.load(tmp_path, "v")


def test_tails_give_way_to_a_whole_save_and_are_deleted(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(faiss_index, "TAIL_MAX_FRACTION", 0.05)
    vi, ids, base = _ivf_with_changes(tmp_path)  # 270 changed ids of 5,150: over 5%
    vi.save(tmp_path, "v", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.2.faiss", "v.json"]
    vi.add(ids[5_300:5_400], base[5_300:5_400])  # 100: a tail
    vi.save(tmp_path, "v", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.2.1.tail", "v.2.faiss", "v.json"]
    vi.add(ids[5_210:5_300], base[5_210:5_300])
    vi.remove(ids[200:300])  # 290 changed ids in tails: over 5% again, the whole index and nothing else
    vi.save(tmp_path, "v", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.3.faiss", "v.json"]
    _same_index(vi, VectorIndex.load(tmp_path, "v")[0], base[:200])


def test_an_index_trained_since_its_last_save_is_saved_whole(tmp_path) -> None:
    base, _ = clustered(2_000, DIM, 20, seed=7)
    ids = spread_ids(2_000, seed=8)
    vi = VectorIndex.create(DIM, "IVF16,Flat")
    vi.add(ids[:600], base[:600])  # staged: 600 < 39 x 16
    vi.save(tmp_path, "v", {})
    vi.add(ids[600:700], base[600:700])  # trains now
    vi.save(tmp_path, "v", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.2.faiss", "v.json"]
    _same_index(vi, VectorIndex.load(tmp_path, "v")[0], base[:100])


def test_a_damaged_tail_makes_the_index_corrupt(tmp_path) -> None:
    vi, _, _ = _ivf_with_changes(tmp_path)
    vi.save(tmp_path, "v", {})
    tail = tmp_path / "v.1.1.tail"
    data = bytearray(tail.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the vectors: the zip's CRC and the manifest's sha256 differ
    tail.write_bytes(bytes(data))
    for verify in (True, False):
        with pytest.raises(IndexCorruptError, match="v.1.1.tail"):
            VectorIndex.load(tmp_path, "v", verify_hash=verify)
    tail.write_bytes(bytes(data[:-100]))
    with pytest.raises(IndexCorruptError, match="truncated"):
        VectorIndex.load(tmp_path, "v", verify_hash=False)
    tail.unlink()
    with pytest.raises(IndexCorruptError, match="does not exist"):
        VectorIndex.load(tmp_path, "v")


def test_process_killed_between_tail_and_manifest(tmp_path) -> None:
    vi, ids, base = _ivf_with_changes(tmp_path)
    _killed_at_index_save(lambda: vi.save(tmp_path, "v", {"note": "tail"}))  # the tail written, not the manifest
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert manifest["note"] == "whole" and loaded.ntotal == 5_000 and manifest["tail"] == []
    assert orphan_files(tmp_path, "v") == [tmp_path / "v.1.1.tail"]
    loaded.add(ids[5_000:5_010], base[5_000:5_010])
    loaded.save(tmp_path, "v", {})  # a new tail beside the leftover, which goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.1.2.tail", "v.1.faiss", "v.json"]
    assert VectorIndex.load(tmp_path, "v")[0].ntotal == 5_010


def test_crash_while_writing_index_leaves_no_half_file(tmp_path, monkeypatch) -> None:
    _saved(tmp_path)
    real_write = faiss.write_index

    def half_write(index, writer):
        real_write(faiss.IndexFlatIP(DIM), writer)  # some bytes reach the temp file...
        raise KeyboardInterrupt  # ...then the process is interrupted mid-write

    monkeypatch.setattr(faiss, "write_index", half_write)
    with pytest.raises(KeyboardInterrupt):
        _saved(tmp_path, n=50)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.1.faiss", "v.json"]
    loaded, manifest = VectorIndex.load(tmp_path, "v")
    assert loaded.ntotal == 500


def test_orphan_files_reports_leftovers(tmp_path) -> None:
    _saved(tmp_path)
    (tmp_path / "v.7.faiss").write_bytes(b"x")
    (tmp_path / "v.8.faiss.tmp").write_bytes(b"x")
    (tmp_path / "v.json.tmp").write_text("{")
    (tmp_path / "other.3.faiss").write_bytes(b"x")
    (tmp_path / "v.9.faiss.k2_xq81.tmp").write_bytes(b"x")  # the temp names saves use now
    (tmp_path / "v.json.a8_zz3.tmp").write_text("{")
    assert [p.name for p in orphan_files(tmp_path, "v")] == ["v.7.faiss", "v.8.faiss.tmp", "v.9.faiss.k2_xq81.tmp",
                                                            "v.json.a8_zz3.tmp", "v.json.tmp"]
    VectorIndex.load(tmp_path, "v")  # leftovers do not disturb loading


def test_unserialisable_manifest_is_rejected_before_writing(tmp_path) -> None:
    vi = VectorIndex.create(DIM)
    with pytest.raises(IndexInputError, match="JSON"):
        vi.save(tmp_path, "v", {"bad": object()})
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- GPU (simulated)
def test_gpu_copy_is_used_for_unfiltered_search_when_available(tmp_path, monkeypatch) -> None:
    clones = []

    def fake_cpu_to_gpu(resources, device, index):
        clones.append(index)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss_index, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss_index, "_gpu_resources", None)
    x = random_unit(300)
    vi = VectorIndex.create(DIM, "IVF8,Flat")
    vi.add(np.arange(300), x)
    _, found = vi.search(x[:3], 1)
    np.testing.assert_array_equal(found[:, 0], [0, 1, 2])
    assert len(clones) == 1
    vi.search(x[:3], 1, allow=np.arange(200))  # filtered: CPU
    vi.search(x[:3], 1)
    assert len(clones) == 1  # copy reused
    vi.add(np.array([1000]), random_unit(1, seed=3))
    vi.search(x[:3], 1)
    assert len(clones) == 2  # refreshed after a write
    vi.save(tmp_path, "v", {})
    loaded, _ = VectorIndex.load(tmp_path, "v", use_gpu=False)
    assert loaded.ntotal == 301 and len(clones) == 2


def test_gpu_requested_without_gpu_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(faiss_index, "gpu_available", lambda: False)
    with pytest.raises(IndexInputError, match="gpu"):
        VectorIndex.create(DIM, use_gpu=True)
    assert VectorIndex.create(DIM).ntotal == 0


def test_ivf_build_with_gpu_assist_gives_the_cpu_index(monkeypatch) -> None:
    """The GPU build path (k-means with a GPU clustering index, list assignment with a GPU quantizer copy), run
    with CPU copies standing in for the GPU ones: the same centroids and lists as the plain CPU build, and the CPU
    quantizer is back in place afterwards."""
    x = random_unit(2000, seed=5)
    ids = np.arange(2000) * 3 + 7
    cpu = VectorIndex.create(DIM, "IVF16,Flat", use_gpu=False)
    cpu.add(ids, x)
    copies = []

    def cpu_to_gpu(resources, device, index):
        copies.append(faiss.clone_index(index))
        return copies[-1]

    monkeypatch.setattr(faiss_index, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss_index, "_gpu_resources", None)
    assisted = VectorIndex.create(DIM, "IVF16,Flat")
    assisted.add(ids, x)
    ivf_cpu, ivf_gpu = cpu.ivf, assisted.ivf
    assert [c.ntotal for c in copies] == [16, 16]  # k-means ran on the clustering index; the quantizer copy added
    assert all(c.metric_type == faiss.METRIC_INNER_PRODUCT for c in copies)
    np.testing.assert_array_equal(ivf_cpu.quantizer.reconstruct_n(0, 16), ivf_gpu.quantizer.reconstruct_n(0, 16))
    assert [ivf_gpu.invlists.list_size(i) for i in range(16)] == [ivf_cpu.invlists.list_size(i) for i in range(16)]
    assert int(ivf_gpu.quantizer.this) not in {int(c.this) for c in copies}  # the CPU quantizer is back
    cpu_found, gpu_found = cpu.search(x[:50], 5)[1], assisted.search_cpu(x[:50], 5, None, assisted.nprobe)[1]
    np.testing.assert_array_equal(cpu_found, gpu_found)


@pytest.mark.skipif(not faiss_index.gpu_available(), reason="needs faiss with GPU support and a GPU (the gpu extra "
                                                             "on a CUDA machine); this machine has none")
def test_ivf_built_on_the_gpu_finds_what_the_cpu_build_finds() -> None:
    x = random_unit(40_000, seed=6)
    found = {}
    for use_gpu in (False, True):
        vi = VectorIndex.create(DIM, "IVF64,Flat", use_gpu=use_gpu)
        vi.add(np.arange(len(x)), x)
        assert not vi.needs_training
        found[use_gpu] = vi.search(x[:200], 10)[1]
    assert (found[True][:, 0] == np.arange(200)).mean() > 0.95  # each vector finds itself
    overlap = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found[False], found[True], strict=True)])
    assert overlap > 0.8  # k-means on the GPU lands on similar lists


def test_zero_rows_only_when_allowed_and_they_score_zero() -> None:
    x = random_unit(40)
    x[7] = 0.0
    vi = VectorIndex.create(DIM, "flat")
    with pytest.raises(IndexInputError, match="zero"):
        vi.add(np.arange(40), x)
    vi.add(np.arange(40), x, allow_zero=True)
    scores, found = vi.search(x[:1], 40)
    assert vi.ntotal == 40 and scores[0][list(found[0]).index(7)] == 0.0
    with pytest.raises(IndexInputError):
        vi.add(np.array([99]), np.full((1, DIM), np.nan, np.float32), allow_zero=True)


def test_db_and_index_import_nothing_of_a2v_search() -> None:
    """db/ and index/ stand alone: importing every module of both loads no a2v_search module."""
    code = ("import sys, db, db.errors, db.migrations, db.repo, db.schema, index, index.errors, index.faiss_index, "
            "index.files, index.hooks, index.spec; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'a2v_search'))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("spec", "exact"), [("Flat", True), ("IVF64,Flat", True), ("HNSW32", True), ("SQ8", False),
                                             ("IVF64,SQ8", False), ("IVF64,PQ8", False), ("OPQ8,IVF64,PQ8", False)])
def test_exact_scores_names_the_types_that_keep_their_vectors(spec, exact) -> None:
    assert exact_scores(spec) is exact


def test_saved_summary_reads_the_manifest(tmp_path) -> None:
    assert saved_summary(tmp_path, "v") is None
    _saved(tmp_path, n=40)
    summary = saved_summary(tmp_path, "v")
    assert summary == {"spec": "Flat", "count": 40, "dim": DIM, "bytes": (tmp_path / "v.1.faiss").stat().st_size,
                       "saved_at": json.loads((tmp_path / "v.json").read_text())["saved_at"], "tails": 0}


_LOAD_PEAK = """
import os
import sys
import threading
from index import IndexCorruptError, VectorIndex
if sys.argv[2] == "threads":  # another Python thread runs: this process must not fork
    done = threading.Event()
    threading.Thread(target=done.wait, daemon=True).start()
    os.fork = None
try:
    VectorIndex.load(sys.argv[1], "v")
    print("loaded")
except IndexCorruptError as e:
    print("corrupt:", e)
print([int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0] // 1024)
"""


def test_a_bounded_read_whose_child_hangs_is_given_up_and_the_index_loads_here(tmp_path, monkeypatch, caplog):
    """The bounded read's forked child can hang (a process with other threads: Python clears their states in the
    child, and a destructor there once waited forever): it is killed after its time, and the file is read here."""
    from index import faiss_index

    vi = VectorIndex.create(8, "Flat")
    x = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    vi.add(np.arange(10), x)
    vi.save(tmp_path, "v", {})
    parent, real = os.getpid(), faiss.read_index

    def read_index(*a):
        while os.getpid() != parent:  # the child hangs
            time.sleep(1)
        return real(*a)

    monkeypatch.setattr(faiss, "read_index", read_index)
    monkeypatch.setattr(faiss_index, "PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(faiss_index, "_only_python_thread", lambda: True)  # the child is forked from here
    with caplog.at_level(logging.WARNING):
        loaded, _ = VectorIndex.load(tmp_path, "v")
    np.testing.assert_array_equal(loaded.search(x[:3], 1)[1][:, 0], np.arange(3))
    assert "did not finish" in caplog.text


@pytest.mark.parametrize("threads", [1, 2])
def test_a_bounded_read_that_hangs_is_killed_from_a_process_with_or_without_other_threads(tmp_path, monkeypatch,
                                                                                         threads):
    """A child that never finishes (here: FAISS opens a FIFO that nobody writes) is given up after its time, whether
    it was forked from this process (one Python thread) or from the probe server (other threads: this process never
    forks), and the next read works again."""
    from index import faiss_index

    fifo = tmp_path / "stuck.faiss"
    os.mkfifo(fifo)
    vi = VectorIndex.create(8, "Flat")
    vi.add(np.arange(10), np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32))
    vi.save(tmp_path, "v", {})
    good = tmp_path / json.loads((tmp_path / "v.json").read_text())["file"]
    monkeypatch.setattr(faiss_index, "PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(faiss_index, "_only_python_thread", lambda: threads == 1)
    if threads > 1:
        def no_fork():
            raise AssertionError("forked a process with other threads")

        monkeypatch.setattr(os, "fork", no_fork)
    assert faiss_index._reads_beyond_bound(fifo, 0) is None  # hung: read here
    assert faiss_index._reads_beyond_bound(good, good.stat().st_size) is None
    assert "Error" in faiss_index._reads_beyond_bound(tmp_path / "v.json", 10)  # not a FAISS file


def test_a_probe_server_that_cannot_start_is_a_warning_and_the_file_is_read_here(tmp_path, monkeypatch, caplog):
    """No interpreter to start for the probe server (an embedded Python): the index is read here, with a warning
    that says so."""
    from index import faiss_index

    vi = VectorIndex.create(8, "Flat")
    x = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    vi.add(np.arange(10), x)
    vi.save(tmp_path, "v", {})
    faiss_index._ProbeServer._stop()
    monkeypatch.setattr(faiss_index, "_only_python_thread", lambda: False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with caplog.at_level(logging.WARNING):
        loaded, _ = VectorIndex.load(tmp_path, "v")
    np.testing.assert_array_equal(loaded.search(x[:3], 1)[1][:, 0], np.arange(3))
    assert "cannot start a process to read" in caplog.text


@pytest.mark.guarantee("G8")
@pytest.mark.parametrize("threads", ["one thread", "threads"])
def test_an_index_file_claiming_a_huge_length_is_corrupt_without_being_allocated(tmp_path, threads):
    """A crafted file (and a manifest that matches it) whose id list claims 3 GB: refused as corrupt, and the
    reading process never holds more than a few hundred MB; also in a process with other threads, which does not
    fork (the probe server does)."""
    import hashlib
    import struct
    import subprocess
    import sys

    vi = VectorIndex.create(8, "Flat")
    vi.add(np.arange(10), np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32))
    vi.save(tmp_path, "v", {})
    manifest = json.loads((tmp_path / "v.json").read_text())
    path = tmp_path / manifest["file"]
    data = bytearray(path.read_bytes())
    at = len(data) - 8 * 10 - 8  # IndexIDMap2 ends with its id list: a uint64 length, then the ids
    assert struct.unpack("<Q", data[at:at + 8])[0] == 10
    data[at:at + 8] = struct.pack("<Q", 3 << 27)  # 3 GB of int64 ids claimed
    path.write_bytes(bytes(data))
    (tmp_path / "v.json").write_text(json.dumps({**manifest, "sha256": hashlib.sha256(data).hexdigest()}))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _LOAD_PEAK, str(tmp_path), threads], capture_output=True, text=True,
                          cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    verdict, peak_mb = done.stdout.strip().splitlines()
    assert int(peak_mb) < 1000, (peak_mb, verdict)  # the old reader allocated the 3 GB first
    assert verdict.startswith("corrupt:") and "claims more memory" in verdict, verdict
