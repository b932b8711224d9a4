"""Issue 13, encrypted rooms: ``peerbot run --reset-identity`` as a real process, ``!forward``
seen in the unencrypted target room, and ``allow_from_encrypted`` on a specialty, end to end.

The humans are the encrypted nio clients of ``test_encrypted_rooms.py`` (its ``human`` and
``enc_world`` fixtures are reused here); what reaches a room is read back from that room.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import test_encrypted_rooms as enc  # type: ignore[import-not-found]
from helpers import room_messages

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from botproc import REPO, BotProcess, _env

from peerbot.matrix import MatrixClient
from peerbot.matrix.crosssign import device_signed_by_owner, load_keys

EncWorld = enc.EncWorld
human = enc.human  # fixtures, reused
enc_world = enc.enc_world

Event = dict[str, Any]


async def forwards_in(w: EncWorld, room_id: str, question: str) -> list[Event]:
    """The bot's plain (unencrypted) messages in a room that link to ``question``, read by Bob."""
    token = str(w.bob.client.access_token)
    needle = quote(question, safe="")
    return [
        e
        for e in await room_messages(w.synapse.base_url, token, room_id)
        if e.get("sender") == w.bot_user.user_id
        and e.get("type") == "m.room.message"
        and needle in str((e.get("content") or {}).get("body", ""))
    ]


# --- --reset-identity from the command line -------------------------------------------------------


class CliBot(BotProcess):
    """A bot subprocess started with extra ``peerbot run`` options."""

    def start_with(self, *options: str, log_level: str = "INFO") -> None:
        """Start ``peerbot run --config X --log-level L OPTIONS``."""
        if self.pid is not None:
            raise RuntimeError(f"{self!r} is already running")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} {' '.join(options)} =====\n".encode())
            log.flush()
            self._log_offset = log.tell()
            args = [sys.executable, "-m", "peerbot.cli", "run", "--config", str(self.config_path)]
            args += ["--log-level", log_level, *options]
            self.process = subprocess.Popen(
                args,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env({"PEERBOT_KEY_PASSPHRASE": enc.PASSPHRASE}),
                start_new_session=True,
            )


def yaml_config(w: EncWorld) -> dict[str, Any]:
    """``EncWorld.config()`` as a bot.yaml dict, for a subprocess."""
    return {
        "matrix": {
            "homeserver": w.synapse.base_url,
            "user_id": w.bot_user.user_id,
            "password": w.bot_user.password,
            "device_id": "PEERBOTDEV",
        },
        "storage": {"database": str(w.tmp / "peerbot.db")},
        "language": "fr",
        "invites": {"allowed_servers": [w.synapse.server_name]},
        "intake": [{"room": w.rooms["entraide"], "trigger": "hashtag", "hashtags": ["#DocTocToc"]}],
        "routing": {
            "fallback_room": w.rooms["triage"],
            "specialties": [
                {"name": "Cardiologie", "room": w.rooms["cardio"], "keywords": ["ecg", "arythmie"]}
            ],
        },
        "encryption": {
            "enabled": True,
            "store_path": str(w.tmp / "bot-store"),
            "key_file": str(w.tmp / "keys" / "cross-signing.keys"),
            "pickle_key": "bot pickle key",
        },
    }


@pytest.mark.slow
async def test_reset_identity_from_the_command_line(enc_world: EncWorld) -> None:
    w = enc_world
    bot_id = w.bot_user.user_id
    key_file = w.tmp / "keys" / "cross-signing.keys"
    bot = CliBot(yaml_config(w), w.tmp, "enc-bot")
    try:
        bot.start_with()
        await bot.wait_ready(90)
        old_master = load_keys(key_file, enc.PASSPHRASE).master_public
        status, _ = await bot.terminate()
        assert status == 0, bot.log_tail()

        # The key file is lost: `peerbot run` refuses, loudly, with exit status 1.
        key_file.unlink()
        bot.start_with()
        assert await bot.wait_exit(60) == 1, bot.log_tail()
        refusal = bot.log_text(this_run=True)
        assert "REFUSING TO START" in refusal and "--reset-identity" in refusal, refusal

        # `peerbot run --reset-identity`: a new identity, the same device, signed by it.
        bot.start_with("--reset-identity")
        await bot.wait_ready(90)
        new_master = load_keys(key_file, enc.PASSPHRASE).master_public
        assert new_master != old_master
        assert await device_signed_by_owner(MatrixClient.wrap(w.alice.client), bot_id, "PEERBOTDEV")
        answer = await enc._query(w.alice, bot_id)
        assert next(iter(answer["master_keys"][bot_id]["keys"].values())) == new_master

        # And it answers a question in the encrypted rooms.
        await w.settle_humans()
        _, ack = await enc._ask_and_get_ack(w, enc.QUESTION)
        assert ack["sender"] == bot_id and "Cardiologie" in ack["content"]["body"]
        fwd = await w.bob.until(
            w.bob.containing(w.rooms["cardio"], "Patiente de 82 ans"), "the forward, decrypted"
        )
        assert fwd["sender"] == bot_id
        status, _ = await bot.terminate()
        assert status == 0, bot.log_tail()
    finally:
        await bot.stop()


# --- !forward, seen in the unencrypted room -------------------------------------------------------


async def test_forward_command_reaches_the_unencrypted_room(enc_world: EncWorld) -> None:
    w = enc_world
    triage = w.rooms["triage"]
    bot = await w.start_bot()
    await w.settle_humans()
    text = "#DocTocToc Une question sans mot-clé pour le tri ?"
    qid = await w.alice.send(w.rooms["entraide"], text)
    await w.alice.until(w.alice.in_thread(qid, "pas chiffré"), "the refusal")
    await bot.wait_idle()
    assert await forwards_in(w, triage, qid) == [], "forwarded before !forward"

    await w.alice.send(w.rooms["entraide"], "!forward", thread=qid)
    seen = await w.bob.until(w.bob.containing(triage, "sans mot-clé pour le tri"), "the forward")
    assert seen["sender"] == w.bot_user.user_id
    await w.alice.until(w.alice.in_thread(qid, "a été transmise"), "the acknowledgement")
    await bot.wait_idle()
    forwards = await forwards_in(w, triage, qid)
    assert len(forwards) == 1, forwards
    assert forwards[0]["content"]["msgtype"] == "m.notice"


# --- allow_from_encrypted on a specialty ----------------------------------------------------------


async def test_allow_from_encrypted_specialty_end_to_end(enc_world: EncWorld) -> None:
    w = enc_world
    bot_id = w.bot_user.user_id
    open_room = await w.bob.create_room([bot_id], encrypted=False)
    closed_room = await w.bob.create_room([bot_id], encrypted=False)
    specialties = [
        {"name": "Cardiologie", "room": w.rooms["cardio"], "keywords": ["ecg", "arythmie"]},
        {
            "name": "Plaies",
            "room": open_room,
            "keywords": ["escarre"],
            "allow_from_encrypted": True,
        },
        {"name": "Pédiatrie", "room": closed_room, "keywords": ["nourrisson"]},
    ]
    bot = await w.start_bot(w.config(specialties=specialties))
    await w.settle_humans()
    entraide = w.rooms["entraide"]

    # allow_from_encrypted: true: forwarded without asking.
    allowed = await w.alice.send(entraide, "#DocTocToc Escarre talonnière, quel pansement ?")
    await w.alice.until(w.alice.in_thread(allowed, "a été transmise"), "the acknowledgement")
    assert w.alice.in_thread(allowed, "pas chiffré")() is None, "asked although allowed"
    await w.bob.until(w.bob.containing(open_room, "Escarre talonnière"), "the forward")

    # Without it: held, the asker told, nothing in that room.
    held = await w.alice.send(entraide, "#DocTocToc Nourrisson fébrile de deux mois ?")
    await w.alice.until(w.alice.in_thread(held, "pas chiffré"), "the refusal")
    await bot.wait_idle()
    assert len(await forwards_in(w, open_room, allowed)) == 1
    assert await forwards_in(w, closed_room, held) == [], "forwarded without allow_from_encrypted"
