"""A Matrix test client on top of matrix-nio, for the integration tests against a real Synapse.

:class:`TestUser` wraps an ``nio.AsyncClient`` (end-to-end encryption off), runs a background
sync loop that records every timeline event (as the raw event dict) and every invite, and offers
``wait_for_*`` methods that wake up on each sync instead of sleeping. Errors returned by nio
become exceptions carrying the Matrix errcode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    JoinResponse,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomPreset,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
    WhoamiResponse,
)

from peerbot.dev.devserver import RegisteredUser, SynapseServer

__all__ = [
    "MakeUser",
    "MatrixCallError",
    "NetworkAccessDenied",
    "StartSynapse",
    "TestUser",
    "body_is",
    "in_thread",
    "room_messages",
    "unique_name",
]

log = logging.getLogger(__name__)

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

# Long-poll length of the test clients' sync; short so a client recovers fast after a restart.
_SYNC_TIMEOUT_MS = 10_000
# Enough history per sync that a gap (a server restart, a paused client) loses nothing.
_SYNC_FILTER = {"room": {"timeline": {"limit": 200}}, "presence": {"types": []}}


class MatrixCallError(AssertionError):
    """A Matrix call answered with an error (``errcode`` and ``status`` are kept)."""

    def __init__(self, what: str, response: ErrorResponse) -> None:
        """Describe the failed call ``what`` from nio's error ``response``."""
        self.errcode: str | None = response.status_code
        self.retry_after_ms: int | None = response.retry_after_ms
        super().__init__(f"{what} failed: {response.status_code} {response.message}")


class NetworkAccessDenied(RuntimeError):
    """A test tried to reach something other than loopback (see the guard in conftest.py)."""


class StartSynapse(Protocol):
    """The ``start_synapse`` fixture: takes the keyword arguments of ``SynapseServer.start``."""

    def __call__(self, **options: Any) -> Awaitable[SynapseServer]:
        """Start a Synapse in the test's own temporary folder; stopped when the test ends."""
        ...


class MakeUser(Protocol):
    """The ``make_user`` fixture."""

    def __call__(
        self, name: str = "user", *, server: SynapseServer | None = None, admin: bool = False
    ) -> Awaitable[TestUser]:
        """Register a unique user ``name-xxxxxxxx``, log in and start syncing."""
        ...


def unique_name(prefix: str) -> str:
    """A Matrix-safe localpart or alias that no other test uses: ``prefix-1a2b3c4d``."""
    return f"{prefix.lower()}-{uuid.uuid4().hex[:8]}"


def body_is(text: str) -> Predicate:
    """Predicate: an ``m.room.message`` whose body is exactly ``text``."""
    return lambda e: e["type"] == "m.room.message" and e["content"].get("body") == text


def in_thread(root: str) -> Predicate:
    """Predicate: an event whose relation puts it in the thread rooted at ``root``."""

    def check(event: Event) -> bool:
        rel = event["content"].get("m.relates_to") or {}
        return bool(rel.get("rel_type") == "m.thread" and rel.get("event_id") == root)

    return check


def _check(response: Any, expected: type, what: str) -> Any:
    """Return ``response`` if it is of the ``expected`` type, else raise with its errcode."""
    if isinstance(response, expected):
        return response
    if isinstance(response, ErrorResponse):
        raise MatrixCallError(what, response)
    raise RuntimeError(f"{what}: unexpected answer {response!r}")


def _describe(event: Event) -> str:
    """One line per event for failure messages: id, type, sender and body or membership."""
    content = event.get("content") or {}
    detail = content.get("body")
    if detail is None and event.get("type") == "m.room.member":
        detail = f"{event.get('state_key')} {content.get('membership')}"
    rel = content.get("m.relates_to") or {}
    relation = f" [{rel.get('rel_type')} -> {rel.get('event_id')}]" if rel.get("rel_type") else ""
    return (
        f"  {event.get('event_id')} {event.get('type')} from {event.get('sender')}: "
        f"{detail!r}{relation}"
    )


class TestUser:
    """A logged-in Matrix user for tests, recording everything its sync receives."""

    __test__ = False  # not a pytest test class, despite the name

    user_id: str
    client: AsyncClient

    def __init__(self, server: SynapseServer, user: RegisteredUser, client: AsyncClient) -> None:
        """Use :meth:`login` instead."""
        self.server = server
        self.user = user
        self.user_id = user.user_id
        self.client = client
        self._events: dict[str, list[Event]] = {}
        self._state: dict[str, list[Event]] = {}
        self._seen_events: set[str] = set()
        self._seen_state: set[str] = set()
        self._invites: dict[str, list[Event]] = {}
        self._changed = asyncio.Condition()
        self._synced_once = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None
        self.sync_errors: list[str] = []

    def __repr__(self) -> str:
        """Name the user."""
        return f"TestUser({self.user_id!r})"

    @classmethod
    async def login(cls, server: SynapseServer, user: RegisteredUser) -> TestUser:
        """Reuse the registration's access token and device (no new login, no new device)."""
        config = AsyncClientConfig(
            encryption_enabled=False,
            store_sync_tokens=False,
            # Reconnect within a second once a restarted server is back.
            max_timeout_retry_wait_time=1.0,
            request_timeout=30,
        )
        client = AsyncClient(server.base_url, user.user_id, user.device_id, config=config)
        client.restore_login(user.user_id, user.device_id, user.access_token)
        try:
            _check(await client.whoami(), WhoamiResponse, f"whoami for {user.user_id}")
        except BaseException:
            await client.close()
            raise
        return cls(server, user, client)

    # --- syncing -------------------------------------------------------------------------

    async def start(self, ready_timeout: float = 15.0) -> None:
        """Start the background sync and wait until its first answer was recorded."""
        if self._sync_task is None:
            self._sync_task = asyncio.create_task(self._sync_loop(), name=f"sync {self.user_id}")
        await self._wait(
            self._synced_once.is_set, ready_timeout, lambda: "the first sync never answered"
        )

    async def stop(self) -> None:
        """Stop syncing at once and close the HTTP session."""
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self.client.close()

    async def _sync_loop(self) -> None:
        """Sync forever, recording each answer; errors are logged and retried, not fatal."""
        while True:
            try:
                response = await self.client.sync(
                    timeout=_SYNC_TIMEOUT_MS, sync_filter=_SYNC_FILTER
                )
                if isinstance(response, SyncResponse):
                    await self._record(response)
                    continue
                self.sync_errors.append(f"{response.status_code} {response.message}")
            except Exception as exc:  # a test client must keep syncing through outages
                log.debug("%s: sync failed: %r", self.user_id, exc)
                self.sync_errors.append(repr(exc))
            # Synapse answers 5xx at once while starting: do not spin.
            await asyncio.sleep(0.2)

    async def _record(self, response: SyncResponse) -> None:
        """Store the timeline, state and invites of one sync answer and wake the waiters."""
        for room_id, info in response.rooms.join.items():
            self._add(self._state, self._seen_state, room_id, (e.source for e in info.state))
            self._add(
                self._events, self._seen_events, room_id, (e.source for e in info.timeline.events)
            )
        for room_id, left in response.rooms.leave.items():
            self._add(self._state, self._seen_state, room_id, (e.source for e in left.state))
            self._add(
                self._events, self._seen_events, room_id, (e.source for e in left.timeline.events)
            )
        for room_id, invited in response.rooms.invite.items():
            self._invites.setdefault(room_id, []).extend(e.source for e in invited.invite_state)
        self._synced_once.set()
        async with self._changed:
            self._changed.notify_all()

    @staticmethod
    def _add(
        store: dict[str, list[Event]], seen: set[str], room_id: str, events: Iterable[Event]
    ) -> None:
        """Append events to ``store[room_id]``, skipping any event id in ``seen``."""
        bucket = store.setdefault(room_id, [])
        for event in events:
            event_id = event.get("event_id")
            if isinstance(event_id, str):
                if event_id in seen:
                    continue
                seen.add(event_id)
            bucket.append(event)

    async def _wait(
        self,
        ready: Callable[[], Any],
        within: float,
        explain: Callable[[], str],
    ) -> Any:
        """Wait until ``ready()`` is truthy (checked after every sync); return its value."""
        deadline = time.monotonic() + within
        async with self._changed:
            while True:
                value = ready()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    errors = "; ".join(self.sync_errors[-3:]) or "none"
                    raise AssertionError(
                        f"{self.user_id}: timed out after {within:.1f} s: {explain()}"
                        f"\n(last sync errors: {errors})"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    # --- what was received -----------------------------------------------------------------

    def events(self, room_id: str) -> list[Event]:
        """The timeline events recorded so far in ``room_id``, oldest first."""
        return list(self._events.get(room_id, []))

    @property
    def invites(self) -> set[str]:
        """Rooms this user has been invited to (so far)."""
        return set(self._invites)

    def _find(self, room_id: str, predicate: Predicate) -> Event | None:
        """The first recorded event matching ``predicate``; a predicate error means no match."""
        for event in self._events.get(room_id, []):
            try:
                if predicate(event):
                    return event
            except (KeyError, TypeError, AttributeError):
                continue
        return None

    def _explain_room(self, room_id: str, what: str) -> Callable[[], str]:
        """A failure message listing what the room's timeline holds."""

        def explain() -> str:
            events = self._events.get(room_id, [])
            listing = "\n".join(_describe(e) for e in events) or "  (nothing)"
            return f"{what} in {room_id}; recorded {len(events)} events:\n{listing}"

        return explain

    async def wait_for_event(
        self,
        room_id: str,
        predicate: Predicate,
        timeout: float = 15.0,  # noqa: ASYNC109 - the deadline is the point of this helper
    ) -> Event:
        """The first recorded event (already seen or still to come) matching ``predicate``."""
        result: Event = await self._wait(
            lambda: self._find(room_id, predicate),
            timeout,
            self._explain_room(room_id, "no matching event"),
        )
        return result

    async def wait_for_invite(
        self,
        room_id: str,
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until this user is invited to ``room_id``."""
        await self._wait(
            lambda: room_id in self._invites,
            timeout,
            lambda: f"no invite to {room_id} (invited to: {sorted(self._invites)})",
        )

    async def wait_joined(
        self,
        room_id: str,
        user_id: str,
        timeout: float = 15.0,  # noqa: ASYNC109
    ) -> None:
        """Wait until this user's sync shows ``user_id`` joined to ``room_id``."""

        def joined() -> bool:
            for event in (*self._state.get(room_id, []), *self._events.get(room_id, [])):
                if (
                    event.get("type") == "m.room.member"
                    and event.get("state_key") == user_id
                    and (event.get("content") or {}).get("membership") == "join"
                ):
                    return True
            return False

        await self._wait(joined, timeout, self._explain_room(room_id, f"{user_id} not joined"))

    # --- actions ---------------------------------------------------------------------------

    async def create_room(
        self,
        *,
        alias_localpart: str | None = None,
        invite: Sequence[str] = (),
        public: bool = False,
        encrypted: bool = False,
        room_version: str | None = None,
        name: str | None = None,
    ) -> str:
        """Create a room (public: in the directory and joinable by anyone); its room id."""
        initial_state: list[dict[str, Any]] = []
        if encrypted:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        response = await self.client.room_create(
            visibility=RoomVisibility.public if public else RoomVisibility.private,
            alias=alias_localpart,
            name=name,
            room_version=room_version,
            preset=RoomPreset.public_chat if public else RoomPreset.private_chat,
            invite=list(invite),
            initial_state=initial_state,
        )
        created: RoomCreateResponse = _check(response, RoomCreateResponse, "room_create")
        return str(created.room_id)

    async def join(self, room: str) -> str:
        """Join a room by id or alias; the room id."""
        joined: JoinResponse = _check(await self.client.join(room), JoinResponse, f"join {room}")
        return str(joined.room_id)

    async def invite(self, room_id: str, user_id: str) -> None:
        """Invite ``user_id`` to ``room_id``."""
        response = await self.client.room_invite(room_id, user_id)
        if isinstance(response, ErrorResponse):
            raise MatrixCallError(f"invite {user_id} to {room_id}", response)

    async def leave(self, room_id: str) -> None:
        """Leave ``room_id``."""
        response = await self.client.room_leave(room_id)
        if isinstance(response, ErrorResponse):
            raise MatrixCallError(f"leave {room_id}", response)

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send any message event; its event id."""
        response = await self.client.room_send(room_id, event_type, content)
        sent: RoomSendResponse = _check(response, RoomSendResponse, f"send {event_type}")
        return str(sent.event_id)

    async def send_text(
        self,
        room_id: str,
        body: str,
        *,
        thread_root: str | None = None,
        reply_to: str | None = None,
        formatted_body: str | None = None,
        extra_content: dict[str, Any] | None = None,
        msgtype: str = "m.text",
    ) -> str:
        """Send a text message, optionally in a thread and/or as a reply; its event id."""
        content: dict[str, Any] = {"msgtype": msgtype, "body": body}
        if formatted_body is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted_body
        if thread_root is not None:
            # As Element does: a thread message carries a fallback reply for older clients.
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": thread_root,
                "is_falling_back": reply_to is None,
                "m.in_reply_to": {"event_id": reply_to or thread_root},
            }
        elif reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        if extra_content:
            content.update(extra_content)
        return await self.send(room_id, "m.room.message", content)

    async def edit(self, room_id: str, event_id: str, new_body: str) -> str:
        """Replace the text of ``event_id`` (an ``m.replace`` edit); the edit's event id."""
        return await self.send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": f"* {new_body}",
                "m.new_content": {"msgtype": "m.text", "body": new_body},
                "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
            },
        )

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """Annotate ``event_id`` with ``key`` (e.g. an emoji); the reaction's event id."""
        return await self.send(
            room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}},
        )

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        """Redact ``event_id``; the redaction's event id."""
        response = await self.client.room_redact(room_id, event_id, reason=reason)
        redacted: RoomRedactResponse = _check(response, RoomRedactResponse, "redact")
        return str(redacted.event_id)

    async def set_power_level(self, room_id: str, user_id: str, level: int) -> str:
        """Set ``user_id``'s power level in ``room_id``; the state event's id."""
        current = _check(
            await self.client.room_get_state_event(room_id, "m.room.power_levels"),
            RoomGetStateEventResponse,
            "get m.room.power_levels",
        )
        content = dict(current.content)
        content["users"] = {**content.get("users", {}), user_id: level}
        response = await self.client.room_put_state(room_id, "m.room.power_levels", content)
        put: RoomPutStateResponse = _check(response, RoomPutStateResponse, "set power levels")
        return str(put.event_id)


async def room_messages(base_url: str, token: str, room_id: str) -> list[Event]:
    """Every event of a room this token can see, oldest first (``/messages``, all pages)."""
    url = f"{base_url}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
    headers = {"Authorization": f"Bearer {token}"}
    events: list[Event] = []
    start: str | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        while True:
            params = {"dir": "b", "limit": "500"}
            if start:
                params["from"] = start
            async with http.get(url, headers=headers, params=params) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            events += page.get("chunk", [])
            start = page.get("end")
            if not page.get("chunk") or not start:
                break
    events.reverse()
    return events
