"""Issue 13: README promises that had no test, each against the real Synapse the suite starts.

Message bodies kept out of the logs at INFO, ``!unsolved``, ``!route move`` (by an admin, refused
to others, handled once when its event comes back), editing a forwarded question,
``import-history`` over several pages when interrupted and run again, ``plugins[].rooms``, and
SIGTERM while a send is really in flight (a proxy slows the homeserver's answers). What the bot
did is read back from the rooms (``/messages``) unless the promise is about its own records.
The encrypted-room promises are in ``test_promises_encrypted.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import BotRunner, World  # type: ignore[import-not-found]
from helpers import TestUser, in_thread, room_messages

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from botproc import BotProcess, run_cli

from peerbot.bot.app import PeerBot
from peerbot.bot.history import import_history
from peerbot.matrix import MatrixClient
from peerbot.store import Store

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


# --- small helpers, kept here ---------------------------------------------------------------------


def answer_to(bot_id: str, event_id: str) -> Predicate:
    """The bot's message replying to ``event_id`` (a command's answer, an acknowledgement)."""

    def check(e: Event) -> bool:
        rel = e["content"].get("m.relates_to") or {}
        return bool(
            e["sender"] == bot_id and (rel.get("m.in_reply_to") or {}).get("event_id") == event_id
        )

    return check


async def say(world: World, user: TestUser, text: str, room: str | None = None, **kw: Any) -> str:
    """Post a message and return the body of the bot's answer to it."""
    room = room or world.rooms["entraide"]
    eid = await user.send_text(room, text, **kw)
    reply = await user.wait_for_event(room, answer_to(world.bot_user.user_id, eid))
    return str(reply["content"]["body"])


async def read_room(user: TestUser, room_id: str) -> list[Event]:
    """A room's history as ``user`` sees it."""
    return await room_messages(user.server.base_url, str(user.client.access_token), room_id)


def linking(events: list[Event], bot_id: str, event_id: str) -> list[Event]:
    """The bot's messages whose body links to ``event_id`` (forwards, related lists)."""
    needle = quote(event_id, safe="")
    return [
        e
        for e in events
        if e.get("sender") == bot_id
        and e.get("type") == "m.room.message"
        and needle in str((e.get("content") or {}).get("body", ""))
    ]


def bot_in_thread(events: list[Event], bot_id: str, root: str, needle: str = "") -> list[Event]:
    """The bot's messages in the thread of ``root`` whose body contains ``needle``."""
    return [
        e
        for e in events
        if e.get("sender") == bot_id
        and e.get("type") == "m.room.message"
        and in_thread(root)(e)
        and needle in str(e["content"].get("body", ""))
    ]


def related_line(body: str, event_id: str) -> str | None:
    """The line of a related-threads list that links to ``event_id``."""
    needle = quote(event_id, safe="")
    return next((line for line in body.splitlines() if needle in line), None)


def yaml_config(world: World, **top: Any) -> dict[str, Any]:
    """The world's bot.yaml as a dict (for a bot subprocess or the CLI)."""
    data: dict[str, Any] = {
        "matrix": {
            "homeserver": world.synapse.base_url,
            "user_id": world.bot_user.user_id,
            "password": world.bot_user.password,
        },
        "storage": {"database": str(world.db)},
        "language": "fr",
        "invites": {"allowed_servers": [world.synapse.server_name]},
        "intake": [
            {"room": world.aliases["entraide"], "trigger": "hashtag", "hashtags": ["#DocTocToc"]}
        ],
        "routing": {
            "fallback_room": world.aliases["triage"],
            "specialties": [
                {
                    "name": "Cardiologie",
                    "room": world.aliases["cardio"],
                    "keywords": ["ecg", "arythmie", "fibrillation auriculaire", "infarctus"],
                },
                {
                    "name": "Pédiatrie",
                    "room": world.rooms["pedia"],
                    "keywords": ["nourrisson", "enfant", "bronchiolite"],
                },
            ],
        },
    }
    data.update(top)
    return data


@pytest_asyncio.fixture
async def bots(tmp_path: Path) -> AsyncIterator[Callable[..., BotProcess]]:
    """A factory of bot subprocesses; every one still running is stopped at the end."""
    made: list[BotProcess] = []

    def make(config: dict[str, Any], name: str = "bot") -> BotProcess:
        bot = BotProcess(config, tmp_path, name)
        made.append(bot)
        return bot

    yield make
    for bot in made:
        await bot.stop()


def words(prefix: str, n: int) -> list[str]:
    """``n`` made-up words of letters that occur nowhere else (so a leak is unambiguous)."""
    return [
        prefix + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:10])
        for _ in range(n)
    ]


# --- message bodies never reach the log at INFO ---------------------------------------------------


async def test_message_bodies_absent_from_logs_at_info(
    world: World, bots: Callable[..., BotProcess]
) -> None:
    room = world.rooms["entraide"]
    bot_id = world.bot_user.user_id
    secret = words("zq", 9)
    plugins = [{"use": "plugins.patient_data_guard:PatientDataGuard"}]
    bot = bots(yaml_config(world, plugins=plugins))
    await bot.start_ready(log_level="INFO")

    # A forwarded question, a reply in its thread, an edit, a question for triage.
    q1 = await world.alice.send_text(room, f"#DocTocToc ECG {secret[0]} {secret[1]} ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, q1))
    await world.bob.send_text(room, f"Réponse {secret[2]}", thread_root=q1)
    await world.alice.edit(room, q1, f"#DocTocToc ECG {secret[0]} {secret[3]} ?")
    q2 = await world.alice.send_text(room, f"#DocTocToc Quelle conduite {secret[4]} ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, q2), timeout=30)
    # Commands carrying text: a search and a dry run.
    await say(world, world.alice, f"!related {secret[0]} {secret[5]}")
    await say(world, world.admin, f"!route test ECG {secret[6]}")
    # A question held by the guard (a patient's name), then confirmed by its author.
    q3 = await world.alice.send_text(room, f"#DocTocToc Mme {secret[7].title()} ECG {secret[8]} ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, q3))
    await world.alice.send_text(room, "!confirm", thread_root=q3)
    await world.alice.wait_for_event(
        room, lambda e: in_thread(q3)(e) and "transmise au salon" in e["content"]["body"]
    )
    await world.alice.redact(room, q2)
    last = await world.alice.send_text(room, "#DocTocToc ECG de fin ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, last))
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()

    log = bot.log_text()
    # The log really covered these events at INFO (else the check below proves nothing).
    assert " INFO " in log and " DEBUG " not in log
    for qid in (q1, q2, q3, last):
        assert f"Question {qid} noticed" in log, f"{qid} not in the log:\n{bot.log_tail()}"
    assert f"Question {q1} edited" in log and f"Question {q2} redacted" in log
    leaked = [w for w in secret if w.lower() in log.lower()]
    assert not leaked, f"message text reached the INFO log: {leaked}\n" + "\n".join(
        line for line in log.splitlines() if any(w.lower() in line.lower() for w in leaked)
    )


# --- !unsolved ------------------------------------------------------------------------------------


async def test_unsolved_undoes_solved_and_reaction(world: World) -> None:
    room = world.rooms["entraide"]
    bot_id = world.bot_user.user_id
    text = "#DocTocToc Arythmie sous anticoagulant oral, quelle surveillance biologique ?"
    search = "!related arythmie anticoagulant surveillance biologique"
    await world.start_bot()
    qid = await world.alice.send_text(room, text)
    await world.alice.wait_for_event(room, answer_to(bot_id, qid))

    async def shown_solved() -> bool:
        body = await say(world, world.bob, search)
        line = related_line(body, qid)
        assert line is not None, f"the question is not listed by !related:\n{body}"
        return "✅" in line

    assert not await shown_solved()
    assert "résolu ✅" in await say(world, world.alice, "!solved", thread_root=qid)
    assert await shown_solved()
    assert "non résolu" in await say(world, world.alice, "!unsolved", thread_root=qid)
    assert not await shown_solved(), "!unsolved after !solved: still shown solved"

    # Solved by a ✅ reaction; someone else may not undo it; the asker may.
    await world.alice.react(room, qid, "✅")
    assert await shown_solved()
    assert "Seule la personne" in await say(world, world.bob, "!unsolved", thread_root=qid)
    assert await shown_solved()
    assert "non résolu" in await say(world, world.alice, "!unsolved", thread_root=qid)
    assert not await shown_solved(), "!unsolved after a ✅ reaction: still shown solved"

    # It lasts: after a restart the thread is still not solved.
    await world.stop_bots()
    await world.start_bot()
    assert not await shown_solved(), "the thread is solved again after a restart"


# --- !route move ----------------------------------------------------------------------------------


async def test_route_move_admin_only_and_once_when_redelivered(world: World) -> None:
    room = world.rooms["entraide"]
    pedia = world.rooms["pedia"]
    bot_id = world.bot_user.user_id
    runner = BotRunner(world.config())
    world.runners.append(runner)
    bot = await runner.start()
    qid = await world.alice.send_text(room, "#DocTocToc ECG avec arythmie, quel bilan ?")
    ack = await world.alice.wait_for_event(room, answer_to(bot_id, qid))
    assert "Cardiologie" in ack["content"]["body"]

    # Bob has no power in the room: refused, nothing moves.
    body = await say(world, world.bob, "!route move Pédiatrie", thread_root=qid)
    assert "réservée aux administrateurs" in body
    await bot.wait_idle()
    assert linking(await read_room(world.admin, pedia), bot_id, qid) == []
    token_before = await bot.store.get("sync_token")

    # The room's creator moves it: forwarded to the new room, the asker told in her thread.
    move = await world.admin.send_text(room, "!route move Pédiatrie", thread_root=qid)
    told = await world.alice.wait_for_event(room, answer_to(bot_id, move))
    assert "déplacée" in told["content"]["body"] and "Pédiatrie" in told["content"]["body"]
    assert in_thread(qid)(told)
    fwd = await world.admin.wait_for_event(pedia, lambda e: bool(linking([e], bot_id, qid)))
    assert "Pédiatrie" in fwd["content"]["body"] and "arythmie" in fwd["content"]["body"]

    # The bot restarts from the position saved before the command: its event comes back.
    await world.stop_bots()
    conn = sqlite3.connect(world.db)
    with conn:
        conn.execute("UPDATE kv SET value = ? WHERE key = 'sync_token'", (token_before,))
    conn.close()
    runner = BotRunner(world.config())
    world.runners.append(runner)
    bot = await runner.start()
    delivered: list[str] = []
    handle_event = bot.events.handle_event

    async def spy(room_id: Any, event: Any) -> None:
        delivered.append(str(event.get("event_id")))
        await handle_event(room_id, event)

    bot.events.handle_event = spy  # type: ignore[method-assign]
    marker = await world.alice.send_text(room, "#DocTocToc ECG après le redémarrage ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, marker), timeout=30)
    await bot.wait_idle()
    assert move in delivered, "the command was not delivered again: the test proves nothing"

    pedia_events = await read_room(world.admin, pedia)
    assert len(linking(pedia_events, bot_id, qid)) == 1, "moved more than once"
    thread = await read_room(world.alice, room)
    assert len(bot_in_thread(thread, bot_id, qid, "déplacée")) == 1
    assert len(bot_in_thread(thread, bot_id, qid, "réservée")) == 1


async def test_redacting_a_moved_question_takes_down_every_copy(world: World) -> None:
    """Deleting a question after ``!route move``: both forwarded copies come down, and its text
    leaves the database (README: "deleting it removes it from the bot's index and database at
    once, and the bot takes down its forwarded copy")."""
    room = world.rooms["entraide"]
    cardio, pedia = world.rooms["cardio"], world.rooms["pedia"]
    bot_id = world.bot_user.user_id
    marker = words("zr", 1)[0]
    bot = await world.start_bot()
    qid = await world.alice.send_text(room, f"#DocTocToc ECG avec arythmie {marker} ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, qid))
    first = await world.admin.wait_for_event(cardio, lambda e: bool(linking([e], bot_id, qid)))
    await say(world, world.admin, "!route move Pédiatrie", thread_root=qid)
    moved = await world.admin.wait_for_event(pedia, lambda e: bool(linking([e], bot_id, qid)))

    await world.alice.redact(room, qid)
    for room_id, copy in ((cardio, first["event_id"]), (pedia, moved["event_id"])):
        await world.admin.wait_for_event(
            room_id,
            lambda e, c=copy: (
                e["type"] == "m.room.redaction"
                and (e.get("redacts") or e["content"].get("redacts")) == c
            ),
            timeout=20,
        )
    await bot.wait_idle()
    await world.stop_bots()
    conn = sqlite3.connect(f"file:{world.db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT kind FROM effects WHERE content LIKE ?", (f"%{marker}%",)
        ).fetchall()
    finally:
        conn.close()
    assert rows == [], f"the deleted question's text is still in the database: {rows}"


# --- editing a forwarded question -----------------------------------------------------------------


async def test_edit_of_forwarded_question_replaces_indexed_text(world: World) -> None:
    room = world.rooms["entraide"]
    cardio = world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    await world.start_bot()
    qid = await world.alice.send_text(room, "#DocTocToc ECG pour une syncope, quel bilan initial ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, qid))
    await world.bob.wait_for_event(cardio, lambda e: bool(linking([e], bot_id, qid)))

    new_text = "#DocTocToc ECG puis Holter après une lipothymie à l'effort, quelle durée ?"
    await world.alice.edit(room, qid, new_text)
    for attempt in range(2):  # before and after a restart (the index is rebuilt from the database)
        found = await say(world, world.bob, "!related holter lipothymie effort durée")
        line = related_line(found, qid)
        assert line is not None, f"the new text is not what is indexed (run {attempt}):\n{found}"
        assert "lipothymie" in line, line
        old = await say(world, world.bob, "!related syncope bilan initial")
        assert related_line(old, qid) is None, f"the old text is still indexed:\n{old}"
        await world.stop_bots()
        if attempt == 0:
            await world.start_bot()

    # The rooms: the edit neither forwards again nor acknowledges again.
    assert len(linking(await read_room(world.bob, cardio), bot_id, qid)) == 1
    assert len(bot_in_thread(await read_room(world.alice, room), bot_id, qid)) == 1


# --- import-history: several pages, interrupted, run again ----------------------------------------


class Interrupted(Exception):
    """Stands for the import process stopping half-way (Ctrl-C, a crash)."""


@pytest.mark.slow
async def test_import_history_pages_interrupted_and_resumed(world: World, tmp_path: Path) -> None:
    room = world.rooms["entraide"]
    bot_id = world.bot_user.user_id
    # The bot's account is in the room, but no bot ran: the history is all before it.
    bot_account = await TestUser.login(world.synapse, world.bot_user)
    try:
        await bot_account.join(room)
    finally:
        await bot_account.client.close()

    n = 60
    topics = words("sujet", n)
    gate = asyncio.Semaphore(12)

    async def post(user: TestUser, text: str, **kw: Any) -> str:
        async with gate:
            return await user.send_text(room, text, **kw)

    questions = [await post(world.alice, f"#DocTocToc Q00 conduite à tenir pour {topics[0]} ?")]
    questions += await asyncio.gather(
        *(
            post(world.alice, f"#DocTocToc Q{i:02d} conduite à tenir pour {topics[i]} ?")
            for i in range(1, n)
        )
    )
    late = questions[-3]  # imported by the second run only
    others = await asyncio.gather(
        *(post(world.bob, f"Bonjour numéro {i}") for i in range(40)),
        *(post(world.bob, f"Réponse {i}", thread_root=late) for i in range(7)),
    )
    await world.alice.react(room, late, "✅")
    assert len(questions) + len(others) > 100  # more than a page, of 50 and of 100

    config = world.config()
    # First run, in this process, with pages of 50: it stops after 20 questions were written.
    store = await Store.open(world.db)
    client = MatrixClient(config.matrix, config.encryption)
    written = 0
    real_import = store.import_question

    async def import_question(**fields: Any) -> bool:
        nonlocal written
        if written == 20:
            raise Interrupted
        written += 1
        return await real_import(**fields)

    store.import_question = import_question  # type: ignore[method-assign]
    try:
        await PeerBot(config, store, client).login()
        with pytest.raises(Interrupted):
            await import_history(config, store, client, [room], page_size=50)
    finally:
        await client.close()
        await store.close()

    # Second and third runs: the real command, as an operator runs it.
    path = tmp_path / "bot.yaml"
    path.write_text(json.dumps(yaml_config(world)), encoding="utf-8")
    args = ["import-history", "--config", str(path), "--room", room]
    summary = re.compile(
        r"(\d+) events read in (\d+) pages, (\d+) questions, (\d+) new, (\d+) already known"
    )
    second = await run_cli(args)
    assert second.status == 0, second.stderr
    m = summary.search(second.stdout)
    assert m is not None, second.stdout
    n_events, pages, found, new, known = (int(g) for g in m.groups())
    assert n_events > 100 and pages >= 2, second.stdout  # pages of 100: more than one was read
    assert (found, new, known) == (n, n - 20, 20), second.stdout
    third = await _import_again(world, room)
    assert (third.rooms[0].questions, third.new) == (n, 0), third.lines()

    conn = sqlite3.connect(f"file:{world.db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT event_id, replies, solved FROM questions").fetchall()
    finally:
        conn.close()
    assert sorted(r[0] for r in rows) == sorted(questions), "not every question, or others"

    # Nothing was forwarded or answered by the imports.
    for key in ("entraide", "cardio", "triage"):
        events = await read_room(world.admin, world.rooms[key])
        posted = [e for e in events if e["sender"] == bot_id and e["type"] != "m.room.member"]
        assert posted == [], f"the import posted in {key}: {posted}"

    # The bot, started on that database, lists a late question once, its replies counted once.
    await world.start_bot()
    body = await say(world, world.bob, f"!related conduite à tenir pour {topics[n - 3]}")
    line = related_line(body, late)
    assert line is not None, body
    assert "7 réponse(s)" in line and "✅" in line, line
    assert body.count(quote(late, safe="")) == 1, body


async def _import_again(world: World, room: str) -> Any:
    """One more import, in this process; its summary."""
    config = world.config()
    store = await Store.open(world.db)
    client = MatrixClient(config.matrix, config.encryption)
    try:
        await PeerBot(config, store, client).login()
        return await import_history(config, store, client, [room])
    finally:
        await client.close()
        await store.close()


# --- plugins[].rooms ------------------------------------------------------------------------------


async def test_plugin_scoped_to_one_intake_room(world: World) -> None:
    lounge = await world.admin.create_room(
        public=True, invite=[world.bot_user.user_id], name="lounge"
    )
    await world.alice.join(lounge)
    entraide = world.rooms["entraide"]
    cardio = world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    intake = [
        {"room": world.aliases["entraide"], "trigger": "hashtag", "hashtags": ["#DocTocToc"]},
        {"room": lounge, "trigger": "hashtag", "hashtags": ["#DocTocToc"]},
    ]
    plugins = [
        {
            "use": "plugins.patient_data_guard:PatientDataGuard",
            "rooms": [world.aliases["entraide"]],
        }
    ]
    bot = await world.start_bot(world.config(intake=intake, plugins=plugins))

    # In the other intake room the guard does not act: forwarded as is.
    elsewhere = await world.alice.send_text(
        lounge, "#DocTocToc Mme Dupont, 06 12 34 56 78, ECG avec arythmie ?"
    )
    ack = await world.alice.wait_for_event(lounge, answer_to(bot_id, elsewhere))
    assert "transmise au salon" in ack["content"]["body"], ack["content"]["body"]
    await world.bob.wait_for_event(cardio, lambda e: bool(linking([e], bot_id, elsewhere)))

    # In its own room it holds the same kind of question.
    scoped = await world.alice.send_text(
        entraide, "#DocTocToc Mme Durand, 06 98 76 54 32, ECG avec arythmie ?"
    )
    held = await world.alice.wait_for_event(entraide, answer_to(bot_id, scoped))
    assert "pas encore été transmise" in held["content"]["body"], held["content"]["body"]
    await bot.wait_idle()
    assert linking(await read_room(world.bob, cardio), bot_id, scoped) == []


# --- SIGTERM while a send is in flight ------------------------------------------------------------


class SlowProxy:
    """An HTTP proxy in front of Synapse that holds the answers to sends for ``delay`` seconds.

    The request reaches Synapse at once (the event exists); only the answer is late, as from a
    slow homeserver. Every send's transaction ID is recorded when it starts and when its answer
    has been written back.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.delay = 0.0
        self.started: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        self.in_flight = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=1 << 24)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        send = re.search(r"/send/[^/]+/([^/?]+)", request.path)
        txn = send.group(1) if request.method == "PUT" and send else None
        if txn:
            self.started[txn] = time.monotonic()
            if self.delay:
                self.in_flight.set()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")
        }
        async with self._http.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as up:
            data = await up.read()
            status = up.status
            ctype = up.headers.get("Content-Type", "application/json")
        if txn and self.delay:
            await asyncio.sleep(self.delay)
        response = web.Response(status=status, body=data, headers={"Content-Type": ctype})
        await response.prepare(request)
        await response.write_eof()
        if txn:
            self.answered[txn] = time.monotonic()
        return response


@pytest.mark.slow
async def test_sigterm_with_a_send_in_flight(
    world: World, bots: Callable[..., BotProcess], tmp_path: Path
) -> None:
    proxy = SlowProxy(world.synapse.base_url)
    await proxy.start()
    try:
        await _sigterm_in_flight(world, bots, proxy)
    finally:
        await proxy.close()


async def _sigterm_in_flight(
    world: World, bots: Callable[..., BotProcess], proxy: SlowProxy
) -> None:
    room = world.rooms["entraide"]
    cardio = world.rooms["cardio"]
    bot_id = world.bot_user.user_id
    config = yaml_config(world)
    config["matrix"]["homeserver"] = proxy.url
    bot = bots(config)
    await bot.start_ready()
    warm = await world.alice.send_text(room, "#DocTocToc ECG avant le ralentissement ?")
    await world.alice.wait_for_event(room, answer_to(bot_id, warm), timeout=30)

    proxy.delay = 2.0  # every answer to a send now takes 2 s
    questions = [
        await world.alice.send_text(room, f"#DocTocToc ECG numéro {i} pendant l'arrêt ?")
        for i in range(3)
    ]
    await asyncio.wait_for(proxy.in_flight.wait(), 30)
    flying = [t for t in proxy.started if t not in proxy.answered]
    assert flying, "no send in flight when SIGTERM was sent"
    status, seconds = await bot.terminate()
    assert status == 0, bot.log_tail()
    assert seconds < 5.0, f"exit took {seconds:.2f} s"
    print(f"SIGTERM with {flying} in flight: exit after {seconds:.2f} s")

    # The send in flight was finished: its answer reached the bot, which recorded it.
    conn = sqlite3.connect(f"file:{world.db}?mode=ro", uri=True)
    try:
        effects = dict(conn.execute("SELECT tx_id, state FROM effects").fetchall())
    finally:
        conn.close()
    for txn in flying:
        assert txn in proxy.answered, f"the send {txn} in flight was abandoned"
        assert effects.get(txn) == "done", f"{txn}: {effects.get(txn)}"
    pending = [t for t, s in effects.items() if s == "pending" and t in proxy.started]
    assert pending == [], f"sends left half-done (started, never recorded): {pending}"

    # After a restart nothing is lost or duplicated, counted in the rooms.
    proxy.delay = 0.0
    await bot.start_ready()
    for qid in questions:
        await world.alice.wait_for_event(room, answer_to(bot_id, qid), timeout=60)
    status, _ = await bot.terminate()
    assert status == 0, bot.log_tail()
    fwd_events = await read_room(world.bob, cardio)
    thread_events = await read_room(world.alice, room)
    for qid in [warm, *questions]:
        assert len(linking(fwd_events, bot_id, qid)) == 1, f"{qid}: forwards"
        assert len(bot_in_thread(thread_events, bot_id, qid)) == 1, f"{qid}: acknowledgements"


# --- the helpers can fail -------------------------------------------------------------------------


def test_counting_helpers_see_duplicates_and_threads() -> None:
    """``linking`` and ``bot_in_thread`` count what they should (so the checks above can fail)."""
    bot, q = "@bot:x", "$q1:x"
    fwd = {
        "sender": bot,
        "type": "m.room.message",
        "content": {"body": f"… https://matrix.to/#/%21r%3Ax/{quote(q, safe='')}"},
    }
    ack = {
        "sender": bot,
        "type": "m.room.message",
        "content": {"body": "ok", "m.relates_to": {"rel_type": "m.thread", "event_id": q}},
    }
    other = {**fwd, "sender": "@alice:x"}
    assert len(linking([fwd, fwd, other], bot, q)) == 2
    assert len(bot_in_thread([ack, fwd], bot, q)) == 1
    assert related_line(f"- a\n- b {fwd['content']['body']}", q) is not None
