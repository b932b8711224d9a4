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


# --- encryption ----------------------------------------------------------------------------------

ENC_ENV = {"PEERBOT_KEY_PASSPHRASE": "a long passphrase", "PEERBOT_PICKLE_KEY": "pickle"}


def test_encryption_off_by_default_with_paths_next_to_the_file() -> None:
    cfg = parse_config(GOOD, base_dir=Path("/srv/bot"), env={})
    assert not cfg.encryption.enabled
    assert cfg.encryption.store_path == Path("/srv/bot/peerbot-store")
    assert cfg.encryption.key_file == Path("/srv/bot/peerbot-store/cross-signing.keys")
    assert not any(s.allow_from_encrypted for s in cfg.routing.specialties)
    assert not cfg.routing.fallback_allow_from_encrypted


def test_encryption_enabled_reads_env_and_paths() -> None:
    text = GOOD + "encryption:\n  enabled: true\n  store_path: /var/lib/pb\n  pickle_key: cfg\n"
    cfg = parse_config(text, base_dir=Path("/srv/bot"), env={"PEERBOT_KEY_PASSPHRASE": "pw"})
    enc = cfg.encryption
    assert enc.enabled and enc.store_path == Path("/var/lib/pb")
    assert enc.key_file == Path("/var/lib/pb/cross-signing.keys")
    assert enc.pickle_key == "cfg" and enc.passphrase == "pw"
    assert "pw" not in repr(enc) and "cfg" not in repr(enc)
    cfg = parse_config(text + "  key_file: keys.bin\n", base_dir=Path("/srv/bot"), env=ENC_ENV)
    assert cfg.encryption.pickle_key == "pickle"  # the environment wins
    assert cfg.encryption.key_file == Path("/srv/bot/keys.bin")


def test_encryption_enabled_needs_secrets() -> None:
    text = GOOD + "encryption:\n  enabled: true\n"
    got = problems(text)
    assert any(
        m.startswith("encryption: PEERBOT_KEY_PASSPHRASE must be set") and m.endswith("(line 23)")
        for m in got
    )
    assert any(m.startswith("encryption.pickle_key: is required when encryption") for m in got)
    assert parse_config(text, env=ENC_ENV).encryption.enabled


def test_encryption_bad_values() -> None:
    text = GOOD + "encryption:\n  enabled: yes please\n  passphrase: nope\n"
    got = problems(text)
    assert "encryption.enabled: must be true or false, not a string (line 24)" in got
    assert any(m.startswith("encryption.passphrase: is never read from bot.yaml") for m in got)


def test_allow_from_encrypted_on_specialty_and_fallback() -> None:
    text = GOOD.replace(
        '  fallback_room: "#triage:example.org"\n',
        '  fallback_room:\n    room: "#triage:example.org"\n    allow_from_encrypted: true\n',
    ).replace("keywords: [enfant]", "keywords: [enfant]\n      allow_from_encrypted: true")
    cfg = parse_config(text, env={})
    assert cfg.routing.fallback_room == "#triage:example.org"
    assert cfg.routing.fallback_allow_from_encrypted
    assert [s.allow_from_encrypted for s in cfg.routing.specialties] == [False, True]
    assert cfg.routing.allows_from_encrypted("!abcdef:example.org")
    assert cfg.routing.allows_from_encrypted("#triage:example.org")
    assert not cfg.routing.allows_from_encrypted("#cardiologie:example.org")
    bad = GOOD.replace(
        '  fallback_room: "#triage:example.org"\n',
        '  fallback_room:\n    room: "#triage:example.org"\n    allow_from_encrypted: 1\n'
        "    rooom: x\n",
    )
    got = problems(bad)
    assert (
        "routing.fallback_room.allow_from_encrypted: must be true or false, not a number (line 17)"
        in got
    )
    assert any(m.startswith("routing.fallback_room.rooom: unknown key") for m in got)


def test_check_config_reports_cross_signing_keys(tmp_path: Path) -> None:
    from peerbot.matrix.crosssign import CrossSigningKeys, save_keys

    bot = tmp_path / "bot.yaml"
    bot.write_text(
        GOOD + "encryption:\n  enabled: true\n  pickle_key: pk\n  key_file: keys.bin\n",
        encoding="utf-8",
    )

    def check(passphrase: str | None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin"}
        if passphrase is not None:
            env["PEERBOT_KEY_PASSPHRASE"] = passphrase
        return subprocess.run(
            [sys.executable, "-m", "peerbot.cli", "check-config", str(bot)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )

    run = check(None)
    assert run.returncode == 2
    assert "encryption: PEERBOT_KEY_PASSPHRASE must be set" in run.stderr
    run = check("pass phrase")
    assert run.returncode == 0, run.stderr
    assert "will be created at first start" in run.stdout
    keys = CrossSigningKeys.generate()
    save_keys(tmp_path / "keys.bin", keys, "pass phrase", user_id="@peerbot:example.org")
    run = check("pass phrase")
    assert run.returncode == 0, run.stderr
    assert f"cross-signing keys readable in {tmp_path / 'keys.bin'}" in run.stdout
    assert keys.master_public in run.stdout
    run = check("wrong phrase")
    assert run.returncode == 2
    assert "encryption.key_file: cannot decrypt" in run.stderr
