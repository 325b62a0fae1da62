"""The decode pool: images go to the workers a chunk per call, pixels come back in a shared-memory ring (issue 26's
pipeline cost). Results equal those of decoding in this process, whatever travels where, and no slot is lost when a
worker hangs or crashes in the middle of a chunk."""

from __future__ import annotations

import mmap
import multiprocessing

import numpy as np
import pytest
from PIL import Image

from a2v_search.ingest import ring as pixel_ring
from a2v_search.ingest.decode import DecodeResult, DecodeTask, Item, decode
from a2v_search.ingest.decode_pool import CHUNK, DecodePool
from a2v_search.preprocess import Preprocess
from a2v_search.testing.media import noise


def images(folder, n: int, w: int = 64, h: int = 48) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(noise(i, w, h)).save(path)
        paths.append(str(path))
    return paths


def tasks(paths: list[str], pre: Preprocess) -> list[DecodeTask]:
    """Whole images, crops (two persons), frames for a detector: pixels of every size, some over a slot."""
    out = []
    for i, p in enumerate(paths):
        if i % 3 == 1:
            out.append(DecodeTask(path=p, kind="image", preprocess=pre,
                                  boxes=[([0, 0, 30, 40], 0.9, ()), ([10, 5, 60, 45], 0.8, ())]))
        else:
            out.append(DecodeTask(path=p, kind="image", preprocess=pre, for_detector=i % 3 == 2))
    return out


def through_pool(todo: list[DecodeTask], **pool_args) -> tuple[list[tuple[int, DecodeResult]], DecodePool]:
    pool = DecodePool(2, pool_args.pop("timeout", 60.0), **pool_args)
    out = []
    try:
        for i, task in enumerate(todo):
            pool.put(i, task)
            if len(pool) >= pool.ahead:
                out.append(pool.take())
        while len(pool):
            out.append(pool.take())
    finally:
        pool.close()
    return out, pool


def same(a: DecodeResult, b: DecodeResult) -> None:
    assert (a.path, a.error, a.width, a.height, len(a.items)) == (b.path, b.error, b.width, b.height, len(b.items))
    assert not a.in_ring
    for x, y in zip(a.items, b.items, strict=True):
        assert x.box == y.box
        for attr in ("pixels", "frame"):
            u, v = getattr(x, attr), getattr(y, attr)
            assert (u is None) == (v is None)
            if u is not None:
                assert u.shape == v.shape and np.array_equal(u, v)


def test_pixels_come_back_the_same_through_the_ring_the_pipe_or_this_process(tmp_path):
    pre = Preprocess(size=224)
    paths = images(tmp_path / "a", 2 * CHUNK + 3) + images(tmp_path / "big", 2, w=1000, h=900)
    todo = tasks(paths, pre)
    expected = [decode(t) for t in todo]
    for ring in (True, False):
        out, pool = through_pool(todo, ring=ring)
        assert [k for k, _ in out] == list(range(len(todo)))  # submission order
        for (_, got), want in zip(out, expected, strict=True):
            same(got, want)  # the arrays still viewing their slots were never overwritten
        assert (pool.ring is not None) == ring
        if ring:  # the results' arrays view their slots
            assert isinstance(out[0][1].items[0].pixels.base.base, mmap.mmap)  # through its slot's base
            assert pool.ring.shm._mmap is not None  # closed by the pool, still mapped: arrays view it
            del got
            out.clear()
            assert len(pool.ring._free) == pool.ring.slots  # every slot given back with its last view
            assert pool.ring.shm._mmap is None  # and unmapped


def in_slot(a: np.ndarray) -> bool:
    """Whether ``a`` views a ring slot (it came back through shared memory, not through the pipe)."""
    return isinstance(a.base, np.ndarray) and isinstance(a.base.base, mmap.mmap)


def test_images_with_many_persons_go_fewer_a_call_so_that_every_crop_fits_its_slot(tmp_path):
    """Crops cut out by boxes (1 to 6 an image here, 3.5 on average: 16 images would need two slots) all come back
    in their call's slot: a call takes only the images whose crops fit, none goes through the pipe."""
    pre = Preprocess(size=224)
    paths = images(tmp_path / "a", 3 * CHUNK)
    boxes = [[([0, 0, 30, 40], 0.9, ())] * (1 + i % 6) for i in range(len(paths))]
    todo = [DecodeTask(path=p, kind="image", preprocess=pre, boxes=b) for p, b in zip(paths, boxes, strict=True)]
    out, pool = through_pool(todo, ring=True, hold=sum(map(len, boxes)))  # every crop kept alive: no slot reused
    crops = [item.pixels for _, r in out for item in r.items]
    assert len(crops) == sum(map(len, boxes)) and all(in_slot(c) for c in crops)
    assert pool.files < CHUNK and pool.ahead == pool.files * pool._calls


def test_frames_for_a_detector_go_as_many_a_call_as_fit_a_slot_once_their_size_is_known(tmp_path):
    """640 x 480 frames (0.9 MB, 4 a slot): the first call takes CHUNK (their size is unknown: those that do not fit
    take the pipe), the calls sent once it returned 4 each, all in their slots."""
    pre = Preprocess(size=224)
    todo = [DecodeTask(path=p, kind="image", preprocess=pre, for_detector=True)
            for p in images(tmp_path / "a", 2 * CHUNK, w=640, h=480)]
    pool = DecodePool(2, 60.0, ring=True, hold=len(todo))
    try:
        for i, task in enumerate(todo):
            pool.put(i, task)
            if i == CHUNK - 1:  # the first call's results: the frames' size is known from now on
                frames = [pool.take()[1].items[0].frame for _ in range(CHUNK)]
        frames += [pool.take()[1].items[0].frame for _ in range(CHUNK)]
    finally:
        pool.close()
    assert frames[0].shape == (480, 640, 3) and not all(in_slot(f) for f in frames[:CHUNK])
    assert all(in_slot(f) for f in frames[CHUNK:])
    assert 4 * frames[0].nbytes <= pixel_ring.SLOT_BYTES < 5 * frames[0].nbytes  # as the docstring says


def test_a_slot_is_reused_only_once_no_array_views_it():
    """Results taken as views keep their slot out of the free list until the views are gone, whatever the call
    that filled it did since; then it serves the next call. While fewer than SPARE slots are free, results are
    copied out instead."""
    ring = pixel_ring.PixelRing(4, slot_bytes=2 * 224 * 224 * 3)

    def taken(slot: int, seed: int) -> tuple[DecodeResult, np.ndarray]:
        result = DecodeResult(path="x", kind="image", items=[Item(box=[0, 0, 1, 1], pixels=noise(seed, 224, 224))])
        want = result.items[0].pixels.copy()
        pixel_ring.pack(ring.shm, slot, ring.slot_bytes, result)
        ring.unpack(slot, result)
        assert np.array_equal(result.items[0].pixels, want)
        return result, want

    try:
        slot = ring.acquire()
        result, want = taken(slot, 1)
        view = result.items[0].pixels
        assert not view.flags.owndata and isinstance(view.base.base, mmap.mmap)  # a view of the slot's base
        ring.finish(slot)
        second, third = ring.acquire(), ring.acquire()
        assert slot not in (second, third) and len(ring._free) == 1  # still viewed: not free
        copied, _ = taken(second, 2)  # one slot free, fewer than SPARE: a copy
        assert copied.items[0].pixels.flags.owndata
        ring.finish(second)
        assert ring.acquire() == second  # nothing views it
        taken(third, 3)
        assert np.array_equal(view, want)  # the other calls never wrote over a viewed slot
        assert ring.acquire() not in (slot, second, third) and ring.acquire() is None
        part = view[10:20, 5:][::2]  # a view of a view (numpy shortens the chain to the slot's base, not past it)
        del result, view
        assert ring.acquire() is None  # the part still views the slot
        assert np.array_equal(part, want[10:20, 5:][::2])
        del part
        assert ring.acquire() == slot
    finally:
        ring.close()


def test_pack_keeps_what_fits_and_leaves_the_rest_to_the_pipe():
    ring = pixel_ring.PixelRing(2, slot_bytes=3 * 224 * 224 * 3)
    try:
        crops = [np.full((224, 224, 3), i, np.uint8) for i in range(4)]
        frame = np.full((500, 500, 3), 9, np.uint8)
        result = DecodeResult(path="x", kind="image", items=[Item(box=[0, 0, 1, 1], pixels=c) for c in crops]
                              + [Item(box=[0, 0, 1, 1], frame=frame)])
        used = pixel_ring.pack(ring.shm, 1, ring.slot_bytes, result)
        assert [i for i, *_ in result.in_ring] == [0, 1, 2] and used <= ring.slot_bytes
        assert result.items[3].pixels is crops[3] and result.items[4].frame is frame  # did not fit: kept
        ring.unpack(1, result)
        for item, crop in zip(result.items[:4], crops, strict=True):
            assert np.array_equal(item.pixels, crop)
        assert not result.in_ring
    finally:
        ring.close()


def test_a_ring_cut_short_by_scarce_shared_memory_copies_instead_of_viewing(tmp_path, monkeypatch):
    """With room for fewer slots than the calls in flight and the held crops need, results are copied out of their
    slot (views would keep slots from the calls in flight), and still equal decoding here."""
    monkeypatch.setattr(pixel_ring, "shared_free_bytes", lambda: 4 * pixel_ring.MAX_SHARE * pixel_ring.SLOT_BYTES)
    pre = Preprocess(size=224)
    todo = tasks(images(tmp_path / "a", CHUNK + 3), pre)
    out, pool = through_pool(todo, ring=True)
    assert pool.ring.slots == 4 and not pool.ring.views
    for (_, got), task in zip(out, todo, strict=True):
        same(got, decode(task))
        assert all(item.pixels is None or item.pixels.flags.owndata for item in got.items)


def test_without_shared_memory_the_pixels_take_the_pipe(tmp_path, monkeypatch):
    monkeypatch.setattr(pixel_ring, "shared_free_bytes", lambda: 0)
    pre = Preprocess(size=32)
    todo = tasks(images(tmp_path, 5), pre)
    out, pool = through_pool(todo, ring=True)
    assert pool.ring is None
    for (_, got), t in zip(out, todo, strict=True):
        same(got, decode(t))


def test_thousands_of_tasks_without_a_timeout_never_stall(tmp_path):
    """Each task's start is reported on a queue; unread (no timeout), its pipe once filled after ~5,000 tasks and
    the workers blocked forever."""
    pre = Preprocess(size=8)
    path = images(tmp_path, 1, w=8, h=8)[0]
    out, _ = through_pool([DecodeTask(path=path, kind="image", preprocess=pre, want_hash=False)] * 8000,
                          timeout=None, ring=True)
    assert len(out) == 8000 and all(r.error is None and r.items[0].pixels.shape == (8, 8, 3) for _, r in out)


@pytest.mark.timeout(300)
def test_a_hang_inside_a_chunk_costs_that_file_only(tmp_path, monkeypatch):
    """The tasks of a chunk before the stuck one were decoded but never returned: they are decoded again; those
    after it too; only the stuck one fails, once."""
    monkeypatch.setenv("A2V_HANG", "stuck")  # read by the spawned decode workers
    pre = Preprocess(size=32)
    paths = images(tmp_path / "a", CHUNK + 2)
    stuck = tmp_path / "stuck.png"
    Image.fromarray(noise(99)).save(stuck)
    paths.insert(3, str(stuck))
    todo = tasks(paths, pre)
    out, pool = through_pool(todo, ring=True, timeout=1.0)
    failed = [r.path for _, r in out if r.error]
    assert failed == [str(stuck)] and "--file-timeout" in out[3][1].error[1]
    for (_, got), t in zip(out, todo, strict=True):
        if got.path != str(stuck):
            same(got, decode(t))
    del got
    out.clear()
    assert len(pool.ring._free) == pool.ring.slots  # the restarted calls' slots too, once nothing views them


class _Unreadable:
    """Pickles, but cannot be unpickled: what a call holding an object the workers cannot rebuild looks like."""

    def __reduce__(self):
        return int, ("not a number",)


@pytest.mark.timeout(120)
def test_a_call_a_worker_cannot_read_is_an_error_here_not_a_hang(tmp_path):
    """The worker's thread that reads its calls survives a call it cannot unpickle: the ingest process gets that
    call's error in its turn (no timeout would ever end the wait), and the calls before it their results."""
    pre = Preprocess(size=8)
    paths = images(tmp_path, 2, w=8, h=8)
    pool = DecodePool(1, None)
    try:
        pool.put("good", DecodeTask(path=paths[0], kind="video", preprocess=pre))  # a video: a call of its own
        pool.put("bad", DecodeTask(path=paths[1], kind="video", preprocess=pre, boxes=_Unreadable()))
        assert pool.take()[0] == "good"
        with pytest.raises(RuntimeError, match="could not read its call"):
            pool.take()
    finally:
        pool.close()


def test_workers_start_as_calls_need_them(tmp_path):
    """A pool of up to 4 workers that is given one file at a time starts one: a run of a few files on a large
    machine does not start a process per core. Calls in flight together start more, up to the limit."""
    pre = Preprocess(size=8)
    paths = images(tmp_path, 3, w=8, h=8)

    def decoders() -> int:
        return sum(p.name == "a2v-decode" for p in multiprocessing.active_children())

    pool = DecodePool(4, 60.0)
    try:
        for i, path in enumerate(paths):
            pool.put(i, DecodeTask(path=path, kind="image", preprocess=pre))
            assert pool.take()[1].error is None
        assert decoders() == 1
        for i in range(3):  # videos: a call each, all in flight at once
            pool.put(i, DecodeTask(path=paths[i], kind="video", preprocess=pre))
        assert decoders() == 3
        while len(pool):
            pool.take()
    finally:
        pool.close()
    assert decoders() == 0
