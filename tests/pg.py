"""A PostgreSQL server for tests: the one at 127.0.0.1:5432 when it answers, else a throwaway cluster started here.

``server_dsn()`` returns an admin DSN (superuser, trust auth); ``create_database``/``drop_database`` make the
per-session databases. ``SWITCHBOARD_TEST_PG`` may name another server's admin DSN; ``SWITCHBOARD_TEST_PG=start``
forces the throwaway cluster. Starting one needs PostgreSQL's server binaries (Debian:
``apt-get install -y postgresql``); without a server and without them, the tests fail with that hint.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
INSTALL_HINT = "apt-get install -y postgresql  (or set SWITCHBOARD_TEST_PG to an admin DSN)"
_started: str | None = None


class PostgresUnavailable(RuntimeError):
    pass


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cluster() -> str:
    """Start a throwaway cluster in a temp dir on a free port (as user postgres when running as root); it is
    stopped and removed at exit. Returns its admin DSN."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) found; install them: {INSTALL_HINT}")
    prefix: list[str] = []
    data_root = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root, and runuser is missing to start PostgreSQL as postgres")
        try:
            shutil.chown(data_root, user="postgres")
        except LookupError as err:
            raise PostgresUnavailable(f"running as root and there is no user postgres: {INSTALL_HINT}") from err
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = data_root / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-p {port} -k {data_root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        run(pg_ctl, "-D", str(data), "-l", str(data_root / "log"), "-o", options, "-w", "start")
    except subprocess.CalledProcessError as err:
        log = data_root / "log"
        detail = log.read_text() if log.exists() else ""
        raise PostgresUnavailable(f"starting PostgreSQL failed: {err.stderr}{err.stdout}{detail}") from err

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(data_root, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def server_dsn() -> str:
    """An admin DSN of a running server, starting one when needed (once per process)."""
    global _started
    configured = os.environ.get("SWITCHBOARD_TEST_PG", "")
    if configured and configured != "start":
        if not _answers(configured):
            raise PostgresUnavailable(f"SWITCHBOARD_TEST_PG={configured!r} does not answer")
        return configured
    if configured != "start" and _answers(DEFAULT_DSN):
        return DEFAULT_DSN
    if _started is None:
        _started = start_cluster()
    return _started


def with_database(dsn: str, name: str) -> str:
    return str(psycopg.conninfo.make_conninfo(dsn, dbname=name))


def create_database(admin_dsn: str, prefix: str = "switchboard_test") -> str:
    """Create a fresh database; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))
