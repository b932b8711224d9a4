"""`peerbot demo --once`: the newcomer's first command works end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_once(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "demo", "--once", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.count("PeerBot answered in her thread:") == 4
    assert "(no answer within 30 s)" not in out
    assert "transmise au salon #cardiologie:localhost (Cardiologie)" in out
    assert "transmise au salon #pediatrie:localhost (Pédiatrie)" in out
    assert "salon de tri #triage:localhost" in out
    assert "Log in with any Matrix client as @alice:localhost" in out
    # An answer typed under the forward in #cardiologie comes back into Alice's thread.
    assert "PeerBot brought the answer back to her thread (ringing her only):" in out
    assert "Alice Martin (IDE) : réponse de Dr Bruno Lefèvre (cardiologue)" in out
    # A second run reuses the same server, users and rooms, and now finds related threads.
    again = subprocess.run(
        [sys.executable, "-m", "peerbot.cli", "demo", "--once", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Fils similaires déjà posés" in again.stdout
    assert "PeerBot brought the answer back to her thread" in again.stdout
