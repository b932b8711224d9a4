#!/usr/bin/env python3
"""Print one of the README's set-up commands, so CI runs what a newcomer reads (stdlib only).

    python3 .ci/readme_commands.py demo   # the quick start (the sh block running `peerbot demo`)
    python3 .ci/readme_commands.py test   # the test suite (the sh block running pytest)

Exits 1 with a one-line reason when the README has no such block, or more than one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WANTED = {
    "demo": re.compile(r"/peerbot demo\b"),
    "test": re.compile(r"-m pytest\b"),
}


def blocks(text: str) -> list[str]:
    """The one-line commands of every ```sh block (continuation lines joined)."""
    found = re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
    out = []
    for block in found:
        joined = re.sub(r"\\\n\s*", " ", block).strip()
        out.extend(line.strip() for line in joined.splitlines() if line.strip())
    return out


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in WANTED:
        print(f"usage: {sys.argv[0]} demo|test", file=sys.stderr)
        return 2
    readme = Path(__file__).resolve().parent.parent / "README.md"
    commands = [c for c in blocks(readme.read_text(encoding="utf-8")) if WANTED[what].search(c)]
    if len(commands) != 1:
        print(f"README.md: expected one {what} command in a sh block, found {len(commands)}")
        return 1
    print(commands[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
