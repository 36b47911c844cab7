"""JSON text rewritten token by token: no tree, no recursion, nothing re-parsed.

The redaction walk does not decode a value into Python objects (a decoder
recurses per level of nesting, and keeps only the last of two duplicate
keys, so the raw text of the first would ship unseen). It cuts the text into
tokens with one regular expression (strings, brackets, commas, colons,
whitespace, and runs of anything else: numbers, literals) and hands each
string and each bare word to the caller, who answers with a replacement or
None. Everything it does not replace is copied byte for byte: numbers keep
their text (a 5,000-digit integer is never converted), duplicate keys are
each seen, and nesting depth is a counter, not a stack of calls.

It never raises and accepts any bytes: a string without its closing quote
runs to the end, anything that is not a JSON token is a bare word. That is
what lets it scan JSON text held in a string, which nobody validated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[{}\[\],:]|\s+|[^"{}\[\],:\s]+', re.S)
_OPEN, _CLOSE = frozenset(b"{["), frozenset(b"}]")
_QUOTE, _SPACE = 0x22, frozenset(b" \t\r\n\x0b\x0c")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\",
           '"': '"'}

# (decoded key) -> label to count, or None when the key is no secret's name
KeyCheck = Callable[[str], str | None]
# (decoded text) -> replacement text, or None to keep the token as it is
TextScan = Callable[[str], str | None]
# (bare word such as a number) -> replacement JSON text, or None
WordScan = Callable[[bytes], bytes | None]


def decode_string(token: bytes) -> str:
    """The text of a JSON string token; a token JSON refuses is taken as written."""
    body = token[1:-1] if len(token) > 1 and token.endswith(b'"') else token[1:]
    if b"\\" not in body:
        return _text(body)
    try:
        text: str = json.loads(b'"' + body + b'"', strict=False)
        return text
    except ValueError:  # a bad escape: decode the others, keep it as written
        return _ESCAPE.sub(_unescape, _text(body))


def _text(body: bytes) -> str:
    try:  # surrogates pass: JSON text held in a string may carry lone ones
        return body.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return body.decode("utf-8", "replace")


def _unescape(m: re.Match[str]) -> str:
    e = m.group(1)
    return chr(int(e[1:], 16)) if len(e) == 5 else _SIMPLE.get(e, m.group())


def encode_string(text: str) -> bytes:
    """A JSON string token for ``text`` (lone surrogates written as escapes)."""
    return json.dumps(text).encode()


def rewrite(raw: bytes, text: TextScan, key: KeyCheck, word: WordScan,
            masked_value: bytes) -> bytes | None:
    """``raw`` with strings, keys and words replaced as the callbacks say; None
    when nothing changed. The value of a key that ``key`` names is replaced
    whole by ``masked_value`` (an object or a list with everything in it)."""
    tokens: Sequence[bytes] = _TOKEN.findall(raw)
    out: list[bytes] = []
    changed = False
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        first = tok[0]
        if first == _QUOTE:
            decoded = decode_string(tok)
            colon = _significant(tokens, i + 1)
            if colon < n and tokens[colon] == b":" and key(decoded) is not None:
                value = _significant(tokens, colon + 1)
                new_key = text(decoded)
                out.append(tok if new_key is None else encode_string(new_key))
                out.extend(tokens[i + 1:value])
                out.append(masked_value)
                i, changed = _value_end(tokens, value), True
                continue
            new = text(decoded)
        elif first in _OPEN or first in _CLOSE or first in _SPACE or tok in (b",", b":"):
            new = None
            out.append(tok)
            i += 1
            continue
        else:
            word_new = word(tok)
            if word_new is not None:
                out.append(word_new)
                changed = True
            else:
                out.append(tok)
            i += 1
            continue
        if new is None:
            out.append(tok)
        else:
            out.append(encode_string(new))
            changed = True
        i += 1
    return b"".join(out) if changed else None


def _significant(tokens: Sequence[bytes], i: int) -> int:
    """The index of the first token from ``i`` that is not whitespace."""
    while i < len(tokens) and tokens[i][0] in _SPACE:
        i += 1
    return i


def _value_end(tokens: Sequence[bytes], i: int) -> int:
    """The index after the value that starts at ``i`` (brackets counted, not recursed)."""
    if i >= len(tokens):
        return i
    tok = tokens[i]
    if tok in (b",", b":") or tok[0] in _CLOSE:
        return i  # no value there: nothing to skip
    if tok[0] not in _OPEN:
        return i + 1
    depth = 0
    for j in range(i, len(tokens)):
        c = tokens[j][0]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(tokens)  # never closed: masked to the end
