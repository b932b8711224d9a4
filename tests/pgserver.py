"""A throwaway PostgreSQL server on loopback for the tests (Debian's ``postgresql`` binaries).

``initdb`` refuses to run as root, and CI runs as root: the server then runs as the
``postgres`` user, in a folder it owns (under ``$TMPDIR``, so ``.ci/run`` cleans it up), on a free
port, with its Unix socket in that folder. Trust authentication, loopback only, ``fsync=off``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PostgresServer", "find_bin"]

_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or in Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server; ``url(db)`` names a database on it, ``create_database`` makes a fresh one."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="peerbot-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self._n = 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, argv: Sequence[str]) -> None:
        cmd = list(argv)
        if self._as_postgres:
            # runuser/su: postgres must own what it writes; argv is passed as is (no shell).
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd=self.root)

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise FileNotFoundError("initdb/pg_ctl not found: apt-get install -y postgresql")
        args = ["-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]
        self._run([initdb, *args, "--locale=C.UTF-8", "-E", "UTF8"])
        self._start_server()

    def _start_server(self) -> None:
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl is not None
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run([pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start"])

    def halt(self) -> None:
        """Stop the server (fast: every session ends) and keep its data, to start it again."""
        pg_ctl = find_bin("pg_ctl")
        assert pg_ctl is not None
        self._run([pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def resume(self) -> None:
        """Start a halted server again, on the same port with the same data."""
        self._start_server()

    def stop(self) -> None:
        """Stop the server (fast) and delete its folder."""
        pg_ctl = find_bin("pg_ctl")
        if pg_ctl and self.data.exists():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run([pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A libpq-style URL to a database on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; its URL."""
        import asyncpg

        self._n += 1
        name = f"{prefix}_{os.getpid()}_{self._n}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await conn.close()
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log (failure reports)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"
