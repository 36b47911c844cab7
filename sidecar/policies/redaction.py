"""Secret redaction on raw JSON bytes, with a fast path for clean records.

``Redactor.redact_json(raw)`` is the primary API: one combined search over the
raw JSON text answers "could anything match?" (a built-in pattern's core, a
secret key name, a user pattern, the Opik key, an escape that may hide one);
only when it could is the text walked (``jsonscan.rewrite``: token by token,
no tree, nothing re-parsed) and each decoded string masked. ``redact_string``
does the same for a string field (a tag, an error message, a reason).

What is scanned: every string of the value after unescaping, keys included;
every key is checked against ``redaction.keys`` (its value is masked whole,
duplicates each on their own); integers that are card numbers; and a string
that holds JSON text (it starts with ``{`` or ``[``) is scanned as JSON too,
down to ``MAX_NESTING`` levels of JSON in a string in a string. A string
deeper than that which still looks like JSON is masked whole (counted as
``depth_cap``). Bracket nesting has no cap: the walk is flat.

Why the raw gate is sound (skipping a line never ships a match): each
built-in core matches inside its mask's matches over characters JSON never
escapes (``patterns.py``), at any level of JSON held in a string; a key
check is the name between two quotes that may carry backslashes; ``\\u`` and
``\\/`` (which can write any character) always walk. User patterns walk on
any backslash, and on every record when they use ``^``/``$``/``\\A``/``\\z``
(a decoded value's ends are not the raw text's). A configured key that is
not plain ASCII walks on any non-ASCII byte.

The gates run on RE2 (one pass for every alternative); the built-in masks on
Python's ``re`` (ours, ASCII-only classes and case folding, no nested
quantifiers); user patterns entirely on RE2, linear in the input.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any

import re2

from sidecar.config.settings import RedactionSettings
from sidecar.policies.jsonscan import encode_string, rewrite
from sidecar.policies.patterns import BUILTIN_KEYS, BUILTINS, Builtin, luhn

Counts = dict[str, int]
Rule = tuple[str, re.Pattern[str], Callable[[str], bool] | None]

__all__ = ["BUILTINS", "MAX_NESTING", "Builtin", "Counts", "Redactor", "luhn"]

OPIK_KEY = "opik_api_key"
DEPTH_CAP = "depth_cap"
MAX_NESTING = 6  # levels of JSON text held in a string, scanned as JSON
_MIN_LITERAL = 8  # a configured key shorter than this would mask ordinary words
_CARD_WORD = re.compile(rb"[2-6][0-9]{12,18}")
_ANCHORS = re.compile(r"[\^$]|\\[Az]")


def _direct(pattern: Any) -> Callable[[bytes, int], int] | None:
    """RE2's own ``Match`` for a compiled pattern, as one call: where the
    leftmost match from ``pos`` starts, or -1 (``pos`` is a context
    boundary: ``^`` fails there). None where the package's internals differ.

    The package's ``search`` builds a generator and a match object per call
    (a third of the cost on a ~1 KB line); the gate only needs where.
    """
    compiled, anchor = getattr(pattern, "_regexp", None), getattr(re2, "_Anchor", None)
    if compiled is None or anchor is None or not hasattr(compiled, "Match"):
        return None
    unanchored = anchor.UNANCHORED
    return lambda text, pos: int(compiled.Match(unanchored, text, pos, len(text))[0][0])


def _finder(pattern: Any) -> Callable[[bytes], bool]:
    """Whether a compiled RE2 pattern occurs in bytes (``search`` as the fallback)."""
    locate = _direct(pattern)
    if locate is None:
        return lambda text: pattern.search(text) is not None
    return lambda text: locate(text, 0) >= 0


def _locator(pattern: Any) -> Callable[[bytes, int], int]:
    """Where a compiled RE2 pattern's leftmost match from ``pos`` starts, or -1."""
    locate = _direct(pattern)
    if locate is not None:
        return locate

    def search(text: bytes, pos: int) -> int:
        found = pattern.search(text, pos)
        return -1 if found is None else int(found.start())
    return search


def _backslash(text: bytes, pos: int) -> int:
    return text.find(b"\\", pos)


def _key_core(names: list[str]) -> str:
    """A key name in raw text, at any level of JSON held in a string."""
    return '"(?i:' + "|".join(re.escape(k) for k in names) + ')\\\\*"'


def _plain(key: str) -> bool:
    """A key JSON writes as it is (so its raw text is its decoded text)."""
    return key.isascii() and key.isprintable() and '"' not in key and "\\" not in key


class Redactor:
    """Masks secrets in JSON text and strings; counts what it masked per pattern name.

    Built once from ``spans.redaction`` (and the Opik API key) and never
    changed: a reload builds a new one.
    """

    def __init__(self, settings: RedactionSettings, opik_api_key: str | None = None) -> None:
        self.replacement = settings.replacement
        self._masked_value = encode_string(settings.replacement)
        names = [*settings.keys, *(BUILTIN_KEYS if settings.builtin else ())]
        self.keys = {k.lower(): f"key:{k.lower()}" for k in names}
        rules: list[Rule] = []
        cores: list[str] = []
        if opik_api_key and len(opik_api_key) >= _MIN_LITERAL:
            rules.append((OPIK_KEY, re.compile(re.escape(opik_api_key)), None))
            cores.append(re.escape(opik_api_key))
        if settings.builtin:
            rules += [(b.name, re.compile(b.mask, re.ASCII), b.valid) for b in BUILTINS]
            cores += [b.core for b in BUILTINS]
        self._rules, self._cards = rules, settings.builtin
        # The gate for decoded strings: the cores (looser than the masks).
        self._any = re2.compile("|".join(f"(?:{c})" for c in cores)) if cores else None
        gate = [*cores, r"\\[u/]"]
        plain = [k for k in self.keys if _plain(k)]
        if plain:
            gate.append(_key_core(plain))
        if len(plain) < len(self.keys):
            gate.append(r"\\|[^\x00-\x7f]")  # any escape or non-ASCII character
        pre = re2.compile("|".join(f"(?:{c})" for c in gate).encode())
        self._pre_found = _finder(pre)
        self._user = [(p.name, re2.compile(p.regex)) for p in settings.patterns]
        self._user_pre = (re2.compile("|".join(f"(?:{p.regex})" for p in settings.patterns)
                                      .encode()) if self._user else None)
        self._walk_all = any(_ANCHORS.search(p.regex) for p in settings.patterns)
        # suspects(): the same searches, each from a position of a joined text
        self._locators = [_locator(pre)]
        if self._user_pre is not None:
            self._locators += [_backslash, _locator(self._user_pre)]

    # -- the gate --------------------------------------------------------------
    def may_match(self, raw: bytes) -> bool:
        """False only when nothing in ``raw`` can be masked (the fast path)."""
        if self._walk_all or self._pre_found(raw):
            return True
        return self._user_pre is not None and (b"\\" in raw or bool(self._user_pre.search(raw)))

    def suspects(self, raws: Sequence[bytes]) -> set[int]:
        """The indices of the lines ``may_match`` would pass, found in one
        search per gate over the lines joined by newlines: RE2's cost per
        call (~0.7 us on this project's 2-core machine) was most of what the
        gate cost a ~900-byte line, and a joined 200 lines cost ~0.8 us a line
        in all against 2.1. Never fewer lines than ``may_match``; a match
        across a newline may name one more, which only means that line is
        walked (or gated again).

        Why joining loses no match: each line sits between newlines, which
        no gate alternative needs to be absent; a match at a line's start
        through ``^`` is, in the joined text, one through the leading
        newline (the card core's ``(?:^|[^0-9-])``), so a line's region is
        its text and the newline before it; user patterns with anchors walk
        every line anyway (``_walk_all``).
        """
        if self._walk_all:
            return set(range(len(raws)))
        text = b"\n".join(raws)
        found: set[int] = set()
        starts: list[int] | None = None  # line i's text begins at starts[i]
        last_line = len(raws) - 1
        for locate in self._locators:
            pos = 0
            while (at := locate(text, pos)) >= 0:
                if starts is None:
                    starts = [0, *accumulate(len(r) + 1 for r in raws[:-1])]
                # the line whose region (its newline before, then its text) holds ``at``
                line = bisect_right(starts, at + 1) - 1
                found.add(line)
                if line >= last_line:
                    break
                pos = starts[line + 1] - 1  # the next line's region
        return found

    # -- JSON text and strings ---------------------------------------------------
    def redact_json(self, raw: bytes) -> tuple[bytes, Counts]:
        """``raw`` (JSON text) with every secret masked, and the counts.

        Returns ``raw`` itself when nothing was masked. Never raises.
        """
        if not self.may_match(raw):
            return raw, {}
        counts: Counts = {}
        new = self._rewrite(raw, counts, 0)
        return (raw, counts) if new is None else (new, counts)

    def redact_string(self, text: str, counts: Counts) -> str:
        """A string field with every secret masked (JSON text in it included)."""
        new = self._scan(text, counts, 0)
        return text if new is None else new

    def _rewrite(self, raw: bytes, counts: Counts, level: int) -> bytes | None:
        def key(name: str) -> str | None:
            label = self.keys.get(name.lower())
            if label is not None:
                counts[label] = counts.get(label, 0) + 1
            return label

        return rewrite(raw, lambda text: self._scan(text, counts, level), key,
                       lambda word: self._word(word, counts), self._masked_value)

    def _scan(self, text: str, counts: Counts, level: int) -> str | None:
        """One decoded string: as JSON when it holds JSON, then as text; None if unchanged."""
        changed = None
        head = text[:1] if text[:1] not in " \t\r\n" else text.lstrip()[:1]
        if head in ("{", "["):
            if level >= MAX_NESTING:
                counts[DEPTH_CAP] = counts.get(DEPTH_CAP, 0) + 1
                return self.replacement
            inner = self._rewrite(text.encode("utf-8", "surrogatepass"), counts, level + 1)
            if inner is not None:
                changed = text = inner.decode("utf-8", "surrogatepass")
        masked = self.redact_text(text, counts)
        return masked if masked is not text else changed

    def _word(self, word: bytes, counts: Counts) -> bytes | None:
        """A bare JSON word: a (positive) integer that is a card number is masked."""
        if not self._cards or len(word) < 13:
            return None
        if _CARD_WORD.fullmatch(word) is None or not luhn(word.decode()):
            return None
        counts["card"] = counts.get("card", 0) + 1
        return self._masked_value

    def redact_text(self, text: str, counts: Counts) -> str:
        """``text`` with every pattern's matches replaced (``text`` itself when none)."""
        probe, hits = _utf8(text), 0
        if self._any is not None and self._any.search(probe):
            for name, pattern, valid in self._rules:
                probe, n = self._sub(pattern, valid, probe)
                if n:
                    counts[name] = counts.get(name, 0) + n
                    hits += n
        for name, user in self._user:
            probe, n = user.subn(self._literal, probe)
            if n:
                counts[name] = counts.get(name, 0) + n
                hits += n
        return probe if hits else text

    def _literal(self, match: object) -> str:
        return self.replacement  # a function: backslashes in it stay literal

    def _sub(self, pattern: re.Pattern[str], valid: Callable[[str], bool] | None,
             text: str) -> tuple[str, int]:
        masked = 0
        grouped = "secret" in pattern.groupindex

        def repl(match: re.Match[str]) -> str:
            nonlocal masked
            start = match.start("secret") if grouped else match.start()
            if (valid is not None and not valid(match.group())) \
                    or match.string.startswith(self.replacement, start):  # masked already
                return match.group()
            masked += 1
            return match.group()[:start - match.start()] + self.replacement

        return pattern.sub(repl, text), masked


def _utf8(text: str) -> str:
    """``text``, lone surrogates replaced (RE2 takes UTF-8 only)."""
    if text.isascii():
        return text
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
