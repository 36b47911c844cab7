"""One scrub for every line the process writes: logs, error texts, outputs.

Two layers, because neither is enough alone:

- the configured secret values themselves (the Postgres password, the one
  inside the DSN, the Opik API key, the Redis URL's password, any key named
  like a secret), registered at start from the settings (``register_settings``)
  and masked wherever they appear, whatever surrounds them: a traceback's
  exception text, a library's message, a ``repr``;
- credentials by their shape, for what nobody registered: a URL's userinfo
  password (``scheme://user:***@host``; the whole userinfo of an http(s) URL,
  where a lone user name is the token), and ``name=value`` / ``name: value``
  pairs and query parameters whose name ends like a secret (password, passwd,
  token, secret, key, api_key, apikey, authorization).

Logs are not the hot path (a few lines a second, never one per span), so the
log processor scrubs every string of every event, exceptions included.
Registered values shorter than ``MIN_SECRET_CHARS`` are masked by shape only:
masking every ``ab`` in every line would garble the logs and hide nothing. A
text that ends with the first ``MIN_SECRET_CHARS`` or more characters of a
secret (a message cut to a length before it reached the scrub) loses them.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import BaseModel, SecretStr

MASK = "***"
MIN_SECRET_CHARS = 4
# The variables libpq and asyncpg read a password from besides the DSN.
_ENV_SECRETS = ("PGPASSWORD",)

_NAME = r"[A-Za-z0-9_.-]*?(?:passw(?:or)?d|token|secret|key|authorization)"
_SECRET_NAME = re.compile(rf"^{_NAME}$", re.IGNORECASE)
_HINTS = ("passw", "token", "secret", "key", "authorization")  # what _NAME can end with
# name (a whole word, not a path segment nor a URL's user: "//key:pw@h" is the
# userinfo's business), optional closing quote of a quoted name, = or :, then
# the value: quoted (escapes allowed), or a bare word up to a separator;
# "Bearer x" is one value.
_PAIR = re.compile(
    rf"(?<![A-Za-z0-9_./-])({_NAME})([\"']?\s*[=:]\s*)"
    r"((?:(?:bearer|basic|token|digest)\s+)?"
    r"(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s&,;'\"}\])]+))",
    re.IGNORECASE)
# scheme://userinfo@ ; the userinfo runs to the authority's last "@" (a raw "@"
# inside a password is common enough in hand-written DSNs).
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^\s/?#]*)@", re.IGNORECASE)
_HTTP = ("http://", "https://", "ws://", "wss://")
# Settings keys that hold a URL or a DSN (a libpq key=value DSN has no "://").
_URL_KEYS = ("url", "dsn", "endpoint")

# Fields the log pipeline itself adds: nothing of the caller's is in them.
_OURS = frozenset(("level", "logger", "timestamp"))

_values: set[str] = set()
_registered: list[re.Pattern[str] | None] = [None]
_prefixes: list[tuple[str, ...]] = [()]  # of every registered form, the longest first


@functools.lru_cache(maxsize=4096)  # log field names and config keys: a few hundred
def is_secret_name(name: str) -> bool:
    """Whether a key or parameter name says that its value is a secret."""
    return bool(_SECRET_NAME.match(name))


def _variants(value: str) -> Iterator[str]:
    """The forms a secret takes in text: as is, URL-encoded or -decoded, and
    escaped as repr() and JSON escape it."""
    yield value
    yield unquote(value)
    yield quote(value, safe="")
    yield repr(value)[1:-1]
    yield json.dumps(value)[1:-1]


def register(values: Iterable[str | SecretStr | None]) -> None:
    """Mask these values (and their encoded forms) from now on; kept for the
    life of the process, so a value replaced by a reload stays masked."""
    for value in values:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value:
            _values.update(v for v in _variants(value) if len(v) >= MIN_SECRET_CHARS)
    if _values:
        alternatives = sorted(_values, key=len, reverse=True)  # the longest form first
        _registered[0] = re.compile("|".join(re.escape(v) for v in alternatives))
        _prefixes[0] = tuple(sorted({v[:n] for v in _values
                                     for n in range(MIN_SECRET_CHARS, len(v))},
                                    key=len, reverse=True))


def forget() -> None:
    """Drop every registered value (tests)."""
    _values.clear()
    _registered[0], _prefixes[0] = None, ()


def _cut_secret(text: str) -> str:
    """``text`` without the start of a secret it ends with: a message cut to a
    length (``reason[:300]``) before it was scrubbed may end inside one."""
    prefixes = _prefixes[0]
    if not text.endswith(prefixes):  # one C call for the usual answer, no
        return text
    cut = next(p for p in prefixes if text.endswith(p))  # the longest first
    return text[:-len(cut)] + MASK


def url_secrets(text: str) -> list[str]:
    """The credentials a URL or libpq key=value DSN carries: the userinfo
    password (or an http(s) URL's lone user), and secret-named parameters."""
    found = [m.group(3).strip("'\"") for m in _PAIR.finditer(text)]
    for m in _USERINFO.finditer(text):
        user, sep, password = m.group(2).partition(":")
        found.append(password if sep else (user if m.group(1).lower() in _HTTP else ""))
    try:
        query = urlsplit(text).query
    except ValueError:
        query = ""
    found.extend(v for k, v in parse_qsl(query) if is_secret_name(k))
    return [s for s in found if s and s != MASK]


def _walk(node: Any, key: str = "") -> Iterator[str]:
    """Every secret in a settings dump: values of secret-named keys, and the
    credentials inside any string that holds a URL or a DSN."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _walk(v, str(k))
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _walk(v, key)
    elif isinstance(node, SecretStr):
        yield node.get_secret_value()
    elif isinstance(node, str):
        if is_secret_name(key):
            yield node
        elif key.endswith(_URL_KEYS) or "://" in node:
            yield from url_secrets(node)


def register_settings(settings: BaseModel, env: Mapping[str, str] | None = None) -> None:
    """Register every secret the settings (and libpq's variables) hold."""
    env = os.environ if env is None else env
    register([*_walk(settings.model_dump(mode="python")), *(env.get(v) for v in _ENV_SECRETS)])


def _mask_pair(m: re.Match[str]) -> str:
    return f"{m.group(1)}{m.group(2)}{MASK}"


def _mask_userinfo(m: re.Match[str]) -> str:
    scheme, userinfo = m.group(1), m.group(2)
    user, sep, _ = userinfo.partition(":")
    if sep:
        return f"{scheme}{user}:{MASK}@"
    return f"{scheme}{MASK}@" if scheme.lower() in _HTTP else m.group(0)


def mask_shapes(text: str) -> str:
    """Credentials masked by their shape only (URL userinfo, secret-named pairs).

    Each pattern runs only on text that can hold its shape (most log text
    cannot): a plain substring test costs a fraction of a regex scan."""
    if "://" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    lowered = text.lower()
    if any(word in lowered for word in _HINTS):
        text = _PAIR.sub(_mask_pair, text)
    return text


def scrub(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped value masked."""
    pattern = _registered[0]
    if pattern is not None:
        text = _cut_secret(pattern.sub(MASK, text))
    return mask_shapes(text)


def scrub_value(value: Any, key: str = "") -> Any:
    """A log field scrubbed: strings masked, containers walked, any other object
    replaced by its scrubbed ``repr`` (what the renderers would have printed)."""
    if isinstance(value, str):
        return MASK if value and is_secret_name(key) else scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: scrub_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v, key) for v in value]
    return scrub(repr(value))


def scrub_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor, last before rendering: every field of the event scrubbed
    (``exception`` included: place it after the exception formatter)."""
    return {k: v if k in _OURS else scrub_value(v, k) for k, v in event.items()}


def mask_url(url: str) -> str:
    """A URL/DSN with the password of its userinfo and its secret-named query
    parameters masked (``postgresql://u:***@h/db?api_key=***``, ``password=***``)."""
    return scrub(url)


def redacted(settings: BaseModel) -> dict[str, Any]:
    """The effective config as plain data with every secret masked: each value
    of a key named like a secret, and the credentials in every URL and DSN."""
    masked: dict[str, Any] = _redact(settings.model_dump(mode="json", by_alias=True))
    return masked


def _redact(node: Any, key: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _redact(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact(v, key) for v in node]
    if isinstance(node, str) and is_secret_name(key):
        return "***"
    if isinstance(node, str) and (key in ("url", "dsn") or "://" in node):
        return mask_url(node)
    return node
