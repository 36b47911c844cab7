"""One scrub for every line the process writes: logs, error texts, outputs.

Two layers, because neither is enough alone:

- the configured secret values themselves (every ``SecretStr`` of the
  settings, such as the Postgres password and the Opik API key, and the
  credentials inside every ``SecretUrl``, such as the DSN's and the Redis
  URL's password), registered at start from the settings
  (``register_settings``) and masked wherever they appear, whatever
  surrounds them: a traceback's exception text, a library's message, a ``repr``;
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
from typing import Annotated, Any
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


class _UrlSecret:
    """The marker of ``SecretUrl``: the field holds a URL or DSN whose
    credentials are secrets (its userinfo password, secret-named parameters)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "URL_SECRET"


URL_SECRET = _UrlSecret()
# A settings field that holds a URL or a DSN (a libpq ``key=value`` one
# included, which has no "://"): check-config prints it with its credentials
# masked, and they are registered for the scrub. A ``SecretStr`` is masked
# whole. Any other string is masked only where it holds a "://" URL.
SecretUrl = Annotated[str, URL_SECRET]


def _secrets_in(value: Any, url: bool = False) -> Iterator[str]:
    """Every secret a settings model holds, by the type of its fields: each
    ``SecretStr``, and the credentials of each ``SecretUrl`` (and of any
    string that holds a "://" URL)."""
    if isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            yield from _secrets_in(getattr(value, name), URL_SECRET in field.metadata)
    elif isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, str):
        if url or "://" in value:
            yield from url_secrets(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _secrets_in(v, url)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _secrets_in(v, url)


def register_settings(settings: BaseModel, env: Mapping[str, str] | None = None) -> None:
    """Register every secret the settings (and libpq's variables) hold."""
    env = os.environ if env is None else env
    register([*_secrets_in(settings), *(env.get(v) for v in _ENV_SECRETS)])


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
    """The effective config as plain data with every secret masked, by type:
    each ``SecretStr`` whole, the credentials of each ``SecretUrl`` (and of
    any string that holds a "://" URL). A new section's secrets are masked
    by declaring them so, whatever their names."""
    masked: dict[str, Any] = _redact(settings, settings.model_dump(mode="json", by_alias=True))
    return masked


def _redact(value: Any, dumped: Any, url: bool = False) -> Any:
    """``dumped`` (``value`` as JSON data) with the secrets ``value`` holds masked."""
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        out = dict(dumped)
        for name, field in type(value).model_fields.items():
            key = field.serialization_alias or field.alias or name
            if key in out:
                out[key] = _redact(getattr(value, name), out[key], URL_SECRET in field.metadata)
        return out
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, str) and isinstance(dumped, str):
        return mask_url(dumped) if url or "://" in dumped else dumped
    if isinstance(value, Mapping) and isinstance(dumped, dict):
        return {k: _redact(v, d, url) for (k, d), v in zip(dumped.items(), value.values(),
                                                           strict=True)}
    if isinstance(value, list | tuple) and isinstance(dumped, list):
        return [_redact(v, d, url) for v, d in zip(value, dumped, strict=True)]
    return dumped
