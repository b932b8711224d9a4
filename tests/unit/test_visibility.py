"""The one rule for showing a room's threads in another room (core of the privacy promise)."""

from __future__ import annotations

import json

import pytest

from peerbot.config import ConfigError, parse_config
from peerbot.core.visibility import Communities, RoomPrivacy, is_public, may_show, shown_rooms

NONE = Communities()


def room(
    rid: str, join: str | None = "invite", history: str | None = "shared", enc: bool = False
) -> RoomPrivacy:
    return RoomPrivacy(rid, join, history, enc)


PUBLIC = room("!pub:x", "public", "shared")
CLOSED = room("!closed:x", "invite", "shared")
OTHER = room("!other:x", "public", "shared")


def test_a_room_shows_its_own_threads_whatever_its_state() -> None:
    assert may_show(CLOSED, CLOSED, NONE)
    enc = room("!e:x", enc=True)
    assert may_show(enc, enc, NONE)


def test_closed_room_never_shown_in_another_room() -> None:
    assert not may_show(CLOSED, PUBLIC, NONE)
    assert not may_show(CLOSED, room("!closed2:x"), NONE)


def test_public_room_with_full_history_is_shown_anywhere() -> None:
    assert may_show(PUBLIC, CLOSED, NONE)
    assert may_show(PUBLIC, OTHER, NONE)
    assert may_show(room("!w:x", "public", "world_readable"), CLOSED, NONE)


@pytest.mark.parametrize("history", ["joined", "invited", None])
def test_public_room_whose_history_new_members_cannot_read_is_not_public(
    history: str | None,
) -> None:
    source = room("!p:x", "public", history)
    assert not is_public(source)
    assert not may_show(source, OTHER, NONE)


@pytest.mark.parametrize("join", ["invite", "knock", "restricted", "knock_restricted", None])
def test_only_the_public_join_rule_counts_as_public(join: str | None) -> None:
    assert not may_show(room("!r:x", join, "shared"), OTHER, NONE)


def test_declared_community_shares_both_ways_and_only_inside() -> None:
    a, b, c = room("!a:x"), room("!b:x"), room("!c:x")
    together = Communities.of([["!a:x", "!b:x"]])
    assert may_show(a, b, together) and may_show(b, a, together)
    assert not may_show(a, c, together) and not may_show(c, a, together)
    # Membership in two communities is not transitive.
    two = Communities.of([["!a:x", "!b:x"], ["!b:x", "!c:x"]])
    assert not may_show(a, c, two)


def test_encrypted_room_never_shown_in_unencrypted_one_even_public_or_community() -> None:
    enc_public = room("!ep:x", "public", "shared", enc=True)
    plain = room("!plain:x", "public", "shared")
    together = Communities.of([["!ep:x", "!plain:x"]])
    assert not may_show(enc_public, plain, together)
    # Into another encrypted room the usual rule applies.
    assert may_show(enc_public, room("!e2:x", enc=True), NONE)
    # Unencrypted into encrypted is fine when public.
    assert may_show(plain, room("!e3:x", enc=True), NONE)


def test_unknown_rooms_share_nothing_and_are_shown_nothing() -> None:
    assert not may_show(None, PUBLIC, NONE)
    assert not may_show(PUBLIC, None, NONE)


def test_shown_rooms_filters_with_current_state() -> None:
    state = {r.room_id: r for r in (PUBLIC, CLOSED, OTHER)}
    sources = {"!pub:x", "!closed:x", "!other:x", "!gone:x"}
    assert shown_rooms(sources, "!closed:x", state.get, NONE) == {
        "!closed:x",
        "!pub:x",
        "!other:x",
    }
    assert shown_rooms(sources, "!pub:x", state.get, NONE) == {"!pub:x", "!other:x"}
    # The public room turns private: it stops sharing at once.
    state["!pub:x"] = room("!pub:x", "invite", "shared")
    assert shown_rooms(sources, "!other:x", state.get, NONE) == {"!other:x"}
    # A room the bot knows nothing about (left, never synced) still shows its own threads.
    assert shown_rooms(sources, "!gone:x", state.get, NONE) == {"!gone:x"}


def base(**extra: object) -> str:
    data: dict[str, object] = {
        "matrix": {"homeserver": "http://127.0.0.1:9", "user_id": "@b:x", "password": "p"},
        "routing": {"fallback_room": "#triage:x"},
    }
    data.update(extra)
    return json.dumps(data)


def test_communities_config_read_and_checked() -> None:
    cfg = parse_config(base(communities=[{"name": "HAD Nord", "rooms": ["#a:x", "!b:x"]}]), env={})
    assert [(c.name, c.rooms) for c in cfg.communities] == [("HAD Nord", ("#a:x", "!b:x"))]
    with pytest.raises(ConfigError) as err:
        parse_config(base(communities=[{"rooms": ["#a:x"]}, {"rooms": ["nope", "#b:x"]}]), env={})
    text = str(err.value)
    assert "communities[0].rooms: needs at least two different rooms" in text
    assert "communities[1].rooms[0]: not a room alias or ID" in text
    with pytest.raises(ConfigError, match="communities: must be a list"):
        parse_config(base(communities={"rooms": []}), env={})
