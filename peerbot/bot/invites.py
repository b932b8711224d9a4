"""Answering invitations: join the rooms of allowed servers, decline the others, saying why.

Over federation the inviting server sends the invite to ours *before* it stores the invite
itself (Synapse signs it remotely, then persists it). A bot that answers within milliseconds
can reach the inviting server while that server does not know the invite yet:

- its join is refused there (403, the bot is not invited), so a refused join of a room on
  another server is tried again, after each of :data:`JOIN_RETRY_DELAYS_S`;
- its rejection fails there too, and Synapse hides that failure: it rejects locally only and
  answers 200, so the inviter's room shows the bot invited forever and no retry is possible.
  A decline of another server's invite therefore waits :data:`REMOTE_DECLINE_GRACE_S` first.

On the bot's own server the invite is stored before anyone hears of it: both are immediate.
The waiting happens in tasks of their own, never in the sync. A stop cancels them; the next
start's full-state sync hands the pending invites over again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from peerbot.config import InvitesConfig
from peerbot.core.ids import RoomID, server_of
from peerbot.core.messages import Texts
from peerbot.matrix import Invite, MatrixClient, MatrixError

__all__ = [
    "JOIN_RETRY_DELAYS_S",
    "REMOTE_DECLINE_GRACE_S",
    "InviteAnswers",
    "InviteDecision",
    "decide",
]

log = logging.getLogger(__name__)

REMOTE_DECLINE_GRACE_S = 3.0
"""How long a decline of another server's invite waits (that server storing its invite)."""
JOIN_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Waits before each new try of a refused join of a room on another server (31 s in all)."""


@dataclass(frozen=True)
class InviteDecision:
    """What to do with one invite: join, or decline with the reason's message key."""

    join: bool
    reason_key: str | None
    """The key (in :mod:`peerbot.core.messages`) of the reason given with a decline."""
    remote: bool
    """The inviter is on another server (see the module docstring)."""


def decide(
    invite: Invite, own_user_id: str, invites: InvitesConfig, *, encryption: bool
) -> InviteDecision:
    """Join when the inviter's server is allowed and the room readable; decline otherwise."""
    inviter = invite.inviter or ""
    remote = bool(inviter) and server_of(inviter).lower() != server_of(own_user_id).lower()
    if not inviter or not invites.allows(inviter):
        return InviteDecision(False, "invite_declined", remote)
    if invite.encrypted and not encryption:
        return InviteDecision(False, "encrypted_room", remote)
    return InviteDecision(True, None, remote)


class InviteAnswers:
    """Carries out :func:`decide`'s answers, waiting where federation needs it."""

    def __init__(
        self,
        client: MatrixClient,
        invites: InvitesConfig,
        texts: Texts,
        *,
        encryption: bool,
        decline_grace_s: float = REMOTE_DECLINE_GRACE_S,
        join_retry_delays_s: tuple[float, ...] = JOIN_RETRY_DELAYS_S,
    ) -> None:
        self.mx = client
        self.invites = invites
        self.texts = texts
        self.encryption = encryption
        self.decline_grace_s = decline_grace_s
        self.join_retry_delays_s = join_retry_delays_s
        self._later: dict[RoomID, asyncio.Task[None]] = {}
        """Declines waiting for their grace and joins waiting for a retry, by room."""

    async def handle(self, invite: Invite) -> None:
        """Answer one invite (a second sight of an invite already being answered is a no-op)."""
        if invite.room_id in self.mx.joined_rooms() or invite.room_id in self._later:
            return
        decision = decide(invite, self.mx.user_id, self.invites, encryption=self.encryption)
        inviter = invite.inviter or "unknown"
        if not decision.join:
            reason = self.texts.s(decision.reason_key or "invite_declined")
            if decision.reason_key == "encrypted_room":
                log.warning(
                    "Declining an invite to encrypted room %s from %s: encryption is not enabled",
                    invite.room_id,
                    inviter,
                )
            else:
                log.info("Declining an invite to %s from %s", invite.room_id, inviter)
            if decision.remote:
                self._later_do(invite.room_id, lambda: self._decline_later(invite.room_id, reason))
            else:
                await self._decline(invite.room_id, reason)
            return
        try:
            await self.mx.join(invite.room_id)
            log.info("Joined %s on %s's invite", invite.room_id, inviter)
        except MatrixError as exc:
            if not decision.remote or not self.join_retry_delays_s:
                log.warning("Could not join %s: %s", invite.room_id, exc)
                return
            log.info("Could not join %s yet (%s); trying again", invite.room_id, exc)
            self._later_do(invite.room_id, lambda: self._join_later(invite.room_id, inviter))

    async def close(self) -> None:
        """Cancel what waits (the next start's sync brings those invites again)."""
        tasks = list(self._later.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def waiting(self) -> int:
        """Answers not given yet (waiting for a grace or a retry)."""
        return len(self._later)

    def _later_do(self, room_id: RoomID, work: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(self._guarded(room_id, work), name=f"peerbot-invite-{room_id}")
        self._later[room_id] = task
        task.add_done_callback(lambda _: self._later.pop(room_id, None))

    @staticmethod
    async def _guarded(room_id: RoomID, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Answering the invite to %s failed", room_id)

    async def _decline_later(self, room_id: RoomID, reason: str) -> None:
        await asyncio.sleep(self.decline_grace_s)
        await self._decline(room_id, reason)

    async def _decline(self, room_id: RoomID, reason: str) -> None:
        try:
            await self.mx.decline(room_id, reason)
        except MatrixError as exc:
            log.warning("Could not decline the invite to %s: %s", room_id, exc)

    async def _join_later(self, room_id: RoomID, inviter: str) -> None:
        last: MatrixError | None = None
        for delay in self.join_retry_delays_s:
            await asyncio.sleep(delay)
            if room_id in self.mx.joined_rooms():
                return
            try:
                await self.mx.join(room_id)
            except MatrixError as exc:
                last = exc
                continue
            log.info("Joined %s on %s's invite", room_id, inviter)
            return
        tries = 1 + len(self.join_retry_delays_s)
        log.warning("Could not join %s after %d tries: %s", room_id, tries, last)
