"""Benchmark of ingest at library scale: a tree of N small JPEGs ingested with the tiny models, in one run.

    python bench/library_bench.py [--files N] [--dir FOLDER] [--per-folder K] [--workers W] [--quick] [--keep]
                                  [--seed-import [--new-files M]] [--at FOLDER]

Reports: time from the start of ``manage.py ingest`` (interpreter start-up included) to the first persons
committed in SQLite (polled read-only every 0.1 s), wall time and files/s of the full run, the peak RSS of the
ingest process (``ru_maxrss`` of the children of a small launcher process: the largest of the ingest process and
the decode workers it reaped, i.e. the main process; measured from a launcher because a child's ``ru_maxrss``
counts the memory of the process that forked it, here the benchmark with torch loaded, ~450 MB), and the wall time
of a no-op re-run of the same command (nothing new: nothing to load).
Goals on 2 cores (issue 20): first persons <= 10 s at any N; peak RSS <= 1.5 GB at 1M files; no-op re-run of 1M
files <= 60 s. The tree is N copies of a 64x48 JPEG made distinct by a comment segment holding the file's number
(distinct content hashes, the same decoding cost), in folders of K files, under a temporary folder in ``--dir``
(deleted at the end unless ``--keep``). N = 1,000,000 by default; ``--quick`` is 50,000. ``--seed-import`` fills
the store with ``manage.py import`` (each file's real path, size and mtime, one random person) instead of a full
ingest; with ``--new-files M`` it then adds M new files to the tree and ingests the whole tree again (the
seeded files are skipped, the M new ones stored into the big store: first persons, files/s and peak RSS of that
run), before the no-op re-run. ``--at FOLDER`` keeps the tree and store there and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, header, log, tiny_models  # noqa: E402


def jpeg_variants(n: int = 16) -> list[bytes]:
    """n small noisy 64x48 JPEGs (bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_tree(folder: Path, n: int, per_folder: int, start: int = 0) -> None:
    """n distinct JPEG files (numbered from ``start``): a base image with a COM segment holding the file's number
    after the SOI marker."""
    bases = jpeg_variants()
    t0 = time.perf_counter()
    for i in range(start, start + n):
        sub = folder / f"d{i // per_folder:05d}"
        if i % per_folder == 0:
            sub.mkdir(parents=True, exist_ok=True)
        base = bases[i % len(bases)]
        text = f"file {i}".encode()
        com = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
        (sub / f"img{i:07d}.jpg").write_bytes(base[:2] + com + base[2:])
        if (i + 1 - start) % 100_000 == 0:
            log(f"wrote {i + 1 - start:,} files ({(i + 1 - start) / (time.perf_counter() - t0):.0f} files/s)")


def persons_in(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return con.execute("SELECT count(*) FROM persons").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


# Runs a command and writes its children's peak RSS (KiB) and CPU time: a process forked from this small one
# starts with ~10 MB, where one forked from the benchmark would count the benchmark's ~450 MB as its own.
LAUNCHER = ("import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "open(sys.argv[1], 'w').write(json.dumps([rc, u.ru_maxrss, u.ru_utime + u.ru_stime]))")


def run_ingest(tree: Path, data: Path, clip: Path, bert: Path, workers: int | None) -> dict:
    """One ``manage.py ingest --json`` run: its summary plus wall time, time to the first persons, peak RSS."""
    cmd = [sys.executable, "manage.py", "ingest", str(tree), "--data-dir", str(data), "--model", str(clip),
           "--text-model", str(bert), "--detector", "none", "--json"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage.json"
        before = persons_in(data / "a2v.sqlite")  # the first persons are those beyond the store's count
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(usage_file), *cmd], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.DEVNULL)
        first = None
        while proc.poll() is None:
            if first is None and persons_in(data / "a2v.sqlite") > before:
                first = time.perf_counter() - t0
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        rc, maxrss_kib, cpu = json.loads(usage_file.read_text())
        out.seek(0)
        text = out.read().decode()
    if rc != 0:
        raise SystemExit(f"ingest failed ({rc}): {text[-2000:]}")
    summary = json.loads(text)
    return {"summary": summary, "wall": wall, "first": first, "rss_mb": maxrss_kib / 1024, "cpu": cpu}


def seed_by_import(tree: Path, data: Path, clip: Path, bert: Path) -> float:
    """Store every file of the tree (its real path, size, mtime; one random person) with ``manage.py import``
    instead of ingesting it: a store as a full ingest leaves it, in minutes instead of hours. Returns seconds."""
    import numpy as np

    dim = json.loads((clip / "config.json").read_text())["projection_dim"]
    rng = np.random.default_rng(0)
    records = data.parent / "records.jsonl"
    t0 = time.perf_counter()
    folders = sorted(os.scandir(tree), key=lambda e: e.name)
    for start in range(0, len(folders), 50):  # 50 folders per import: bounded memory per import process
        with records.open("w") as f:
            for entry in folders[start:start + 50]:
                for e in os.scandir(entry.path):
                    st = e.stat()
                    f.write(json.dumps({"path": os.path.realpath(e.path), "size": st.st_size, "mtime": st.st_mtime,
                                        "persons": [{"pasta": {"hand: hold": 0.9},
                                                     "visual": np.round(rng.normal(size=dim), 3).tolist()}]}) + "\n")
        subprocess.run([sys.executable, "manage.py", "import", str(records), "--data-dir", str(data), "--model",
                        str(clip), "--text-model", str(bert), "--json"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    records.unlink()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="50,000 files")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary tree goes (default: the system's)")
    ap.add_argument("--per-folder", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: ingest's)")
    ap.add_argument("--keep", action="store_true", help="keep the generated tree and store")
    ap.add_argument("--at", type=Path, default=None,
                    help="a fixed work folder, kept: its tree and store are reused when a previous run made them "
                         "(with --seed-import: re-measures the no-op without regenerating anything)")
    ap.add_argument("--seed-import", action="store_true",
                    help="fill the store with `manage.py import` (one record per file) instead of a full ingest: "
                         "measures the no-op re-run only, for N where a full ingest takes hours")
    ap.add_argument("--new-files", type=int, default=0,
                    help="with --seed-import: add this many new files to the seeded tree and ingest them")
    args = ap.parse_args()
    n = 50_000 if args.quick else args.files
    header("library_bench.py")
    if args.at is not None:
        args.keep = True
        args.at.mkdir(parents=True, exist_ok=True)
    work = args.at or Path(tempfile.mkdtemp(prefix="a2v-library-", dir=args.dir))
    try:
        models = work / "models"
        clip, bert = ((models / "tiny_clip", models / "tiny_bert") if args.at and (models / "tiny_bert").is_dir()
                      else tiny_models(models))
        tree_done, seed_done = work / "tree.done", work / "seed.done"
        if tree_done.is_file() and int(tree_done.read_text()) == n:
            log(f"reusing the tree of {n:,} files in {work}")
        else:
            t0 = time.perf_counter()
            write_tree(work / "tree", n, args.per_folder)
            tree_done.write_text(str(n))
            log(f"tree of {n:,} files written in {time.perf_counter() - t0:.0f} s")
        if args.seed_import:
            if seed_done.is_file() and int(seed_done.read_text()) == n:
                log(f"reusing the store seeded with {n:,} files in {work}")
            else:
                log(f"store seeded by import in {seed_by_import(work / 'tree', work / 'data', clip, bert):.0f} s")
                seed_done.write_text(str(n))
            full = None
            extra_done = work / "extra.done"  # new files earlier runs added to the tree (and the store)
            extra = int(extra_done.read_text()) if extra_done.is_file() else 0
            if args.new_files:
                write_tree(work / "tree" / f"new{extra:07d}", args.new_files, args.per_folder, start=n + extra)
                extra_done.write_text(str(extra + args.new_files))
                full = run_ingest(work / "tree", work / "data", clip, bert, args.workers)
                s = full["summary"]
                if s["media_ingested"] != args.new_files or s["failures"]:
                    raise SystemExit(f"ingested {s['media_ingested']} of {args.new_files}: {s['failures'][:3]}")
                print(f"| files in the store before | new files | first persons committed | run | new files/s | "
                      f"peak RSS | its CPU time |\n|---|---|---|---|---|---|---|\n"
                      f"| {n + extra:,} | {args.new_files:,} | {full['first']:.1f} s | {full['wall']:.1f} s | "
                      f"{args.new_files / full['wall']:.0f} | {full['rss_mb']:.0f} MB | {full['cpu']:.1f} s |\n")
                print("New-files run stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["stages"].items()) + "\n")
                extra += args.new_files
            n += extra
        else:
            full = run_ingest(work / "tree", work / "data", clip, bert, args.workers)
            s = full["summary"]
            if s["media_ingested"] != n or s["failures"]:
                raise SystemExit(f"ingested {s['media_ingested']} of {n}, failures {s['failures'][:3]}")
            log(f"full run: {full['wall']:.0f} s")
        noop = run_ingest(work / "tree", work / "data", clip, bert, args.workers)
        if noop["summary"]["media_skipped"] != n:
            raise SystemExit(f"no-op re-run skipped {noop['summary']['media_skipped']} of {n}")
        if args.seed_import:
            print(f"| files | no-op re-run | its CPU time | files/s | peak RSS (no-op) |\n|---|---|---|---|---|\n"
                  f"| {n:,} | {noop['wall']:.1f} s | {noop['cpu']:.1f} s | {n / noop['wall']:.0f} | "
                  f"{noop['rss_mb']:.0f} MB |\n")
            print("No-op re-run stages: " + ", ".join(f"{k} {v:.1f} s"
                                                      for k, v in noop["summary"]["stages"].items()))
            return
        first = f"{full['first']:.1f} s" if full["first"] is not None else "n/a"
        print(f"| files | first persons committed | full run | files/s | peak RSS (full) | no-op re-run | "
              f"its CPU time | peak RSS (no-op) |\n|---|---|---|---|---|---|---|---|\n"
              f"| {n:,} | {first} | {full['wall']:.1f} s | {n / full['wall']:.0f} | {full['rss_mb']:.0f} MB | "
              f"{noop['wall']:.1f} s | {noop['cpu']:.1f} s | {noop['rss_mb']:.0f} MB |\n")
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in s["stages"].items())
        print(f"Full run stages (seconds summed per stage; decode is summed worker time): {stages}\n")
        print("No-op re-run stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in noop["summary"]["stages"].items()))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
