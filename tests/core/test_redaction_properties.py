"""Properties of parse -> policies: nothing raises, and no planted secret survives.

The JSON here is written by hand (``render``) so that it can hold what
Python's encoders never write: duplicate keys, integers of thousands of
digits, thousands of levels of brackets, lone surrogates, NUL, and every
character under any escape (``\\uXXXX`` in either case, the short escapes,
``\\/``). The output is checked by an independent decoder (string tokens cut
out with a regular expression and decoded one by one, JSON held in a string
decoded again), not by the code under test.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config.settings import Settings
from sidecar.records import (
    FeedbackRecord,
    Rejected,
    SpanRecord,
    TraceRecord,
    encode_json,
    parse_line,
)
from tests.core.helpers import stage_of

# (text planted, the part that must not survive). Each is a secret whatever
# its neighbours, as long as a space separates them.
PLANTS: tuple[tuple[str, str], ...] = (
    ("sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3kLm6nQ2", "Ab3dEf6hIj9kLm2nOp5qRs8t"),
    ("sk-ant-api03-Zx8Yw7Vu6Ts5Rq4Po3Nm2Lk1Ji0Hg9Fe8Dc7Ba6", "Zx8Yw7Vu6Ts5Rq4Po3Nm2Lk1"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R", "1a2B3c4D5e6F7g8H9i0J1k2L"),
    ("Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "9f8e7d6c5b4a39281706f5e4"),
    ("jane.doe+billing@example-corp.co.uk", "jane.doe+billing@example-corp"),
    ("4111 1111 1111 1111", "4111 1111 1111 1111"),
    ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yBxLq\n-----END EC PRIVATE KEY-----",
     "MHcCAQEEIBkg4LVWM9nuwNSk3yBxLq"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG"),
    ("password=hunter2-is-not-a-secret", "hunter2-is-not"),
)

# -- a JSON value tree: objects are lists of pairs (so keys may repeat) ---------------

Obj = tuple[str, list[tuple[str, Any]]]
_chars = st.characters(codec=None, exclude_categories=())  # surrogates and NUL included
_tame = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
_text = st.text(_chars, max_size=12)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                     st.floats(allow_nan=False, allow_infinity=False), _text,
                     st.integers(300, 6000).map(lambda n: ("huge", n)))
_trees = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(st.tuples(st.sampled_from(["a", "k", "token", "PASSWORD"]) | _text, inner),
                 max_size=4).map(lambda pairs: ("obj", pairs))),
    max_leaves=12)


def _escape(text: str, rng: random.Random, rate: float = 0.3) -> str:
    """A JSON string token; a ``rate`` of the characters escaped that need not be."""
    out = []
    for ch in text:
        code = ord(ch)
        choice = rng.random() * 0.3 / rate if rate else 1.0
        if ch in "\"\\" or code < 0x20 or 0xD800 <= code <= 0xDFFF or choice < 0.3:
            if code > 0xFFFF:  # a surrogate pair
                hi, lo = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + (code & 0x3FF)
                out.append(f"\\u{hi:04x}\\u{lo:04X}")
            elif ch in "\"\\/\b\f\n\r\t" and rng.random() < 0.7:
                out.append(json.dumps(ch)[1:-1] if ch != "/" else "\\/")
            else:
                out.append(f"\\u{code:04x}" if choice < 0.45 else f"\\u{code:04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render(value: Any, rng: random.Random, rate: float = 0.3) -> str:
    """JSON text of a tree, every string escaped at random."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _escape(value, rng, rate)
    if isinstance(value, tuple) and value[0] == "huge":
        return "-" * rng.randint(0, 1) + "9" * value[1]
    if isinstance(value, tuple):
        return "{" + ",".join(_escape(k, rng, rate) + ":" + render(v, rng, rate)
                              for k, v in value[1]) + "}"
    return "[" + ",".join(render(v, rng, rate) for v in value) + "]"


# -- an independent check of the output -----------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def strings_of(text: str, depth: int = 0) -> list[str]:
    """Every string token of JSON text, decoded; JSON text held in them too."""
    found = []
    for token in _STRING.findall(text):
        value = json.loads(token, strict=False)
        found.append(value)
        if depth < 8 and value.lstrip()[:1] in ("{", "["):
            found += strings_of(value, depth + 1)
    return found


def survives(out: bytes, part: str) -> bool:
    text = out.decode("utf-8", "surrogatepass")
    return part in text or any(part in s for s in strings_of(text))


def shipped(line: bytes) -> bytes | None:
    rec = parse_line(line)
    if isinstance(rec, Rejected):
        return None
    out = stage_of(Settings()).apply(rec, line)
    assert isinstance(out, SpanRecord | TraceRecord | FeedbackRecord)
    return encode_json(out)


def _span_line(field_json: dict[str, str]) -> bytes:
    rec = {"id": str(uuid.uuid4()), "trace_id": str(uuid.uuid4()), "name": "s",
           "start_time": "2026-01-01T00:00:00Z", **{k: "@@" + k for k in field_json}}
    line = orjson.dumps(rec).decode()
    for k, raw in field_json.items():
        line = line.replace(f'"@@{k}"', raw)
    return line.encode("utf-8", "surrogatepass")


# -- the properties -----------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    shipped(data)
    shipped(b'{"id": "' + data + b'"}')


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_trees, depth=st.sampled_from([0, 1, 50, 950, 3000]), rng=st.randoms(),
       trigger=st.sampled_from(["", '"t": "jane@example.com", ', '"t": "caf\\u00e9", ',
                                '"token": 1, ']))
def test_arbitrary_json_in_every_free_field_never_raises(tree: Any, depth: int,
                                                         rng: random.Random,
                                                         trigger: str) -> None:
    """Deep, wide, huge numbers, duplicate keys, NUL, lone surrogates, every escape,
    with something that sends the line down the decode path."""
    body = "[" * depth + render(tree, rng) + "]" * depth
    obj = "{" + trigger + f'"v": {body}}}'
    line = _span_line({"input": obj, "metadata": obj,
                       "events": f'[{{"name": "e", "attributes": {obj}}}]'})
    shipped(line)


def _plant(tree: Any, text: str, rng: random.Random) -> Any:
    """``tree`` with ``text`` (space-separated) in one of its strings or keys, or
    in JSON text held in a string, one or two levels down."""
    where = rng.random()
    planted = f"x {text} y"
    if where < 0.2:
        return ("obj", [(planted, 1), ("v", tree)])
    if where < 0.4:
        inner = json.dumps({"args": [planted, tree if not isinstance(tree, tuple) else None]})
        return ("obj", [("arguments", inner if where < 0.3 else json.dumps({"s": inner}))])
    if isinstance(tree, list) and tree:
        i = rng.randrange(len(tree))
        return [*tree[:i], _plant(tree[i], text, rng), *tree[i + 1:]]
    if isinstance(tree, tuple) and tree[0] == "obj" and tree[1]:
        pairs = list(tree[1])
        i = rng.randrange(len(pairs))
        pairs[i] = (pairs[i][0], _plant(pairs[i][1], text, rng))
        return ("obj", pairs)
    if isinstance(tree, str):
        cut = rng.randint(0, len(tree))
        return tree[:cut] + " " + planted + " " + tree[cut:]
    return [tree, planted]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_trees, pick=st.sampled_from(PLANTS), rng=st.randoms(),
       site=st.sampled_from(["input", "output", "metadata", "event", "event_name", "tags",
                             "error", "reason", "duplicate"]))
def test_a_planted_secret_never_survives(tree: Any, pick: tuple[str, str],
                                         rng: random.Random, site: str) -> None:
    """Anywhere in a string of input, output, metadata, events, tags, error_info or a
    feedback reason, under any escaping, in a key, under the first of two
    duplicate keys, in JSON text held in a string: masked in what ships."""
    text, part = pick
    value = ("obj", [("v", _plant(tree, text, rng))])
    obj = render(value, rng)
    esc = _escape(f"x {text} y", rng)
    if site == "reason":
        line = orjson.dumps({"kind": "feedback", "target": "span", "id": str(uuid.uuid4()),
                             "name": "q", "value": 1, "reason": "@@"}).decode()
        line_b = line.replace('"@@"', esc).encode("utf-8", "surrogatepass")
    elif site in ("tags", "error", "event_name"):
        raw = {"tags": f'["ok", {esc}]', "error": f'{{"exception_type": "E", "message": {esc}}}',
               "event_name": f'[{{"name": {esc}}}]'}[site]
        line_b = _span_line({{"tags": "tags", "error": "error_info",
                              "event_name": "events"}[site]: raw})
    elif site == "duplicate":
        line_b = _span_line({"input": "{" + f'"k": {esc}, "k": "clean"' + "}"})
    elif site == "event":
        line_b = _span_line({"events": f'[{{"name": "e", "attributes": {obj}}}]'})
    else:
        line_b = _span_line({site: obj})
    out = shipped(line_b)
    if out is None:  # refused whole, nothing ships: only for a lone surrogate
        assert holds_lone_surrogate(line_b), line_b[:400]
        return
    assert not survives(out, part), (site, out[:400])


def holds_lone_surrogate(line: bytes) -> bool:
    """Whether a string or key of the line is a lone UTF-16 surrogate escape,
    which the parser refuses (the record is quarantined, so nothing ships)."""
    def walk(v: Any) -> bool:
        if isinstance(v, str):
            return any(0xD800 <= ord(c) <= 0xDFFF for c in v)
        if isinstance(v, dict):
            return any(walk(k) or walk(x) for k, x in v.items())
        return isinstance(v, list) and any(walk(x) for x in v)
    return walk(json.loads(line.decode("utf-8", "surrogatepass"), strict=False,
                           parse_int=lambda _: 0, parse_float=lambda _: 0.0))


def test_a_line_with_a_lone_surrogate_is_refused_whole() -> None:
    """The case the property above lets through: refused, so no secret ships."""
    line = _span_line({"input": '{"\\ud800": "4111 1111 1111 1111"}'})
    assert holds_lone_surrogate(line)
    assert shipped(line) is None
    assert not holds_lone_surrogate(_span_line({"input": '{"\\ud83d\\ude00": 1}'}))


# -- the raw gate is sound: what it lets skip holds nothing to mask -----------------------

_GATE_TEXT = st.one_of(
    _text,
    st.tuples(st.text(_tame, max_size=6), st.sampled_from([p[0] for p in PLANTS] + [
        "password", "Token", "to\u212aen", "API_KEY", "4111111111111111", "sk-x",
        "TCK-12", "tck-1"]), st.text(_tame, max_size=6))
    .map(lambda t: t[0] + t[1] + t[2]))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_trees, texts=st.lists(_GATE_TEXT, min_size=1, max_size=3), rng=st.randoms(),
       user=st.booleans(), rate=st.sampled_from([0.0, 0.01, 0.1]))
def test_what_the_gate_skips_holds_nothing_to_mask(tree: Any, texts: list[str],
                                                   rng: random.Random, user: bool,
                                                   rate: float) -> None:
    """For any JSON text (secrets, key names in any case, JSON held in strings, any
    escaping): when the raw gate says "nothing here", the full walk masks nothing."""
    from sidecar.config.settings import RedactionPattern, RedactionSettings
    from sidecar.policies.redaction import Redactor

    patterns = (RedactionPattern(name="t", regex=r"^x?TCK-\d+$"),
                RedactionPattern(name="u", regex=r"tck-\d")) if user else ()
    r = Redactor(RedactionSettings(patterns=patterns))
    pairs: list[tuple[str, Any]] = [(t, t) for t in texts]
    pairs += [("held", json.dumps({texts[0]: texts[-1]})), ("v", tree)]
    raw = render(("obj", pairs), rng, rate).encode("utf-8", "surrogatepass")
    if not r.may_match(raw):
        assert r._rewrite(raw, {}, 0) is None  # the walk the gate skipped: nothing masked


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.one_of(_GATE_TEXT, st.sampled_from(["", "4111111111111111", "x"])),
                      min_size=0, max_size=12),
       rng=st.randoms(), user=st.sampled_from(["none", "plain", "anchored"]),
       rate=st.sampled_from([0.0, 0.1]))
def test_suspects_never_clears_a_line_the_gate_passes(texts: list[str], rng: random.Random,
                                                       user: str, rate: float) -> None:
    """For any lines (JSON or not, escaped or not, secrets at their edges):
    every line ``may_match`` passes is among the joined search's suspects."""
    from sidecar.config.settings import RedactionPattern, RedactionSettings
    from sidecar.policies.redaction import Redactor

    patterns = {"none": (), "plain": (RedactionPattern(name="u", regex=r"tck-\d"),),
                "anchored": (RedactionPattern(name="t", regex=r"^x?TCK-\d+$"),)}[user]
    r = Redactor(RedactionSettings(patterns=patterns))
    raws = [(render(t, rng, rate) if rng.random() < 0.5 else t)
            .encode("utf-8", "surrogatepass").replace(b"\n", b" ") for t in texts]
    passed = {i for i, raw in enumerate(raws) if r.may_match(raw)}
    assert passed <= r.suspects(raws)
