"""Related threads at run time: the index, the embedding model, and the vectors in the database.

:class:`RelatedThreads` owns the index the handlers and the pipeline use. With the semantic
extra it is a :class:`~peerbot.core.semantic.HybridIndex` and texts are embedded off the event
loop (``asyncio.to_thread``): a new or edited thread is indexed lexically at once and queued;
the background task (:meth:`RelatedThreads.run`) embeds the queue in small batches, attaches each
vector only if the thread's text has not changed meanwhile (the index's generation, then the
store's revision check) and stores it. Without the extra (or with ``related.engine: lexical``) it
is the lexical :class:`~peerbot.core.related.RelatedIndex` and nothing is embedded.

Start-up loads the stored vectors of the configured model (nothing stored is embedded again);
threads without one (imported by a bot without the extra, or stored by another model) are
queued behind new threads, so a model change re-embeds in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np

from peerbot.bot.rooms import StartupError
from peerbot.config import Config, RelatedConfig
from peerbot.core.related import DEFAULT_MIN_SCORE, Hit, RelatedIndex
from peerbot.core.semantic import (
    Embedder,
    HybridIndex,
    SemanticUnavailable,
    VectorFormatError,
    decode_vector,
    encode_vector,
    load_embedder,
)
from peerbot.store import Store

__all__ = [
    "BATCH",
    "HybridUnavailable",
    "RelatedThreads",
    "choose_embedder",
    "embed_batch",
    "warm",
]

log = logging.getLogger(__name__)

BATCH = 32
"""Texts per call into the model: about 30 ms with USE, so a query waits at most that long."""

RECENT_QUERIES = 64
"""Query vectors kept for reuse: a question's text is embedded once, as the query for its
acknowledgement's related threads, and that vector is the one its own thread is indexed with."""

# One loaded model per process and model name: a model is read-only once loaded (and guarded
# by its own lock), and loading USE takes seconds.
_EMBEDDERS: dict[str, Embedder] = {}


class HybridUnavailable(StartupError):
    """``related.engine: hybrid`` and the model cannot be used; the message says why."""


def choose_embedder(related: RelatedConfig) -> tuple[Embedder | None, str]:
    """The embedder the configuration asks for (None: lexical), and the start-up sentence."""
    if related.engine == "lexical":
        return None, "Related threads: lexical engine (related.engine: lexical)."
    embedder, sentence = load_embedder(related.model)
    if embedder is None:
        if related.engine == "hybrid":
            raise HybridUnavailable(f"related.engine is hybrid, but: {sentence}")
        return None, sentence
    return _EMBEDDERS.setdefault(embedder.name, embedder), sentence


async def warm(embedder: Embedder, sentence: str, engine: str) -> tuple[Embedder | None, str]:
    """Load the model in a worker thread: (embedder, sentence), or (None, the lexical sentence)
    when it fails to load; HybridUnavailable instead if ``related.engine`` is hybrid."""
    try:
        await asyncio.to_thread(embedder.warm)
    except SemanticUnavailable as exc:
        if engine == "hybrid":
            raise HybridUnavailable(f"related.engine is hybrid, but {exc}") from exc
        return None, f"Related threads: lexical engine only ({exc})."
    return embedder, sentence


async def embed_batch(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Vectors of the texts, computed in a worker thread (never on the event loop)."""
    return await asyncio.to_thread(embedder.embed, list(texts))


class RelatedThreads:
    """The related-threads index of a running bot, with its embeddings."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config.related
        self.store = store
        self._error: HybridUnavailable | None = None
        try:
            self.embedder, self._sentence = choose_embedder(config.related)
        except HybridUnavailable as exc:  # raised by load(), where start-up errors are handled
            self._error = exc
            self.embedder, self._sentence = None, str(exc)
        self.index: RelatedIndex = (
            HybridIndex(self.embedder.name) if self.embedder is not None else RelatedIndex()
        )
        self._ready = False
        """The model is loaded: queries and threads are embedded."""
        self._warming: asyncio.Task[tuple[Embedder | None, str]] | None = None
        # Waiting to be embedded: event ID -> (text, revision, index generation). New and
        # edited threads go first, then the backlog found at start-up.
        self._fresh: dict[str, tuple[str, str, int]] = {}
        self._backlog: dict[str, tuple[str, str, int]] = {}
        self._wake = asyncio.Event()
        self._busy = False
        # Text -> its vector, from recent queries (bounded, oldest dropped first).
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self.reused = 0
        """Threads indexed with their query's vector instead of being embedded again."""
        self.embedded = 0
        """Vectors computed and stored since start."""
        self.failures = 0
        """Batches the model failed on (their threads stay lexical until the next start)."""

    @property
    def engine(self) -> Literal["hybrid", "lexical"]:
        """Which engine answers queries now."""
        return "hybrid" if self._ready else "lexical"

    @property
    def pending(self) -> int:
        """Threads waiting for their vector."""
        return len(self._fresh) + len(self._backlog) + int(self._busy)

    # -- start-up -------------------------------------------------------------------------------

    def begin_warm(self) -> None:
        """Start loading the model in a worker thread (while the bot logs in and syncs)."""
        if self.embedder is not None and self._warming is None:
            self._warming = asyncio.create_task(
                warm(self.embedder, self._sentence, self.config.engine)
            )

    async def load(self) -> None:
        """Wait for the model, say which engine runs (once), and load the index from the store."""
        if self._error is not None:
            raise self._error
        await self._finish_warm()
        log.info("%s", self._sentence)
        started = time.monotonic()
        queued = with_vector = 0
        if self._ready and self.embedder is not None and isinstance(self.index, HybridIndex):
            model = self.embedder.name
            for (
                event_id,
                room_id,
                body,
                solved,
                revision,
                blob,
            ) in await self.store.indexable_with_vectors(model):
                vector = self._decode(event_id, blob, model)
                self.index.add(event_id, body, room_id=room_id, solved=solved, vector=vector)
                if vector is None:
                    self._backlog[event_id] = (body, revision, self._generation(event_id))
                    queued += 1
                else:
                    with_vector += 1
        else:
            for event_id, room_id, body, solved in await self.store.indexable():
                self.index.add(event_id, body, room_id=room_id, solved=solved)
        log.info(
            "Related-threads index: %d questions loaded in %.2f s (%d with vectors, %d to embed)",
            len(self.index),
            time.monotonic() - started,
            with_vector,
            queued,
        )
        if queued:
            self._wake.set()

    async def _finish_warm(self) -> None:
        if self._warming is None:
            self.begin_warm()
        if self._warming is None:
            return
        # On failure: the sentence says so, once, instead of the one announcing the hybrid.
        embedder, self._sentence = await self._warming
        self._ready = embedder is not None

    @staticmethod
    def _decode(event_id: str, blob: bytes | None, model: str) -> np.ndarray | None:
        if blob is None:
            return None
        try:
            return decode_vector(blob, model)
        except VectorFormatError as exc:
            log.warning(
                "The stored vector of %s is unreadable (%s): embedding it again", event_id, exc
            )
            return None

    def _generation(self, event_id: str) -> int:
        gen = self.index.generation(event_id) if isinstance(self.index, HybridIndex) else None
        return gen or 0

    # -- changes --------------------------------------------------------------------------------

    def __contains__(self, thread_id: object) -> bool:
        return thread_id in self.index

    def __len__(self) -> int:
        return len(self.index)

    def rooms(self) -> set[str]:
        """Rooms with at least one indexed thread."""
        return self.index.rooms()

    def add(self, event_id: str, text: str, *, room_id: str, solved: bool, revision: str) -> None:
        """Index a thread now (lexical) and queue its embedding."""
        self.index.add(event_id, text, room_id=room_id, solved=solved)
        self._queue(event_id, text, revision)

    async def edited(self, event_id: str, text: str, revision: str) -> None:
        """A thread's text was edited: index the new text, drop the old vector, re-embed."""
        if event_id not in self.index:
            return
        self.index.update_text(event_id, text)
        if self.embedder is not None:
            await self.store.drop_vector(event_id)
        self._queue(event_id, text, revision)

    def remove(self, event_id: str) -> None:
        """Forget a thread (a redaction): index, vector and queued text; the store erases the
        stored vector with the question."""
        self.index.remove(event_id)
        for queue in (self._fresh, self._backlog):
            queued = queue.pop(event_id, None)
            if queued is not None:
                self._recent.pop(queued[0], None)

    def set_solved(self, event_id: str, solved: bool) -> None:
        """Mark a thread solved or not."""
        self.index.set_solved(event_id, solved)

    def _queue(self, event_id: str, text: str, revision: str) -> None:
        if not self._ready:
            return
        self._backlog.pop(event_id, None)
        self._fresh[event_id] = (text, revision, self._generation(event_id))
        self._wake.set()

    # -- search ---------------------------------------------------------------------------------

    async def search(
        self,
        text: str,
        *,
        limit: int,
        rooms: Collection[str] | None,
        exclude: Collection[str],
        keywords: bool = False,
    ) -> list[Hit]:
        """The threads most related to a text; the query is embedded in a worker thread.

        ``keywords``: the text is a few search words (``!related``), not a question: what the
        lexical engine finds at its own threshold is listed too, after the hybrid's finds."""
        configured = self.config.min_score
        index = self.index
        if not self._ready or self.embedder is None or not isinstance(index, HybridIndex):
            min_score = DEFAULT_MIN_SCORE if configured is None else configured
            return index.search(
                text, limit=limit, min_score=min_score, rooms=rooms, exclude=exclude
            )
        query_vector: np.ndarray | None = None
        if index.vector_count:
            try:
                query_vector = (await embed_batch(self.embedder, [text]))[0]
                self._remember(text, query_vector)
            except Exception:
                log.exception("Embedding a query failed; related threads by words alone")
        try:
            # min_score None: the calibrated default of whichever scoring runs.
            hits = index.search(
                text,
                query_vector=query_vector,
                limit=limit,
                min_score=configured,
                rooms=rooms,
                exclude=exclude,
            )
        except Exception:
            # The acknowledgement must not wait on a fault of the new engine: words alone.
            log.exception("The hybrid search failed; related threads by words alone")
            return index.search(
                text, limit=limit, min_score=configured, rooms=rooms, exclude=exclude
            )
        if not keywords or query_vector is None or len(hits) >= limit:
            return hits
        # A few keywords embed far from the question they name ("fibrillation AOD" against a
        # full sentence): the hybrid's threshold, calibrated on questions, would lose what the
        # words alone find. Not for questions: there the hybrid is calibrated (less noise).
        seen = {hit.thread_id for hit in hits}
        for hit in index.search(
            text, limit=limit, min_score=configured, rooms=rooms, exclude=exclude
        ):
            if hit.thread_id not in seen and len(hits) < limit:
                hits.append(hit)
        return hits

    def _remember(self, text: str, vector: np.ndarray) -> None:
        self._recent[text] = vector
        self._recent.move_to_end(text)
        while len(self._recent) > RECENT_QUERIES:
            self._recent.popitem(last=False)

    # -- the embedding task ---------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Embed queued threads until stopped (a background task of the bot)."""
        if self.embedder is None:
            await stopping.wait()
            return
        while not stopping.is_set():
            if not self._fresh and not self._backlog:
                self._wake.clear()
                waiter = asyncio.create_task(self._wake.wait())
                stop = asyncio.create_task(stopping.wait())
                try:
                    await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stop.cancel()
                continue
            try:
                await self.embed_some()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("Embedding a batch of threads failed; they stay lexical")

    async def embed_some(self) -> int:
        """Embed and store one batch of queued threads; how many vectors were kept."""
        embedder = self.embedder
        index = self.index
        if embedder is None or not isinstance(index, HybridIndex):
            return 0
        batch: list[tuple[str, str, str, int]] = []
        for queue in (self._fresh, self._backlog):
            while queue and len(batch) < BATCH:
                event_id = next(iter(queue))
                text, revision, gen = queue.pop(event_id)
                batch.append((event_id, text, revision, gen))
        if not batch:
            return 0
        self._busy = True
        try:
            # A text already embedded as a query (same model, same text) is not embedded again.
            recent = self._recent
            known = {text: recent.pop(text) for _, text, _, _ in batch if text in recent}
            todo = list(dict.fromkeys(text for _, text, _, _ in batch if text not in known))
            if todo:
                known.update(zip(todo, await embed_batch(embedder, todo), strict=True))
            self.reused += sum(1 for _, text, _, _ in batch if text not in todo)
            vectors = [known[text] for _, text, _, _ in batch]
            rows: list[tuple[str, str, bytes]] = []
            for (event_id, _, revision, gen), vector in zip(batch, vectors, strict=True):
                # False when the thread was edited or redacted while the model ran.
                if index.set_vector(event_id, vector, generation=gen):
                    rows.append((event_id, revision, encode_vector(vector, embedder.name)))
            kept = await self.store.put_vectors(rows, embedder.name) if rows else 0
        finally:
            self._busy = False
        self.embedded += kept
        return kept

    async def wait_embedded(self, seconds: float = 30.0) -> None:
        """Wait until nothing is left to embed (tests and tools)."""
        deadline = time.monotonic() + seconds
        while self.pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.pending} threads still waiting for their vector")
            await asyncio.sleep(0.02)
