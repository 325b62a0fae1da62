"""Export: the three formats round trip, filters, metadata, the CLI, and bounded memory on a large store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import run_main

from a2v_search import taxonomy as tx
from a2v_search.api import A2VSearch
from a2v_search.errors import InputError, QueryError
from a2v_search.export import DEFAULT_FIELDS, FIELDS, STRING_FIELDS, npz_strings, object_array
from a2v_search.models import prompts
from a2v_search.models.language import LANGUAGE_VECTOR
from a2v_search.testing.profiles import PROFILES, profile_vectors
from db import repo

ROOT = Path(__file__).resolve().parents[1]


#: the objects of the imported persons, in turn (the store keeps them best first)
OBJECTS = [[], [{"name": "cup", "p": 0.9, "box": [1, 2, 5, 6]}],
           [{"name": "sports_ball", "p": 0.5}, {"name": "dining table", "p": 0.75, "box": [0, 20, 60, 48]}]]


def object_rows(lists: list) -> np.ndarray:
    """Exported ``[{name, p, box}]`` lists -> the (n, 4, 6) array of numpy batches."""
    return object_array([[(tx.object_index(o["name"]), o["p"], o["box"]) for o in objs] for objs in lists])


def records(n_images: int = 24, seed: int = 0) -> list[dict]:
    """Images (two collections, one or two persons each) and one video with frame indexes and times."""
    rng = np.random.default_rng(seed)
    names = sorted(PROFILES)
    out = []
    for i in range(n_images):
        persons = []
        for j in range(1 + i % 2):
            pasta, verbs = profile_vectors(names[(i + j) % len(names)], seed=i * 2 + j)
            persons.append({"box": [j, 2, 30 + j, 40], "pasta": pasta.tolist(), "verbs": verbs.tolist(),
                            "visual": (3 * rng.normal(size=16)).tolist(), "score": 0.9,
                            "objects": OBJECTS[(i + j) % len(OBJECTS)]})
        out.append({"path": f"/media/{'odd' if i % 3 == 0 else 'main'}/img{i:02d}.jpg",
                    "collection": "odd" if i % 3 == 0 else "main", "width": 64, "height": 48, "persons": persons})
    video = []
    for f in range(4):
        pasta, verbs = profile_vectors("walk", seed=100 + f)
        video.append({"box": [0, 0, 20, 30], "pasta": pasta.tolist(), "verbs": verbs.tolist(),
                      "visual": rng.normal(size=16).tolist(), "frame_index": f * 10, "t_sec": f * 1.0})
    out.append({"path": "/media/main/clip.mp4", "collection": "main", "kind": "video", "persons": video})
    return out


N_PERSONS = 12 * 1 + 12 * 2 + 4


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_clip_dir, tiny_bert_dir):
    """A zero-shot store (tiny CLIP, tiny BERT) of imported persons."""
    data = tmp_path_factory.mktemp("export") / "data"
    api = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    report = api.import_records(records())
    assert report.failures == [] and report.persons_added == N_PERSONS
    yield api
    api.close()


def batches_of(api, **kw) -> dict[str, np.ndarray]:
    parts = list(api.export_batches(batch_size=7, **kw))
    return {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}


def read_parquet(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"a2v_search"])
    cols = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name in ("path", "collection", "kind"):
            cols[name] = np.array(col.to_pylist())
        elif name == "objects":
            cols[name] = object_rows(col.to_pylist())
        elif name == "frame_index":
            cols[name] = np.array([-1 if v is None else v for v in col.to_pylist()], np.int64)
        elif pa.types.is_fixed_size_list(col.type):
            shape, values = [], col
            while pa.types.is_fixed_size_list(values.type):
                shape.append(values.type.list_size)
                values = values.flatten()
            cols[name] = values.to_numpy().reshape(len(col), *shape)
        else:
            cols[name] = col.to_numpy(zero_copy_only=False)
    return cols, meta


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as f:  # allow_pickle=False by default: nothing here needs it
        strings = [k for k in STRING_FIELDS if k in f.files]
        cols = {k: f[k] for k in f.files if k not in ("meta", "basis_pasta", "basis_verb")
                and not k.endswith("_offsets")}
        cols.update({k: np.array(npz_strings(f, k)) for k in strings})
        meta = json.loads(f["meta"][()])
        if "basis_pasta" in f.files:
            meta["basis_arrays"] = (f["basis_pasta"], f["basis_verb"])
    return cols, meta


def read_jsonl(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    meta = json.loads(lines[0])["a2v_search_export"]
    rows = [json.loads(line) for line in lines[1:]]
    cols = {}
    for name in rows[0] if rows else []:
        values = [r[name] for r in rows]
        if name == "frame_index":
            cols[name] = np.array([-1 if v is None else v for v in values], np.int64)
        elif name in ("t_sec",):
            cols[name] = np.array([np.nan if v is None else v for v in values], np.float64)
        elif name in ("person_id", "media_id"):
            cols[name] = np.array(values, np.int64)
        elif name in ("path", "collection", "kind"):
            cols[name] = np.array(values)
        elif name == "objects":
            cols[name] = object_rows(values)
        else:
            cols[name] = np.array([np.nan if v is None else v for v in values] if name == "visual_norm" else values,
                                  np.float32)
    return cols, meta


READERS = {"parquet": read_parquet, "npz": read_npz, "jsonl": read_jsonl}


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_round_trip_equals_batches_and_what_search_uses(api, tmp_path, fmt):
    out = tmp_path / f"persons.{fmt}"
    every = [f for f in DEFAULT_FIELDS if f != "activity"] + ["language_basis"]  # a zero-shot store: no activity
    report = api.export(out, fields=every, batch_size=5)
    assert report.rows == N_PERSONS and report.format == fmt and out.is_file()
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    cols, meta = READERS[fmt](out)
    want = batches_of(api, fields=every)
    assert set(cols) == set(want) == set(DEFAULT_FIELDS) - {"activity"} | {"language_basis"}
    for name, values in want.items():
        assert len(cols[name]) == N_PERSONS, name
        if values.dtype.kind == "U":
            assert cols[name].tolist() == values.tolist(), name
        else:
            assert cols[name].dtype == values.dtype, (name, cols[name].dtype, values.dtype)
            np.testing.assert_array_equal(cols[name], values, err_msg=name)
    # the values are the ones search uses: the stored float16 vectors and the FAISS vectors
    store = api.store
    ids = want["person_id"]
    assert ids.tolist() == sorted(ids.tolist()) and len(set(ids.tolist())) == N_PERSONS
    with store.db.session() as s:
        stored = repo.fetch_vectors(s, ids)
    np.testing.assert_array_equal(want["visual"], stored.visual)
    np.testing.assert_array_equal(want["pasta"], stored.pasta)
    indexes = store.indexes.get()  # FAISS re-normalises the float16 rows: equal to float16 precision
    np.testing.assert_allclose(want["visual"], indexes["visual"].reconstruct(ids), rtol=0, atol=1e-3)
    np.testing.assert_allclose(want["language_basis"], indexes["language"].reconstruct(ids), rtol=0, atol=1e-6)
    # the full-dimension language vector has the same inner products as the compact one, in 2 x text dim
    assert want["language"].shape == (N_PERSONS, 2 * 32 + 82)  # two phrase blocks, the objects, the rest
    np.testing.assert_allclose(want["language"] @ want["language"].T,
                               want["language_basis"] @ want["language_basis"].T, atol=1e-5)
    # fused search scores are exactly these cosines (re-scored from SQLite)
    row = {pid: i for i, pid in enumerate(ids.tolist())}
    for h in api.search_similar(int(ids[0]), k=3, weights=(0.5, 0.5)):
        j = row[h.person_id]
        expected = 0.5 * want["visual"][0] @ want["visual"][j] + 0.5 * want["language_basis"][0] @ \
            want["language_basis"][j]
        assert h.score == pytest.approx(float(expected), abs=1e-6)
    # images have no frame; the video's frames and times survive
    video = want["kind"] == "video"
    assert video.sum() == 4 and want["frame_index"][video].tolist() == [0, 10, 20, 30]
    assert want["t_sec"][video].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert (want["frame_index"][~video] == -1).all() and np.isnan(want["t_sec"][~video]).all()
    np.testing.assert_allclose(np.linalg.norm(want["visual"], axis=1), 1, atol=2e-3)
    assert (want["visual_norm"] > 1).all()  # the imported tower outputs were not unit length
    # the file explains itself
    assert meta["space"]["heads"].startswith("zero-shot") and meta["names"]["pasta"] == list(tx.PASTA_NAMES)
    assert meta["phrases"]["pasta"] == prompts.pasta_phrases() and meta["names"]["verbs"] == list(tx.VERB_NAMES)
    assert "zero-shot" in meta["activity"] and set(meta["fields"]) == set(want)
    lang = store.space.language()
    basis = meta.get("basis_arrays") or (np.array(meta["basis"]["pasta"], np.float32),
                                         np.array(meta["basis"]["verb"], np.float32))
    assert meta["language"]["formula"] == lang.vector == LANGUAGE_VECTOR
    r, rv = meta["language"]["rank_pasta"], meta["language"]["rank_verb"]
    compact = want["language_basis"]
    rebuilt = np.concatenate([compact[:, :r] @ basis[0], compact[:, r:r + rv] @ basis[1], compact[:, r + rv:]], 1)
    np.testing.assert_allclose(rebuilt, want["language"], atol=1e-5)
    np.testing.assert_allclose(basis[0], lang.basis_pasta, atol=1e-7)


def test_pandas_and_polars_read_parquet_as_is(api, tmp_path):
    pd = pytest.importorskip("pandas")
    out = tmp_path / "p.parquet"
    api.export(out, fields=["person_id", "path", "frame_index", "pasta"])
    df = pd.read_parquet(out)
    assert len(df) == N_PERSONS and list(df.columns) == ["person_id", "path", "frame_index", "pasta"]
    assert df["pasta"].iloc[0].shape == (93,) and df["frame_index"].isna().sum() == N_PERSONS - 4
    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(out)
    assert frame.shape == (N_PERSONS, 4) and frame["pasta"].dtype == pl.Array(pl.Float32, 93)


def test_filters_select_the_same_persons_as_search(api, tmp_path):
    store = api.store
    cases = [({"collection": "odd"}, 12), ({"kind": "video"}, 4), ({"path": "/media/main/img0*"}, None),
             ({"where": ["foot: walk with>=0.5"]}, None), ({"collection": "main", "where": ["verb: walk<0.5"]}, None)]
    from a2v_search.search import make_filters

    for kw, expected in cases:
        with store.db.session() as s:
            want = repo.filter_person_ids(s, make_filters(**kw)).tolist()
        got = batches_of(api, fields=["person_id", "collection", "kind", "path", "pasta"], **kw)
        assert got["person_id"].tolist() == want, kw
        if expected is not None:
            assert len(want) == expected, kw
        assert want, kw
        if "collection" in kw:
            assert set(got["collection"].tolist()) == {kw["collection"]}
        if "kind" in kw:
            assert set(got["kind"].tolist()) == {kw["kind"]}
    walk = batches_of(api, fields=["pasta"], where=["foot: walk with>=0.5"])["pasta"]
    assert (walk[:, tx.pasta_index("foot: walk with")] >= 0.5).all()
    out = tmp_path / "none.npz"
    assert api.export(out, kind="video", where=["leg: kneel>=0.99"]).rows == 0
    cols, _ = read_npz(out)
    assert cols["pasta"].shape == (0, 93) and cols["path"].shape == (0,)
    assert api.export(tmp_path / "none.parquet", kind="video", where=["leg: kneel>=0.99"]).rows == 0
    assert read_parquet(tmp_path / "none.parquet")[0]["pasta"].shape[0] == 0
    assert list(api.export_batches(kind="video", where=["leg: kneel>=0.99"])) == []


def test_fields_and_errors(api, tmp_path):
    got = batches_of(api, fields=["verbs,parts", "person_id"])
    assert list(got) == ["verbs", "parts", "person_id"] and got["parts"].shape == (N_PERSONS, 6)
    with pytest.raises(InputError, match="unknown field 'colour'.*person_id"):
        api.export(tmp_path / "x.npz", fields=["colour"])
    with pytest.raises(InputError, match="unknown field 'colour'"):
        api.export_batches(fields=["colour"])  # on the call, not on the first batch
    with pytest.raises(InputError, match="batch-size"):
        api.export_batches(batch_size=0)
    with pytest.raises(InputError, match="not available.*zero-shot"):
        api.export(tmp_path / "x.npz", fields=["activity"])
    with pytest.raises(InputError, match=r"\.parquet, \.npz or \.jsonl"):
        api.export(tmp_path / "x.csv")
    with pytest.raises(InputError, match="does not exist"):
        api.export(tmp_path / "missing" / "x.npz")
    assert set(FIELDS) >= set(DEFAULT_FIELDS) and "language_basis" not in DEFAULT_FIELDS


@pytest.mark.guarantee("G21")
@pytest.mark.parametrize("fmt", ["parquet", "npz", "jsonl"])
def test_a_link_planted_beside_the_output_is_never_written_through(api, tmp_path, fmt):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / f"persons.{fmt}"
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # the names the temporary file used to have
        (tmp_path / f".{out.name}.{pid}.tmp").symlink_to(victim)
    api.export(out)
    assert victim.read_text() == "precious" and READERS[fmt](out)[0]["person_id"].size == N_PERSONS
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


def test_npz_strings_are_compact(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """One 4,000-character path does not widen the path column of every row."""
    rows = records()
    rows[0]["path"] = "/" + "x" * 3999
    with A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                        device="cpu") as api:
        api.import_records(rows)
        api.export(tmp_path / "p.npz", fields=["person_id", "path"])
    with np.load(tmp_path / "p.npz") as f:
        paths = npz_strings(f, "path")
        stored = f["path"].nbytes + f["path_offsets"].nbytes
    assert "/" + "x" * 3999 in paths and len(paths) == N_PERSONS
    assert stored <= sum(len(p.encode()) for p in paths) + 8 * (N_PERSONS + 1)


def test_zero_shot_store_says_it_has_no_activity_space(api):
    assert "zero-shot" in api.stats()["activity_space"]
    code, out, _ = run_main("stats", "--data-dir", api.data_dir)
    assert code == 0 and "activity space: no A2V classifier feature" in out
    with pytest.raises(QueryError, match="no activity space: no A2V classifier feature.*zero-shot"):
        api.search_similar(1, k=3, weights=(0, 0, 1))
    assert len(api.search_similar(1, k=3, weights=(1, 1, 0))) == 3  # a zero third weight changes nothing
    code, _, err = run_main("search", "--person", "1", "--weights", "0,0,1", "--data-dir", api.data_dir)
    assert code == 1 and "zero-shot" in err and len(err.splitlines()) == 1
    code, _, err = run_main("search", "--person", "1", "--weights", "1,1,1,1", "--data-dir", api.data_dir)
    assert code == 1 and "VISUAL,LANGUAGE[,ACTIVITY]" in err


def test_cli_export(api, tmp_path):
    out = tmp_path / "cli.bin"
    code, stdout, err = run_main("export", "--out", out, "--format", "jsonl", "--collection", "odd",
                                 "--data-dir", api.data_dir)
    assert code == 0, err
    assert f"exported 12 persons to {out} (jsonl)" in stdout and "note: activity: no A2V classifier feature" in stdout
    assert len(out.read_text().splitlines()) == 1 + 12
    code, stdout, _ = run_main("export", "--out", tmp_path / "c.npz", "--fields", "person_id,pasta", "--json",
                               "--data-dir", api.data_dir)
    assert code == 0 and json.loads(stdout)["rows"] == N_PERSONS and json.loads(stdout)["fields"] == ["person_id",
                                                                                                      "pasta"]
    assert zipfile.ZipFile(tmp_path / "c.npz").namelist() == ["person_id.npy", "pasta.npy", "meta.npy"]
    code, _, err = run_main("export", "--out", tmp_path / "d.npz", "--where", "hand: fly>=0.5",
                            "--data-dir", api.data_dir)
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------ bounded memory


N_LARGE = 200_000
_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from a2v_search.api import A2VSearch
    api = A2VSearch.open({data!r}, device="cpu")
    report = api.export({out!r}, fields=["person_id", "path", "box", "pasta", "verbs", "parts", "visual",
                                         "language"], collection={collection!r}, batch_size=2048)
    # VmHWM: this process image's peak RSS (ru_maxrss would include the forking parent's, kept across exec)
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({{"rows": report.rows, "peak_kib": peak, "seconds": report.seconds}}))
""")


def _export_in_child(data: Path, out: Path, collection: str | None) -> dict:
    code = _CHILD.format(root=str(ROOT), data=str(data), out=str(out), collection=collection)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_export_memory_is_bounded_on_a_large_store(tmp_path, tiny_clip_dir, tiny_bert_dir):
    """200k persons imported through the import API; the peak RSS of an export of all of them stays within a few
    MiB of an export of 1% of them, though the rows written are ~250 MiB as float32."""
    data = tmp_path / "data"
    api = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), device="cpu")
    rng = np.random.default_rng(0)
    pasta = {"hand: hold": 0.9, "head: drink with": 0.7}  # sparse probabilities: few label rows, fast import
    per_chunk, per_media = 50_000, 4
    for start in range(0, N_LARGE, per_chunk):
        visual = rng.normal(size=(per_chunk // per_media, 16)).astype(np.float32)
        recs = [{"path": f"/large/{start + per_media * i:07d}.jpg",
                 "collection": "small" if i % 100 == 0 else "large",
                 "persons": [{"pasta": pasta, "verbs": {"drink_with": 0.8}, "visual": visual[i].tolist(),
                              "box": [0, 0, 10, 20]}] * per_media} for i in range(per_chunk // per_media)]
        assert api.import_records(recs).persons_added == per_chunk
    api.close()
    row_bytes = 4 * (4 + 93 + 157 + 6 + 16 + 64) + 8
    data_mib = N_LARGE * row_bytes / 2**20
    growth = {}
    for fmt in ("parquet", "npz"):
        small = _export_in_child(data, tmp_path / f"small.{fmt}", "small")
        full = _export_in_child(data, tmp_path / f"full.{fmt}", None)
        assert small["rows"] == N_LARGE // 100 and full["rows"] == N_LARGE
        growth[fmt] = (full["peak_kib"] - small["peak_kib"]) / 1024
        print(f"{fmt}: {N_LARGE} rows ({data_mib:.0f} MiB as float32) in {full['seconds']:.0f} s, peak RSS "
              f"{full['peak_kib'] / 1024:.0f} MiB; exporting {small['rows']} rows: {small['peak_kib'] / 1024:.0f} MiB")
    assert all(g < 0.15 * data_mib for g in growth.values()), growth
    import pyarrow.parquet as pq

    meta = pq.read_metadata(tmp_path / "full.parquet")
    assert meta.num_rows == N_LARGE and meta.num_row_groups == -(-N_LARGE // 2048)
    with np.load(tmp_path / "full.npz", mmap_mode="r") as f:
        assert f["pasta"].shape == (N_LARGE, 93) and f["person_id"][-1] == N_LARGE
    shutil.rmtree(tmp_path)  # ~700 MB; pytest keeps the last three runs' folders, and CI's disk may be small
