"""Answering invites: who is joined, who is declined, and the waits federation needs
(see peerbot/bot/invites.py: the inviting server stores its invite after ours hears of it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from peerbot.bot.invites import InviteAnswers, decide
from peerbot.config import InvitesConfig
from peerbot.core.ids import RoomID
from peerbot.core.messages import Texts
from peerbot.matrix import Forbidden, Invite

ME = "@peerbot:home.example"
ALLOWED = InvitesConfig(allowed_servers=("home.example", "partner.example"))


def invite(inviter: str | None, *, room: str = "!r:partner.example", enc: bool = False) -> Invite:
    return Invite(RoomID(room), inviter, enc)


@pytest.mark.parametrize(
    ("inviter", "enc", "join", "key", "remote"),
    [
        ("@admin:home.example", False, True, None, False),
        ("@admin:partner.example", False, True, None, True),
        ("@admin:PARTNER.example", False, True, None, True),
        ("@mallory:evil.example", False, False, "invite_declined", True),
        ("@admin:home.example", True, False, "encrypted_room", False),
        (None, False, False, "invite_declined", False),
        ("no-server", False, False, "invite_declined", True),
    ],
)
def test_decide(inviter: str | None, enc: bool, join: bool, key: str | None, remote: bool) -> None:
    got = decide(invite(inviter, enc=enc), ME, ALLOWED, encryption=False)
    assert (got.join, got.reason_key, got.remote) == (join, key, remote)


def test_an_encrypted_room_is_joined_when_encryption_is_on() -> None:
    assert decide(invite("@a:home.example", enc=True), ME, ALLOWED, encryption=True).join


class ScriptedClient:
    """The two calls InviteAnswers makes, timed; ``refuse`` joins are refused first (403)."""

    user_id = ME

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.joined: set[RoomID] = set()
        self.join_tries: list[float] = []
        self.declined: list[tuple[str, str, float]] = []

    def joined_rooms(self) -> set[RoomID]:
        return set(self.joined)

    async def join(self, room_id: str) -> RoomID:
        self.join_tries.append(time.monotonic())
        if len(self.join_tries) <= self.refuse:
            raise Forbidden(f"join {room_id}", "M_FORBIDDEN", "not invited", 403)
        self.joined.add(RoomID(room_id))
        return RoomID(room_id)

    async def decline(self, room_id: str, reason: str) -> None:
        self.declined.append((room_id, reason, time.monotonic()))


def answers(client: ScriptedClient, *, grace: float = 0.2, retries: int = 3) -> InviteAnswers:
    return InviteAnswers(
        client,  # type: ignore[arg-type]
        ALLOWED,
        Texts("en"),
        encryption=False,
        decline_grace_s=grace,
        join_retry_delays_s=(0.05,) * retries,
    )


async def until(check: Callable[[], object], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_local_decline_is_immediate_and_says_why() -> None:
    client = ScriptedClient()
    inv = answers(client)
    await inv.handle(invite("@someone:home.example", room="!r:home.example", enc=True))
    assert [(r, why) for r, why, _ in client.declined] == [
        ("!r:home.example", Texts("en").s("encrypted_room"))
    ]


async def test_a_remote_decline_waits_its_grace_and_is_sent_once() -> None:
    client = ScriptedClient()
    inv = answers(client, grace=0.3)
    start = time.monotonic()
    await inv.handle(invite("@mallory:evil.example"))
    await inv.handle(invite("@mallory:evil.example"))  # the same invite seen again meanwhile
    assert client.declined == [] and inv.waiting == 1
    await until(lambda: client.declined)
    assert client.declined[0][2] - start >= 0.3
    assert client.declined[0][1] == Texts("en").s("invite_declined")
    await until(lambda: inv.waiting == 0)
    assert len(client.declined) == 1


async def test_a_refused_remote_join_is_tried_again_until_it_works() -> None:
    client = ScriptedClient(refuse=2)
    inv = answers(client, retries=3)
    await inv.handle(invite("@admin:partner.example"))
    assert client.joined == set() and inv.waiting == 1
    await until(lambda: client.joined)
    assert len(client.join_tries) == 3
    await until(lambda: inv.waiting == 0)


async def test_a_remote_join_gives_up_after_its_retries() -> None:
    client = ScriptedClient(refuse=100)
    inv = answers(client, retries=2)
    await inv.handle(invite("@admin:partner.example"))
    await until(lambda: inv.waiting == 0)
    assert len(client.join_tries) == 3 and client.joined == set()


async def test_a_refused_local_join_is_not_retried() -> None:
    client = ScriptedClient(refuse=1)
    inv = answers(client)
    await inv.handle(invite("@admin:home.example", room="!r:home.example"))
    assert inv.waiting == 0 and len(client.join_tries) == 1


async def test_close_cancels_what_waits() -> None:
    client = ScriptedClient()
    inv = answers(client, grace=30)
    await inv.handle(invite("@mallory:evil.example"))
    assert inv.waiting == 1
    await inv.close()
    assert inv.waiting == 0 and client.declined == []
