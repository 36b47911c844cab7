"""The policies in-process: sampling decisions, redaction on raw JSON, size limits."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config.settings import RedactionPattern, RedactionSettings, SamplingSettings, Settings
from sidecar.policies import SAMPLED_OUT
from sidecar.policies.limits import truncate_json
from sidecar.policies.redaction import Redactor, luhn
from sidecar.policies.sampling import Sampler, trace_point
from sidecar.records import ErrorInfo, Event, SpanRecord, TraceRecord, encode_json, parse_line
from tests.core.helpers import stage_of
from tests.core.secrets_corpus import LABELLED, NON_SECRETS, OPIK_KEY, SECRETS
from tests.support import span

R = "[REDACTED]"


def redactor(**kw: Any) -> Redactor:
    return Redactor(RedactionSettings(**kw), OPIK_KEY)


# -- sampling -----------------------------------------------------------------------------------

def test_trace_point_is_the_documented_sha256_hash() -> None:
    """The README's formula, so other tools can reproduce a decision."""
    tid = uuid.UUID("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
    import hashlib
    expected = int.from_bytes(hashlib.sha256(tid.bytes).digest()[:8], "big") / 2**64
    assert trace_point(tid) == expected == pytest.approx(0.436115807738)


def test_decisions_nest_across_rates_and_match_the_rate() -> None:
    """A trace kept at 0.1 is kept at 0.5; the share kept is the rate (within 4 sigma)."""
    points = [trace_point(uuid.uuid4()) for _ in range(20000)]
    for low, high in ((0.1, 0.5), (0.5, 0.9)):
        assert all(p < high for p in points if p < low)
    for rate in (0.1, 0.5):
        kept = sum(p < rate for p in points)
        sigma = (len(points) * rate * (1 - rate)) ** 0.5
        assert abs(kept - len(points) * rate) < 4 * sigma


def test_rate_is_agent_override_then_tier_then_environment() -> None:
    s = SamplingSettings(default_rate=0.5, production_rate=0.1,
                         agent_overrides={"checkout": 1.0}, tiers={2: 0.25})
    prod, dev = Sampler(s, "production"), Sampler(s, "development")
    assert prod.rate("checkout", 2) == 1.0
    assert prod.rate("search", 2) == 0.25
    assert prod.rate("search", None) == 0.1
    assert dev.rate("search", 7) == 0.5


def test_every_span_of_a_trace_gets_the_same_decision_and_errors_are_kept() -> None:
    stage = stage_of(Settings(sampling=SamplingSettings(default_rate=0.3)))
    for _ in range(200):
        trace = str(uuid.uuid4())
        outs = [stage.apply(_span(trace_id=trace, agent_name=f"a{i}")) for i in range(3)]
        assert len({o is SAMPLED_OUT for o in outs}) == 1
        err = stage.apply(_span(trace_id=trace, error_info={"exception_type": "Timeout"}))
        assert err is not SAMPLED_OUT


def test_trace_records_are_kept_when_any_rate_could_keep_their_spans() -> None:
    s = SamplingSettings(default_rate=0.0, agent_overrides={"checkout": 0.5})
    stage = stage_of(Settings(sampling=s))
    for _ in range(200):
        tid = uuid.uuid4()
        trace = parse_line(orjson.dumps({"kind": "trace", "id": str(tid), "name": "t",
                                         "start_time": "2026-01-01T00:00:00Z"}))
        assert isinstance(trace, TraceRecord)
        spans = stage.apply(_span(trace_id=str(tid), agent_name="checkout"))
        if spans is not SAMPLED_OUT:
            assert stage.apply(trace) is not SAMPLED_OUT


# -- redaction ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "secret"), SECRETS)
def test_each_secret_is_masked_wherever_it_appears(name: str, secret: str) -> None:
    """In prose, alone, at any depth, in lists; counted under its pattern's name."""
    r = redactor()
    value = {"prompt": f"use {secret} now", "deep": [{"x": {"y": secret}}],
             "edge": f"line one\n{secret}\tend"}
    for raw in (orjson.dumps(value), json.dumps(value).encode(),
                json.dumps({**value, "note": "café"}).encode()):  # \u escapes: slow path
        out, counts = r.redact_json(raw)
        assert secret not in out.decode(), (name, out)
        assert counts.get(name, 0) >= 3, counts
        decoded = orjson.loads(out)
        assert decoded["prompt"] == f"use {R} now" or name in LABELLED


@pytest.mark.parametrize("text", NON_SECRETS)
def test_realistic_non_secrets_are_untouched(text: str) -> None:
    r = redactor()
    raw = orjson.dumps({"text": text, "tokens_used": 1234, "max_tokens": 4096,
                        "token_count": 12, "id": str(uuid.uuid4())})
    out, counts = r.redact_json(raw)
    assert out == raw and counts == {}


def test_secret_key_names_mask_any_value_at_any_depth_case_insensitively() -> None:
    r = redactor()
    raw = orjson.dumps({"headers": {"Authorization": "x", "Cookie": ["a", "b"]},
                        "cfg": [{"API_KEY": 123, "Password": {"nested": True}}],
                        "tokens_used": 5, "secret_sauce": "ketchup"})
    out, counts = r.redact_json(raw)
    assert orjson.loads(out) == {"headers": {"Authorization": R, "Cookie": R},
                                 "cfg": [{"API_KEY": R, "Password": R}],
                                 "tokens_used": 5, "secret_sauce": "ketchup"}
    assert counts == {"key:authorization": 1, "key:cookie": 1, "key:api_key": 1,
                      "key:password": 1}


def test_user_patterns_run_on_re2_and_take_the_replacement_literally() -> None:
    r = redactor(patterns=(RedactionPattern(name="ticket", regex=r"TCK-[0-9]{6}"),),
                 replacement=r"<\1 gone>")
    out, counts = r.redact_json(orjson.dumps({"t": "see TCK-123456 and TCK-654321"}))
    assert orjson.loads(out) == {"t": r"see <\1 gone> and <\1 gone>"}
    assert counts == {"ticket": 2}
    # a pattern that backtracks catastrophically elsewhere is linear on RE2
    slow = redactor(patterns=(RedactionPattern(name="slow", regex=r"(a+)+$"),))
    out, counts = slow.redact_json(orjson.dumps({"t": "a" * 50_000 + "!"}))
    assert counts == {}


def test_builtin_off_and_disabled_redaction() -> None:
    raw = orjson.dumps({"k": "AKIAIOSFODNN7EXAMPLE", "password": "p"})
    out, counts = Redactor(RedactionSettings(builtin=False)).redact_json(raw)
    assert counts == {"key:password": 1} and b"AKIAIOSFODNN7EXAMPLE" in out
    stage = stage_of(Settings(spans={"redaction": {"enabled": False}}))
    rec = _span(input={"password": "p"})
    assert stage.apply(rec) is rec


def test_luhn() -> None:
    assert luhn("4111 1111 1111 1111") and not luhn("4111 1111 1111 1112")
    assert luhn("378282246310005") and not luhn("12345")


_strings = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(prefix=_strings, suffix=_strings, pick=st.sampled_from(SECRETS),
       ascii_only=st.booleans())
def test_the_raw_fast_path_never_hides_a_secret(prefix: str, suffix: str,
                                                pick: tuple[str, str], ascii_only: bool) -> None:
    """Whatever surrounds a secret (escapes, quotes, non-ASCII), the raw pre-check
    sees it whenever masking the decoded value would."""
    r = redactor()
    value = {"v": prefix + pick[1] + suffix}
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    counts: dict[str, int] = {}
    masked = r.redact_string(value["v"], counts)
    if counts:
        assert r.may_match(raw)
        out, _ = r.redact_json(raw)
        assert orjson.loads(out) == {"v": masked}


def test_stage_redacts_every_field_of_a_span_and_counts_once() -> None:
    secret = "AKIAIOSFODNN7EXAMPLE"
    rec = _span(input={"p": secret}, output={"o": secret}, metadata={"m": [secret]},
                tags=[secret, "ok"], error_info={"exception_type": "E", "message": secret,
                                                 "traceback": secret},
                events=[{"name": secret, "attributes": {"a": secret}}])
    stage = stage_of(Settings())
    out = stage.apply(rec, encode_json(rec))
    assert isinstance(out, SpanRecord)
    assert secret not in encode_json(out).decode()
    assert out.tags == [R, "ok"]
    stage.apply(rec, count=False)  # another sink's pipeline: not counted again
    assert dict(stage.stats().redactions) == {"aws_access_key_id": 8}


def test_a_clean_line_is_returned_as_it_is() -> None:
    rec = _span()
    stage = stage_of(Settings())
    assert stage.apply(rec, encode_json(rec)) is rec


# -- size limits --------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["input", "events", "error_info"])
def test_truncation_marker_is_valid_json_within_the_limit(field: str) -> None:
    big = {"text": 'quote " backslash \\ newline \n' * 2000}
    raw = {"input": orjson.dumps(big),
           "events": orjson.dumps([{"name": "e", "attributes": big}] * 3),
           "error_info": orjson.dumps({"exception_type": "ValueError", "message": "m" * 5000,
                                       "traceback": "frame\n" * 5000})}[field]
    out = truncate_json(field, raw, 4096)
    assert out is not None and len(out) <= 4096
    value = orjson.loads(out)
    if field == "input":
        assert value["_truncated"] is True and value["_original_bytes"] == len(raw)
        assert value["_cut_bytes"] == len(raw) - len(value["_head"].encode())
        assert raw.decode().startswith(value["_head"])
    elif field == "events":
        [event] = msgspec.json.decode(out, type=list[Event])
        assert js(event.attributes)["_original_bytes"] == len(raw)
    else:
        info = msgspec.convert(value, ErrorInfo)
        assert info.exception_type == "ValueError"
        assert info.traceback is not None and info.traceback.endswith("frame\n")
        assert "bytes cut]" in info.traceback
    assert truncate_json(field, raw, len(raw)) is None


def test_stage_truncates_after_redacting_and_the_record_ships() -> None:
    secret = "AKIAIOSFODNN7EXAMPLE"
    rec = _span(input={"p": secret + " " + "x" * 5000}, output={"o": "short"})
    stage = stage_of(Settings(spans={"max_field_bytes": 1024}))
    line = encode_json(rec)
    out = stage.apply(rec, line)
    assert isinstance(out, SpanRecord) and out.input is not None
    assert js(out.input)["_truncated"] is True
    assert js(out.input)["_head"].startswith('{"p":"[REDACTED]')
    assert js(out.output) == {"o": "short"}
    assert dict(stage.stats().truncated) == {"input": 1}
    # what the sinks will write is a valid record again
    assert isinstance(parse_line(encode_json(out)), SpanRecord)


def test_reconfigure_swaps_policies_for_later_records() -> None:
    stage = stage_of(Settings())
    rec = _span(input={"t": "TCK-123456"})
    assert stage.apply(rec) is rec
    new = Settings(spans={"redaction": {"patterns": [
        {"name": "ticket", "regex": "TCK-[0-9]{6}"}]}})
    stage.configure(new.sampling, new.spans)
    out = stage.apply(rec)
    assert isinstance(out, SpanRecord) and js(out.input) == {"t": R}


def _span(**fields: Any) -> SpanRecord:
    rec = parse_line(orjson.dumps(span(0, **fields)))
    assert isinstance(rec, SpanRecord), rec
    return rec


def js(raw: Any) -> Any:
    """A raw JSON field, decoded to compare."""
    return json.loads(bytes(raw))


def test_the_raw_gate_answers_as_the_package_search_does() -> None:
    """The gate calls RE2 directly; its answer must be the package's own search."""
    import re2

    from sidecar.policies.redaction import _finder

    pattern = re2.compile(rb"sk-[A-Za-z0-9]{20,}|(?i:bearer) +\w{8,}")
    texts = [b"", b"nothing here", b'{"k": "sk-abcdefghijklmnopqrstuvwx"}', b"BEARER abcdefgh1",
             b"sk-short", "caf\u00e9 Bearer 12345678".encode()]
    for text in texts:
        assert _finder(pattern)(text) == (pattern.search(text) is not None), text

    class Plain:  # a pattern without the package's internals: the fallback
        def search(self, text: bytes) -> object:
            return pattern.search(text)

    assert [_finder(Plain())(t) for t in texts] == [_finder(pattern)(t) for t in texts]


def test_the_locator_answers_as_the_package_search_does() -> None:
    """``suspects`` searches from positions through RE2 directly: the start it
    finds must be the package's own search from that position."""
    import re2

    from sidecar.policies.redaction import _locator

    pattern = re2.compile(rb"(?:^|[^0-9-])[2-6][0-9]{3}|sk-[A-Za-z0-9]{20,}")
    text = b'ab\n4111 x sk-abcdefghijklmnopqrstuvwx\n5555'
    for pos in range(len(text) + 1):
        found = pattern.search(text, pos)
        assert _locator(pattern)(text, pos) == (-1 if found is None else found.start()), pos

    class Plain:  # a pattern without the package's internals: the fallback
        def search(self, text: bytes, pos: int) -> object:
            return pattern.search(text, pos)

    assert [_locator(Plain())(text, p) for p in range(len(text))] == \
        [_locator(pattern)(text, p) for p in range(len(text))]


def test_suspects_names_exactly_the_lines_with_a_candidate() -> None:
    """One search over the joined lines finds each line the gate would pass,
    and no clean one: a key name, a token, an e-mail, lines next to each other,
    the first and the last, and a card number at a line's very start (found
    through the newline before it: RE2's ``^`` fails at a search's start
    position, so the search after a hit must start on that newline)."""
    def line(i: int, **fields: Any) -> bytes:  # fixed ids: a random one can hold a "card"
        return orjson.dumps(span(i, id=str(uuid.UUID(int=i)), trace_id=str(uuid.UUID(int=i)),
                                 **fields))

    clean = [line(i) for i in range(200)]
    r = redactor()
    assert not any(r.may_match(raw) for raw in clean)
    assert r.suspects(clean) == set()
    assert r.suspects([]) == set()
    lines = list(clean)
    lines[0] = line(0, metadata={"password": "x"})
    lines[6] = line(6, input={"q": "sk-" + "a" * 30})
    lines[7] = b"4111111111111111"  # not a record, but the gate is the gate
    lines[8] = line(8, output={"to": "jane@example.com"})
    lines[199] = line(199, tags=["Bearer abcdefgh12345"])
    expected = {0, 6, 7, 8, 199}
    assert {i for i, raw in enumerate(lines) if r.may_match(raw)} == expected
    assert r.suspects(lines) == expected
    # user patterns: a backslash anywhere, or the pattern itself
    user = redactor(patterns=[{"name": "ticket", "regex": "TCK-[0-9]{6}"}])
    lines = list(clean)
    lines[3] = line(3, input={"t": "TCK-123456"})
    lines[4] = line(4, input={"t": "a\"b"})  # an escape: \"
    assert user.suspects(lines) == {3, 4}
    # an anchored user pattern: a value's ends are not the line's, every line walks
    anchored = redactor(patterns=[{"name": "whole", "regex": "^TCK$"}])
    assert anchored.suspects(clean[:5]) == {0, 1, 2, 3, 4}


def test_a_screen_from_replaced_policies_clears_nothing() -> None:
    """A reload between ``screen`` and ``apply`` (the pipeline awaits in
    between when a batch fills): the line is gated again with the new policies."""
    stage = stage_of(Settings())
    raw = orjson.dumps(span(0, input={"t": "TCK-123456"}))
    rec = parse_line(raw)
    old, suspects = stage.screen([raw])
    assert suspects == set()
    assert stage.apply(rec, raw, cleared_by=old) is rec
    new = Settings(spans={"redaction": {"patterns": [
        {"name": "ticket", "regex": "TCK-[0-9]{6}"}]}})
    stage.configure(new.sampling, new.spans)
    out = stage.apply(rec, raw, cleared_by=old)
    assert isinstance(out, SpanRecord) and js(out.input) == {"t": R}
