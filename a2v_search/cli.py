"""The command line: parse, call the library, print. ``manage.py`` and the ``a2v`` script call :func:`main`.

Heavy imports (torch, transformers, faiss) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from .cli_options import (
    DataDir,
    Detector,
    DetectorFlags,
    Device,
    FilterFlags,
    Json,
    ModelFlags,
    Precision,
    PrecisionName,
    Trust,
    flag_groups,
)
from .errors import A2VError, InputError

app = typer.Typer(
    name="a2v",
    help="a2v-search: find human activities (HAKE PaSta part states and verbs) in images and videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _api(data_dir: Path | None = None, *, models: ModelFlags = ModelFlags(), detector: str | None = None,
         detection: DetectorFlags = DetectorFlags(), compile: str = "off", precision: str = "auto"):
    """The library object a command works with, from its flags."""
    from .api import A2VSearch
    from .detect import DetectorOptions

    return A2VSearch.open(data_dir, **asdict(models), detector=detector,
                          detector_options=DetectorOptions(**asdict(detection)), compile=compile,
                          precision=precision)


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, markup=False, soft_wrap=True)  # paths may contain [brackets]


# ------------------------------------------------------------------ ingest


@app.command()
@flag_groups
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Image and video files, folders (recursive) or list files "
                                                    "(.txt, one path per line).", show_default=False)],
    data_dir: DataDir = None,
    collection: Annotated[str, typer.Option(help="Collection name to file these media under.")] = "default",
    detector: Detector = None,
    models: ModelFlags = ModelFlags(),
    batch_size: Annotated[int | None, typer.Option(help="Persons per model batch (default: 32 on the CPU, 256 on a "
                                                        "GPU with 16 GiB or more, else 64).",
                                                   show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(help="Decode processes (default: cores - 1; 0 = in process); with "
                                                     "--engine ray: model actors (default: one per GPU, else 1).",
                                                show_default=False)] = None,
    engine: Annotated[str, typer.Option(help="local: this machine; ray: decode, detect and encode on a Ray "
                                             "cluster (needs the ray extra); this process still writes.")
                      ] = "local",
    ray_address: Annotated[str | None, typer.Option(help="With --engine ray: auto (the running cluster) or "
                                                         "HOST:PORT; default: start Ray on this machine.",
                                                    show_default=False)] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(help="With --engine ray: GPUs per model actor (default: "
                                                              "1 when the cluster has GPUs, else 0).",
                                                          show_default=False)] = None,
    video_fps: Annotated[float, typer.Option(help="Video frames sampled per second.")] = 1.0,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger images (decompression bombs).")] = 100_000_000,
    commit_every: Annotated[int, typer.Option(help="Persons per SQLite transaction (whole media only).")] = 1024,
    file_timeout: Annotated[float, typer.Option(help="Seconds a decode worker may spend on one file (or 60-s "
                                                     "video segment) before it is a failure; 0 = no limit.")] = 300.0,
    detection: DetectorFlags = DetectorFlags(),
    force: Annotated[bool, typer.Option("--force", help="Re-encode files already stored.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 if any file failed.")] = False,
    jpeg_decoder: Annotated[str, typer.Option(help="auto (on the GPU when the model runs on CUDA and torchvision "
                                                   "is installed), gpu or cpu.")] = "auto",
    compile: Annotated[str, typer.Option(help="torch.compile the model: off, default, max-autotune or "
                                              "reduce-overhead (CUDA graphs).")] = "off",
    precision: Precision = PrecisionName.auto,
    as_json: Json = False,
) -> None:
    """Compute per-person activity vectors for images and videos and store them (incremental, resumable)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    api = _api(data_dir, models=models, detector=detector, detection=detection, compile=compile,
               precision=precision.value)
    columns = (TextColumn("ingest"), BarColumn(), TextColumn("{task.fields[counts]}"),
               TextColumn("{task.fields[files_rate]:.1f} files/s, {task.fields[persons]} persons, "
                          "{task.fields[rate]:.1f} persons/s"), TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=as_json) as bar:
        task = bar.add_task("ingest", total=None, persons=0, rate=0.0, files_rate=0.0, counts="starting")
        started = time.monotonic()

        def on_progress(p) -> None:
            elapsed = max(time.monotonic() - started, 1e-9)
            counts = f"{p.done}/{p.total} files" if p.total is not None else \
                f"{p.done} done of {p.seen} seen so far (walk goes on)"
            bar.update(task, completed=p.done, total=p.total, counts=counts, persons=p.persons,
                       rate=p.persons / elapsed, files_rate=p.done / elapsed)

        report = api.ingest(paths, collection=collection, batch_size=batch_size, workers=workers,
                            video_fps=video_fps, force=force, max_pixels=max_pixels, commit_every=commit_every,
                            jpeg_decoder=jpeg_decoder, file_timeout=file_timeout or None, on_progress=on_progress,
                            engine=engine, ray_address=ray_address, gpus_per_worker=gpus_per_worker)
    if as_json:
        _print_json(report.as_dict())
    else:
        con = _console()
        con.print(f"files seen {report.files_seen} | ingested {report.media_ingested} | skipped "
                  f"{report.media_skipped} | duplicates {report.duplicates} | persons added {report.persons_added} | "
                  f"failures {len(report.failures)} | {report.seconds:.1f} s | {report.persons_per_s:.1f} persons/s")
        con.print("stages: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.stages.items()))
        for f in report.failures:
            con.print(f"failed: {json.dumps(f['path'])} ({f['stage']}): {f['error']}")
    nothing_read = report.failures and not (report.media_ingested or report.media_skipped or report.duplicates)
    if (strict and report.failures) or nothing_read:
        raise typer.Exit(1)


@app.command("import")
@flag_groups
def import_(
    file: Annotated[Path, typer.Argument(help="JSON lines (or a JSON list) of precomputed records; see docs. A pipe "
                                              "works too: producer | manage.py import /dev/stdin",
                                         show_default=False)],
    data_dir: DataDir = None,
    collection: Annotated[str, typer.Option(help="Collection for records that name none.")] = "default",
    models: ModelFlags = ModelFlags(),
    as_json: Json = False,
) -> None:
    """Add persons whose probabilities and visual vectors were computed elsewhere."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    api = _api(data_dir, models=models)
    counts = TextColumn("{task.fields[records]:,} records, {task.fields[persons]:,} persons, "
                        "{task.fields[rate]:,.0f} persons/s")
    columns = (TextColumn("import"), BarColumn(), counts, TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=as_json) as bar:
        task = bar.add_task("import", total=None, records=0, persons=0, rate=0.0)

        def on_progress(p) -> None:  # a file's share read (None: a pipe, the bar just pulses)
            bar.update(task, total=None if p.fraction is None else 1.0, completed=p.fraction or 0.0,
                       records=p.records, persons=p.persons, rate=p.persons / max(p.seconds, 1e-9))

        report = api.import_records(file, collection, on_progress=on_progress)
    if as_json:
        _print_json(report.as_dict())
    else:
        _console().print(f"records {report.records} | media added {report.media_added} | persons added "
                         f"{report.persons_added} | failures {len(report.failures)}")
        for f in report.failures:
            _console().print(f"failed: {f['error']}")
    if report.failures and not report.media_added:
        raise typer.Exit(1)


# ------------------------------------------------------------------ search


@app.command()
@flag_groups
def search(
    image: Annotated[Path | None, typer.Option(help="Query by example: persons like the one in this image.",
                                               show_default=False)] = None,
    text: Annotated[str | None, typer.Option(help="PaSta text ('hand: hold=2; head: drink with') or free text "
                                                  "('drinking from a cup').", show_default=False)] = None,
    clip_text: Annotated[str | None, typer.Option(help="Free text through CLIP's text tower, against the visual "
                                                       "space.", show_default=False)] = None,
    person: Annotated[int | None, typer.Option(help="More like this stored person id.", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 10,
    offset: Annotated[int, typer.Option(help="Skip this many results (pagination).")] = 0,
    min_score: Annotated[float | None, typer.Option(help="Drop results scoring below.", show_default=False)] = None,
    filters: FilterFlags = FilterFlags(),
    per_media: Annotated[bool, typer.Option("--per-media", help="At most one person per image or video.")] = False,
    group: Annotated[str | None, typer.Option(help="'track': one result per video moment (a person tracked "
                                                   "through frames) instead of one per frame.",
                                              show_default=False)] = None,
    moment_frames: Annotated[int, typer.Option(help="With --group track: a moment scores the mean of its best N "
                                                    "frame scores (1 = its best frame; brief actions rank higher).")
                             ] = 3,  # tracks.TOP_FRAMES
    weights: Annotated[str, typer.Option(help="VISUAL,LANGUAGE[,ACTIVITY] weights of image and person queries "
                                              "(ACTIVITY: A2V's classifier feature, trained heads only).")] = "0.5,0.5",
    box: Annotated[str | None, typer.Option(help="Query person box x1,y1,x2,y2 in the query image.",
                                            show_default=False)] = None,
    person_index: Annotated[int | None, typer.Option(help="Which detected query person (default: the largest).",
                                                     show_default=False)] = None,
    sheet: Annotated[Path | None, typer.Option(help="Also write a contact sheet PNG of the hits.",
                                               show_default=False)] = None,
    data_dir: DataDir = None,
    detector: Detector = None,
    models: ModelFlags = ModelFlags(),
    as_json: Json = False,
) -> None:
    """Search stored persons by example image, PaSta text, free text, CLIP text or person id."""
    given = [n for n, v in (("--image", image), ("--text", text), ("--clip-text", clip_text), ("--person", person))
             if v is not None]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --image, --text, --clip-text, --person"
                                 + (f" (got {', '.join(given)})" if given else ""))
    from .search import SearchOptions

    api = _api(data_dir, models=models, detector=detector)
    opts = SearchOptions(k=k, offset=offset, per_media=per_media, min_score=min_score, group=group,
                         moment_frames=moment_frames, **filters.as_dict())
    result = api.search(image=image, text=text, clip_text=clip_text, person=person, box=box,
                        person_index=person_index, weights=weights, options=opts)
    if sheet is not None:
        from .pictures import contact_sheet

        contact_sheet(result.hits, sheet)
    if as_json:
        _print_json(result.as_dict())
        return
    _print_hits(result, sheet)


def _print_hits(result, sheet: Path | None) -> None:
    from .objects import objects_text

    con = _console()
    q = result.query
    if q.get("mode"):
        read = "; ".join([f"{n}={w:.2f}" for n, w in q["pasta"] + q["verbs"]] +
                         [f"object: {n}={w:.2f}" for n, w in q.get("objects", [])])
        match = q.get("match")  # free text: how well it matches each block, which weighs the blocks
        weighed = (f" (best match with a PaSta {match['pasta']:.2f}, a verb {match['verbs']:.2f}, an object "
                   f"{match['objects']:.2f} over 'a person')") if match else ""
        con.print(f"query read as {q['mode']} text: {read}{weighed}")
    if not result.hits:
        con.print("no results")
    for h in result.hits:
        where = f"  frame {h.frame_index} at {h.t_sec:.2f} s" if h.kind == "video" else ""
        box = ",".join(f"{v:.0f}" for v in h.box)
        m = h.moment
        if m is not None:
            con.print(f"{h.rank:>3}  {h.score:.4f}  track {m.track}  {h.path}  {m.t_start:.2f}-{m.t_end:.2f} s "
                      f"({m.persons} frames)  best: person {h.person_id}{where} score {m.frame_score:.4f} box {box}")
        else:
            con.print(f"{h.rank:>3}  {h.score:.4f}  person {h.person_id}  {h.path}  box {box}{where}")
        con.print("     PaSta: " + ", ".join(f"{n} {p:.2f}" for n, p in h.pasta[:3])
                  + " | verbs: " + ", ".join(f"{n} {p:.2f}" for n, p in h.verbs[:3])
                  + (f" | objects: {objects_text(h.objects)}" if h.objects else ""))
    if sheet is not None:
        con.print(f"contact sheet: {sheet}")


# ------------------------------------------------------------------ export


@app.command()
@flag_groups
def export(
    out: Annotated[Path, typer.Option("--out", help="Output file (.parquet, .npz or .jsonl).", show_default=False)],
    format: Annotated[str | None, typer.Option("--format", help="parquet, npz or jsonl (default: from --out's "
                                                                "suffix).", show_default=False)] = None,
    fields: Annotated[list[str] | None, typer.Option(help="Fields to write, comma-separated or repeated (default: "
                                                          "all but language_basis).", show_default=False)] = None,
    filters: FilterFlags = FilterFlags(),
    batch_size: Annotated[int, typer.Option(help="Persons read and written at a time (memory bound).")] = 4096,
    clustering: Annotated[str | None, typer.Option(help="Add the column 'cluster': each person's cluster in this "
                                                        "stored clustering (`manage.py clusters`).",
                                                   show_default=False)] = None,
    data_dir: DataDir = None,
    device: Device = None,
    as_json: Json = False,
) -> None:
    """Write one row per stored person (ids, media, box, PaSta, verbs, parts, visual, language and, with trained
    heads, A2V's classifier feature) to Parquet, npz or JSON lines, with metadata that explains the file."""
    api = _api(data_dir, models=ModelFlags(device=device))
    report = api.export(out, format=format, fields=fields, batch_size=batch_size, clustering=clustering,
                        **filters.as_dict())
    if as_json:
        _print_json(report.as_dict())
        return
    con = _console()
    con.print(f"exported {report.rows} persons to {report.path} ({report.format}) in {report.seconds:.1f} s")
    con.print(f"fields: {', '.join(report.fields)}")
    for note in report.notes:
        con.print(f"note: {note}")


# ------------------------------------------------------------------ activities and clusters


@app.command()
@flag_groups
def activities(
    filters: FilterFlags = FilterFlags(),
    min_p: Annotated[float, typer.Option(help="A person shows a label when its probability is at least this (0.5 "
                                              "suits trained heads; zero-shot heads give distributions: try "
                                              "0.2).")] = 0.5,
    top: Annotated[int, typer.Option(help="Labels (and pairs) listed per kind.")] = 20,
    examples: Annotated[int, typer.Option(help="Example persons per label.")] = 4,
    sheet: Annotated[Path | None, typer.Option(help="Also write a PNG: the top labels, each with its example "
                                                    "persons.", show_default=False)] = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """What are people doing here? The verbs, PaSta, objects, verb + PaSta and verb + object pairs of the persons
    (of a collection or filter) with their counts and example persons."""
    api = _api(data_dir)
    o = api.activities(min_p=min_p, top=top, examples=examples, **filters.as_dict())
    if sheet is not None:
        from .pictures import labelled_rows

        shown = ([(f"verb {e['name']}", e) for e in o["verbs"][:8]] + [(e["name"], e) for e in o["pasta"][:8]]
                 + [(f"object {e['name']}", e) for e in o["objects"][:8]]
                 + [(f"{e['verb']} + {e['pasta']}", e) for e in o["pairs"]["verb_pasta"][:8]]
                 + [(f"{e['verb']} + {e['object']}", e) for e in o["pairs"]["verb_object"][:8]])
        rows = {r.id: r for r in api.store.persons([i for _, e in shown for i in e["examples"]])}
        labelled_rows([(f"{label}: {e['count']} persons ({100 * e['share']:.1f}%)",
                        [rows[i] for i in e["examples"] if i in rows]) for label, e in shown], sheet)
    if as_json:
        _print_json(o)
        return
    con = _console()
    con.print(f"{o['persons']} persons; a label counts where its probability is >= {o['min_p']:g} "
              f"({o['counted']} counts)")
    for title, entries, label in (("verbs", o["verbs"], lambda e: e["name"]),
                                  ("PaSta", o["pasta"], lambda e: e["name"]),
                                  ("objects", o["objects"], lambda e: e["name"]),
                                  ("verb + PaSta", o["pairs"]["verb_pasta"], lambda e: f"{e['verb']} + {e['pasta']}"),
                                  ("verb + object", o["pairs"]["verb_object"],
                                   lambda e: f"{e['verb']} + {e['object']}")):
        con.print(f"{title}:" + ("" if entries else " none"))
        for e in entries:
            con.print(f"  {e['count']:>8}  {100 * e['share']:5.1f}%  {label(e)}   e.g. persons "
                      + ", ".join(map(str, e["examples"])))
    if sheet is not None:
        con.print(f"sheet: {sheet}")


@app.command()
@flag_groups
def cluster(
    k: Annotated[int | None, typer.Option("-k", "--k", help="Number of clusters.", show_default=False)] = None,
    auto: Annotated[bool, typer.Option("--auto", help="Choose k: the highest silhouette among 2 to 128 "
                                                      "(docs/design.md).")] = False,
    space: Annotated[str, typer.Option(help="language (PaSta and verbs in the BERT space), visual (CLIP) or "
                                            "activity (A2V's feature, trained heads).")] = "language",
    name: Annotated[str, typer.Option(help="Store the clustering under this name (replaces one of that name); "
                                           "clusters are then NAME:ID.")] = "default",
    filters: FilterFlags = FilterFlags(),
    seed: Annotated[int, typer.Option(help="Seed of the sample and of k-means.")] = 0,
    niter: Annotated[int, typer.Option(help="k-means iterations.")] = 20,
    drop: Annotated[bool, typer.Option("--drop", help="Delete the clustering --name instead.")] = False,
    data_dir: DataDir = None,
    device: Device = None,
    as_json: Json = False,
) -> None:
    """Group the stored persons into k clusters of similar activity (k-means), each named by what sets it apart;
    search or show a cluster afterwards with --cluster NAME:ID."""
    api = _api(data_dir, models=ModelFlags(device=device))
    if drop:
        api.drop_clustering(name)
        _console().print(f"clustering {name!r} deleted")
        return
    r = api.cluster(k=k, auto=auto, space=space, name=name, seed=seed, niter=niter, **filters.as_dict())
    if as_json:
        _print_json(r)
        return
    con = _console()
    how = f" (--auto: silhouette {r['info']['auto']['silhouette']})" if "auto" in r["info"] else ""
    con.print(f"clustering {r['name']!r}: {r['persons']} persons in {r['k']} clusters of the {r['space']} space"
              f"{how}, {r['info']['seconds']['total']:.1f} s")
    _print_clusters(r["clusters"], r["name"])


def _print_clusters(clusters: list[dict], name: str) -> None:
    con = _console()
    for c in sorted(clusters, key=lambda c: (-c["size"], c["cluster"])):
        con.print(f"  {name}:{c['cluster']:<4} {c['size']:>8} persons  {c['name']}   e.g. persons "
                  + ", ".join(map(str, c["examples"][:4])))


@app.command()
def clusters(
    name: Annotated[str | None, typer.Argument(help="A clustering to show (default: list them all).",
                                               show_default=False)] = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """The stored clusterings, or the clusters of one: names, sizes, example persons, staleness."""
    api = _api(data_dir)
    found = [api.clustering(name)] if name is not None else api.clusterings()
    if as_json:
        _print_json(found[0] if name is not None else found)
        return
    con = _console()
    if not found:
        con.print("no clusterings yet; make one with `manage.py cluster --k 20`")
    for c in found:
        stale = f"; STALE: {c['persons_since']} persons stored since belong to no cluster (run `manage.py " \
                f"cluster --name {c['name']}` again)" if c["stale"] else ""
        con.print(f"{c['name']}: {c['k']} clusters of the {c['space']} space, {c['persons']} persons"
                  + (f", filters {json.dumps(c['filters'])}" if c["filters"] else "") + stale)
        if name is not None:
            _print_clusters(c["clusters"], c["name"])


# ------------------------------------------------------------------ predict / show


@app.command()
@flag_groups
def predict(
    image: Annotated[Path, typer.Argument(help="An image file.", show_default=False)],
    box: Annotated[str | None, typer.Option(help="The person's box x1,y1,x2,y2 (pixels).",
                                            show_default=False)] = None,
    detector: Detector = None,
    models: ModelFlags = ModelFlags(),
    detection: DetectorFlags = DetectorFlags(),
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Print the PaSta, verbs and part flags of the persons in one image; nothing is stored."""
    from . import taxonomy as tx

    api = _api(data_dir, models=models, detector=detector, detection=detection)
    from .search import parse_box

    persons = api.predict(image, box=parse_box(box))
    if as_json:
        _print_json({"image": str(image), "persons": persons})
        return
    from rich.table import Table

    con = _console()
    if not persons:
        con.print(f"no person found in {image}")
    for i, p in enumerate(persons):
        table = Table(title=f"person {i}: box {p['box']} score {p['score']}")
        table.add_column("part")
        table.add_column("flag")
        table.add_column("top states")
        for part, rng in tx.PART_RANGES.items():
            states = sorted(((tx.PASTA_NAMES[j], p["pasta"][tx.PASTA_NAMES[j]]) for j in rng), key=lambda t: -t[1])
            table.add_row(part, f"{p['parts'][part]:.2f}",
                          ", ".join(f"{n.split(': ', 1)[1]} {v:.2f}" for n, v in states[:3]))
        verbs = sorted(p["verbs"].items(), key=lambda t: -t[1])[:5]
        table.add_row("verbs", "", ", ".join(f"{n} {v:.2f}" for n, v in verbs))
        if p["objects"]:
            table.add_row("objects", "", ", ".join(f"{o['name']} {o['p']:.2f}" for o in p["objects"]))
        con.print(table)


@app.command()
@flag_groups
def show(
    image: Annotated[Path | None, typer.Argument(help="An image file.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the picture (.png/.jpg).",
                                             show_default=False)] = None,
    track: Annotated[int | None, typer.Option(help="Instead of an image: a stored video track (the 'track' of "
                                                   "`search --group track`), drawn as a strip of its frames.",
                                              show_default=False)] = None,
    cluster: Annotated[str | None, typer.Option(help="Instead of an image: a contact sheet of the persons of a "
                                                     "cluster NAME:ID (`manage.py clusters`), closest to its "
                                                     "centre first.", show_default=False)] = None,
    box: Annotated[str | None, typer.Option(help="The person's box x1,y1,x2,y2.", show_default=False)] = None,
    detector: Detector = None,
    models: ModelFlags = ModelFlags(),
    detection: DetectorFlags = DetectorFlags(),
    data_dir: DataDir = None,
) -> None:
    """Draw the persons of an image with their top PaSta and verbs, or a stored video track as a strip."""
    from .api import query_image
    from .pictures import draw_persons, draw_track

    if out is None or sum(v is not None for v in (image, track, cluster)) != 1:
        raise typer.BadParameter("give an image, --track ID or --cluster NAME:ID, and --out")
    if cluster is not None:
        from .pictures import contact_sheet

        result = _api(data_dir, models=models).cluster_persons(cluster, k=20)
        written = contact_sheet(result.hits, out)
        _console().print(f"cluster {cluster} ({result.query['name']}): {len(result.hits)} persons closest to its "
                         f"centre: {written}")
        return
    if track is not None:
        moment = _api(data_dir).track(track)
        written = draw_track(moment, out)
        _console().print(f"track {track}: {moment['path']} {moment['t_start']:.2f}-{moment['t_end']:.2f} s, "
                         f"{len(moment['persons'])} frames: {written}")
        return
    api = _api(data_dir, models=models, detector=detector, detection=detection)
    from .search import parse_box

    persons = api.predict(image, box=parse_box(box))
    written = draw_persons(query_image(image), persons, out)
    _console().print(f"{len(persons)} persons drawn: {written}")


# ------------------------------------------------------------------ store maintenance


@app.command()
def stats(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Counts of media, persons, failures, indexes and vector spaces."""
    s = _api(data_dir).stats()
    if as_json:
        _print_json(s)
        return
    con = _console()
    con.print(f"store {s['data_dir']}: {s['media']} media ({s['images']} images, {s['videos']} videos, "
              f"{s['duplicates']} duplicates), {s['persons']} persons, {s['tracks']} video tracks, "
              f"{s['failures']} failures")
    for name, n in sorted(s["collections"].items()):
        con.print(f"  collection {name}: {n} media")
    for name, idx in s["indexes"].items():
        con.print(f"  index {name}: {idx['spec']}, {idx['count']} vectors of dim {idx['dim']}, {idx['bytes']} bytes")
    if s["space"]:
        con.print("  space: " + ", ".join(f"{k} {v}" for k, v in s["space"].items()))
        con.print(f"  activity space: {s['activity_space']}")


@app.command()
def doctor(
    data_dir: DataDir = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is found (takes the write lock).")] = False,
    as_json: Json = False,
) -> None:
    """Check that SQLite and FAISS agree; --repair fixes what is found."""
    report = _api(data_dir).doctor(repair=repair)
    if as_json:
        _print_json({"ok": report.ok, "counts": report.counts, "problems": [p.as_dict() for p in report.problems]})
    else:
        con = _console()
        for p in report.problems:
            con.print(f"{'fixed' if p.fixed else 'problem'}: {p.what}: {p.detail}")
        con.print("store is consistent" if not report.problems else
                  ("all problems fixed" if report.ok else "run `manage.py doctor --repair` to fix them"))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def reindex(
    data_dir: DataDir = None,
    index_spec: Annotated[str | None, typer.Option(help="'auto' or a FAISS factory string such as 'IVF4096,SQ8' "
                                                        "(remembered).", show_default=False)] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory budget per index for the automatic choice.",
                                                  show_default=False)] = None,
) -> None:
    """Rebuild the FAISS indexes from SQLite."""
    specs = _api(data_dir).reindex(index_spec, memory_mb)
    _console().print("rebuilt: " + ", ".join(f"{n} {s}" for n, s in specs.items()))


@app.command()
def remove(
    paths: Annotated[list[str], typer.Argument(help="Files or folders to remove from the store.", show_default=False)],
    data_dir: DataDir = None,
) -> None:
    """Remove media (and their persons) from the store; the files themselves are not touched."""
    r = _api(data_dir).remove(paths)
    _console().print(f"removed {r['media_removed']} media, {r['persons_removed']} persons")
    if not r["media_removed"]:
        raise typer.Exit(1)


@app.command()
@flag_groups
def serve(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback exposes the store to "
                                           "the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    token: Annotated[str | None, typer.Option(envvar="A2V_TOKEN", help="Require this bearer token on every "
                                                                       "request (env A2V_TOKEN).",
                                              show_default=False)] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(help="Also answer requests for this host name "
                                                                "(repeatable; '*': any, for a reverse proxy that "
                                                                "checks it). Loopback names, and off loopback any IP "
                                                                "address, are always answered.",
                                                           show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest query image upload.")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger query images (decompression bombs).")] = 100_000_000,
    detector: Detector = None,
    models: ModelFlags = ModelFlags(),
) -> None:
    """Serve a JSON HTTP API and a search page over the store (read-only; sees new persons without a restart)."""
    import ipaddress

    try:
        import uvicorn

        from .serve.server import LOOPBACK_HOSTS, create_app, server_options
    except ImportError as e:
        raise InputError(f"serve needs the serve extra ({e.name} is missing): pip install -e '.[serve]'") from None
    if not 0 < port < 65536:
        raise InputError(f"--port {port} must be between 1 and 65535")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    hosts = [*LOOPBACK_HOSTS, *(allowed_host or []), *([] if loopback or host in ("0.0.0.0", "::") else [host])]
    api = _api(data_dir, models=models, detector=detector)
    app_ = create_app(api, token=token or None, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                      allowed_hosts=hosts, any_ip=not loopback)
    con = _console(stderr=True)
    if not loopback:
        con.print(f"warning: listening on {host}, not loopback: anyone who can reach this machine can search the "
                  "store and see its images" + ("" if token else "; set A2V_TOKEN (or --token) to require a token")
                  + "; off a trusted network, put a reverse proxy with TLS in front (docs/serve.md)")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    if not (api.data_dir / "a2v.sqlite").is_file():
        con.print(f"warning: no store at {api.data_dir} yet; searches answer once something is ingested there")
    con.print(f"serving {api.data_dir} at {url} (API: /openapi.json, /docs); Ctrl-C stops")
    uvicorn.run(app_, host=host, port=port, **server_options())


@app.command("convert-checkpoint")
def convert_checkpoint(
    src: Annotated[Path, typer.Argument(help="The published ckpt_4.pth.", show_default=False)],
    out: Annotated[Path, typer.Argument(help="New folder for the converted checkpoint.", show_default=False)],
    trust_checkpoint: Trust = False,
) -> None:
    """Convert the published CLIP-Activity2Vec checkpoint once into safetensors + JSON (no pickle needed later)."""
    from .models.checkpoint import convert_checkpoint as convert

    written = convert(src, out, trust=trust_checkpoint)
    _console().print(f"converted {src} -> {written} (load it with --checkpoint {written})")


from .training import cli_train  # noqa: E402

cli_train.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; errors become one line on stderr and a non-zero exit code (2 for usage errors)."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        rv = app(args=argv, prog_name="a2v", standalone_mode=False)
    except typer.Abort:
        sys.exit(_fail("aborted", code=130))
    except typer.TyperException as e:  # click's usage errors (exit code 2) and other click exceptions
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        code = getattr(e, "exit_code", 1)
        sys.exit(_fail(f"{message}{hint}", code=code) if message else code)  # no args: help was printed
    except KeyboardInterrupt:
        sys.exit(_fail("interrupted", code=130))
    except A2VError as e:
        sys.exit(_fail(str(e)))
    if rv == 130:  # Ctrl-C: typer turns KeyboardInterrupt into this exit code before it reaches the line above
        sys.exit(_fail("interrupted", code=130))
    sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int = 1) -> int:
    typer.echo(f"error: {message}", err=True)
    return code
