"""A synthetic case that separates appearance from activity, for the activity space (A2V's classifier feature).

Each person's tower output (what trained heads see) is ``APPEARANCE_SCALE * a_i + b_j + noise``: ``a_i`` one of
six appearances (unit vectors), ``b_j`` one of six activities (unit vectors), so appearance dominates the visual
vector's direction. PaSta heads are trained on these features to predict each activity's PaSta and verb profile
(a2v_search/testing/profiles.py), whatever the appearance. Stored through the import API with the heads' own
probabilities, so the language space sees what the heads predict. Used by tests/test_activity.py and
bench/activity_spaces.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from a2v_search import taxonomy as tx

from .profiles import profile_vectors

ACTIVITIES = ("drink", "kick", "sit_chair", "hug", "phone", "kneel")
N_APPEARANCES = 6
COPIES = 2
APPEARANCE_SCALE = 2.0
NOISE = 0.05
HIDDEN = 32


def features(dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tower outputs (N, dim), appearance (N,), activity (N,)) for every appearance x activity x copy."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    appearance = unit(rng.normal(size=(N_APPEARANCES, dim)))
    act = unit(rng.normal(size=(len(ACTIVITIES), dim)))
    rows, apps, acts = [], [], []
    for i in range(N_APPEARANCES):
        for j in range(len(ACTIVITIES)):
            for _ in range(COPIES):
                rows.append(APPEARANCE_SCALE * appearance[i] + act[j] + NOISE * rng.normal(size=dim))
                apps.append(i)
                acts.append(j)
    return np.asarray(rows, np.float32), np.asarray(apps), np.asarray(acts)


def train_heads(feat: np.ndarray, acts: np.ndarray, seed: int = 0, steps: int = 150):
    """PastaHeads trained (BCE on the profiles' probabilities) to read the activity out of the features."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is much faster on shared cores
    try:
        return _train(feat, acts, seed, steps)
    finally:
        torch.set_num_threads(threads)


def _train(feat: np.ndarray, acts: np.ndarray, seed: int, steps: int):
    import torch

    from a2v_search.models.heads import PastaHeads

    torch.manual_seed(seed)
    heads = PastaHeads(dim_in=feat.shape[1], dim_hidden=HIDDEN)
    targets = [profile_vectors(ACTIVITIES[j], seed=0, noise=0.0) for j in acts]
    pasta = torch.tensor(np.stack([t[0] for t in targets]))
    verbs = torch.tensor(np.stack([t[1] for t in targets]))
    parts = torch.tensor(np.stack([[p[r.start:r.stop - 1].max() for r in tx.PART_RANGES.values()]
                                   for p, _ in targets]))
    x = torch.tensor(feat)
    opt = torch.optim.Adam(heads.parameters(), lr=2e-2)
    bce = torch.nn.functional.binary_cross_entropy
    for _ in range(steps):
        out = heads(x)
        loss = bce(out["pasta"], pasta) + bce(out["verbs"], verbs) + bce(out["parts"], parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads.eval()


def build(folder: Path, clip_dir: Path, dim: int, seed: int = 0) -> tuple[Path, list[dict], np.ndarray, np.ndarray]:
    """(checkpoint folder, import records, appearance per record, activity per record)."""
    import torch

    from a2v_search.models.checkpoint import save_checkpoint

    feat, apps, acts = features(dim, seed)
    heads = train_heads(feat, acts, seed)
    ckpt = save_checkpoint(folder / "synthetic-heads", heads, backbone_ref=str(clip_dir))
    with torch.no_grad():
        out = heads(torch.tensor(feat))
    records = [{"path": f"/synthetic/app{a}/{ACTIVITIES[j]}_{n}.jpg", "collection": "synthetic",
                "persons": [{"visual": feat[n].tolist(), "pasta": out["pasta"][n].tolist(),
                             "verbs": out["verbs"][n].tolist(), "parts": out["parts"][n].tolist()}]}
               for n, (a, j) in enumerate(zip(apps, acts, strict=True))]
    return ckpt, records, apps, acts


def what_each_space_finds(api, apps: np.ndarray, acts: np.ndarray, k: int = 5) -> dict[str, dict[str, float]]:
    """For every stored person as the example (search by person, itself left out), the share of the top k in
    each space that has the same activity (other appearance) and the same appearance (other activity)."""
    spaces = {"visual": (1, 0, 0), "language": (0, 1, 0), "activity": (0, 0, 1), "visual+language": (0.5, 0.5, 0)}
    out = {}
    for name, weights in spaces.items():
        same_act = same_app = 0
        for pid in range(1, len(apps) + 1):  # ids 1..N in record order
            for h in api.search_similar(pid, k=k, weights=weights):
                a, j = apps[h.person_id - 1], acts[h.person_id - 1]
                same_act += int(j == acts[pid - 1] and a != apps[pid - 1])
                same_app += int(a == apps[pid - 1] and j != acts[pid - 1])
        total = k * len(apps)
        out[name] = {"same_activity_other_appearance": same_act / total,
                     "same_appearance_other_activity": same_app / total}
    return out
