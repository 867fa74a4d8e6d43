"""A real PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` into a tmp dir.

Registered with ``pytest_plugins = ["tests.pg"]`` by the modules that need it.  The
session-scoped ``pg_server`` fixture starts one server on a free 127.0.0.1 port (its
socket in the same private dir) and stops it at the end; ``pg_url`` gives each test a
fresh, empty database on it.  Skipped, saying why, where the binaries are missing.

PostgreSQL refuses to run as root (and these machines and CI run as root), so there the
server runs as ``nobody`` through ``runuser``, in a dir made for it under the system
temp dir (pytest's own tmp dirs are root-only, which ``nobody`` could not enter).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin")
#: The unprivileged user the server runs as when the tests run as root.
SERVER_USER = "nobody"


@dataclass(frozen=True)
class PgServer:
    port: int
    root: Path

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{_server_role()}@127.0.0.1:{self.port}/{dbname}"


def _me() -> str:
    import getpass

    return getpass.getuser()


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in BIN_DIRS:
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("PostgreSQL refuses root and there is no runuser to drop to 'nobody'")
    return [runuser, "-u", SERVER_USER, "--", *argv]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    root = Path(tempfile.mkdtemp(prefix="imagenodes-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(SERVER_USER)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    subprocess.run(
        _as_server_user(
            [
                initdb,
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                _server_role(),
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    port = _free_port()
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_server_user(
            [
                pg_ctl,
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        env=env,
        timeout=90,
    )
    try:
        yield PgServer(port, root)
    finally:
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            env=env,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _server_role() -> str:
    return SERVER_USER if os.geteuid() == 0 else _me()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_server.url(name)
