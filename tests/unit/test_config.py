"""Config checking: every error names the key path and the line, exit status 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peerbot.config import ConfigError, Trigger, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

GOOD = textwrap.dedent(
    """\
    matrix:
      homeserver: http://127.0.0.1:8008
      user_id: "@peerbot:example.org"
      password: secret
    storage:
      database: ./peerbot.db
    language: fr
    invites:
      allowed_servers: [example.org]
    intake:
      - room: "#entraide:example.org"
        trigger: hashtag
        hashtags: ["#DocTocToc"]
    routing:
      fallback_room: "#triage:example.org"
      specialties:
        - name: Cardiologie
          room: "#cardiologie:example.org"
          keywords: [ecg, arythmie]
        - name: Pédiatrie
          room: "!abcdef:example.org"
          keywords: [enfant]
    """
)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, base_dir=Path("/tmp"), env={})
    return [str(p) for p in info.value.problems]


def test_good_config_parses() -> None:
    cfg = parse_config(GOOD, base_dir=Path("/srv/bot"), env={})
    assert cfg.matrix.server_name == "example.org"
    assert cfg.storage.database == Path("/srv/bot/peerbot.db")
    assert cfg.intake[0].trigger is Trigger.HASHTAG
    assert [s.name for s in cfg.routing.specialties] == ["Cardiologie", "Pédiatrie"]
    assert cfg.related.max_results == 3
    assert cfg.invites.allows("@alice:example.org")
    assert not cfg.invites.allows("@mallory:evil.example")


def test_bad_room_names_key_and_line() -> None:
    text = GOOD.replace('room: "!abcdef:example.org"', "room: cardiologie-bis")
    assert problems(text) == [
        "routing.specialties[1].room: not a room alias or ID "
        "(like #name:server or !id:server) (line 21)"
    ]


def test_unknown_key_suggests() -> None:
    text = GOOD.replace("language: fr", "langage: fr")
    (msg,) = problems(text)
    assert msg.startswith("langage: unknown key; did you mean 'language'?")
    assert msg.endswith("(line 7)")


def test_wrong_types_and_values() -> None:
    text = GOOD.replace("trigger: hashtag", "trigger: sometimes").replace(
        "language: fr", "language: de"
    )
    got = problems(text)
    assert "language: must be one of fr, en (line 7)" in got
    assert "intake[0].trigger: must be one of hashtag, question, all (line 12)" in got


def test_bad_yaml_gives_line() -> None:
    (msg,) = problems("matrix:\n  homeserver: [unclosed\nrouting: {}\n")
    assert msg.startswith("not valid YAML")
    assert "(line 3)" in msg


def test_duplicate_specialty_and_key() -> None:
    text = GOOD.replace("name: Pédiatrie", "name: cardiologie")
    assert any(
        m.startswith("routing.specialties[1].name: duplicate specialty name")
        for m in problems(text)
    )
    text = GOOD.replace("language: fr", "language: fr\nlanguage: en")
    assert "language: duplicate key (line 8)" in problems(text)


def test_missing_credentials_and_env_override() -> None:
    text = GOOD.replace("  password: secret\n", "")
    assert any("needs a password or an access_token" in m for m in problems(text))
    cfg = parse_config(text, env={"PEERBOT_PASSWORD": "from-env"})
    assert cfg.matrix.password == "from-env"
    assert "from-env" not in repr(cfg.matrix)


def test_hashtag_trigger_needs_hashtags() -> None:
    text = GOOD.replace('    hashtags: ["#DocTocToc"]\n', "")
    assert "intake[0].hashtags: is required when trigger is hashtag (line 11)" in problems(text)


def test_room_v12_ids_are_accepted() -> None:
    cfg = parse_config(GOOD.replace("!abcdef:example.org", "!abcdefABCDEF123"), env={})
    assert cfg.routing.specialties[1].room == "!abcdefABCDEF123"


def test_example_file_is_valid() -> None:
    cfg = load_config(ROOT / "bot.yaml.example", env={})
    assert cfg.language == "fr"
    assert cfg.routing.specialties


def test_check_config_cli_exit_status(tmp_path: Path) -> None:
    bad = tmp_path / "bot.yaml"
    bad.write_text(GOOD.replace('"#triage:example.org"', "triage"), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "routing.fallback_room: not a room alias or ID" in run.stderr
    assert "(line 15)" in run.stderr
    good = tmp_path / "good.yaml"
    good.write_text(GOOD, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "check-config", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "OK" in run.stdout
