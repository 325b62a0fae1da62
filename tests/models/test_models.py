from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from reference_clip_a2v import reference_forward, reference_transform

from a2v_search import taxonomy as tx
from a2v_search.errors import CheckpointError, InputError, ModelError
from a2v_search.models import LanguageSpace, ModelSpec, load_encoder, prompts
from a2v_search.models.checkpoint import checkpoint_identity, convert_checkpoint, read_torch_file
from a2v_search.models.language import (
    FORMULAS,
    LANGUAGE_VECTOR,
    PART_GROUPS,
    VERB_GROUPS,
    TextEncoder,
    TextQuery,
    build_matrices,
    legacy_pooling,
    margins,
    pooling_mode,
)
from a2v_search.models.tiny import official_checkpoint, random_official_state_dict
from a2v_search.preprocess import Preprocess
from a2v_search.settings import DEFAULT_CLIP_MODEL


def noise_image(seed: int, w: int = 96, h: int = 72) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8))


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir, tiny_bert_dir):
    return load_encoder(ModelSpec(model=str(tiny_clip_dir), text_model=str(tiny_bert_dir)), device="cpu")


# ------------------------------------------------------------------ official checkpoint, ViT-B/16 shapes


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory):
    sd = random_official_state_dict()
    path = tmp_path_factory.mktemp("official") / "ckpt_4.pth"
    torch.save(official_checkpoint(sd), path)
    return path, sd


def test_official_checkpoint_matches_independent_forward(official_ckpt):
    path, sd = official_ckpt
    enc = load_encoder(ModelSpec(checkpoint=str(path)), device="cpu", with_language=False)  # safe load, no trust
    assert enc.image_size == 224 and enc.model.visual_dim == 512
    image = noise_image(1, 320, 240)
    ours = enc.encode_persons([image], [None])
    ref = reference_forward(sd, reference_transform(image))
    pasta_ref = torch.cat([ref[p] for p in tx.PARTS], -1).numpy()
    assert np.abs(ours.pasta - pasta_ref).max() < 1e-4
    assert np.abs(ours.verbs - ref["verb"].numpy()).max() < 1e-4
    assert np.abs(ours.parts - ref["pasta_binary"].numpy()).max() < 1e-4
    feat = torch.nn.functional.normalize(ref["feature"], dim=-1).numpy()
    assert np.abs(ours.visual - feat).max() < 1e-4
    assert ours.pasta.std() > 0.01  # not a degenerate constant output


def test_converted_checkpoint_reproduces_and_loads_without_pickle(official_ckpt, tmp_path, monkeypatch):
    path, sd = official_ckpt
    out = convert_checkpoint(path, tmp_path / "converted")
    assert (out / "heads.safetensors").is_file() and (out / "a2v_config.json").is_file()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("own format must not unpickle"))
    enc = load_encoder(ModelSpec(checkpoint=str(out)), device="cpu", with_language=False)
    image = noise_image(2)
    ref = reference_forward(sd, reference_transform(image))
    assert np.abs(enc.encode_persons([image], [None]).verbs - ref["verb"].numpy()).max() < 1e-4
    assert enc.space["heads"] == load_encoder(ModelSpec(checkpoint=str(out)), device="cpu",
                                              with_language=False).space["heads"]


def test_precedence_checkpoint_over_model_over_default(official_ckpt, tiny_clip_dir):
    path, _ = official_ckpt
    ident = f"checkpoint:{checkpoint_identity(path)}"
    both = load_encoder(ModelSpec(model=str(tiny_clip_dir), checkpoint=str(path)), device="cpu", with_language=False)
    assert both.space["visual_model"] == both.space["heads"] == ident  # the checkpoint's tower and heads win
    assert both.model.visual_dim == 512 and both.image_size == 224
    tower = both.clip_text_loader  # CLIP's text tower still comes from --model, loaded only when asked for
    assert tower.name == str(tiny_clip_dir) and tower.loaded is None
    alone = load_encoder(ModelSpec(checkpoint=str(path)), device="cpu", with_language=False)
    assert alone.clip_text_loader.name == DEFAULT_CLIP_MODEL and alone.clip_text_loader.loaded is None
    model = load_encoder(ModelSpec(model=str(tiny_clip_dir)), device="cpu", with_language=False)
    assert model.space["visual_model"] == str(tiny_clip_dir.resolve())
    assert model.space["heads"].startswith("zero-shot:") and model.space["heads"].endswith(str(tiny_clip_dir.resolve()))
    assert model.clip_text_loader.loaded is not None  # loaded with the zero-shot heads, not loaded twice


# ------------------------------------------------------------------ checkpoint errors


class NotAllowed:
    """A class a safe load must refuse to construct."""

    def __init__(self):
        self.x = 1


def test_pickle_needing_code_is_refused_without_trust(tmp_path):
    sd = random_official_state_dict(width=64, layers=1, patch=8, image=32, out=16, hidden=16)
    path = tmp_path / "evil.pth"
    torch.save({"model": sd, "args": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as err:
        load_encoder(ModelSpec(checkpoint=str(path)), device="cpu", with_language=False)
    assert "NotAllowed" in str(err.value)
    enc = load_encoder(ModelSpec(checkpoint=str(path), trust_checkpoint=True), device="cpu", with_language=False)
    assert enc.model.visual_dim == 16 and enc.image_size == 32


def test_malicious_reduce_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil2.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError):
        read_torch_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"this is not a checkpoint at all", "not a readable torch file|needs more"),
])
def test_corrupt_files_named(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_encoder(ModelSpec(checkpoint=str(path)), device="cpu", with_language=False)


def test_truncated_checkpoint(official_ckpt, tmp_path):
    data = official_ckpt[0].read_bytes()
    path = tmp_path / "trunc.pth"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_encoder(ModelSpec(checkpoint=str(path)), device="cpu", with_language=False)


def test_partial_and_mismatched_checkpoints(tmp_path):
    sd = random_official_state_dict(width=64, layers=2, patch=8, image=32, out=16, hidden=16)
    partial = {k: v for k, v in sd.items() if not k.startswith("head.hand_fc")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="hand_fc.layers.0.weight"):
        load_encoder(ModelSpec(checkpoint=str(tmp_path / "partial.pth")), device="cpu", with_language=False)
    no_block = {k: v for k, v in sd.items() if "resblocks.1.mlp.c_fc.weight" not in k}
    torch.save({"model": no_block}, tmp_path / "noblock.pth")
    with pytest.raises(CheckpointError, match=r"resblocks\.1\.mlp\.c_fc\.weight"):
        load_encoder(ModelSpec(checkpoint=str(tmp_path / "noblock.pth")), device="cpu", with_language=False)
    wrong = dict(sd)
    wrong["head.foot_fc.layers.2.weight"] = torch.zeros(12, 16)
    wrong["head.foot_fc.layers.2.bias"] = torch.zeros(12)
    torch.save({"model": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="foot has 12 classes, expected 16"):
        load_encoder(ModelSpec(checkpoint=str(tmp_path / "wrong.pth")), device="cpu", with_language=False)
    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a CLIP-Activity2Vec checkpoint"):
        load_encoder(ModelSpec(checkpoint=str(tmp_path / "other.pth")), device="cpu", with_language=False)


def test_openai_visual_state_dict_as_model(tmp_path, tiny_bert_dir):
    sd = random_official_state_dict(width=64, layers=2, patch=8, image=32, out=16, hidden=16)
    visual = {"visual." + k[len("backbone.image_model."):]: v for k, v in sd.items()
              if k.startswith("backbone.image_model.")}
    torch.save(visual, tmp_path / "openai.pt")
    heads_ckpt = tmp_path / "heads.pth"
    torch.save({"model": sd}, heads_ckpt)
    with pytest.raises(ModelError, match="text tower"):
        load_encoder(ModelSpec(model=str(tmp_path / "openai.pt")), device="cpu", with_language=False)
    a = load_encoder(ModelSpec(model=str(tmp_path / "openai.pt"), checkpoint=str(heads_ckpt)), device="cpu",
                     with_language=False)
    image = noise_image(3)
    ref = reference_forward(sd, torch.from_numpy(a.preprocess.to_tensor(a.preprocess.whole(image)[None]).numpy()))
    assert np.abs(a.encode_persons([image], [None]).visual
                  - torch.nn.functional.normalize(ref["feature"], dim=-1).numpy()).max() < 1e-5


def test_wrong_model_kind_is_named(tiny_bert_dir, tmp_path):
    with pytest.raises(ModelError, match="not CLIP"):
        load_encoder(ModelSpec(model=str(tiny_bert_dir)), device="cpu", with_language=False)
    with pytest.raises(ModelError, match="cannot load CLIP model"):
        load_encoder(ModelSpec(model=str(tmp_path / "nope")), device="cpu", with_language=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(ModelSpec(checkpoint=str(tmp_path / "nope.pth")), device="cpu", with_language=False)


# ------------------------------------------------------------------ tiny model behaviour


def test_batch_size_and_order_invariance(encoder):
    images = [noise_image(i) for i in range(7)]
    boxes = [None, (10, 5, 50, 70), None, (0, 0, 96, 72), (30, 20, 40, 60), None, (-10, -10, 20, 20)]
    a = encoder.encode_persons(images, boxes, batch_size=1)
    b = encoder.encode_persons(images, boxes, batch_size=7)
    perm = [3, 6, 0, 5, 1, 4, 2]
    c = encoder.encode_persons([images[i] for i in perm], [boxes[i] for i in perm], batch_size=3)
    for field in ("visual", "pasta", "verbs", "parts", "language"):
        x, y, z = getattr(a, field), getattr(b, field), getattr(c, field)
        assert np.abs(x - y).max() < 1e-5
        assert np.abs(x[perm] - z).max() < 1e-5
    assert len({tuple(np.round(r, 4)) for r in a.visual}) == 7  # distinct inputs, distinct outputs


def test_crops_given_as_a_list_encode_as_their_stack(encoder):
    """Ingest hands the encoder its crops where they lie (a list of views of the decoders' slots): each is normalised
    straight into the model's input, kept from batch to batch. The outputs are those of the stacked batch, bit for
    bit, whatever batch came before (a larger one leaves its rows in that memory) and for read-only crops."""
    size = encoder.image_size
    crops = [np.asarray(noise_image(i).resize((size, size))) for i in range(6)]  # PIL's arrays are read-only
    assert not crops[0].flags.writeable
    stacked = np.stack(crops)

    def run(pixels):
        return encoder.vectors([encoder.submit(pixels).result()])

    big = run([np.ascontiguousarray(c[::-1]) for c in crops] + crops)  # 12 rows into the reused input first
    assert len(big) == 12
    as_list, as_array = run(crops[:4]), run(stacked[:4])
    for field in ("visual", "pasta", "verbs", "parts", "visual_norm", "language"):
        np.testing.assert_array_equal(getattr(as_list, field), getattr(as_array, field))
    np.testing.assert_array_equal(run([c.copy() for c in crops]).visual, run(stacked).visual)


def test_zero_shot_is_a_distribution_per_part(encoder):
    v = encoder.encode_persons([noise_image(i) for i in range(4)], [None] * 4)
    for rng in tx.PART_RANGES.values():
        np.testing.assert_allclose(v.pasta[:, rng.start:rng.stop].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v.verbs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v.parts, 1.0 - v.pasta[:, list(tx.NO_INTERACTION_PASTA)], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(v.visual, axis=1), 1.0, atol=1e-5)


def _margins_by_hand(p: np.ndarray, groups: list[list[int]], keep: int) -> np.ndarray:
    """The margin weights written out plainly: per row and group, the ``keep`` largest minus the next largest."""
    out = np.zeros_like(p)
    for r in range(len(p)):
        for cols in groups:
            ranked = sorted(cols, key=lambda c: -p[r, c])
            floor = p[r, ranked[keep]]
            for c in ranked[:keep]:
                out[r, c] = max(p[r, c] - floor, 0.0)
    return out


def test_margins_keep_the_strongest_states_of_each_part_above_the_next():
    p = np.zeros((2, 93), np.float32)
    p[0, list(tx.PART_RANGES["hand"])] = 0.1
    p[0, tx.pasta_index("hand: hold")], p[0, tx.pasta_index("hand: carry")] = 0.9, 0.5
    p[0, tx.pasta_index("hand: touch")] = 0.3  # third in its part: the floor
    p[0, tx.pasta_index("head: eat")] = 0.7  # alone in its part: floor 0
    p[1] = 0.2  # flat: nothing stands out
    w = margins(p, PART_GROUPS, 2)
    expected = np.zeros_like(p)
    expected[0, tx.pasta_index("hand: hold")], expected[0, tx.pasta_index("hand: carry")] = 0.6, 0.2
    expected[0, tx.pasta_index("head: eat")] = 0.7
    np.testing.assert_allclose(w, expected, atol=1e-6)
    q = np.random.default_rng(0).uniform(0, 1, (5, 157)).astype(np.float32)
    np.testing.assert_allclose(margins(q, VERB_GROUPS, 4), _margins_by_hand(q, [list(range(157))], 4), atol=1e-6)


def _whitened(m: np.ndarray, whiten: float) -> np.ndarray:
    """The phrase matrix with its singular values s turned into s^(1 - whiten), from a fresh SVD (s > 1e-5 max)."""
    u, s, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
    keep = s > 1e-5 * s.max()
    return (u[:, keep] * s[keep] ** (1 - whiten)) @ vt[keep]


def test_language_vectors_are_unit_and_equal_normalised_margins_at_whitened_m(encoder):
    v = encoder.encode_persons([noise_image(i) for i in range(3)], [None] * 3)
    lang = encoder.language
    np.testing.assert_allclose(np.linalg.norm(v.language, axis=1), 1.0, atol=1e-5)

    def norm(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    assert lang.vector == LANGUAGE_VECTOR == "margin-v5:24/32+white0.75+gate+senses+objects"
    # the 24 strongest PaSta of the body and the 32 strongest verbs, no_interaction left out
    wp = _margins_by_hand(v.pasta, [[i for i in range(93) if i not in tx.NO_INTERACTION_PASTA]], 24)
    wv = _margins_by_hand(v.verbs, [[i for i in range(157) if i != tx.NO_INTERACTION_VERB]], 32)
    assert (wp > 0).sum(1).max() <= 24 and not wp[:, list(tx.NO_INTERACTION_PASTA)].any()
    # through the whitened phrases: M = U S V^T -> U S^0.25 V^T
    # and the object block: these persons act on no object, so its "none" coordinate is 1; every block holds
    # something, so the rest coordinate (the last) is 0
    no_object = np.eye(tx.N_OBJECTS + 2, dtype=np.float32)[[-2] * len(wp)]
    expected = norm(np.concatenate([norm(wp @ _whitened(lang.m_pasta, 0.75)), norm(wv @ _whitened(lang.m_verb, 0.75)),
                                    no_object], -1))
    np.testing.assert_allclose(lang.to_full(v.language), expected, atol=1e-5)
    np.testing.assert_allclose(v.language @ v.language.T, expected @ expected.T, atol=1e-5)  # same cosines
    assert lang.dim <= 87 + 156 + 81 + 1
    assert not lang.m_pasta[list(tx.NO_INTERACTION_PASTA)].any() and not lang.m_verb[57].any()


def test_language_space_from_sentence_transformers_folder(minilm_dir):
    space = LanguageSpace.from_text_model(str(minilm_dir))
    assert space.m_pasta.shape == (93, 384) and space.dim == 87 + 156 + 81 + 1  # phrase ranks, objects, the rest
    q = space.interpret("kicking a ball")
    assert q.mode == "free" and next(iter(q.pasta)) == "foot: kick" and next(iter(q.verbs)) == "kick"
    s = space.interpret("Hand: Hold=2; head:drink with; verb: drink_with")
    assert s.mode == "structured" and s.pasta == {"hand: hold": 2.0, "head: drink with": 1.0}
    assert s.verbs == {"drink_with": 1.0}


@pytest.fixture(scope="module")
def senses(minilm_dir) -> LanguageSpace:
    """This version's language space (verb senses) of the real all-MiniLM-L6-v2."""
    return LanguageSpace.from_text_model(str(minilm_dir))


#: texts the bare verb names misread (issue 25): the verb a person means, and the verb name that read it before
SENSES = {"an old man sitting on a park bench": ("sit_on", "park"), "a groom kissing his bride": ("kiss", "groom"),
          "a woman training her dog": ("train", "pet"), "a man riding a bus to work": ("ride", "work on a computer")}


@pytest.mark.parametrize("text", sorted(SENSES))
def test_free_text_reads_verbs_in_their_senses(senses, text):
    assert senses.formula.phrases == "v2"
    meant, misread = SENSES[text]
    assert meant in senses.interpret(text).verbs and misread not in senses.interpret(text).verbs
    bare = LanguageSpace(*build_matrices(senses.encoder(), "v1"), senses.text_model, encoder=senses.encoder(),
                         vector="margin-v3:12/8+white0.75+gate")
    assert next(iter(bare.interpret(text).verbs)) == misread  # what the bare verb names read it as


def test_verbs_hico_never_labels_need_a_clear_reading_to_win(senses):
    space = senses
    assert space.formula.extra_prior == 0.1
    assert next(iter(space.interpret("a man swimming in the sea").verbs)) == "swim"  # clearly theirs: still wins
    for text in ("a person lugging a bag around", "a girl cuddling a puppy", "someone slicing a cake"):
        top = next(iter(space.interpret(text).verbs))
        assert top in prompts.hico_verb_objects(), (text, top)


def test_whitening_makes_distinct_phrases_more_distinct_and_keeps_near_ones_near(minilm_dir):
    space = LanguageSpace.from_text_model(str(minilm_dir))
    plain = LanguageSpace(space.m_pasta, space.m_verb, space.text_model, vector="margin-v2:12/8+text0.4")
    one_hot = np.eye(93, dtype=np.float32)[[i for i in range(93) if i not in tx.NO_INTERACTION_PASTA]]
    none = np.zeros((len(one_hot), 157), np.float32)

    def pasta_cosines(s):  # between single-PaSta persons, PaSta block only
        x = s.embed_weights(one_hot, none)[:, :s.basis_pasta.shape[0]] * np.sqrt(2)
        return (x @ x.T)[np.triu_indices(len(x), 1)]

    before, after = pasta_cosines(plain), pasta_cosines(space)
    assert before.mean() > 0.3 and after.mean() < before.mean() / 2  # the shared direction is gone
    i, j = (list(np.flatnonzero([i not in tx.NO_INTERACTION_PASTA for i in range(93)])).index(tx.pasta_index(n))
            for n in ("foot: run with", "leg: run with"))
    pair = np.triu_indices(len(one_hot), 1)
    near = after[(pair[0] == min(i, j)) & (pair[1] == max(i, j))][0]
    assert near > np.quantile(after, 0.95)  # the same state of two parts stays among the closest pairs


def test_free_text_blocks_are_weighted_by_how_well_the_text_matches_each(minilm_dir):
    space = LanguageSpace.from_text_model(str(minilm_dir))
    q = space.interpret("a woman driving a car")
    e = space.encoder().encode([q.text])[0]
    best_pasta = max(float(space.m_pasta[i] @ e) for i in range(93) if i not in tx.NO_INTERACTION_PASTA)
    best_verb = max(float(space.m_verb[i] @ e) for i in range(157) if i != tx.NO_INTERACTION_VERB)
    objects = space.object_phrases() @ e  # "a person", then the 80 objects
    named = float(objects[1:].max() - objects[0])  # how much better its best object matches than a person
    assert q.match == pytest.approx((best_pasta, best_verb, named), abs=1e-5) and best_pasta < best_verb / 2
    assert next(iter(q.objects)) == "car" and named > 0.2  # it names a car
    assert q.as_dict()["match"] == {"pasta": round(best_pasta, 4), "verbs": round(best_verb, 4),
                                    "objects": round(named, 4)}
    read = space.embed_query(TextQuery(q.text, "free", q.pasta, q.verbs, objects=q.objects))  # equal blocks
    r, rv = space.basis_pasta.shape[0], space.basis_verb.shape[0]
    gated = np.concatenate([read[:r] * best_pasta, read[r:r + rv] * best_verb, read[r + rv:] * named])
    np.testing.assert_allclose(space.embed_query(q), gated / np.linalg.norm(gated), atol=1e-5)
    s = space.interpret("hand: hold; verb: drive")
    assert s.match is None and "match" not in s.as_dict()
    np.testing.assert_allclose(np.linalg.norm(space.embed_query(s)[:r]), np.sqrt(0.5), atol=1e-6)  # as written
    vague = space.interpret("a person seated on something")  # evokes a chair, names nothing
    assert vague.objects == {} and vague.match[2] == 0 and not space.embed_query(vague)[r + rv:].any()


def test_free_text_vector_of_v2_blends_its_reading_with_its_own_embedding(minilm_dir):
    space = LanguageSpace.from_text_model(str(minilm_dir))
    space = LanguageSpace(space.m_pasta, space.m_verb, space.text_model, encoder=space.encoder(),
                          vector="margin-v2:12/8+text0.4")
    q = space.interpret("a man sipping coffee from a mug")
    read = space.embed_query(TextQuery(q.text, "free", q.pasta, q.verbs))  # the phrases alone, no embedding
    e = space.encoder().encode([q.text])[0]
    np.testing.assert_allclose(q.embedding, e, atol=1e-6)

    def norm(x):
        return x / np.linalg.norm(x)

    own = norm(np.concatenate([norm(space.basis_pasta @ e), norm(space.basis_verb @ e)]))
    np.testing.assert_allclose(space.embed_query(q), norm(0.6 * read + 0.4 * own), atol=1e-5)
    old = LanguageSpace(space.m_pasta, space.m_verb, space.text_model, encoder=space.encoder(), vector="margin-v1:2/4")
    np.testing.assert_allclose(old.embed_query(q), read, atol=1e-6)  # the older formulas read phrases only
    s = space.interpret("hand: hold; verb: drink_with")
    np.testing.assert_array_equal(space.embed_query(s), old.embed_query(s))  # structured text: weights as written


def test_older_formulas_stay_selectable_by_name_and_unknown_ones_are_refused(minilm_dir):
    space = LanguageSpace.from_text_model(str(minilm_dir))
    p = np.random.default_rng(1).uniform(0, 0.3, (4, 93)).astype(np.float32)
    v = np.random.default_rng(2).uniform(0, 0.3, (4, 157)).astype(np.float32)
    plain = LanguageSpace(space.m_pasta, space.m_verb, space.text_model, vector="p@M")
    v1 = LanguageSpace(space.m_pasta, space.m_verb, space.text_model, vector="margin-v1:2/4")
    v2 = LanguageSpace(space.m_pasta, space.m_verb, space.text_model, vector="margin-v2:12/8+text0.4")
    np.testing.assert_allclose(plain.embed(p, v), v2.embed_weights(p, v), atol=1e-6)  # neither whitens
    expected = v2.embed_weights(margins(p, PART_GROUPS, 2), margins(v, VERB_GROUPS, 4))
    np.testing.assert_allclose(v1.embed(p, v), expected, atol=1e-6)
    v4 = LanguageSpace(space.m_pasta, space.m_verb, space.text_model, vector="margin-v4:24/32+white0.75+gate+senses")
    assert not np.allclose(v2.embed(p, v), v4.embed(p, v), atol=1e-3)  # v3, v4 whiten the same margins
    # v5 is v4 and an object block; persons acting on no object hold its "none" coordinate
    d = v4.dim
    np.testing.assert_allclose(space.embed(p, v)[:, :d] * np.sqrt(3 / 2), v4.embed(p, v), atol=1e-6)
    np.testing.assert_allclose(space.embed(p, v)[:, d:], np.eye(82)[[-2] * 4] / np.sqrt(3), atol=1e-6)
    # a person with no verb keeps its PaSta's third (the rest coordinate takes the verbs'), one with nothing is zero
    alone = space.embed(np.stack([p[0], np.zeros(93)]), np.zeros((2, 157)))
    r = space.basis_pasta.shape[0]
    pasta_only = v4.embed(p[:1], np.zeros((1, 157)))[0, :r]  # v4 gives it the whole length
    np.testing.assert_allclose(alone[0, :r], pasta_only / np.sqrt(3), atol=1e-6)
    assert alone[0, -1] == pytest.approx(np.sqrt(1 / 3)) and np.linalg.norm(alone[0]) == pytest.approx(1.0)
    assert not alone[1].any()
    assert set(FORMULAS) == {"p@M", "margin-v1:2/4", "margin-v2:12/8+text0.4", "margin-v3:12/8+white0.75+gate",
                             "margin-v4:24/32+white0.75+gate+senses", LANGUAGE_VECTOR}
    assert [FORMULAS[f].phrases for f in FORMULAS] == ["v1"] * 4 + ["v2"] * 2  # v4: the verbs in their senses
    with pytest.raises(ModelError, match="unknown language vector formula 'margin-v9'"):
        LanguageSpace(space.m_pasta, space.m_verb, space.text_model, vector="margin-v9")


def test_plain_bert_pools_the_word_tokens_only(tiny_bert_dir):
    enc = TextEncoder(str(tiny_bert_dir))
    assert enc.pooling == "words" and pooling_mode(str(tiny_bert_dir), plain="mean") == "mean"
    assert legacy_pooling(str(tiny_bert_dir)) == legacy_pooling("bert-base-uncased") == "mean"  # stores before it
    texts = ["hold a cup", "ride"]
    got = enc.encode(texts)
    for text, vec in zip(texts, got, strict=True):
        batch = enc.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = enc.model(**batch).last_hidden_state[0]  # (T, D): [CLS] words [SEP]
        words = hidden[1:-1].mean(0)
        np.testing.assert_allclose(vec, (words / words.norm()).numpy(), atol=1e-5)
    everything = TextEncoder(str(tiny_bert_dir), pooling="mean").encode(texts)
    assert np.abs(everything - got).max() > 1e-3  # [CLS] and [SEP] do move the vector


def test_sentence_transformers_folder_keeps_its_own_pooling(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    enc = TextEncoder(str(minilm_dir))
    assert enc.pooling == "mean"  # 1_Pooling/config.json: mean over all tokens, as the model was trained
    texts = ["a person riding a bike", "hand hold"]
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(enc.encode(texts), reference, atol=1e-5)


def test_unknown_pooling_is_refused(tiny_bert_dir):
    with pytest.raises(ModelError, match="unknown pooling"):
        TextEncoder(str(tiny_bert_dir), pooling="median")


def test_clip_text_tower(encoder):
    t = encoder.clip_text(["a person kicking a ball", "a person"])
    assert t.shape == (2, encoder.model.visual_dim)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ preprocessing


def test_whole_image_mode_is_the_reference_transform():
    pre = Preprocess(size=224)
    image = noise_image(5, 300, 200)
    ours = pre.to_tensor(pre.whole(image)[None])
    assert torch.allclose(ours, reference_transform(image), atol=1e-6)


def test_crop_policy_keeps_head_and_feet_square_with_context():
    pre = Preprocess(size=64, context=0.1)
    box = (40, 10, 60, 110)  # a tall person 20x100
    left, top, right, bottom = pre.crop_region(box, 200, 120)
    assert right - left == bottom - top  # square
    assert left <= 40 and right >= 60 and top <= 10 - 10 and bottom >= 110 + 10  # box + 10% of its long side
    # a red head row and a blue feet row survive the crop
    arr = np.zeros((120, 200, 3), np.uint8)
    arr[10:12, 40:60] = (255, 0, 0)
    arr[108:110, 40:60] = (0, 0, 255)
    crop = pre.crop(Image.fromarray(arr), box)
    assert crop.shape == (64, 64, 3)
    assert (crop[..., 0] > 100).any() and (crop[..., 2] > 100).any()
    # outside the image is the mean colour (zero after normalisation)
    corner = pre.crop(Image.fromarray(arr), (0, 0, 10, 10))[0, 0]
    assert np.abs(corner.astype(int) - np.round(np.array(pre.mean) * 255)).max() <= 1


@pytest.mark.parametrize("box", [(10, 10, 5, 20), (500, 500, 600, 600), (1, 2, 3), (0, 0, float("nan"), 5)])
def test_bad_boxes_are_named(box):
    with pytest.raises(InputError):
        Preprocess(size=32).crop(noise_image(0), box)
