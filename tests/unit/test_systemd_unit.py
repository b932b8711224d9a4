"""contrib/peerbot.service: ``systemd-analyze verify`` accepts it, and its exposure score (from
``systemd-analyze security --offline``) stays low. Only these two checks are skipped where the
binary is absent; the unit's required settings are checked everywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib" / "peerbot.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's peerbot (verify checks it exists)."""
    venv = Path(sys.executable).parent.parent
    text = UNIT.read_text(encoding="utf-8").replace("/opt/peerbot/venv", str(venv))
    out = tmp_path / "peerbot.service"
    out.write_text(text, encoding="utf-8")
    return out


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_has_the_promised_settings() -> None:
    s = settings()
    assert s["Type"] == ["notify"]
    assert int(s["WatchdogSec"][0]) >= 60  # the bot pings every WatchdogSec/2
    assert s["DynamicUser"] == ["yes"] and s["StateDirectory"] == ["peerbot"]
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    assert any(v.startswith("password:") for v in s["LoadCredential"])
    assert s["RestartPreventExitStatus"] == ["2"]
    assert "Environment" not in s  # no secret in the environment
    assert s["ExecStart"] == ["/opt/peerbot/venv/bin/peerbot run --config /etc/peerbot/bot.yaml"]


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    run = subprocess.run(
        [ANALYZE, "verify", str(local_copy(tmp_path))], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr.strip() == "", run.stderr


@needs_analyze
def test_exposure_score_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    run = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(local_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", run.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security check: {run.stderr[-200:]}")
    score = float(match.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= 2.0, run.stdout
