"""The operator keys: secrets from files and $CREDENTIALS_DIRECTORY, metrics.bind, log_format,
admin_room. Each error names the key and its line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peerbot.config import ConfigError, parse_bind, parse_config

BASE = """\
matrix:
  homeserver: http://127.0.0.1:8008
  user_id: "@peerbot:example.org"
{secret}
routing:
  fallback_room: "#triage:example.org"
"""


def parse(text: str, tmp: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(text, base_dir=tmp, env=env or {})


def problems(text: str, tmp: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp, env)
    return [str(p) for p in info.value.problems]


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_password_file_relative_to_bot_yaml(tmp_path: Path) -> None:
    secret_file(tmp_path / "pw", "s3cret pass\n")
    cfg = parse(BASE.format(secret="  password_file: pw"), tmp_path)
    assert cfg.matrix.password == "s3cret pass"


def test_access_token_file_with_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds / "token", "syt_abc\n", 0o400)
    text = BASE.format(
        secret="  access_token_file: ${CREDENTIALS_DIRECTORY}/token\n  device_id: DEV"
    )
    cfg = parse(text, tmp_path, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.matrix.access_token == "syt_abc"
    got = problems(text, tmp_path)
    assert got == [
        "matrix.access_token_file: names ${CREDENTIALS_DIRECTORY}, but CREDENTIALS_DIRECTORY "
        "is not set (line 4)"
    ]


def test_credentials_directory_found_without_any_key(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    secret_file(creds / "password", "from-systemd", 0o400)
    cfg = parse(BASE.format(secret=""), tmp_path, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.matrix.password == "from-systemd"
    # The environment variable still wins, as documented.
    cfg = parse(
        BASE.format(secret=""),
        tmp_path,
        {"CREDENTIALS_DIRECTORY": str(creds), "PEERBOT_PASSWORD": "env"},
    )
    assert cfg.matrix.password == "env"


def test_missing_secret_file_names_key_and_line(tmp_path: Path) -> None:
    got = problems(BASE.format(secret="  password_file: /nonexistent/pw"), tmp_path)
    assert got == ["matrix.password_file: /nonexistent/pw: no such file (line 4)"]


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    pw = secret_file(tmp_path / "pw", "x" * 10, 0o644)
    got = problems(BASE.format(secret="  password_file: pw"), tmp_path)
    assert got == [
        f"matrix.password_file: {pw}: other users may read or change it (mode 644); "
        f"chmod 600 {pw} (line 4)"
    ]
    os.chmod(pw, 0o640)  # group-readable is an operator's choice (root:peerbot 0640)
    assert parse(BASE.format(secret="  password_file: pw"), tmp_path).matrix.password


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_secret_file(tmp_path: Path) -> None:
    secret_file(tmp_path / "pw", "x" * 10, 0o200)
    got = problems(BASE.format(secret="  password_file: pw"), tmp_path)
    assert got[0].startswith("matrix.password_file: ") and "cannot be read" in got[0]


def test_empty_secret_file_and_both_forms(tmp_path: Path) -> None:
    secret_file(tmp_path / "pw", "\n")
    got = problems(BASE.format(secret="  password_file: pw"), tmp_path)
    assert got == [f"matrix.password_file: {tmp_path / 'pw'} is empty (line 4)"]
    got = problems(BASE.format(secret="  password: a\n  password_file: pw"), tmp_path)
    assert got == ["matrix.password_file: set password or password_file, not both (line 5)"]


def test_passphrase_file_for_encryption(tmp_path: Path) -> None:
    secret_file(tmp_path / "phrase", "long pass phrase")
    secret_file(tmp_path / "pk", "pickle")
    text = BASE.format(secret="  password: pw") + (
        "encryption:\n  enabled: true\n  pickle_key_file: pk\n  passphrase_file: phrase\n"
    )
    cfg = parse(text, tmp_path)
    assert cfg.encryption.passphrase == "long pass phrase"
    assert cfg.encryption.pickle_key == "pickle"


def test_metrics_bind(tmp_path: Path) -> None:
    text = BASE.format(secret="  password: pw")
    assert parse(text, tmp_path).metrics.bind is None
    cfg = parse(text + 'metrics:\n  bind: "127.0.0.1:9109"\n', tmp_path)
    assert cfg.metrics.bind == ("127.0.0.1", 9109)
    got = problems(text + "metrics:\n  bind: 9109\n", tmp_path)
    assert got == ['metrics.bind: must be host:port, like "127.0.0.1:9109" (line 8)']
    got = problems(text + "metrics:\n  bindd: x\n", tmp_path)
    assert got == ["metrics.bindd: unknown key; did you mean 'bind'? (line 8)"]


def test_parse_bind() -> None:
    assert parse_bind("[::1]:9109") == ("::1", 9109)
    assert parse_bind("localhost:1") == ("localhost", 1)
    for bad in ("9109", ":9109", "host:0", "host:70000", "host:x"):
        assert parse_bind(bad) is None, bad


def test_log_format_and_admin_room(tmp_path: Path) -> None:
    text = BASE.format(secret="  password: pw")
    cfg = parse(text, tmp_path)
    assert cfg.log_format == "text" and cfg.admin_room is None
    cfg = parse(text + 'log_format: json\nadmin_room: "#ops:example.org"\n', tmp_path)
    assert cfg.log_format == "json" and cfg.admin_room == "#ops:example.org"
    got = problems(text + "log_format: xml\nadmin_room: ops\n", tmp_path)
    assert got == [
        "log_format: must be text or json (line 7)",
        "admin_room: not a room alias or ID (like #name:server or !id:server) (line 8)",
    ]
