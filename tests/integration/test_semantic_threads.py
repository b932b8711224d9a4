"""Issue 11 end to end, with the semantic extra (in the test install): a French question finds the
English thread that answers it, sharing no word; the sync goes on while a large backlog is
embedded; a redacted thread's vector leaves the database."""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import World  # type: ignore[import-not-found]
from helpers import in_thread

from peerbot.core import related
from peerbot.store import Store

# bench/crosslang.jsonl's xl-fr-en-rqetr-q00089: the English thread is RQE's rqetr-s00089, the
# French question the check's translation of its paired question; no normalised word in common.
EN = (
    "What are criteria for obsessive compulsive disorder in male teenager, "
    "doing lots of handwashing and so on?"
)
FR = (
    "Quels sont les critères du trouble obsessionnel compulsif chez un adolescent "
    "(il se lave beaucoup les mains, etc.) ?"
)
OTHER = "What are the strengths of Synthroid and what is appropriate for this patient?"
EVAL = Path(__file__).resolve().parents[3] / "shared/eval/mqp_curai/corpus.jsonl"


def link(room: str, event: str) -> str:
    return f"https://matrix.to/#/{quote(room, safe='')}/{quote(event, safe='')}"


def any_question(world: World, **overrides: Any) -> Any:
    intake = [{"room": world.aliases["entraide"], "trigger": "question"}]
    return world.config(intake=intake, **overrides)


async def ask(world: World, text: str) -> tuple[str, dict[str, Any]]:
    room = world.rooms["entraide"]
    qid = await world.alice.send_text(room, text)
    ack = await world.alice.wait_for_event(
        room, lambda e: in_thread(qid)(e) and e["sender"] == world.bot_user.user_id
    )
    return qid, ack


async def wait_until(check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


def test_the_pair_shares_no_word() -> None:
    assert not set(related.normalise(EN)) & set(related.normalise(FR))


async def test_french_question_finds_english_thread_and_redaction_erases_its_vector(
    world: World,
) -> None:
    bot = await world.start_bot(any_question(world))
    assert bot.related.engine == "hybrid"
    room = world.rooms["entraide"]
    en, _ = await ask(world, EN)
    other, _ = await ask(world, OTHER)
    await bot.related.wait_embedded()
    stored = await bot.store.vector_of(en)
    assert stored is not None and stored[:2] == ("use-m3-q6", en)
    fr, ack = await ask(world, FR)
    body = ack["content"]["body"]
    assert link(room, en) in body
    assert link(room, other) not in body and link(room, fr) not in body

    await world.alice.redact(room, en)
    await wait_until(lambda: _gone(bot.store, en))
    assert en not in bot.index and not bot.related.index.has_vector(en)  # type: ignore[attr-defined]
    assert await bot.store.vector_of(other) is not None  # only the redacted one goes


async def _gone(store: Store, event_id: str) -> bool:
    return await store.vector_of(event_id) is None and await store.question(event_id) is None


@pytest.mark.skipif(not EVAL.exists(), reason="needs ../shared/eval")
async def test_sync_goes_on_while_a_large_backlog_is_embedded(world: World) -> None:
    """3,000 stored threads without vectors (imported by a lexical bot): the bot embeds them in
    the background; a question meanwhile is forwarded and acknowledged, and the event loop's
    lag stays small (the model runs in a worker thread)."""
    config = any_question(world)
    await world.start_bot(config)  # joins the rooms; first start
    await world.stop_bots()
    texts = [json.loads(line)["text"] for line in EVAL.open(encoding="utf-8")][:3000]
    store = await Store.open(config.storage.database)
    try:
        for i, text in enumerate(texts):
            await store.import_question(
                event_id=f"$imported{i}",
                room_id=world.rooms["entraide"],
                sender=world.alice.user_id,
                body=text,
                created_ts=1,
            )
    finally:
        await store.close()

    lags: list[float] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - t - 0.01)

    bot = await world.start_bot(config)
    watcher = asyncio.create_task(monitor())
    try:
        assert bot.related.pending > 2000
        started = time.monotonic()
        _, ack = await ask(
            world, "Quelle dose d'amoxicilline pour une otite chez un enfant de 20 kg ?"
        )
        answered = time.monotonic() - started
        left = bot.related.pending
        await bot.related.wait_embedded(600)
    finally:
        stop.set()
        await watcher
    # Acknowledged while most of the backlog was still waiting for the model.
    assert left > 500, (left, answered)
    assert ack["content"]["body"]
    assert await bot.store.vector_count("use-m3-q6") == 3001
    lags.sort()
    median, worst = statistics.median(lags), lags[-1]
    print(
        f"acknowledged in {answered:.2f} s with {left} threads to embed; loop lag median "
        f"{median * 1000:.1f} ms, p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms, "
        f"max {worst * 1000:.0f} ms over {len(lags)} samples"
    )
    # Model calls on the loop measured a median lag of 80+ ms (each batch blocks it whole).
    assert median < 0.025, median


async def test_import_history_embeds_with_rates_and_the_bot_reuses_the_vectors(
    world: World,
) -> None:
    from peerbot.bot.app import PeerBot
    from peerbot.bot.history import import_history
    from peerbot.bot.related import choose_embedder, warm
    from peerbot.matrix import MatrixClient

    room = world.rooms["entraide"]
    en = await world.alice.send_text(room, EN)
    other = await world.alice.send_text(room, OTHER)
    config = any_question(world)
    await world.start_bot(config)
    await world.admin.wait_joined(room, world.bot_user.user_id)
    await world.stop_bots()
    store = await Store.open(config.storage.database)
    client = MatrixClient(config.matrix)
    try:
        await PeerBot(config, store, client).login()
        embedder, sentence = choose_embedder(config.related)
        assert embedder is not None
        embedder, sentence = await warm(embedder, sentence, config.related.engine)
        out = io.StringIO()
        summary = await import_history(
            config, store, client, [world.aliases["entraide"]], stream=out, embedder=embedder
        )
    finally:
        await client.close()
        await store.close()
    text = out.getvalue()
    assert summary.new == 2 and summary.embedded == 2, summary.lines()
    assert "threads/s" in text and "embedded 2/2 questions" in text and "embedded/s" in text
    assert any("2 questions embedded" in line for line in summary.lines())
    bot = await world.start_bot(config)
    # Loaded with their vectors: nothing embedded again.
    assert bot.related.pending == 0 and bot.related.embedded == 0
    assert bot.related.index.vector_count == 2  # type: ignore[attr-defined]
    _, ack = await ask(world, FR)
    assert link(room, en) in ack["content"]["body"]
    assert link(room, other) not in ack["content"]["body"]
