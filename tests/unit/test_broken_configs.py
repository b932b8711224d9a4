"""The broken bot.yaml corpus: each file gives exit status 2 and one clear message with its line.

Each file in ``tests/configs/broken/`` holds one mistake and says on its first line what
``peerbot check-config`` must answer: ``# expect: <message fragment> (line N)``. The messages
themselves come from ``peerbot/config.py``; the corpus is data.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "configs" / "broken"
FILES = sorted(CORPUS.glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (?P<fragment>.+?)(?: \(line (?P<line>\d+)\))?\s*$")

# The same file with no mistake: every corpus file is this one with one thing broken.
VALID = """\
matrix:
  homeserver: http://127.0.0.1:8008
  user_id: "@peerbot:example.org"
  password: "secret"
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
      room: "#pediatrie:example.org"
      keywords: [nourrisson]
"""


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m peerbot.cli check-config PATH`` without any PeerBot secret in the env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "check-config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_corpus_is_big_enough() -> None:
    assert len(FILES) >= 20, FILES


def test_the_unbroken_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "bot.yaml"
    path.write_text(VALID, encoding="utf-8")
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_broken_config(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    expect = _EXPECT.match(first)
    assert expect, f"{path.name}: the first line must be '# expect: <fragment> (line N)'"
    fragment, line = expect["fragment"], expect["line"]

    result = check_config(path)

    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    messages = [m.strip() for m in result.stderr.splitlines() if m.startswith("  ")]
    assert messages, result.stderr
    assert len(messages) == 1, f"one mistake, {len(messages)} messages:\n" + "\n".join(messages)
    message = messages[0]
    assert fragment in message, f"expected {fragment!r} in {message!r}"
    if line is not None:
        assert message.endswith(f"(line {line})"), f"expected line {line}: {message!r}"
