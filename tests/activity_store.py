"""A store whose persons have known activities (three profiles; drinkers hold a cup), for the overview, cluster
and browse tests; with ``images``, every media path is a real small JPEG (thumbnails load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import media, writable_store
from PIL import Image

from a2v_search import taxonomy as tx
from a2v_search.store import Store
from db.values import NewPerson

# profile -> (verbs, PaSta) at the given probabilities; everything else 0.01
PROFILES = {
    "ride": ({"ride": 0.9, "straddle": 0.6}, {"hip: sit on": 0.8, "foot: stand on": 0.7}),
    "drink": ({"drink_with": 0.7}, {"hand: hold": 0.9, "head: drink with": 0.8}),
    "kick": ({"kick": 0.6, "run": 0.45}, {"foot: kick": 0.9}),
}


def person(rng, profile: str, bump: float = 0.0) -> NewPerson:
    verbs, pasta = np.full(tx.N_VERBS, 0.01, np.float32), np.full(tx.N_PASTA, 0.01, np.float32)
    for name, p in PROFILES[profile][0].items():
        verbs[tx.verb_index(name)] = p + bump
    for name, p in PROFILES[profile][1].items():
        pasta[tx.pasta_index(name)] = p + bump
    visual = rng.normal(size=16).astype(np.float32)
    return NewPerson(box=[1, 2, 30, 40], pasta=pasta, verbs=verbs, parts=np.ones(6, np.float32),
                     visual=visual / np.linalg.norm(visual), visual_norm=float(np.linalg.norm(visual)),
                     objects=OBJECTS.get(profile, ()))


# profile -> the objects its persons act on (class, p, box)
OBJECTS = {"drink": ((tx.object_index("cup"), 0.8, None),)}

COLORS = {"ride": (200, 60, 40), "drink": (40, 120, 200), "kick": (60, 170, 80)}


def fill(data_dir, per: dict[str, int], collection=lambda profile: "trip" if profile == "ride" else "home",
         start: int = 0, images: Path | None = None):
    """Write ``per[profile]`` persons of each profile, one image each (``/m/PROFILE/N.jpg``, or real files under
    ``images``); person i of a profile gets its probabilities raised by i / 1000, so the last one written is the
    best example. Returns {profile: ids in write order}."""
    rng = np.random.default_rng(start)
    store = writable_store(data_dir) if start == 0 else Store(data_dir).lock("test")
    if start:
        store.space.ensure(store.space.config(), store.space.language())
    ids = {}
    for profile, n in per.items():
        paths = [f"/m/{profile}/{start + i}.jpg" for i in range(n)]
        if images is not None:
            paths = [str(images / p[3:]) for p in paths]
            for p in paths:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (64, 48), COLORS[profile]).save(p)
        items = [media(path, [person(rng, profile, i / 1000)], collection=collection(profile))
                 for i, path in enumerate(paths)]
        if images is not None:  # the file as stored: the server serves it only while it is unchanged
            for item in items:
                st = Path(item.path).stat()
                item.size, item.mtime = st.st_size, st.st_mtime
        ids[profile] = store.write(items).tolist()
    store.close()
    return ids
