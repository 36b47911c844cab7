"""Where secrets used to get past redaction: each case here shipped its secret
on the old code (raw text gate or decode-then-walk), and is masked now."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest

from sidecar.config.settings import RedactionPattern, RedactionSettings, Settings
from sidecar.policies.redaction import MAX_NESTING, Redactor
from sidecar.records import FeedbackRecord, SpanRecord, encode_json, parse_line
from tests.core.helpers import stage_of
from tests.support import span

R = "[REDACTED]"
OPENAI = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3kLm6nQ2"
AKIA = "AKIAIOSFODNN7EXAMPLE"
ANTHROPIC = "sk-ant-api03-Zx8Yw7Vu6Ts5Rq4Po3Nm2Lk1Ji0Hg9Fe8Dc7Ba6Zx5Yw4Vu3Ts2Rq1-AbCdEf"


def shipped(line: bytes, settings: Settings | None = None) -> bytes:
    """What the sinks get for a spool line: parse, then the policy stage."""
    rec = parse_line(line)
    assert isinstance(rec, SpanRecord | FeedbackRecord), rec
    out = stage_of(settings or Settings()).apply(rec, line)
    assert isinstance(out, SpanRecord | FeedbackRecord)
    return encode_json(out)


def deep_text(value: Any) -> str:
    """Every string of a JSON value, JSON text held in strings decoded too."""
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        return value + "\n" + deep_text(inner) if isinstance(inner, dict | list) else value
    if isinstance(value, dict):
        return "\n".join(k + "\n" + deep_text(v) for k, v in value.items())
    if isinstance(value, list):
        return "\n".join(deep_text(v) for v in value)
    return str(value)


@pytest.mark.parametrize("text", [f"result:\n{OPENAI}", f"id\n{AKIA}", f"a\t{AKIA}"])
def test_a_secret_right_after_an_escape_in_json_held_in_a_string(text: str) -> None:
    """One level down, the character before the secret is the ``n`` of ``\\n``."""
    arguments = json.dumps({"r": text})
    out = shipped(orjson.dumps(span(0, input={"arguments": arguments})))
    assert OPENAI not in deep_text(orjson.loads(out)) and AKIA not in out.decode()


def test_a_secret_after_a_written_escape_in_plain_text() -> None:
    """Text that quotes code (a literal backslash-n) before a key."""
    out = shipped(orjson.dumps(span(0, input={"code": f"print('x\\n{OPENAI}')"})))
    assert OPENAI not in out.decode()


def test_json_held_in_a_string_is_scanned_as_json_with_its_keys() -> None:
    """A tool call's arguments: the key names a secret whatever its value looks like."""
    arguments = json.dumps({"api_key": "hunter2-not-a-pattern", "q": "weather",
                            "nested": json.dumps({"Password": ["x"], "k": ANTHROPIC})})
    out = orjson.loads(shipped(orjson.dumps(span(0, input={"arguments": arguments}))))
    args = json.loads(out["input"]["arguments"])
    assert args["api_key"] == R and args["q"] == "weather"
    assert json.loads(args["nested"]) == {"Password": R, "k": R}


@pytest.mark.parametrize("extra", [b"", b',"password":"p1","password":"p2"'])
def test_duplicate_keys_never_let_raw_text_through(extra: bytes) -> None:
    """Decoding keeps the last of two keys (and finding nothing, the raw text
    shipped); the walk sees each one, and keeps both."""
    line = orjson.dumps(span(0, input="X")).replace(
        b'"input":"X"', b'"input":{"k":"' + OPENAI.encode() + b'","k":"clean"' + extra + b"}")
    out = shipped(line).decode()
    assert OPENAI not in out and '"p1"' not in out and '"p2"' not in out
    assert f'"k":"{R}","k":"clean"' in out


def test_a_feedback_reason_is_redacted() -> None:
    line = orjson.dumps({"kind": "feedback", "target": "span", "id": str(uuid.uuid4()),
                        "name": "quality", "value": 0.2,
                        "reason": f"user pasted {AKIA} and jane@example.com"})
    out = orjson.loads(shipped(line))
    assert out["reason"] == f"user pasted {R} and {R}"


def test_pem_private_keys_with_and_without_their_footer() -> None:
    full = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n"
            "-----END PRIVATE KEY-----")
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU"
    out = orjson.loads(shipped(orjson.dumps(span(0, input={"a": f"key:\n{full}\nok",
                                                           "b": f"tail {cut}"}))))
    assert out["input"] == {"a": f"key:\n{R}\nok", "b": f"tail {R}"}


def test_aws_secret_keys_named_in_text_or_as_a_key() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    out = orjson.loads(shipped(orjson.dumps(span(0, input={
        "env": f"export AWS_SECRET_ACCESS_KEY={secret}", "aws_secret_access_key": secret,
        "creds": {"SecretAccessKey": secret}}))))
    assert secret not in json.dumps(out)
    assert out["input"]["env"] == f"export AWS_SECRET_ACCESS_KEY={R}"


@pytest.mark.parametrize(("text", "masked"), [
    ("db password=hunter2 ok", f"db password={R} ok"),
    ("SECRET = 's3cr3t!' then", f"SECRET = '{R}' then"),
    ("curl ...?token=abc123&x=1", f"curl ...?token={R}&x=1"),
    ('log: {"api_key": "zzz-123"}', f'log: {{"api_key": "{R}"}}'),
])
def test_assignments_in_free_text(text: str, masked: str) -> None:
    out = orjson.loads(shipped(orjson.dumps(span(0, input={"t": text}))))
    assert out["input"]["t"] == masked


def test_a_card_number_written_as_a_json_number() -> None:
    out = orjson.loads(shipped(orjson.dumps(span(0, input={"card": 4111111111111111,
                                                           "n": 4111111111111112,
                                                           "list": [5500000000000004]}))))
    assert out["input"] == {"card": R, "n": 4111111111111112, "list": [R]}


def test_a_secret_in_a_key_is_masked() -> None:
    out = shipped(orjson.dumps(span(0, input={OPENAI: 1}))).decode()
    assert OPENAI not in out


def test_user_patterns_are_matched_against_each_value_so_anchors_mean_its_ends() -> None:
    settings = Settings(spans={"redaction": {"patterns": [
        {"name": "ticket", "regex": "^TCK-[0-9]{6}$"}]}})
    out = orjson.loads(shipped(orjson.dumps(span(0, input={
        "a": "TCK-123456", "b": "see TCK-123456", "c": json.dumps({"t": "TCK-654321"})},
        tags=["TCK-000001"])), settings))
    assert out["input"]["a"] == R and out["input"]["b"] == "see TCK-123456"
    assert json.loads(out["input"]["c"]) == {"t": R}
    assert out["tags"] == [R]


def test_user_patterns_see_decoded_text() -> None:
    r = Redactor(RedactionSettings(patterns=(RedactionPattern(name="t", regex="TCK-[0-9]+"),)))
    out, counts = r.redact_json(b'{"t": "\\u0054CK-1 and TCK\\u002d2"}')
    assert orjson.loads(out) == {"t": f"{R} and {R}"} and counts == {"t": 2}


def test_json_in_a_string_past_the_nesting_cap_is_masked_whole() -> None:
    """Each level of JSON held in a string is scanned as JSON down to MAX_NESTING
    (the structure kept, the secret masked); deeper, the whole string is masked
    and counted, whatever it holds."""
    r = Redactor(RedactionSettings())
    for levels, cap in ((MAX_NESTING, False), (MAX_NESTING + 3, True)):
        value: Any = {"leaf": AKIA}
        for _ in range(levels):
            value = {"s": json.dumps(value)}
        out, counts = r.redact_json(orjson.dumps(value))
        assert AKIA not in deep_text(orjson.loads(out))
        assert counts == ({"depth_cap": 1} if cap else {"aws_access_key_id": 1})
        inner: Any = orjson.loads(out)
        for _ in range(MAX_NESTING):
            inner = json.loads(inner["s"])
        assert inner == ({"s": R} if cap else {"leaf": R})


def test_lone_surrogates_and_nul_do_not_stop_masking() -> None:
    raw = b'{"a": "\\ud800 ' + AKIA.encode() + b'", "b": "\\u0000 jane@example.com"}'
    out, counts = Redactor(RedactionSettings()).redact_json(raw)
    text = out.decode()
    assert AKIA not in text and "jane@" not in text
    assert counts == {"aws_access_key_id": 1, "email": 1}
