"""The stats cache's invalidations without the redis package.

Every batch the Postgres sink stores deletes its agents' cached statistics:
one ``DEL`` of a few keys. Made with the redis package, that loads it
(~6 MB of the daemon's memory, ~60 ms) in every daemon that stores a span,
though only ``GET /stats`` (the cache's read path) needs it. This is the
write path alone, on one connection: ``AUTH`` and ``SELECT`` as the URL says,
then ``DEL`` (RESP2, as the redis package speaks by default). Plain
``redis://`` and ``unix://`` URLs only: a URL with options or TLS
(``rediss://``) keeps the redis package (``simple_target`` returns None).

Any failure (refused, timed out, an error reply, a reply out of protocol)
closes the connection and raises; the cache's breaker takes it from there,
and the next call connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 6379


class RespError(Exception):
    """Redis answered an error, or something that is not a reply we asked for."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str | None  # None: ``path`` is a unix socket
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None


def simple_target(url: str) -> Target | None:
    """Where a plain ``redis://`` or ``unix://`` URL points, read as the redis
    package reads it; None for any other URL (TLS, query options, a username
    without a password), which is left to the redis package."""
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.scheme not in ("redis", "unix"):
        return None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if username and not password:
        return None
    if parts.scheme == "unix":
        return Target(None, 0, unquote(parts.path), 0, username, password) if parts.path else None
    db = parts.path.replace("/", "")
    if db and not db.isdigit():
        return None
    host = unquote(parts.hostname) if parts.hostname else "localhost"
    return Target(host, parts.port or DEFAULT_PORT, None, int(db or 0), username, password)


def command(*args: str | bytes) -> bytes:
    """One RESP array of bulk strings (text is sent as UTF-8, as the redis package does)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespDeleter:
    """``delete(keys)`` on one lazily opened connection; one call at a time."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def delete(self, keys: Sequence[str]) -> int:
        """``DEL keys``: how many existed. Raises on any failure (the connection closed)."""
        async with self._lock:
            try:
                if self._writer is None:
                    async with asyncio.timeout(self.timeout_s):
                        await self._connect()
                async with asyncio.timeout(self.timeout_s):
                    return await self._call(command("DEL", *keys))
            except BaseException:
                self._drop()
                raise

    async def _connect(self) -> None:
        t = self.target
        if t.path is not None:
            self._reader, self._writer = await asyncio.open_unix_connection(t.path)
        else:
            self._reader, self._writer = await asyncio.open_connection(t.host, t.port)
        if t.password:
            auth = (t.username, t.password) if t.username else (t.password,)
            await self._call(command("AUTH", *auth))
        if t.db:
            await self._call(command("SELECT", str(t.db)))

    async def _call(self, request: bytes) -> int:
        """Send one command; its reply: an integer, 0 for ``+OK``."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        await self._writer.drain()
        line = await self._reader.readuntil(b"\r\n")
        kind, body = line[:1], line[1:-2]
        if kind == b":":
            return int(body)
        if kind == b"+":
            return 0
        if kind == b"-":
            raise RespError(body.decode(errors="replace")[:200])
        raise RespError(f"unexpected reply type {kind!r}")

    def _drop(self) -> asyncio.StreamWriter | None:
        """Forget the connection (a reply may be half read), closing it."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
        return writer

    async def close(self) -> None:
        writer = self._drop()
        if writer is not None:
            with suppress(OSError):
                await writer.wait_closed()
