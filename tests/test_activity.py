"""A2V's visual feature (the part heads' last hidden layers): stored inputs, recomputation, the activity space,
search by example and by person, the schema 1 -> 2 migration, and what each space finds on a synthetic case."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SPACE, downgrade, media, random_language, random_person

from a2v_search.api import A2VSearch
from a2v_search.media import load_image
from a2v_search.space import ALL_INDEX_NAMES, INDEX_NAMES, space_vectors
from a2v_search.store import Store
from a2v_search.testing import activity_case as sa
from a2v_search.testing.media import write_images
from db import repo
from db.engine import get_meta
from db.schema import SCHEMA_VERSION


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_dir, tiny_bert_dir):
    """Six images ingested (whole-image mode) with random trained-format heads on the tiny CLIP tower."""
    import torch

    from a2v_search.models.checkpoint import save_checkpoint
    from a2v_search.models.heads import PastaHeads

    root = tmp_path_factory.mktemp("trained")
    torch.manual_seed(3)
    ckpt = save_checkpoint(root / "heads", PastaHeads(dim_in=16, dim_hidden=32), backbone_ref=str(tiny_clip_dir))
    images = write_images(root / "images", 6)
    api = A2VSearch.open(root / "data", checkpoint=str(ckpt), text_model=str(tiny_bert_dir), device="cpu")
    report = api.ingest([root / "images"], detector="none", workers=0)
    assert report.persons_added == 6 and not report.failures
    yield api, [str(p.resolve()) for p in images]
    api.close()


def test_a2v_feature_recomputed_from_the_store_equals_a_direct_forward(trained):
    import torch

    api, images = trained
    enc = api.encoder()
    rows = next(api.export_batches(fields=["path", "visual", "visual_norm", "activity"]))
    assert rows["activity"].shape == (6, 6, 32) and rows["activity"].dtype == np.float32
    worst = 0.0
    for path, unit, norm, stored in zip(rows["path"], rows["visual"], rows["visual_norm"], rows["activity"],
                                        strict=True):
        x = enc.preprocess.to_tensor(torch.from_numpy(enc.preprocess.pixels(load_image(path), None)[None].copy()))
        with torch.inference_mode():
            feat = enc.model.features(x).float()  # (1, 16): the heads' input in a direct forward
            direct = enc.model.heads.part_features(feat)[0].numpy()  # (6, 32)
        f = feat[0].numpy()
        assert norm == pytest.approx(float(np.linalg.norm(f)), rel=1e-6)  # the norm is kept as float32
        np.testing.assert_array_equal(unit, (f / np.linalg.norm(f)).astype(np.float16).astype(np.float32))
        assert np.abs(direct).max() > 0.1  # a real signal, not all-zero ReLUs
        worst = max(worst, float(np.abs(stored - direct).max() / np.abs(direct).max()))
    # the only difference is the float16 rounding of the stored unit vector (relative 2^-11 per value)
    print(f"A2V feature, stored vs direct forward: max relative difference {worst:.2e}")
    assert worst < 2e-3, worst


def test_activity_index_export_and_stats(trained):
    api, _ = trained
    store = api.store
    assert store.space.index_names() == ALL_INDEX_NAMES and api.stats()["activity_space"] == "available"
    assert (store.indexes.folder / "activity.json").is_file()
    rows = next(api.export_batches())  # default fields include the activity with trained heads
    assert "activity" in rows
    index = store.indexes.get(["activity"])["activity"]
    assert index.dim == 6 * 32
    np.testing.assert_allclose(index.reconstruct(rows["person_id"]), space_vectors(rows["activity"]), atol=1e-6)
    assert not api.doctor().problems
    assert set(api.reindex()) == set(ALL_INDEX_NAMES)


def test_search_by_example_image_and_by_person_in_the_activity_space(trained):
    api, images = trained
    hits = api.search_image(images[2], k=3, weights=(0, 0, 1))
    assert hits[0].path == images[2] and hits[0].cosines["activity"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0].score >= hits[1].score >= hits[2].score
    fused = api.search_image(images[2], k=6, weights=(0.2, 0.3, 0.5))
    assert fused[0].path == images[2] and len(fused) == 6
    for h in fused:
        assert set(h.cosines) == {"visual", "language", "activity"}
        assert h.score == pytest.approx(0.2 * h.cosines["visual"] + 0.3 * h.cosines["language"]
                                        + 0.5 * h.cosines["activity"], abs=1e-6)
    by_person = api.search_similar(hits[0].person_id, k=5, weights=(0, 0, 1))
    assert hits[0].person_id not in {h.person_id for h in by_person}
    assert [h.person_id for h in by_person[:2]] == [h.person_id for h in hits[1:3]]  # same ranking, example left out


def test_schema_1_store_is_migrated_and_the_activity_space_names_the_fix(tmp_path):
    rng = np.random.default_rng(0)
    store = Store(tmp_path, create=True).lock("test")
    store.space.ensure({**SPACE, "heads": "checkpoint:0123456789abcdef"}, random_language())
    store.write([media("/m/a.jpg", [random_person(rng), random_person(rng)])])
    store.close()
    downgrade(tmp_path / "a2v.sqlite", 1)  # the layout the first release wrote
    store = Store(tmp_path)
    with store.db.session() as s:
        assert get_meta(s, "schema_version") == str(SCHEMA_VERSION)
        assert repo.count_without_norm(s) == 2
        assert [r.visual_norm for r in repo.fetch_persons(s, [1, 2])] == [None, None]
    store.space.set_activity_source(lambda: pytest.fail("no features can be computed without norms"))
    problem = store.space.activity_problem()
    assert "2 persons" in problem and "schema 1" in problem and "ingest PATHS --force" in problem
    assert store.space.index_names() == INDEX_NAMES and len(store.indexes.get()) == 2  # the other spaces work as before
    store.close()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, tiny_clip_dir, tiny_bert_dir):
    root = tmp_path_factory.mktemp("synthetic")
    ckpt, records, apps, acts = sa.build(root, tiny_clip_dir, dim=16)
    api = A2VSearch.open(root / "data", checkpoint=str(ckpt), text_model=str(tiny_bert_dir), device="cpu")
    assert api.import_records(records).persons_added == len(records)
    yield api, apps, acts
    api.close()


@pytest.mark.parametrize("pid", [1, 20, 45, 70])
def test_activity_space_finds_the_activity_and_the_visual_space_the_appearance(synthetic, pid):
    api, apps, acts = synthetic  # person ids 1..72 in record order
    app, act = apps[pid - 1], acts[pid - 1]
    by_activity = api.search_similar(pid, k=4, weights=(0, 0, 1))
    assert all(acts[h.person_id - 1] == act for h in by_activity)
    assert sum(apps[h.person_id - 1] != app for h in by_activity) >= 3  # mostly other appearances
    by_look = api.search_similar(pid, k=4, weights=(1, 0, 0))
    assert all(apps[h.person_id - 1] == app for h in by_look)
    assert sum(acts[h.person_id - 1] != act for h in by_look) >= 3  # mostly other activities
