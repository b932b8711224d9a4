"""``peerbot import-history``: backfill the related-threads index from existing room history."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from peerbot.config import Config, Trigger, is_room_ref
from peerbot.core import intake
from peerbot.matrix import Forbidden, MatrixClient, MatrixError, RoomID
from peerbot.store import Store

if TYPE_CHECKING:
    from peerbot.core.semantic import Embedder

__all__ = ["ImportSummary", "import_history"]

log = logging.getLogger(__name__)

SOLVED_KEYS = frozenset({"✅", "✔️", "✔", "☑️", "☑"})


@dataclass
class RoomImport:
    """What was read in one room."""

    room: str
    events: int = 0
    pages: int = 0
    questions: int = 0
    new: int = 0
    error: str = ""


@dataclass
class ImportSummary:
    """What an import did, room by room."""

    rooms: list[RoomImport] = field(default_factory=list)
    seconds: float = 0.0
    embedded: int = 0
    """Vectors computed and stored (hybrid engine)."""
    embed_seconds: float = 0.0

    @property
    def new(self) -> int:
        """Questions added by this run."""
        return sum(r.new for r in self.rooms)

    def lines(self) -> list[str]:
        """A printable summary."""
        out = [
            f"{r.room}: {r.error}"
            if r.error
            else f"{r.room}: {r.events} events read in {r.pages} pages, {r.questions} questions, "
            f"{r.new} new, {r.questions - r.new} already known"
            for r in self.rooms
        ]
        total_q = sum(r.questions for r in self.rooms)
        out.append(
            f"Done in {self.seconds:.1f} s: {total_q} questions found, "
            f"{self.new} added to the index."
        )
        if self.embedded:
            rate = self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0
            out.append(
                f"{self.embedded} questions embedded in {self.embed_seconds:.1f} s "
                f"({rate:.0f}/s) for the hybrid related-threads engine."
            )
        return out


class Progress:
    """Progress and rates: one redrawn line on a terminal, else a line every few seconds."""

    EVERY = 5.0
    """Seconds between two lines when the stream is not a terminal (a log, a pipe)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0
        self.started = time.monotonic()

    def _due(self, final: bool) -> bool:
        now = time.monotonic()
        if not final and now - self.last < (0.1 if self.tty else self.EVERY):
            return False
        self.last = now
        return True

    def _write(self, line: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def show(self, r: RoomImport, final: bool = False) -> None:
        """The room's line: pages, events, questions and threads per second."""
        if not self._due(final):
            return
        spinner = "|/-\\"[r.pages % 4]
        rate = r.questions / max(1e-6, time.monotonic() - self.started)
        line = (
            f"{'✓' if final else spinner} {r.room}: {r.pages} pages, {r.events} events, "
            f"{r.questions} questions ({r.new} new), {rate:.0f} threads/s"
        )
        self._write(line, final)

    def embedding(self, done: int, total: int, started: float, final: bool = False) -> None:
        """The embedding line: how many of how many, and vectors per second."""
        if not self._due(final):
            return
        rate = done / max(1e-6, time.monotonic() - started)
        mark = "✓" if final else "…"
        self._write(f"{mark} embedded {done}/{total} questions, {rate:.0f} embedded/s", final)


def _question_rule(
    config: Config, room_id: str, refs: Mapping[str, str]
) -> tuple[Trigger, tuple[str, ...]]:
    for i in config.intake:
        if refs.get(i.room) == room_id:
            return i.trigger, i.hashtags
    # Other rooms: a top-level message with a question mark.
    return Trigger.QUESTION, ()


async def import_history(
    config: Config,
    store: Store,
    client: MatrixClient,
    rooms: Sequence[str] = (),
    *,
    stream: TextIO | None = None,
    page_size: int = 100,
    embedder: Embedder | None = None,
) -> ImportSummary:
    """Read the history of the rooms (default: every configured room) and index its questions;
    with an embedder, then embed every question without a vector of its model, in batches."""
    started = time.monotonic()
    progress = Progress(stream or sys.stderr)
    refs: dict[str, RoomID] = {}
    wanted = list(rooms) or config.configured_rooms()
    summary = ImportSummary()
    for ref in wanted:
        if not is_room_ref(ref):
            raise ValueError(f"--room {ref}: not a room alias or ID")
        if ref.startswith("#"):
            room_id, _ = await client.resolve_alias(ref)
        else:
            room_id = RoomID(ref)
        refs[ref] = room_id
    for ref in config.configured_rooms():
        if ref not in refs and ref.startswith("#"):
            try:
                refs[ref] = (await client.resolve_alias(ref))[0]
            except MatrixError:
                continue
        elif ref not in refs:
            refs[ref] = RoomID(ref)
    for ref in wanted:
        room_id = refs[ref]
        report = RoomImport(ref)
        summary.rooms.append(report)
        trigger, hashtags = _question_rule(config, room_id, refs)
        try:
            await _import_room(
                store, client, room_id, trigger, hashtags, report, progress, page_size
            )
        except Forbidden as exc:
            report.error = (
                f"PeerBot cannot read this room ({exc.errcode}): start the bot once so that it "
                "joins, or invite it, then import again"
            )
            log.warning("%s: %s", ref, report.error)
            continue
        progress.show(report, final=True)
    if embedder is not None:
        embed_started = time.monotonic()
        summary.embedded = await embed_stored(store, embedder, progress)
        summary.embed_seconds = time.monotonic() - embed_started
    summary.seconds = time.monotonic() - started
    return summary


EMBED_BATCH = 64
"""Texts per call into the model during an import (throughput first: the bot is stopped)."""


async def embed_stored(store: Store, embedder: Embedder, progress: Progress) -> int:
    """Embed the stored questions that have no vector of the embedder's model; how many."""
    from peerbot.bot.related import embed_batch
    from peerbot.core.semantic import encode_vector

    todo = await store.unembedded(embedder.name)
    started = time.monotonic()
    done = 0
    for start in range(0, len(todo), EMBED_BATCH):
        batch = todo[start : start + EMBED_BATCH]
        vectors = await embed_batch(embedder, [text for _, _, text in batch])
        rows = [
            (event_id, revision, encode_vector(vector, embedder.name))
            for (event_id, revision, _), vector in zip(batch, vectors, strict=True)
        ]
        done += await store.put_vectors(rows, embedder.name)
        progress.embedding(done, len(todo), started)
    if todo:
        progress.embedding(done, len(todo), started, final=True)
    return done


async def _import_room(
    store: Store,
    client: MatrixClient,
    room_id: str,
    trigger: Trigger,
    hashtags: tuple[str, ...],
    report: RoomImport,
    progress: Progress,
    page_size: int,
) -> None:
    me = client.user_id
    messages: dict[str, intake.Message] = {}
    order: list[str] = []
    edits: dict[str, tuple[int, str]] = {}
    raised: dict[str, str] = {}  # question event -> the event that raised it
    replies: dict[str, int] = {}
    solved: dict[str, list[tuple[str, str]]] = {}
    token: str | None = None
    while True:
        events, token = await client.messages(room_id, token, limit=page_size)
        report.pages += 1
        for event in events:
            report.events += 1
            _collect(event, me, messages, order, edits, replies, solved)
        progress.show(report)
        if token is None:
            break
    # History arrives newest first: handle oldest first, as the bot would have.
    for event_id in reversed(order):
        msg = messages[event_id]
        question = intake.detect_question(msg, trigger, hashtags)
        if question is not None and question not in raised:
            raised[question] = event_id
    for question_id in raised:
        root = messages.get(question_id)
        if root is None or root.sender == me:
            continue
        text = edits.get(question_id, (0, root.body))[1]
        report.questions += 1
        added = await store.import_question(
            event_id=question_id, room_id=room_id, sender=root.sender, body=text, created_ts=root.ts
        )
        report.new += int(added)
        fields: dict[str, Any] = {}
        if replies.get(question_id):
            fields["replies"] = replies[question_id]
        by_asker = [eid for who, eid in solved.get(question_id, []) if who == root.sender]
        if by_asker:
            fields["solved"] = True
            fields["solved_by"] = by_asker[0]
        if fields and added:
            await store.set_thread_state(question_id, **fields)
        progress.show(report)


def _collect(
    event: Mapping[str, Any],
    me: str,
    messages: dict[str, intake.Message],
    order: list[str],
    edits: dict[str, tuple[int, str]],
    replies: dict[str, int],
    solved: dict[str, list[tuple[str, str]]],
) -> None:
    etype = event.get("type")
    if etype == "m.reaction":
        content = event.get("content") or {}
        rel = content.get("m.relates_to") if isinstance(content, Mapping) else None
        if isinstance(rel, Mapping) and rel.get("key") in SOLVED_KEYS:
            target = rel.get("event_id")
            if isinstance(target, str):
                who = str(event.get("sender"))
                solved.setdefault(target, []).append((who, str(event.get("event_id"))))
        return
    msg = intake.parse_message(event)
    if msg is None or msg.sender == me or msg.msgtype == "m.notice":
        return
    if msg.replaces is not None:
        # Newest first: the first edit seen is the latest one.
        if msg.replaces not in edits or edits[msg.replaces][0] < msg.ts:
            edits[msg.replaces] = (msg.ts, msg.body)
        return
    if msg.thread_root is not None and not msg.body.lstrip().startswith("!"):
        replies[msg.thread_root] = replies.get(msg.thread_root, 0) + 1
    messages[msg.event_id] = msg
    order.append(msg.event_id)
