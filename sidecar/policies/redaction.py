"""Secret redaction on raw JSON bytes, with a fast path for clean records.

``Redactor.redact_json(raw)`` is the primary API: one combined search over the
raw JSON text answers "could anything match?" (a built-in pattern, a user
pattern, a secret key name, the Opik key); only when it could is the value
decoded with orjson, walked, masked and re-encoded. ``redact_value`` does the
same on an already decoded value.

Why the raw search is a safe filter: every built-in pattern is searched in
the raw text by its core, without a leading boundary, over characters that
JSON never escapes (``\\`` and ``"`` are not in any token class), so a secret
in a decoded string is also a match in the raw text. JSON that escapes
plain characters (``\\u0041``, ``\\/``) is always walked; so is any escape at
all when user patterns are set (their syntax is the user's).

The gates run on RE2 (one pass over the text for every alternative), the
built-in patterns' masking on Python's ``re`` (ours, with lookbehinds and
no nested quantifiers), user patterns entirely on RE2, whose matching time is
linear in the input, so no pattern can stall the daemon.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import re2

from sidecar.settings import RedactionSettings

Counts = dict[str, int]

_LEAD = r"(?<![A-Za-z0-9_-])"  # a token starts here (not inside a longer word)


def _loads(raw: bytes) -> Any:
    """orjson, or the stdlib for integers past 64 bits (raw JSON may hold them)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False).encode()


def _finder(pattern: Any) -> Callable[[bytes], bool]:
    """Whether a compiled RE2 pattern occurs in bytes, as one call into RE2.

    The package's ``search`` builds a generator and a match object per call
    (a third of the cost on a ~1 KB line); the gate only needs yes or no.
    Falls back to ``search`` where the package's internals differ.
    """
    compiled, anchor = getattr(pattern, "_regexp", None), getattr(re2, "_Anchor", None)
    if compiled is None or anchor is None or not hasattr(compiled, "Match"):
        return lambda text: pattern.search(text) is not None
    unanchored, miss = anchor.UNANCHORED, (-1, -1)
    return lambda text: bool(compiled.Match(unanchored, text, 0, len(text))[0] != miss)


def luhn(number: str) -> bool:
    """The Luhn check of a card number; spaces and dashes are ignored."""
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    mask: str  # searched in decoded strings
    core: str  # searched in the raw JSON text: ``mask`` without a leading boundary
    valid: Callable[[str], bool] | None = None


BUILTINS: tuple[Builtin, ...] = (
    Builtin("anthropic", _LEAD + r"sk-ant-[A-Za-z0-9_-]{20,}", r"sk-ant-[A-Za-z0-9_-]{20,}"),
    Builtin("openai", _LEAD + r"sk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_-]{0,300}\d)"
            r"[A-Za-z0-9_-]{20,}", r"sk-[A-Za-z0-9_-]{20,}"),
    Builtin("google_api_key", _LEAD + r"AIza[0-9A-Za-z_-]{35,}", r"AIza[0-9A-Za-z_-]{35,}"),
    Builtin("aws_access_key_id", r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
            r"(?:AKIA|ASIA)[A-Z0-9]{16}"),
    Builtin("azure_storage_key", r"AccountKey=[A-Za-z0-9+/]{40,}={0,2}",
            r"AccountKey=[A-Za-z0-9+/]{40,}"),
    Builtin("azure_sas_signature", r"(?<=[?&])sig=[A-Za-z0-9%+/]{20,}={0,2}",
            r"sig=[A-Za-z0-9%+/]{20,}"),
    Builtin("huggingface", _LEAD + r"hf_[A-Za-z0-9]{30,}", r"hf_[A-Za-z0-9]{30,}"),
    Builtin("github", _LEAD + r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})",
            r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}"),
    Builtin("slack", _LEAD + r"xox[abposr]-[A-Za-z0-9-]{10,}", r"xox[abposr]-[A-Za-z0-9-]{10,}"),
    Builtin("jwt", _LEAD + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    # A token has a digit somewhere ("the bearer of bad news" is prose).
    Builtin("bearer", r"(?i:bearer) +(?=[A-Za-z0-9._~+/-]{0,300}\d)[A-Za-z0-9._~+/-]{8,}=*",
            r"(?i:bearer) +[A-Za-z0-9._~+/-]{8,}"),
    # The local part is bounded (RFC 5321: 64), so a long word costs linear time.
    Builtin("email", r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*"
            r"\.[A-Za-z]{2,24}", r"@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"),
    # Card numbers by their issuers' first digits, 4-digit groups with one
    # kind of separator (or 4-6-5 for Amex), and the Luhn check.
    Builtin("card", r"(?<![\d-])(?:[2-6]\d{3}([ -]?)\d{4}\1\d{4}\1\d{1,7}"
            r"|3[47]\d{2}([ -]?)\d{6}\2\d{5})(?!\d)",
            r"[2-6]\d{3}[ -]?\d{4}[ -]?\d{4}|3[47]\d{2}[ -]?\d{6}[ -]?\d{5}", luhn),
)

OPIK_KEY = "opik_api_key"
_MIN_LITERAL = 8  # a configured key shorter than this would mask ordinary words


class Redactor:
    """Masks secrets in JSON values; counts what it masked per pattern name.

    Built once from ``spans.redaction`` (and the Opik API key) and never
    changed: a reload builds a new one.
    """

    def __init__(self, settings: RedactionSettings, opik_api_key: str | None = None) -> None:
        self.replacement = settings.replacement
        self.keys = {k.lower(): f"key:{k.lower()}" for k in settings.keys}
        rules: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = []
        cores: list[str] = []
        if opik_api_key and len(opik_api_key) >= _MIN_LITERAL:
            rules.append((OPIK_KEY, re.compile(re.escape(opik_api_key)), None))
            cores.append(re.escape(opik_api_key))
        if settings.builtin:
            rules += [(b.name, re.compile(b.mask), b.valid) for b in BUILTINS]
            cores += [b.core for b in BUILTINS]
        self._rules = rules
        # The gate for decoded strings: the cores (looser, and free of groups,
        # whose numbers a combined pattern would shift).
        # Both gates run on RE2: one pass whatever the number of alternatives
        # (Python's re tries each alternative at each position: 10x slower).
        self._any = re2.compile("|".join(f"(?:{c})" for c in cores)) if cores else None
        if self.keys:
            names = "|".join(re.escape(k) for k in self.keys)
            cores.append(f'"(?i:{names})"\\s*:')
        # An escape (\u, \/) may hide a secret's text: such a line takes the
        # slow path. Part of the one regex pass, not a search of its own.
        self._pre = (re2.compile("|".join(f"(?:{c})" for c in (*cores, r"\\[u/]")).encode())
                     if cores else None)
        self._pre_found = None if self._pre is None else _finder(self._pre)
        self._user = [(p.name, re2.compile(p.regex)) for p in settings.patterns]
        self._user_pre = (re2.compile("|".join(f"(?:{p.regex})" for p in settings.patterns)
                                      .encode()) if self._user else None)

    # -- raw JSON ------------------------------------------------------------
    def may_match(self, raw: bytes) -> bool:
        """False only when nothing in ``raw`` can be masked (the fast path)."""
        if self._pre_found is not None and self._pre_found(raw):
            return True
        return self._user_pre is not None and (b"\\" in raw or bool(self._user_pre.search(raw)))

    def redact_json(self, raw: bytes) -> tuple[bytes, Counts]:
        """``raw`` (one JSON value) with every secret masked, and the counts.

        Returns ``raw`` itself when nothing was masked.
        """
        if not self.may_match(raw):
            return raw, {}
        counts: Counts = {}
        value = self.redact_value(_loads(raw), counts)
        return (_dumps(value), counts) if counts else (raw, counts)

    # -- decoded values --------------------------------------------------------
    def redact_value(self, value: Any, counts: Counts) -> Any:
        """A copy of a decoded JSON value with secrets masked (counted in ``counts``).

        Strings are searched; the value under a secret key name (any case,
        any depth, whole names only) is replaced whatever it is. Unchanged
        parts are returned as they are.
        """
        if isinstance(value, str):
            return self.redact_text(value, counts)
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                label = self.keys.get(key.lower()) if isinstance(key, str) else None
                if label is not None:
                    counts[label] = counts.get(label, 0) + 1
                    out[key] = self.replacement
                else:
                    out[key] = self.redact_value(item, counts)
            return out
        if isinstance(value, list):
            return [self.redact_value(item, counts) for item in value]
        return value

    def redact_text(self, text: str, counts: Counts) -> str:
        """``text`` with every pattern's matches replaced."""
        if self._any is not None and self._any.search(text):
            for name, pattern, valid in self._rules:
                text = self._sub(name, pattern, valid, text, counts)
        for name, user in self._user:
            text, n = user.subn(self._literal, text)
            if n:
                counts[name] = counts.get(name, 0) + n
        return text

    def _literal(self, match: object) -> str:
        return self.replacement  # a function: backslashes in it stay literal

    def _sub(self, name: str, pattern: re.Pattern[str], valid: Callable[[str], bool] | None,
             text: str, counts: Counts) -> str:
        masked = 0

        def repl(match: re.Match[str]) -> str:
            nonlocal masked
            if valid is not None and not valid(match.group()):
                return match.group()
            masked += 1
            return self.replacement

        text = pattern.sub(repl, text)
        if masked:
            counts[name] = counts.get(name, 0) + masked
        return text
