"""The only module that talks to matrix-nio: login, sync batches, sends; errors -> exceptions.

The rest of PeerBot sees plain event dicts (``event.source``) and the exceptions below, never nio's
response objects.

long: every nio call and its error mapping live here on purpose (one module imports nio); the
client is cut in three classes instead: the session (login, encryption, raw HTTP), the timeline
(sync, gap filling, late decryption) and rooms and sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Self

import aiohttp
import nio
from nio.api import MessageDirection

from peerbot.config import EncryptionConfig, MatrixConfig
from peerbot.core.ids import EventID, RoomID, UserID
from peerbot.core.visibility import RoomPrivacy

__all__ = [
    "EventID",
    "Forbidden",
    "Invite",
    "MatrixClient",
    "MatrixError",
    "NotFound",
    "RoomID",
    "SyncBatch",
    "Transient",
    "Undecryptable",
    "UserID",
]

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
TIMELINE_LIMIT = 50
THROTTLE_GRACE = 2.0
"""Seconds after a rate limit's end during which sends still go one at a time."""
GAP_PAGE = 100
GAP_MAX_EVENTS = 5_000
RAW_RATE_LIMIT_RETRIES = 5
"""How many times :meth:`MatrixClient.raw` waits out a 429 before giving up."""
RAW_MAX_WAIT_MS = 30_000


class MatrixError(Exception):
    """The homeserver refused or failed a request."""

    def __init__(self, what: str, errcode: str | None, message: str, status: int | None) -> None:
        super().__init__(f"{what}: {errcode or status or 'error'} {message}".strip())
        self.what = what
        self.errcode = errcode
        self.status = status


class Transient(MatrixError):
    """Worth retrying later: a 5xx, a proxy's error page, a time-out."""


class Forbidden(MatrixError):
    """Not allowed (not in the room, no permission, bad credentials)."""


class NotFound(MatrixError):
    """No such room, alias or event."""


def _raise(what: str, resp: Any) -> NoReturn:
    transport = getattr(resp, "transport_response", None)
    status = getattr(transport, "status", None)
    code = resp.status_code if isinstance(resp.status_code, str) else None
    _raise_for(what, code, resp.message or "", status)


def _raise_for(what: str, code: str | None, message: str, status: int | None) -> NoReturn:
    """The one mapping from a refusal to Forbidden / NotFound / Transient / MatrixError."""
    if code in ("M_FORBIDDEN", "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_USER_DEACTIVATED"):
        raise Forbidden(what, code, message, status)
    if code == "M_NOT_FOUND" or status == 404:
        raise NotFound(what, code, message, status)
    if status is None or status >= 500 or code is None or code == "M_LIMIT_EXCEEDED":
        raise Transient(what, code, message, status)
    raise MatrixError(what, code, message, status)


@dataclass(frozen=True)
class Invite:
    """An invitation for the bot."""

    room_id: RoomID
    inviter: str | None
    encrypted: bool
    room_version: str | None = None


@dataclass(frozen=True)
class Undecryptable:
    """An encrypted event the bot holds no key for (yet); never its content."""

    room_id: RoomID
    event_id: EventID
    sender: str
    session_id: str
    sender_key: str


@dataclass
class SyncBatch:
    """What one sync brought, in the order to handle it."""

    next_batch: str
    events: list[tuple[RoomID, dict[str, Any]]] = field(default_factory=list)
    """Timeline events, gaps filled, oldest first within each room."""
    invites: list[Invite] = field(default_factory=list)
    left: list[RoomID] = field(default_factory=list)
    undecryptable: list[Undecryptable] = field(default_factory=list)
    """Encrypted timeline events that could not be decrypted (kept out of ``events``)."""
    received_at: float | None = None
    """When the answer's headers were in (wall clock), for ``bench_load.py --profile``."""

    def only_from(self, user_id: str) -> bool:
        """True when the batch holds no invite, no left room, and no event (decrypted or not)
        but ``user_id``'s (the bot's sync brings back each of its own sends).

        For such a batch (or an empty one) the bot neither saves the token nor wakes its
        worker: no handler acts on its own events. The token is saved with the next batch that
        brings news, and a restart before that replays only these events."""
        if self.invites or self.left or any(u.sender != user_id for u in self.undecryptable):
            return False
        return all(isinstance(e, Mapping) and e.get("sender") == user_id for _, e in self.events)


class _NioClient(nio.AsyncClient):  # type: ignore[misc]
    """nio's client, keeping the raw body of the last /sync: nio drops what it cannot parse
    (an invited room's encryption and create events, the content of invite member events)."""

    last_invites: dict[str, Any] | None = None
    connection_failures = 0
    """Requests that could not reach the homeserver (nio retries them itself)."""
    last_connection_failure: float | None = None
    """When the last one happened (monotonic seconds)."""

    async def get_timeout_retry_wait_time(self, got_timeouts: int) -> float:
        # Called by nio for each connection failure or time-out before it retries: the one
        # place a sync that keeps retrying inside nio shows that the homeserver is down.
        self.connection_failures += 1
        self.last_connection_failure = time.monotonic()
        wait: float = await super().get_timeout_retry_wait_time(got_timeouts)
        return wait

    last_sync_received: float | None = None
    """When the last /sync answer's headers were in (wall clock; bench_load.py --profile)."""

    async def parse_body(self, transport_response: Any) -> dict[str, Any]:
        url = getattr(transport_response, "url", None)
        is_sync = url is not None and str(getattr(url, "path", "")).endswith("/sync")
        if is_sync:
            self.last_sync_received = time.time()
        body: dict[str, Any] = await super().parse_body(transport_response)
        if is_sync:
            rooms = body.get("rooms") if isinstance(body, dict) else None
            invites = rooms.get("invite") if isinstance(rooms, dict) else None
            # nio edits event dicts in place while parsing: keep a copy.
            self.last_invites = copy.deepcopy(invites) if isinstance(invites, dict) else {}
        return body


class _Session:
    """The nio client, its login and encryption set-up (the base of :class:`MatrixClient`)."""

    def __init__(
        self,
        config: MatrixConfig,
        encryption: EncryptionConfig | None = None,
        *,
        reset_identity: bool = False,
        nio_client: nio.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.encryption = encryption if encryption is not None and encryption.enabled else None
        self.reset_identity = reset_identity
        extra: dict[str, Any] = {}
        store_path: str | None = None
        if self.encryption is not None:
            # Never nio's default pickle key; the store folder is private to the bot.
            extra["pickle_key"] = self.encryption.pickle_key
            store_path = str(_private_dir(self.encryption.store_path))
        client_config = nio.AsyncClientConfig(
            encryption_enabled=self.encryption is not None,
            store_sync_tokens=False,
            max_timeouts=None,
            backoff_factor=0.5,
            max_timeout_retry_wait_time=30,
            request_timeout=SYNC_TIMEOUT_MS / 1000 + 30,
            **extra,
        )
        self._client = (
            nio_client
            if nio_client is not None
            else _NioClient(
                config.homeserver, config.user_id, store_path=store_path, config=client_config
            )
        )
        self.user_id = UserID(config.user_id)
        self._requested_keys: set[str] = set()
        self._filter_ids: dict[int, str] = {}
        """Uploaded sync filters by timeline limit (see :meth:`_Timeline._sync_filter`)."""
        # While the server throttles the bot, sends go one at a time: the parallel
        # acknowledgements would otherwise all wake at the end of the same retry_after and be
        # refused together, again and again. (nio itself sleeps retry_after_ms and retries.)
        self._send_gate = asyncio.Lock()
        self._throttled_until = 0.0
        self.error_counts: dict[str, int] = {}
        """The homeserver's error answers so far, by errcode (or HTTP status), 429s included."""
        if nio_client is None:
            self._client.add_response_callback(self._on_error_response, nio.ErrorResponse)

    @classmethod
    def wrap(cls, client: nio.AsyncClient) -> Self:
        """A MatrixClient over an nio client that is already logged in (tests and tools only).

        No encryption set-up and no rate-limit tracking of its own; :meth:`close` closes it.
        """
        config = MatrixConfig(
            homeserver=str(client.homeserver),
            user_id=str(client.user_id),
            device_id=client.device_id,
        )
        return cls(config, nio_client=client)

    async def _on_error_response(self, resp: Any) -> None:
        code = getattr(resp, "status_code", None)
        transport = getattr(resp, "transport_response", None)
        key = str(code or getattr(transport, "status", None) or "unknown")
        self.error_counts[key] = self.error_counts.get(key, 0) + 1
        if code == "M_LIMIT_EXCEEDED":
            wait_ms = getattr(resp, "retry_after_ms", None) or 5000
            self._throttled_until = max(
                self._throttled_until, time.monotonic() + wait_ms / 1000 + THROTTLE_GRACE
            )

    @property
    def encrypted(self) -> bool:
        """True when this client reads and writes encrypted rooms."""
        return self.encryption is not None

    @property
    def device_id(self) -> str | None:
        """The device in use."""
        device: str | None = self._client.device_id
        return device

    @property
    def access_token(self) -> str:
        """The access token in use (a secret: never log it)."""
        token: str = self._client.access_token
        return token

    # -- session ----------------------------------------------------------------------------

    async def login(self, saved_device_id: str | None, saved_token: str | None) -> None:
        """Reuse a saved token and device when they still work, else log in with the password."""
        cfg = self.config
        token = cfg.access_token or saved_token
        device = cfg.device_id or saved_device_id
        if device and token and await self._store_lost(device, token):
            # That device's keys on the server belong to a store that is gone: a device cannot
            # get new identity keys, so the bot logs in as a new device (signed below, in
            # setup_encryption, with the kept cross-signing keys).
            if not cfg.password:
                raise Forbidden(
                    "login",
                    None,
                    f"the encryption store of device {device} is lost and there is no password "
                    "to log in a new device",
                    None,
                )
            log.warning(
                "The encryption store of device %s is missing; logging in as a new device", device
            )
            token = device = None
        if token and device:
            self._client.restore_login(cfg.user_id, device, token)
            who = await self._client.whoami()
            if isinstance(who, nio.WhoamiResponse):
                if who.user_id != cfg.user_id:
                    raise Forbidden("login", None, f"the token belongs to {who.user_id}", None)
                return
            if not cfg.password or getattr(who, "status_code", None) not in (
                "M_UNKNOWN_TOKEN",
                "M_MISSING_TOKEN",
            ):
                _raise("login", who)
            log.warning("The saved access token no longer works; logging in again")
            self._client.access_token = ""
        if not cfg.password:
            raise Forbidden("login", None, "no password and no usable access token", None)
        if device:
            self._client.device_id = device
        resp = await self._client.login(password=cfg.password, device_name=cfg.device_name)
        if isinstance(resp, nio.LoginError):
            _raise("login", resp)

    def _store_file(self, device_id: str) -> Path | None:
        if self.encryption is None:
            return None
        return self.encryption.store_path / f"{self.config.user_id}_{device_id}.db"

    async def _store_lost(self, device_id: str, token: str) -> bool:
        """True when the device has keys on the server but no local encryption store."""
        store = self._store_file(device_id)
        if store is None or store.exists():
            return False
        self._client.access_token = token
        try:
            answer = await self._raw(
                "POST",
                "/_matrix/client/v3/keys/query",
                {"device_keys": {self.config.user_id: [device_id]}},
                "query own device keys",
            )
        except MatrixError:
            return False  # a stale token: the password login below decides
        finally:
            self._client.access_token = ""
        devices = (answer.get("device_keys") or {}).get(self.config.user_id) or {}
        return isinstance(devices, dict) and device_id in devices

    async def setup_encryption(self) -> Any:
        """Upload the device keys and run the cross-signing bootstrap (encryption only).

        Returns the :class:`peerbot.matrix.crosssign.BootstrapReport`, or None without encryption.
        Raises ``crosssign.KeysLost`` / ``IdentityMismatch`` unless ``reset_identity``.
        """
        enc = self.encryption
        if enc is None:
            return None
        import peerbot.matrix.crosssign as crosssign

        if self._client.olm is None:
            raise crosssign.CrossSigningError(
                f"nio could not open its encryption store in {enc.store_path}"
            )
        if self._client.should_upload_keys:
            resp = await self._client.keys_upload()
            if isinstance(resp, nio.ErrorResponse):
                _raise("upload device keys", resp)
        try:
            return await crosssign.bootstrap(
                self,
                key_path=enc.key_file,
                passphrase=enc.passphrase or "",
                password=self.config.password,
                reset=self.reset_identity,
            )
        except MatrixError as exc:
            # An unreachable or throttling server during the set-up: still a set-up failure.
            raise crosssign.ServerError(str(exc), status=exc.status, errcode=exc.errcode) from exc

    async def _keys_housekeeping(self) -> None:
        """What nio's sync_forever does after a sync: to-device sends, key upload, query, claim."""
        c = self._client
        if c.olm is None:
            return
        try:
            await c.send_to_device_messages()
            if c.should_upload_keys:
                await c.keys_upload()
            if c.should_query_keys:
                await c.keys_query()
            if c.should_claim_keys:
                await c.keys_claim(c.get_users_for_key_claiming())
        except (nio.LocalProtocolError, nio.EncryptionError) as exc:
            log.warning("Key management after sync failed: %s", exc)

    async def close(self) -> None:
        """Close the HTTP session (the device stays logged in for the next start)."""
        await self._client.close()

    # -- raw HTTP (cross-signing, tools) ---------------------------------------------------

    async def raw(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        what: str | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """One authenticated client-server API call, 429s waited out (``retry_after_ms``).

        Returns the HTTP status and the JSON object answered (None when the answer is not a
        JSON object, e.g. a proxy's error page). Raises :class:`Transient` when the server
        cannot be reached or is still rate-limiting after a few waits, :class:`Forbidden`
        before a login.
        """
        what = what or f"{method} {path}"
        token = self._client.access_token
        if not token:
            raise Forbidden(what, None, "the Matrix client is not logged in", None)
        headers = {"Authorization": f"Bearer {token}"}
        data = json.dumps(body) if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        for _ in range(RAW_RATE_LIMIT_RETRIES + 1):
            try:
                resp = await self._client.send(method, path, data, headers)
                try:
                    status = int(resp.status)
                    try:
                        payload = await resp.json(content_type=None)
                    except ValueError:  # an HTML error page from a proxy
                        payload = None
                finally:
                    resp.release()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Transient(what, None, f"cannot reach the homeserver: {exc!r}", None) from exc
            answer = payload if isinstance(payload, dict) else None
            if status >= 400:
                code = (answer or {}).get("errcode")
                key = code if isinstance(code, str) else str(status)
                self.error_counts[key] = self.error_counts.get(key, 0) + 1
            if status != 429:
                return status, answer
            delay_ms = (answer or {}).get("retry_after_ms")
            delay_ms = delay_ms if isinstance(delay_ms, int) else 1000
            await asyncio.sleep(min(max(delay_ms, 0), RAW_MAX_WAIT_MS) / 1000)
        raise Transient(what, "M_LIMIT_EXCEEDED", "still rate-limited", 429)

    async def _raw(
        self, method: str, path: str, body: Mapping[str, Any] | None, what: str
    ) -> dict[str, Any]:
        """:meth:`raw`, a refusal (HTTP 400 and up) raised as one of the errors above."""
        status, answer = await self.raw(method, path, body, what=what)
        if status >= 400:
            payload = answer or {}
            code = payload.get("errcode")
            _raise_for(
                what, code if isinstance(code, str) else None, str(payload.get("error", "")), status
            )
        return answer or {}


class _Timeline(_Session):
    """Sync batches, gap filling and events that cannot be decrypted yet."""

    # -- sync -------------------------------------------------------------------------------

    @property
    def connection_failures(self) -> int:
        """Requests that could not reach the homeserver so far (each retried)."""
        return int(getattr(self._client, "connection_failures", 0))

    @property
    def last_connection_failure(self) -> float | None:
        """When a request last could not reach the homeserver (monotonic), or None."""
        value = getattr(self._client, "last_connection_failure", None)
        return float(value) if value is not None else None

    async def sync(
        self, since: str | None, *, full_state: bool, first: bool = False, wait: bool = True
    ) -> SyncBatch:
        """One sync. ``first``: an initial sync that only fetches state and the latest token;
        ``wait``: long-poll until something happens (else answer at once)."""
        limit = 1 if first else TIMELINE_LIMIT
        resp = await self._client.sync(
            timeout=0 if first or not wait else SYNC_TIMEOUT_MS,
            since=since,
            full_state=full_state,
            sync_filter=await self._sync_filter(limit),
        )
        if not isinstance(resp, nio.SyncResponse):
            _raise("sync", resp)
        if self.encryption is not None:
            # Before the handlers run: sends from them need the members' device keys.
            await self._keys_housekeeping()
        batch = SyncBatch(
            next_batch=resp.next_batch,
            received_at=getattr(self._client, "last_sync_received", None),
        )
        raw_invites = getattr(self._client, "last_invites", None) or {}
        for room_id in resp.rooms.invite:
            state = ((raw_invites.get(room_id) or {}).get("invite_state") or {}).get("events")
            batch.invites.append(self._invite(RoomID(room_id), state or []))
        batch.left = [RoomID(r) for r in resp.rooms.leave]
        if first:
            return batch
        for room_id, joined in resp.rooms.join.items():
            timeline = joined.timeline
            events: list[dict[str, Any]] = []
            if timeline.limited and since:
                events = await self._fill_gap(room_id, timeline.prev_batch, since, batch)
            events += self._sources(room_id, timeline.events, batch)
            batch.events += [(RoomID(room_id), e) for e in events if e]
        return batch

    def sync_filter_definition(self, limit: int) -> dict[str, Any]:
        """What the bot syncs: room state and timelines, and nothing it never reads (presence,
        typing and receipts, account data), each of which would wake it for nothing. To-device
        messages and device lists are not filtered.

        The bot's own messages are not filtered out (``not_senders``), though it skips them:
        Synapse wakes a long-poll for every event of its rooms and, when the filter leaves
        nothing, computes the sync again from the request's ``since`` at the next event. With
        ``not_senders`` the sync that brought a question therefore also went through every
        room the bot had sent to since its last answer (12 database transactions instead of
        5 in bench_load.py), and reached the bot about 7 ms after a bare bot's. Without it,
        each send ends the long-poll once, and the next one starts from a fresh token; such a
        batch of its own events costs no write (:meth:`SyncBatch.only_from`)."""
        return {
            "presence": {"types": []},
            "account_data": {"types": []},
            "room": {
                "timeline": {"limit": limit},
                "ephemeral": {"types": []},
                "account_data": {"types": []},
            },
        }

    async def _sync_filter(self, limit: int) -> str | dict[str, Any]:
        """The filter's ID, uploaded once per process (Synapse parses and validates a filter
        given inline on every sync; an uploaded one it reads from its cache); the definition
        itself if the upload is refused."""
        known = self._filter_ids.get(limit)
        if known is not None:
            return known
        definition = self.sync_filter_definition(limit)
        try:
            answer = await self._raw(
                "POST",
                f"/_matrix/client/v3/user/{_q(self.user_id)}/filter",
                definition,
                "upload the sync filter",
            )
        except MatrixError as exc:
            log.warning("Could not upload the sync filter (%s): sending it with each sync", exc)
            return definition
        filter_id = answer.get("filter_id")
        if not isinstance(filter_id, str):
            return definition
        self._filter_ids[limit] = filter_id
        return filter_id

    def _sources(self, room_id: str, events: list[Any], batch: SyncBatch) -> list[dict[str, Any]]:
        """Event dicts (decrypted ones as plain events); undecryptable ones go to the batch."""
        out: list[dict[str, Any]] = []
        for e in events:
            if isinstance(e, nio.MegolmEvent):
                batch.undecryptable.append(
                    Undecryptable(
                        RoomID(room_id),
                        EventID(e.event_id),
                        str(e.sender),
                        str(e.session_id),
                        str(e.sender_key),
                    )
                )
                continue
            out.append(_source(e))
        return out

    # -- undecryptable events ----------------------------------------------------------------

    def has_room_key(self, room_id: str, sender_key: str, session_id: str) -> bool:
        """True when the room key (Megolm session) of an event is now known."""
        olm = self._client.olm
        if olm is None:
            return False
        return olm.inbound_group_store.get(room_id, sender_key, session_id) is not None

    async def request_room_key(self, room_id: str, event_id: str) -> None:
        """Ask the sender's devices for the key of an event (once per session and run)."""
        if self._client.olm is None:
            return
        event = await self._encrypted_event(room_id, event_id)
        if event is None or event.session_id in self._requested_keys:
            return
        self._requested_keys.add(event.session_id)
        try:
            resp = await self._client.request_room_key(event)
        except nio.LocalProtocolError:
            return  # already requested by nio itself
        if isinstance(resp, nio.ErrorResponse):
            log.warning("Requesting the room key of %s failed: %s", event_id, resp.message)

    async def decrypt_later(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        """The decrypted event dict, fetched again; None while the key is still missing."""
        # nio decrypts what room_get_event returns when it holds the key (see get_event).
        src = await self.get_event(room_id, event_id)
        if not src or src.get("type") == "m.room.encrypted":
            return None
        return src

    async def _encrypted_event(self, room_id: str, event_id: str) -> nio.MegolmEvent | None:
        resp = await self._client.room_get_event(room_id, event_id)
        if not isinstance(resp, nio.RoomGetEventResponse):
            _raise(f"get {event_id}", resp)
        event = resp.event
        if not isinstance(event, nio.MegolmEvent):
            return None
        event.room_id = room_id
        return event

    async def _fill_gap(
        self, room_id: str, start: str | None, end: str, batch: SyncBatch
    ) -> list[dict[str, Any]]:
        """Events between the previous sync and this timeline, oldest first."""
        found: list[dict[str, Any]] = []
        token = start
        while token and len(found) < GAP_MAX_EVENTS:
            resp = await self._client.room_messages(
                room_id, start=token, end=end, direction=MessageDirection.back, limit=GAP_PAGE
            )
            if not isinstance(resp, nio.RoomMessagesResponse):
                log.warning("Could not fill a gap in %s: %s", room_id, resp)
                break
            # nio decrypts the chunk when it can; the rest is reported as undecryptable.
            found += self._sources(room_id, resp.chunk, batch)
            if not resp.chunk or not resp.end or resp.end == token:
                break
            token = resp.end
        log.info("Filled a gap of %d events in %s", len(found), room_id)
        found.reverse()
        return found

    def _invite(self, room_id: RoomID, state: list[Any]) -> Invite:
        inviter = None
        encrypted = False
        version = None
        for src in state:
            if not isinstance(src, dict):
                continue
            etype = src.get("type")
            if (
                etype == "m.room.member"
                and src.get("state_key") == self.user_id
                and (src.get("content") or {}).get("membership") == "invite"
            ):
                inviter = src.get("sender")
            elif etype == "m.room.encryption":
                encrypted = True
            elif etype == "m.room.create":
                content = src.get("content") or {}
                version = str(content.get("room_version", "1"))
        return Invite(room_id, inviter if isinstance(inviter, str) else None, encrypted, version)

    async def get_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """One event of a room, as a dict."""
        resp = await self._client.room_get_event(room_id, event_id)
        if not isinstance(resp, nio.RoomGetEventResponse):
            _raise(f"get {event_id}", resp)
        event = resp.event
        if isinstance(event, nio.MegolmEvent) and self._client.olm is not None:
            event.room_id = room_id
            with contextlib.suppress(nio.EncryptionError, nio.LocalProtocolError):
                event = self._client.decrypt_event(event)
        return _source(event)


class MatrixClient(_Timeline):
    """A logged-in connection to the homeserver: sync (:class:`_Timeline`), rooms and sends."""

    # -- rooms ------------------------------------------------------------------------------

    def joined_rooms(self) -> set[RoomID]:
        """Rooms the bot is in, as of the last sync."""
        return {RoomID(r) for r in self._client.rooms}

    def is_encrypted(self, room_id: str) -> bool:
        """True when the room has encryption enabled."""
        room = self._client.rooms.get(room_id)
        return bool(room and room.encrypted)

    def room_privacy(self, room_id: str) -> RoomPrivacy | None:
        """Who can read a room (join rule, history visibility, encryption); None if unknown."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return None
        return RoomPrivacy(
            room_id=room_id,
            join_rule=str(room.join_rule) if room.join_rule else None,
            history_visibility=str(room.history_visibility) if room.history_visibility else None,
            encrypted=bool(room.encrypted),
        )

    def display_name(self, room_id: str, user_id: str) -> str | None:
        """The user's display name in that room, if known."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return None
        user = room.users.get(user_id)
        return user.display_name if user and user.display_name else None

    def room_label(self, room_id: str) -> str:
        """A short human name for a room: its alias, its name, or its ID."""
        room = self._client.rooms.get(room_id)
        if room is None:
            return room_id
        return str(room.canonical_alias or room.name or room_id)

    async def profile_name(self, user_id: str) -> str | None:
        """The user's global display name."""
        resp = await self._client.get_displayname(user_id)
        if isinstance(resp, nio.ProfileGetDisplayNameResponse):
            name: str | None = resp.displayname
            return name
        return None

    async def resolve_alias(self, alias: str) -> tuple[RoomID, list[str]]:
        """The room ID (and servers) behind an alias."""
        resp = await self._client.room_resolve_alias(alias)
        if not isinstance(resp, nio.RoomResolveAliasResponse):
            _raise(f"resolve {alias}", resp)
        return RoomID(resp.room_id), list(resp.servers)

    async def join(self, room: str) -> RoomID:
        """Join a room by ID or alias."""
        resp = await self._client.join(room)
        if not isinstance(resp, nio.JoinResponse):
            _raise(f"join {room}", resp)
        return RoomID(resp.room_id)

    async def create_room(
        self,
        *,
        alias_localpart: str | None = None,
        name: str | None = None,
        invite: list[str] | None = None,
        public: bool = False,
    ) -> RoomID:
        """Create a room (tools and the demo use this; the bot itself never creates rooms)."""
        resp = await self._client.room_create(
            visibility=nio.RoomVisibility.public if public else nio.RoomVisibility.private,
            alias=alias_localpart,
            name=name,
            invite=invite or [],
            preset=nio.RoomPreset.public_chat if public else nio.RoomPreset.private_chat,
        )
        if not isinstance(resp, nio.RoomCreateResponse):
            _raise(f"create {alias_localpart or name}", resp)
        return RoomID(resp.room_id)

    async def set_display_name(self, name: str) -> None:
        """Set this account's display name."""
        resp = await self._client.set_displayname(name)
        if isinstance(resp, nio.ErrorResponse):
            _raise("set display name", resp)

    def is_member(self, room_id: str, user_id: str) -> bool:
        """True when the user is joined to the room, as of the last sync."""
        room = self._client.rooms.get(room_id)
        return bool(room and user_id in room.users)

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any]:
        """A state event of a room, as a dict with ``sender`` and ``content``."""
        path = (
            f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"
            "?format=event"
        )
        return await self._raw("GET", path, None, f"state {event_type} of {room_id}")

    async def redact(self, room_id: str, event_id: str, reason: str, tx_id: str) -> EventID:
        """Redact an event (the bot's own copies of something its author deleted)."""
        resp = await self._client.room_redact(room_id, event_id, reason=reason, tx_id=tx_id)
        if not isinstance(resp, nio.RoomRedactResponse):
            _raise(f"redact {event_id}", resp)
        return EventID(resp.event_id)

    async def messages(
        self, room_id: str, start: str | None, limit: int = 100
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of room history, newest first, and the token of the next (older) page."""
        resp = await self._client.room_messages(
            room_id, start=start, direction=MessageDirection.back, limit=limit
        )
        if not isinstance(resp, nio.RoomMessagesResponse):
            _raise(f"history of {room_id}", resp)
        events = [_source(e) for e in resp.chunk]
        more = resp.end if resp.chunk and resp.end and resp.end != start else None
        return [e for e in events if e], more

    async def decline(self, room_id: str, reason: str) -> None:
        """Decline an invitation, telling the inviter why."""
        path = f"/_matrix/client/v3/rooms/{_q(room_id)}/leave"
        await self._raw("POST", path, {"reason": reason}, f"decline {room_id}")

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str,
        event_type: str = "m.room.message",
    ) -> EventID:
        """Send an event with a deterministic transaction ID; the server dedupes re-sends."""
        if time.monotonic() < self._throttled_until:
            async with self._send_gate:
                return await self._send(room_id, content, tx_id, event_type)
        return await self._send(room_id, content, tx_id, event_type)

    async def _send(
        self, room_id: str, content: dict[str, Any], tx_id: str, event_type: str
    ) -> EventID:
        try:
            resp = await self._client.room_send(
                room_id, event_type, content, tx_id=tx_id, ignore_unverified_devices=True
            )
        except (nio.LocalProtocolError, nio.EncryptionError) as exc:
            # With encryption on, e.g. a room joined but not yet synced: worth a retry.
            raise Transient(f"send to {room_id}", None, str(exc), None) from exc
        if not isinstance(resp, nio.RoomSendResponse):
            _raise(f"send to {room_id}", resp)
        return EventID(resp.event_id)


def _private_dir(path: Path) -> Path:
    """Create a folder only the bot can read (nio writes its store files world-readable)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _q(part: str) -> str:
    from urllib.parse import quote

    return quote(part, safe="")


def _source(event: Any) -> dict[str, Any]:
    src = getattr(event, "source", None)
    return src if isinstance(src, dict) else {}
