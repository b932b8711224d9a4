"""Hostile input through the same path a sync uses: ``PeerBot.handle_batch`` and ``handle_event``.

Thousands of generated event dicts (missing fields, wrong types, huge or empty bodies, odd
Unicode, deep relations, unknown msgtypes) go through a real :class:`Store` in a temporary
folder. Only the network is replaced, by a stand-in that records what would be sent (and
nothing is sent while handling events: the worker sends). No exception may escape, no handler
may even fail inside its guard (``handler_errors`` stays 0), and a valid question after the
storm (in the same test, on the same bot) is still recorded and then forwarded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgserver import PostgresServer

from peerbot.bot.app import PeerBot
from peerbot.config import IntakeRoom, Trigger, parse_config
from peerbot.core.visibility import RoomPrivacy
from peerbot.matrix import Invite, RoomID, SyncBatch, UserID
from peerbot.store import Store

T = TypeVar("T")

ME = "@peerbot:example.org"
INTAKE = RoomID("!intake:example.org")
CARDIO = RoomID("!cardio:example.org")
TRIAGE = RoomID("!triage:example.org")
OTHER = RoomID("!other:example.org")

CONFIG = {
    "matrix": {"homeserver": "https://hs.invalid", "user_id": ME, "password": "pw-not-used"},
    "invites": {"allowed_servers": ["example.org"]},
    "intake": [{"room": INTAKE, "trigger": "hashtag", "hashtags": ["#DocTocToc"]}],
    "routing": {
        "fallback_room": TRIAGE,
        "specialties": [{"name": "Cardiologie", "room": CARDIO, "keywords": ["ecg", "arythmie"]}],
    },
}


class FakeMatrix:
    """The network part of ``MatrixClient``: records instead of sending. Nothing else is faked."""

    def __init__(self) -> None:
        self.user_id = UserID(ME)
        self.device_id = "DEV"
        self.access_token = "tok"
        self.sent: list[tuple[str, dict[str, Any], str]] = []
        self.joined: set[RoomID] = {INTAKE, CARDIO, TRIAGE}
        self.declined: list[str] = []
        self._n = itertools.count()

    def joined_rooms(self) -> set[RoomID]:
        return set(self.joined)

    async def join(self, room: str) -> RoomID:
        self.joined.add(RoomID(room))
        return RoomID(room)

    async def decline(self, room_id: str, reason: str) -> None:
        self.declined.append(room_id)

    def is_encrypted(self, room_id: str) -> bool:
        return False

    def room_privacy(self, room_id: str) -> RoomPrivacy | None:
        return RoomPrivacy(room_id, "invite", "shared", encrypted=False)

    def display_name(self, room_id: str, user_id: str) -> str | None:
        return None

    async def profile_name(self, user_id: str) -> str | None:
        return None

    def room_label(self, room_id: str) -> str:
        return room_id

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        return {
            "type": "m.room.message",
            "event_id": event_id,
            "sender": "@root:example.org",
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "ECG ?"},
        }

    def is_member(self, room_id: str, user_id: str) -> bool:
        return room_id in self.joined

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any]:
        if event_type == "m.room.create":
            return {"sender": "@admin:example.org", "content": {"room_version": "11"}}
        if event_type == "m.room.power_levels":
            return {"sender": "@admin:example.org", "content": {"users_default": 0}}
        from peerbot.matrix import NotFound

        raise NotFound("state", "M_NOT_FOUND", "no such state", 404)

    async def redact(self, room_id: str, event_id: str, reason: str, tx_id: str) -> str:
        self.sent.append((room_id, {"redacts": event_id, "reason": reason}, tx_id))
        return f"$redaction{next(self._n)}"

    async def messages(
        self, room_id: str, start: str | None, limit: int = 100
    ) -> tuple[list[dict[str, Any]], str | None]:
        return [], None

    async def send(
        self, room_id: str, content: dict[str, Any], tx_id: str, event_type: str = "m.room.message"
    ) -> str:
        # What nio would do with the content: it must be JSON.
        json.dumps(content)
        self.sent.append((room_id, content, tx_id))
        return f"$sent{next(self._n)}"


class Harness:
    """A PeerBot on a real Store, driven from a private event loop in its own thread."""

    def __init__(self, folder: Path, postgres: PostgresServer | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        target = folder / "peerbot.db" if postgres is None else self.run(postgres.create_database())
        self.store = self.run(Store.open(target))
        self.mx = FakeMatrix()
        config = parse_config(json.dumps(CONFIG), base_dir=folder, env={})
        self.bot = self.run(self._make(config))
        self.batches = itertools.count()

    async def _make(self, config: Any) -> PeerBot:
        bot = PeerBot(config, self.store, self.mx)  # type: ignore[arg-type]
        # What start() resolves from the server.
        bot.rooms.intake = {INTAKE: IntakeRoom(INTAKE, Trigger.HASHTAG, ("#DocTocToc",))}
        bot.rooms.fallback = TRIAGE
        from peerbot.core import routing

        bot.rules = routing.RuleSet([routing.Rule("Cardiologie", CARDIO, ("ecg", "arythmie"))])
        return bot

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def batch(self, events: list[tuple[RoomID, Any]], invites: list[Invite] = ()) -> None:  # type: ignore[assignment]
        batch = SyncBatch(
            next_batch=f"s{next(self.batches)}", events=list(events), invites=list(invites)
        )
        self.run(self.bot.handle_batch(batch))

    def drain(self, seconds: float = 120) -> None:
        """Run the worker until nothing is left, acknowledgement tasks included."""

        async def go() -> None:
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline:
                busy = await self.bot._work_once()
                others = asyncio.all_tasks() - {asyncio.current_task()}
                if not busy and not others:
                    return
                await asyncio.sleep(0.01)
            raise TimeoutError("the worker is still busy")

        self.run(go(), timeout=seconds + 5)

    def close(self) -> None:
        self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _server(request: pytest.FixtureRequest, backend: str) -> PostgresServer | None:
    return request.getfixturevalue("postgres") if backend == "postgresql" else None


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """One harness per backend: every storm runs on a SQLite file and on PostgreSQL."""
    h = Harness(tmp_path_factory.mktemp("hostile"), _server(request, request.param))
    yield h
    h.close()


# --- strategies ------------------------------------------------------------------------------

ODD = [
    "\x00",
    "\u202e",  # right-to-left override
    "\u2060",
    "\ufeff",
    "\u200b",
    "e\u0301",
    "🏥",
    "👩🏽‍⚕️",
    "\U0010ffff",
    "#",
    "?",
    "？",
    "@room",
    "#DocTocToc",
    "#doctoctoc",
    "#DOCTOCTÔC",
    "ECG",
    "\n",
    "\r\n",
    "<b>",
    "&amp;",
    "!",
]
# Lone surrogates are valid in JSON text ("\ud800") and so reach a Python str from the server.
SURROGATES = ["\ud800", "\udfff", "\udc00x"]

char_text = st.text(alphabet=st.characters(), max_size=40)
odd_text = st.lists(st.one_of(char_text, st.sampled_from(ODD)), max_size=8).map("".join)
huge_text = st.builds(
    lambda n, c: "#DocTocToc " + c * n,
    st.integers(10_000, 200_000),
    st.sampled_from(["a ", "é", "🏥"]),
)


def texts(surrogates: bool) -> st.SearchStrategy[str]:
    parts = st.one_of(odd_text, st.sampled_from(SURROGATES)) if surrogates else odd_text
    return st.one_of(
        st.just(""),
        st.lists(parts, max_size=4).map("".join),
        st.lists(parts, max_size=3).map(lambda p: "#DocTocToc " + "".join(p)),
        huge_text,
    )


json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    odd_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)
    ),
    max_leaves=12,
)
ids = st.one_of(
    st.sampled_from(["$a", "$b", "$root", "$q1", "", "$" + "x" * 5000]),
    odd_text.map(lambda t: "$" + t),
    json_value,
)
senders = st.one_of(
    st.sampled_from([ME, "@alice:example.org", "@bob:elsewhere.example", "", "@"]),
    odd_text,
    json_value,
)


def relation(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    rel_type = st.one_of(
        st.sampled_from(["m.thread", "m.replace", "m.annotation", "m.reference", "x", ""]),
        json_value,
    )
    flat = st.fixed_dictionaries(
        {},
        optional={
            "rel_type": rel_type,
            "event_id": ids,
            "is_falling_back": st.one_of(st.booleans(), json_value),
            "m.in_reply_to": st.one_of(st.fixed_dictionaries({"event_id": ids}), json_value),
            "key": text,
        },
    )
    return st.one_of(
        flat,
        json_value,
        st.recursive(
            flat,
            lambda r: st.fixed_dictionaries({"m.relates_to": r, "m.in_reply_to": r}),
            max_leaves=6,
        ),
    )


def contents(surrogates: bool) -> st.SearchStrategy[Any]:
    text = texts(surrogates)
    msgtypes = st.one_of(
        st.sampled_from(["m.text", "m.notice", "m.emote", "m.image", "org.custom", ""]), json_value
    )
    inner = st.fixed_dictionaries(
        {}, optional={"msgtype": msgtypes, "body": st.one_of(text, json_value)}
    )
    content = st.fixed_dictionaries(
        {},
        optional={
            "msgtype": msgtypes,
            "body": st.one_of(text, text, json_value),
            "format": st.one_of(st.just("org.matrix.custom.html"), json_value),
            "formatted_body": st.one_of(text, json_value),
            "m.relates_to": relation(text),
            "m.new_content": st.one_of(inner, json_value),
            "m.mentions": json_value,
        },
    )
    return st.one_of(content, content, content, json_value)


def events(surrogates: bool) -> st.SearchStrategy[Any]:
    event_types = st.one_of(
        st.sampled_from(
            [
                "m.room.message",
                "m.room.message",
                "m.room.encryption",
                "m.reaction",
                "m.room.member",
                "m.room.redaction",
                "m.sticker",
                "org.unknown",
                "",
            ]
        ),
        json_value,
    )
    event = st.fixed_dictionaries(
        {},
        optional={
            "type": event_types,
            "event_id": ids,
            "sender": senders,
            "origin_server_ts": st.one_of(st.integers(-(2**70), 2**70), json_value),
            "content": contents(surrogates),
            "state_key": json_value,
            "unsigned": json_value,
            "redacts": ids,
        },
    )
    # Well-formed questions with hostile bodies and relations: these reach the store.
    plausible = st.fixed_dictionaries(
        {
            "type": st.just("m.room.message"),
            "event_id": st.sampled_from(["$p", "$q", "$r"]),
            "sender": st.sampled_from(["@alice:example.org", "@bob:elsewhere.example"]),
            "origin_server_ts": st.integers(0, 2**53),
            "content": st.fixed_dictionaries(
                {
                    "msgtype": st.just("m.text"),
                    "body": texts(surrogates).map(lambda b: "#DocTocToc " + b),
                },
                optional={"m.relates_to": relation(texts(surrogates))},
            ),
        }
    )
    return st.one_of(event, event, plausible, plausible, json_value)


def room_ids() -> st.SearchStrategy[RoomID]:
    return st.sampled_from([INTAKE, INTAKE, INTAKE, OTHER, CARDIO])


def invites() -> st.SearchStrategy[Invite]:
    return st.builds(
        Invite,
        st.sampled_from([RoomID("!new:example.org"), RoomID("!far:evil.example"), INTAKE]),
        st.one_of(st.none(), senders.filter(lambda s: isinstance(s, str))),
        st.booleans(),
        st.one_of(st.none(), odd_text),
    )


def unique(event: Any, n: int) -> Any:
    """Make well-formed event IDs unique per example, so a question is not 'already handled'."""
    if isinstance(event, dict) and isinstance(event.get("event_id"), str):
        event = dict(event)
        event["event_id"] = f"{event['event_id']}#{n}"
    return event


_counter = itertools.count()

HOSTILE = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
        HealthCheck.large_base_example,
    ],
    database=None,
)


def _feed(harness: Harness, batch: list[tuple[RoomID, Any]], inv: list[Invite]) -> None:
    n = next(_counter)
    before = harness.bot.handler_errors
    harness.batch([(r, unique(e, n)) for r, e in batch], inv)
    assert harness.bot.handler_errors == before, "a handler failed on this batch (see the log)"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_hostile_storm_then_a_valid_question_is_forwarded(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """One test, in this order on one bot: the storm, then a valid question that still works.

    (Two tests sharing a fixture would rely on file order, which ``-n 2 --dist loadgroup``
    does not keep.)
    """
    harness = Harness(tmp_path, _server(request, backend))
    try:

        @HOSTILE
        @given(
            batch=st.lists(
                st.tuples(room_ids(), events(surrogates=False)), min_size=1, max_size=25
            ),
            inv=st.lists(invites(), max_size=2),
        )
        def storm(batch: list[tuple[RoomID, Any]], inv: list[Invite]) -> None:
            _feed(harness, batch, inv)

        storm()
        stormed = harness.run(harness.store.questions_in_state("new", "forwarding", limit=10))
        assert stormed, "the storm recorded no question: the check after it would prove little"

        event = _question("$after-storm", "#DocTocToc Patiente avec arythmie à l'ECG, que faire ?")
        harness.batch([(INTAKE, event)])
        assert harness.bot.handler_errors == 0
        # Drain the work left by the storm, then the question: the worker path stays healthy.
        harness.drain()
        row = harness.run(harness.store.question("$after-storm"))
        assert row is not None and row.state == "done", row
        fwd = [c for r, c, _ in harness.mx.sent if r == CARDIO and "arythmie" in c["body"]]
        assert len(fwd) == 1, fwd
        assert "$after-storm" in fwd[0]["body"] or "%24after-storm" in fwd[0]["body"], fwd[0]
    finally:
        harness.close()


@settings(HOSTILE, max_examples=60)
@given(batch=st.lists(st.tuples(room_ids(), events(surrogates=True)), min_size=1, max_size=10))
def test_hostile_events_with_lone_surrogates_never_raise(
    harness: Harness, batch: list[tuple[RoomID, Any]]
) -> None:
    _feed(harness, batch, [])


def _question(event_id: str, body: str, **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": event_id,
        "sender": "@alice:example.org",
        "origin_server_ts": 1_700_000_000_000,
        "content": {"msgtype": "m.text", "body": body, **content},
    }


def test_lone_surrogate_in_a_question_is_recorded(harness: Harness) -> None:
    """A body with a lone surrogate (valid JSON: "\\ud83c") must not make the handler fail."""
    before = harness.bot.handler_errors
    event = _question("$surrogate", "#DocTocToc ECG ? \ud83c")
    harness.batch([(INTAKE, event)])
    assert harness.bot.handler_errors == before, "the handler failed on a lone surrogate"
    assert harness.run(harness.store.question("$surrogate")) is not None


@pytest.mark.parametrize(
    "relation",
    [
        {"rel_type": "m.thread", "event_id": "$ro\udaa8ot"},
        {"m.in_reply_to": {"event_id": "$re\udaa8ply"}},
        {"rel_type": "m.replace", "event_id": "$ed\udaa8it"},
    ],
)
def test_lone_surrogate_in_an_id_is_ignored_not_a_failure(
    harness: Harness, relation: dict[str, Any]
) -> None:
    """No valid Matrix ID holds a lone surrogate, and SQLite cannot encode one: the event is
    malformed, and dropped (a hypothesis storm found a thread root like this failing the
    handler's lookup)."""
    before = harness.bot.handler_errors
    content: dict[str, Any] = {"m.relates_to": relation}
    if relation.get("rel_type") == "m.replace":
        content["m.new_content"] = {"msgtype": "m.text", "body": "#DocTocToc EEG ?"}
    event = _question(f"$rel-{len(str(relation))}", "#DocTocToc ECG ?", **content)
    odd_sender = _question("$odd-sender", "#DocTocToc ECG ?") | {"sender": "@a\udaa8:x"}
    harness.batch([(INTAKE, event), (INTAKE, odd_sender)])
    assert harness.bot.handler_errors == before, "a handler failed on a lone surrogate in an ID"
    assert harness.run(harness.store.question("$odd-sender")) is None


def test_deep_relations_and_non_dict_events(harness: Harness) -> None:
    deep: dict[str, Any] = {"event_id": "$root"}
    for _ in range(50_000):
        deep = {"m.relates_to": deep, "m.in_reply_to": {"event_id": "$x"}}
    weird: list[Any] = [
        None,
        [],
        "m.room.message",
        42,
        {"type": "m.room.message"},
        {"type": "m.room.message", "content": deep, "event_id": "$deep", "sender": "@a:b"},
        _question("$deep2", "#DocTocToc ECG ?", **{"m.relates_to": deep}),
    ]
    before = harness.bot.handler_errors
    harness.batch([(INTAKE, e) for e in weird])
    assert harness.bot.handler_errors == before


def test_100kB_question_is_forwarded_shortened_with_marker(harness: Harness) -> None:
    body = "#DocTocToc ECG ? " + " ".join(f"mot{i}" for i in range(20_000))
    assert len(body.encode()) > 100_000
    harness.batch([(INTAKE, _question("$huge", body))])
    harness.mx.sent.clear()
    harness.drain()
    fwd = [c for r, c, _ in harness.mx.sent if r == CARDIO and "mot0 " in c["body"]]
    assert len(fwd) == 1
    content = fwd[0]
    assert len(content["body"]) < 5_000, len(content["body"])
    assert len(content["formatted_body"]) < 10_000, len(content["formatted_body"])
    assert f"message raccourci : {len(body)} caractères" in content["body"]
    assert "message raccourci" in content["formatted_body"]
    assert "mot19999" not in content["body"]


def test_questions_recorded_while_the_worker_writes(harness: Harness) -> None:
    """The sync handler and the worker (and its ack tasks) share one database connection.

    A question arriving while the worker records an effect must still be recorded: here both
    run at the same time, as they do in the bot (sync task, worker task, ack tasks).
    """

    async def both(i: int) -> None:
        batch = SyncBatch(
            next_batch=f"race{i}",
            events=[(INTAKE, _question(f"$race{i}", f"#DocTocToc ECG course {i} ?"))],
        )
        # Like the worker and its parallel acknowledgement tasks: several effects at once.
        effects = [
            harness.store.add_effect(
                tx_id=f"race-effect-{i}-{k}",
                kind="notice",
                room_id=TRIAGE,
                content={"msgtype": "m.notice", "body": f"course {i}"},
            )
            for k in range(4)
        ]
        results = await asyncio.gather(
            harness.bot.handle_batch(batch), *effects, return_exceptions=True
        )
        failures.extend(r for r in results if isinstance(r, BaseException))

    failures: list[BaseException] = []
    before = harness.bot.handler_errors
    for i in range(30):
        harness.run(both(i))
    missing = [i for i in range(30) if harness.run(harness.store.question(f"$race{i}")) is None]
    assert harness.bot.handler_errors == before and not missing and not failures, (
        f"{len(missing)} of 30 questions lost while the worker wrote to the database; "
        f"{len(failures)} effect writes failed: {failures[:1]!r}"
    )
