"""``--engine ray`` (issue 13): the same store as the local engine, resume after the driver is killed, a decode
worker and an actor that die and are retried.

All tests share one local Ray instance (2 CPUs: one model actor, one decoding slot) started by the module, with its
temporary folder under the test's tmp and no usage reports; nothing is written to the home folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from a2v_search.api import A2VSearch
from a2v_search.detect import DetectorOptions, make_detector
from a2v_search.ingest import IngestOptions, run_ingest
from a2v_search.models import ModelSpec, load_encoder
from a2v_search.store import Store
from a2v_search.testing.media import write_bad_files, write_images, write_odd_images, write_video
from db import repo
from db.blobs import unf16

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' to run the Ray engine tests")

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a Ray instance, model actors and a driver in a subprocess: minutes on 2 cores


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray for the module; ``kill_dir`` arms ``faults.kill_once`` points in its workers, and files named
    ``*HANGS_IN_RAY*`` hang their decoder."""
    tmp = tmp_path_factory.mktemp("ray")
    kill_dir = tmp / "kill"
    kill_dir.mkdir()
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "A2V_KILL_ONCE_DIR": str(kill_dir),
           "A2V_HANG": "HANGS_IN_RAY",  # decoding a file whose name holds this never returns (faults.hang_point)
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the raylet and its workers inherit these
    ray.init(num_cpus=2, _temp_dir=str(tmp / "t"), include_dashboard=False, log_to_driver=False)
    try:
        yield {"address": ray.get_runtime_context().gcs_address, "kill_dir": kill_dir, "tmp": tmp}
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def snapshot(data_dir: Path) -> dict:
    """Everything a run stored, keyed by path: media fields, persons (vectors as float32) and failures."""
    store = Store(data_dir)
    with store.db.session() as s:
        media = s.execute(repo.select(repo.Media)).scalars().all()
        paths = {m.id: m.path for m in media}
        out = {m.path: {"kind": m.kind, "hash": m.content_hash, "size": (m.width, m.height), "frames": m.frames,
                        "duration": m.duration, "duplicate_of": paths.get(m.duplicate_of), "persons": []}
               for m in media}
        for p in s.execute(repo.select(repo.Person).order_by(repo.Person.id)).scalars():
            out[paths[p.media_id]]["persons"].append({
                "box": (p.x1, p.y1, p.x2, p.y2), "score": p.score, "frame": p.frame_index, "t": p.t_sec,
                "vectors": np.concatenate([unf16(b) for b in (p.pasta, p.verbs, p.parts, p.visual)]),
                "norm": p.visual_norm, "track": p.track_id})
        for m in out.values():  # a track as the position of its first person in the media (ids differ per store)
            firsts: dict = {}
            for i, person in enumerate(m["persons"]):
                person["track"] = None if person["track"] is None else firsts.setdefault(person["track"], i)
        failures = {(f.path, f.stage, f.reason) for f in s.execute(repo.select(repo.Failure)).scalars()}
    problems = store.check().problems
    store.close()
    return {"media": out, "failures": failures, "problems": problems}


def assert_same_store(a: dict, b: dict) -> None:
    assert a["problems"] == [] and b["problems"] == []
    assert a["failures"] == b["failures"]
    assert sorted(a["media"]) == sorted(b["media"])
    for path, ma in a["media"].items():
        mb = b["media"][path]
        assert {k: v for k, v in ma.items() if k != "persons"} == {k: v for k, v in mb.items() if k != "persons"}
        assert len(ma["persons"]) == len(mb["persons"]), path
        for pa, pb in zip(ma["persons"], mb["persons"], strict=True):
            assert (pa["frame"], pa["t"]) == (pb["frame"], pb["t"]), path
            np.testing.assert_allclose(pa["box"], pb["box"], atol=1e-2)  # pixels; the detector batches differ
            assert pa["score"] == pytest.approx(pb["score"], abs=1e-4)
            np.testing.assert_allclose(pa["vectors"], pb["vectors"], atol=2e-3)  # float16 storage
            assert pa["norm"] is not None and pa["norm"] == pytest.approx(pb["norm"], rel=1e-3)
            assert pa["track"] == pb["track"], path


def corpus(folder: Path) -> Path:
    write_images(folder, 3)
    write_odd_images(folder / "odd")
    write_bad_files(folder / "bad")
    write_video(folder / "clip.mp4", seconds=3.0)
    shutil.copy(folder / "img000.png", folder / "same_as_img000.png")  # a duplicate
    return folder


def test_ray_gives_the_same_store_as_local(ray_cluster, tmp_path, tiny_clip_dir, tiny_bert_dir, tiny_detector_dir):
    from a2v_search.ingest.ray_engine import RayOptions, run_ray_ingest, worker_models

    inputs = corpus(tmp_path / "in")
    spec = ModelSpec(model=str(tiny_clip_dir), text_model=str(tiny_bert_dir))
    encoder = load_encoder(spec, device="cpu")
    detector = make_detector(str(tiny_detector_dir), "cpu", DetectorOptions())
    # 1-s video segments: the 3-s clip is three units of work, asked for one after the other
    opts = dict(max_pixels=10_000_000, segment_s=1.0, video_fps=2.0, batch_size=4, commit_every=4)
    snaps, reports = [], []
    for engine in ("local", "ray"):
        store = Store(tmp_path / engine, create=True).lock("test")
        if engine == "local":
            report = run_ingest(store, encoder, detector, [inputs], IngestOptions(workers=0, **opts))
        else:
            models = partial(partial, worker_models, spec, "auto", str(tiny_detector_dir), DetectorOptions())
            report = run_ray_ingest(store, encoder, detector, [inputs], IngestOptions(**opts), None,
                                    RayOptions(workers=1, models=models))
        store.close()
        snaps.append(snapshot(tmp_path / engine))
        reports.append(report)
    local, remote = reports
    assert local.media_ingested == remote.media_ingested == 3 + 12 + 1
    assert local.duplicates == remote.duplicates == 1
    assert local.persons_added == remote.persons_added > 0
    assert len(local.failures) == len(remote.failures) == 9
    video = snaps[1]["media"][str((inputs / "clip.mp4").resolve())]
    assert video["frames"] == 6 and video["duration"] == 3.0
    assert {p["t"] for p in video["persons"]} == {0.0, 0.5, 1.0, 1.5, 2.0, 2.5}
    assert_same_store(*snaps)
    assert {"queue", "decode", "encode", "transfer", "write"} <= set(remote.stages)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "manage.py", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.guarantee("G34")
def test_killed_driver_then_rerun_loses_and_doubles_nothing_and_dead_workers_are_retried(
        ray_cluster, tmp_path, tiny_clip_dir, tiny_bert_dir):
    write_images(tmp_path / "in", 10)
    data = tmp_path / "data"
    common = ["--data-dir", data, "--model", tiny_clip_dir, "--text-model", tiny_bert_dir, "--detector", "none",
              "--device", "cpu", "--batch-size", "2", "--commit-every", "2"]
    killed = _cli("ingest", tmp_path / "in", *common, "--engine", "ray", "--ray-address", ray_cluster["address"],
                  env={"A2V_FAULT": "after_commit:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store = Store(data)
    with store.db.session() as s:
        partial_count = repo.counts(s)["media"]
    store.close()
    assert 0 < partial_count < 10

    for point in ("ray_decode", "ray_actor"):  # the rerun's first decode worker and its actor each die once
        (ray_cluster["kill_dir"] / point).touch()
    api = A2VSearch.open(data, model=str(tiny_clip_dir), text_model=str(tiny_bert_dir), detector="none",
                         device="cpu")
    report = api.ingest([tmp_path / "in"], engine="ray", workers=1, batch_size=2, commit_every=2)
    api.close()
    assert not (ray_cluster["kill_dir"] / "ray_decode").exists()  # both deaths did happen
    assert not (ray_cluster["kill_dir"] / "ray_actor").exists()
    assert report.failures == []
    assert report.media_skipped == partial_count and report.media_ingested == 10 - partial_count
    snap = snapshot(data)
    assert len(snap["media"]) == 10 and all(len(m["persons"]) == 1 for m in snap["media"].values())
    assert snap["problems"] == []


@pytest.mark.guarantee("G34")
def test_a_hanging_file_fails_its_task_and_the_run_goes_on(ray_cluster, tmp_path, tiny_clip_dir, tiny_bert_dir):
    write_images(tmp_path / "in", 2)
    write_images(tmp_path / "other", 1, start=7)[0].rename(tmp_path / "in" / "HANGS_IN_RAY.png")  # walked first
    api = A2VSearch.open(tmp_path / "data", model=str(tiny_clip_dir), text_model=str(tiny_bert_dir),
                         detector="none", device="cpu")
    report = api.ingest([tmp_path / "in"], engine="ray", workers=1, file_timeout=20)
    api.close()
    assert [(Path(f["path"]).name, f["stage"]) for f in report.failures] == [("HANGS_IN_RAY.png", "decode")]
    assert "took longer than 20 s" in report.failures[0]["error"]  # the local engine's words
    assert report.media_ingested == 2 and report.persons_added == 2



#: in a child process: start Ray as a run without --ray-address does, then list the TCP sockets that Ray's
#: processes (the children of this one) listen on, and what the session looks like
_LOCAL_RAY = """
import json, os, shutil, stat
from a2v_search.ingest.ray_engine import local_ray_options
opts = local_ray_options()  # before Ray is imported, as the engine does
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False, **opts)
ray.get(ray.remote(lambda: 1).remote())
me, parents = os.getpid(), {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        pass
ours, grew = {me}, True
while grew:
    new = {p for p, pp in parents.items() if pp in ours} - ours
    grew, ours = bool(new), ours | new
inodes = set()
for pid in ours:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:
            listening.append(f[1].split(":")[0])
print(json.dumps({"listening": listening, "auth": os.environ.get("RAY_AUTH_MODE"),
                  "temp_mode": stat.S_IMODE(os.stat(os.path.dirname(opts["_temp_dir"])).st_mode),
                  "gcs": ray.get_runtime_context().gcs_address}))
ray.shutdown()
shutil.rmtree(os.path.dirname(opts["_temp_dir"]))  # as the engine's close does: nothing left in the system's /tmp
"""


@pytest.mark.guarantee("G45")
def test_a_local_ray_listens_on_loopback_only_in_a_private_folder_with_token_auth(tmp_path):
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env.update(RAY_USAGE_STATS_ENABLED="0", HOME=str(tmp_path),  # Ray keeps the token it makes under ~/.ray
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _LOCAL_RAY], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # 127.0.0.1,
    # ::1 and ::ffff:127.0.0.1 as /proc/net writes them
    assert seen["listening"] and set(seen["listening"]) <= loopback, seen
    assert seen["auth"] == "token" and seen["temp_mode"] == 0o700 and seen["gcs"].startswith("127.0.0.1:"), seen
