"""A private PgBouncer in front of the test Postgres, in transaction pooling mode.

A fleet shares one database through PgBouncer with ``pool_mode =
transaction``: a client holds a server connection only for the length of a
transaction, so anything that relies on a session (a session advisory lock,
a named prepared statement kept across transactions, SET outside a
transaction, temp tables, LISTEN) may meet a different server connection on
its next transaction. Tests that claim to work "behind PgBouncer" run the
real thing (Debian's ``pgbouncer``, installed by ``.ci/run``), never a fake.

Each ``PgBouncer`` is private to a test: a free loopback port, its ini and
auth file in the test's directory, its log (stderr, written by this process)
and pid file there too. PgBouncer refuses to run as root, so as root it is
started with ``-u postgres``: it reads its ini and auth file before it drops
privileges, and it writes no file of its own (no ``logfile``, no
``pidfile``), so the test directory need not be readable by ``postgres``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.support import PG_DSN

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback port nobody listens on right now (PgBouncer binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_address(dsn: str, host: str, port: int, database: str | None = None) -> str:
    """``dsn`` pointed at ``host:port`` (and ``database``), user and query kept."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    path = f"/{database}" if database is not None else parts.path
    return urlunsplit((parts.scheme, f"{user}@{host}:{port}", path, parts.query, ""))


def _run(coro: Coroutine[Any, Any, bool]) -> bool:
    """Run ``coro`` to the end, also when called from a running event loop (own thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class PgBouncer:
    """``pgbouncer`` as a subprocess on a free loopback port, in front of ``upstream``."""

    def __init__(self, directory: Path, pool_size: int = 4, upstream: str = PG_DSN,
                 max_client_conn: int = 1000) -> None:
        self.directory = directory
        self.pool_size = pool_size
        self.upstream = upstream
        self.max_client_conn = max_client_conn
        self.port = 0
        self.ini = directory / "pgbouncer.ini"
        self.log = directory / "pgbouncer.log"
        self.pidfile = directory / "pgbouncer.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """The upstream DSN (same user and database) through this PgBouncer."""
        return with_address(self.upstream, "127.0.0.1", self.port)

    def dsn_for(self, database: str) -> str:
        return with_address(self.upstream, "127.0.0.1", self.port, database)

    @property
    def admin_dsn(self) -> str:
        """PgBouncer's admin console (``SHOW POOLS``, ``SHOW SERVERS``...)."""
        return self.dsn_for("pgbouncer")

    def _write_config(self) -> None:
        up = urlsplit(self.upstream)
        user = up.username or "postgres"
        self.directory.mkdir(parents=True, exist_ok=True)
        auth = self.directory / "userlist.txt"
        auth.write_text(f'"{user}" ""\n')
        self.ini.write_text("\n".join([
            "[databases]",
            f"* = host={up.hostname or '127.0.0.1'} port={up.port or 5432}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {auth}",
            f"admin_users = {user}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            f"max_client_conn = {self.max_client_conn}",
            # what a JDBC or psql client sends; asyncpg sends none of these
            "ignore_startup_parameters = extra_float_digits",
            "",
        ]))

    def start(self) -> PgBouncer:
        """Start on a free port and wait until a query passes through it."""
        for _ in range(5):  # another process may take the free port first
            self.port = free_port()
            self._write_config()
            self._spawn()
            try:
                ready = self._wait_ready()
            except BaseException:
                self.stop()  # never leave it running behind a failed start
                raise
            if ready:
                return self
            self.stop()
            if b"Address already in use" not in self.log.read_bytes():
                break
        raise AssertionError(f"pgbouncer did not start:\n{self.log.read_text()[-3000:]}")

    def _spawn(self) -> None:
        as_root = ["-u", "postgres"] if os.geteuid() == 0 else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([BINARY, *as_root, str(self.ini)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.pidfile.write_text(f"{self.proc.pid}\n")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if _run(self._answers()):
                return True
            time.sleep(0.05)  # polling interval of a condition wait
        return False

    async def _answers(self) -> bool:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=2, statement_cache_size=0)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` on the admin console (POOLS, SERVERS, CLIENTS, STATS).

        The console speaks only the simple query protocol, so psql asks it.
        """
        out = subprocess.run(["psql", "--csv", "-X", self.admin_dsn, "-c", f"SHOW {what}"],
                             capture_output=True, check=True, timeout=10).stdout.decode()
        return list(csv.DictReader(io.StringIO(out)))

    def pool(self, database: str) -> dict[str, str]:
        """The ``SHOW POOLS`` row of ``database``."""
        return next(r for r in self.show("POOLS") if r["database"] == database)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL past the deadline; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@pytest.fixture
def pgbouncer_factory(tmp_path: Path) -> Iterator[Callable[..., PgBouncer]]:
    """Start PgBouncers (``pool_size``, default 4); all are stopped after the test."""
    started: list[PgBouncer] = []

    def start(pool_size: int = 4, upstream: str = PG_DSN) -> PgBouncer:
        bouncer = PgBouncer(tmp_path / f"pgbouncer-{len(started)}", pool_size, upstream)
        started.append(bouncer)
        return bouncer.start()

    yield start
    for bouncer in started:
        bouncer.stop()


@pytest.fixture
def pgbouncer(pgbouncer_factory: Callable[..., PgBouncer]) -> PgBouncer:
    """A private PgBouncer (transaction pooling, pool of 4) in front of the test Postgres."""
    return pgbouncer_factory()
