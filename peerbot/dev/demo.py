"""``peerbot demo``: a throwaway Synapse on 127.0.0.1, rooms, users, the bot, a few questions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from peerbot.bot.runner import run_bot
from peerbot.config import Config, MatrixConfig, load_config
from peerbot.dev.devserver import DevServerError, SynapseServer
from peerbot.matrix import MatrixClient, MatrixError, RoomID

__all__ = ["DEMO_QUESTIONS", "run_demo"]

ROOMS = (
    ("entraide", "Entraide"),
    ("cardiologie", "Cardiologie"),
    ("pediatrie", "Pédiatrie"),
    ("plaies", "Plaies et cicatrisation"),
    ("triage", "Tri"),
)

DEMO_QUESTIONS: Sequence[str] = (
    "#DocTocToc Patiente de 82 ans, ECG avec arythmie, faut-il anticoaguler ?",
    "#DocTocToc Nourrisson de 4 mois, bronchiolite : quand faut-il l'adresser aux urgences ?",
    "#DocTocToc Escarre du talon stade 3 chez un patient diabétique, quel pansement ?",
    "#DocTocToc Renouvellement d'ordonnance de benzodiazépines au domicile : comment faites-vous ?",
)
CHAT = "Bonjour à tous, bonne garde ce soir !"
EXPERT_ANSWER = (
    "Avant d'anticoaguler : calculez le CHA2DS2-VASc et le HAS-BLED ; à 82 ans, un AOD à dose "
    "adaptée à la fonction rénale."
)
"""What the demo's cardiologist answers under the forward of the first question."""
_PERMALINK = re.compile(r"https://matrix\.to/#/([^/\s]+)/([^?\s/]+)")


@dataclass
class DemoWorld:
    """What the demo set up."""

    server: SynapseServer
    config_path: Path
    alice_id: str
    alice_password: str
    rooms: dict[str, RoomID]
    expert_id: str = ""
    expert_password: str = ""


def _write_config(directory: Path, server: SynapseServer, bot_password: str, language: str) -> Path:
    name = server.server_name
    config: dict[str, Any] = {
        "matrix": {
            "homeserver": server.base_url,
            "user_id": f"@peerbot:{name}",
            "password": bot_password,
            "device_name": "PeerBot demo",
        },
        "storage": {"database": str(directory / "peerbot.db")},
        "language": language,
        "invites": {"allowed_servers": [name]},
        "intake": [{"room": f"#entraide:{name}", "trigger": "hashtag", "hashtags": ["#DocTocToc"]}],
        "plugins": [
            {"use": "plugins.patient_data_guard:PatientDataGuard"},
            {"use": "plugins.urgent_wording:UrgentWording"},
        ],
        "routing": {
            "fallback_room": f"#triage:{name}",
            "specialties": [
                {
                    "name": "Cardiologie",
                    "room": f"#cardiologie:{name}",
                    "keywords": ["ecg", "arythmie", "fibrillation auriculaire", "infarctus"],
                },
                {
                    "name": "Pédiatrie",
                    "room": f"#pediatrie:{name}",
                    "keywords": ["nourrisson", "enfant", "bronchiolite", "vaccin"],
                },
                {
                    "name": "Plaies et cicatrisation",
                    "room": f"#plaies:{name}",
                    "keywords": ["escarre", "plaie", "pansement", "ulcère"],
                },
            ],
        },
    }
    path = directory / "bot.yaml"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


async def _setup(directory: Path, language: str) -> DemoWorld:
    server = await SynapseServer.start(directory / "synapse")
    state_file = directory / "demo.json"
    if state_file.exists():
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        world = DemoWorld(
            server,
            directory / "bot.yaml",
            saved["alice_id"],
            saved["alice_password"],
            {k: RoomID(v) for k, v in saved["rooms"].items()},
            saved.get("expert_id", ""),
            saved.get("expert_password", ""),
        )
        if not world.expert_id:  # a demo folder made before the expert existed
            world.expert_id, world.expert_password = await _register_expert(server, "bruno-2")
            _save(state_file, world)
        return world
    bot_password = secrets.token_urlsafe(12)
    alice_password = secrets.token_urlsafe(9)
    bot = await server.register("peerbot", bot_password)
    alice = await server.register("alice", alice_password, admin=True)
    client = MatrixClient(MatrixConfig(server.base_url, alice.user_id, password=alice_password))
    try:
        await client.login(None, None)
        await client.set_display_name("Alice Martin (IDE)")
        rooms: dict[str, RoomID] = {}
        for alias, name in ROOMS:
            rooms[alias] = await client.create_room(
                alias_localpart=alias, name=name, invite=[bot.user_id], public=True
            )
    finally:
        await client.close()
    config_path = _write_config(directory, server, bot_password, language)
    expert_id, expert_password = await _register_expert(server, "bruno")
    world = DemoWorld(
        server, config_path, alice.user_id, alice_password, rooms, expert_id, expert_password
    )
    _save(state_file, world)
    return world


def _save(state_file: Path, world: DemoWorld) -> None:
    state = {
        "alice_id": world.alice_id,
        "alice_password": world.alice_password,
        "rooms": world.rooms,
        "expert_id": world.expert_id,
        "expert_password": world.expert_password,
    }
    state_file.write_text(json.dumps(state), encoding="utf-8")


async def _register_expert(server: SynapseServer, name: str) -> tuple[str, str]:
    """A cardiologist who answers in #cardiologie."""
    password = secrets.token_urlsafe(9)
    user = await server.register(name, password)
    client = MatrixClient(MatrixConfig(server.base_url, user.user_id, password=password))
    try:
        await client.login(None, None)
        await client.set_display_name("Dr Bruno Lefèvre (cardiologue)")
    finally:
        await client.close()
    return user.user_id, password


async def _answer_back(world: DemoWorld, question_id: str, ack: str, out: list[str]) -> bool:
    """The cardiologist answers under the forward (found from the acknowledgement's link);
    True when PeerBot brought the answer back into Alice's thread."""
    found = _PERMALINK.search(ack)
    if found is None:
        out.append("(the acknowledgement has no link to the forward)")
        return False
    room_id, forward_id = unquote(found.group(1)), unquote(found.group(2))
    expert = MatrixClient(
        MatrixConfig(world.server.base_url, world.expert_id, password=world.expert_password)
    )
    alice = MatrixClient(
        MatrixConfig(world.server.base_url, world.alice_id, password=world.alice_password)
    )
    try:
        await alice.login(None, None)
        since = (await alice.sync(None, full_state=True, first=True)).next_batch
        await expert.login(None, None)
        await expert.join(room_id)
        relation = {"rel_type": "m.thread", "event_id": forward_id, "is_falling_back": True}
        relation["m.in_reply_to"] = {"event_id": forward_id}
        content = {"msgtype": "m.text", "body": EXPERT_ANSWER, "m.relates_to": relation}
        await expert.send(RoomID(room_id), content, f"demo-{time.time_ns()}")
        out.append(f"Dr Bruno Lefèvre answered under the forward in #cardiologie:  {EXPERT_ANSWER}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = await alice.sync(since, full_state=False)
            since = batch.next_batch
            for event_room, event in batch.events:
                c = event.get("content") or {}
                rel = c.get("m.relates_to") or {}
                if (
                    event_room == world.rooms["entraide"]
                    and rel.get("event_id") == question_id
                    and c.get("msgtype") == "m.text"
                    and EXPERT_ANSWER[:30] in str(c.get("body", ""))
                ):
                    out.append("PeerBot brought the answer back to her thread (ringing her only):")
                    out.extend(f"    {line}" for line in str(c.get("body", "")).splitlines())
                    return True
        out.append("(the answer did not come back within 30 s)")
        return False
    finally:
        await expert.close()
        await alice.close()


async def _ask(world: DemoWorld, out: list[str]) -> bool:
    """Post the demo questions as Alice and report what the bot answered in each thread.

    True when the bot answered every question."""
    client = MatrixClient(
        MatrixConfig(world.server.base_url, world.alice_id, password=world.alice_password)
    )
    try:
        await client.login(None, None)
        batch = await client.sync(None, full_state=True, first=True)
        since = batch.next_batch
        intake = world.rooms["entraide"]
        asked: dict[str, str] = {}
        await client.send(intake, {"msgtype": "m.text", "body": CHAT}, f"demo-{time.time_ns()}")
        for text in DEMO_QUESTIONS:
            event_id = await client.send(
                intake, {"msgtype": "m.text", "body": text}, f"demo-{time.time_ns()}"
            )
            asked[event_id] = text
        answers: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while len(answers) < len(asked) and time.monotonic() < deadline:
            batch = await client.sync(since, full_state=False)
            since = batch.next_batch
            for room_id, event in batch.events:
                content = event.get("content") or {}
                rel = content.get("m.relates_to") or {}
                if room_id == intake and rel.get("event_id") in asked:
                    answers[rel["event_id"]] = str(content.get("body", ""))
        for asked_id, text in asked.items():
            out.append(f"Alice asked:  {text}")
            answer = answers.get(asked_id, "(no answer within 30 s)")
            out.append("PeerBot answered in her thread:")
            out.extend(f"    {line}" for line in answer.splitlines())
            out.append("")
        out.append(f"Plain chat ({CHAT!r}) was left alone.")
        if len(answers) < len(asked):
            return False
        out.append("")
        first = next(iter(asked))
        return await _answer_back(world, first, answers[first], out)
    finally:
        await client.close()


async def run_demo(directory: Path, *, once: bool, language: str = "fr") -> int:
    """Run the demo; with ``once``, exit after the scripted part."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        world = await _setup(directory, language)
    except DevServerError as exc:
        print(f"peerbot demo: {exc}", file=sys.stderr)
        return 1
    try:
        config: Config = load_config(world.config_path)
        ready = asyncio.Event()
        bot_task = asyncio.create_task(run_bot(config, ready=ready))
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({bot_task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if bot_task.done():
            ready_wait.cancel()
            print("peerbot demo: the bot did not start (see the log above)", file=sys.stderr)
            return bot_task.result() or 1
        lines: list[str] = []
        try:
            answered = await _ask(world, lines)
        except MatrixError as exc:
            print(f"peerbot demo: {exc}", file=sys.stderr)
            return 1
        print("\n".join(lines))
        if not answered:
            print("peerbot demo: the bot did not answer every question", file=sys.stderr)
            return 1
        print()
        print(f"Homeserver: {world.server.base_url}  (server name {world.server.server_name})")
        print(
            f"Log in with any Matrix client as {world.alice_id} / password {world.alice_password}"
        )
        print(f"Rooms: {', '.join('#' + a + ':' + world.server.server_name for a, _ in ROOMS)}")
        print(f"Bot config: {world.config_path}")
        if once:
            return 0 if answered else 1
        print("Running until Ctrl-C ...")
        with contextlib.suppress(asyncio.CancelledError):
            await bot_task
        return 0
    finally:
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and task.get_name().startswith("peerbot"):
                task.cancel()
        if "bot_task" in locals() and not bot_task.done():
            bot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await bot_task
        await world.server.stop()
