"""The fast parser (msgspec, raw free-form fields) agrees with the schema models.

Records that were valid stay valid, invalid ones stay invalid, and an
accepted line gives the same values either way. The corpus: hand-picked good
and bad lines, plus hypothesis's valid, near-valid and arbitrary records.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sidecar import schema
from sidecar.records import (
    FeedbackRecord,
    Rejected,
    SpanRecord,
    TraceRecord,
    encode_json,
    parse_line,
)
from tests.core.helpers import dumps, feedback, span, trace
from tests.core.test_records import (
    FEEDBACK,
    JSONISH,
    PROPERTY,
    RECORDISH,
    SPANS,
    TRACES,
    near_valid,
)

FREE_FORM = ("input", "output", "metadata")


def _clean(value: Any) -> Any:
    """JSON as the sinks store it: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fast_view(rec: SpanRecord | TraceRecord | FeedbackRecord) -> dict[str, Any]:
    out = json.loads(encode_json(rec))  # json: free-form ints may pass 64 bits
    return {k: v for k, v in out.items() if v is not None}


def _model_view(model: BaseModel) -> dict[str, Any]:
    out = model.model_dump(mode="json")
    return {k: _clean(v) for k, v in out.items() if v is not None}


def assert_agree(line: bytes) -> None:
    fast = parse_line(line)
    try:
        model = schema.validate(line)
    except ValidationError:
        assert isinstance(fast, Rejected), f"fast accepted what the models refuse: {line[:300]!r}"
        assert fast.reason == schema.explain(line)  # the same precise reason as before
        return
    assert not isinstance(fast, Rejected), f"fast refused a valid line ({fast.reason}): {line!r}"
    want, got = _model_view(model), _fast_view(fast)
    for key in ("id", "trace_id", "parent_span_id", "target"):
        if key in want:
            assert got[key].replace("-", "") == want[key].replace("-", "")
            want.pop(key), got.pop(key)
    for key in [k for k in want if k.endswith("time") or k == "last_updated_at"]:
        assert _instant(got.pop(key)) == _instant(want.pop(key)), key
    for ev_got, ev_want in zip(got.pop("events", []), want.pop("events", []), strict=True):
        if ev_want.get("time") is not None:
            assert _instant(ev_got.pop("time")) == _instant(ev_want.pop("time"))
        assert ev_got == ev_want
    for key in ("total_estimated_cost", "value"):
        if key in want:
            assert float(got.pop(key)) == float(want.pop(key))
    assert got == want


def _instant(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


CORPUS = [
    dumps(span()), dumps(span(kind="span", v=1)), dumps(trace()), dumps(feedback()),
    dumps(span(input={"q": "hi", "n": [1, 2.5, None, True]}, metadata={}, tags=[])),
    json.dumps(span(metadata={"big": 2**70})).encode(),
    dumps(span(events=[{"name": "e"}, {"name": "f", "attributes": {"a": 1}}])),
    dumps(span(input=None, output=None, metadata=None, events=None, error_info=None)),
    dumps(span(error_info={"exception_type": "E"})),
    b"  " + dumps(span()) + b"\r",
    json.dumps(span(metadata={"x": float("nan")})).encode(),  # Python's json writes NaN
    json.dumps(span(input={"x": float("inf")})).encode(),
    dumps(span(input=[1])), dumps(span(metadata="text")), dumps(span(output=5)),
    dumps(span(events=[{"name": "e", "attributes": []}])),
    dumps(span(start_time="2025-03-01T12:00:00")), dumps(span(end_time=1740830400)),
    dumps(span(start_time="0001-01-01T00:00:00+14:00")),
    dumps(span(agent_tier=2**31)), dumps(span(usage={"prompt_tokens": -(2**31) - 1})),
    dumps(span(agent_tier=True)), dumps(span(v=True)), dumps(span(v=2)),
    dumps(span(total_estimated_cost=-1)), dumps(span(name="")), dumps(span(agent_name="a" * 513)),
    dumps(span(id="not-a-uuid")), dumps(span(kind="metric")), dumps(span(kind=None)),
    dumps(span(type="chain")), dumps(span(tags=["a", 1])),
    dumps(span(error_info={"exception_type": ""})), dumps(span(error_info="boom")),
    dumps(feedback(value="0.5")), dumps(feedback(target="run")), dumps(trace(name=None)),
    dumps(span(input={"k": "caf\u00e9 \U0001f600"})),
    dumps(span()).replace(b'"step-0"', b'"step-\xed\xa0\x80"'),
    dumps(span(input={"k": "x"})).replace(b'"x"', b'"\xff"'),
    dumps(span(input={"s": "x"})).replace(b'"x"', b'"\\ud800"'),  # a lone surrogate escape
    dumps(span(name="x")).replace(b'"x"', b'"\\ud83d\\ude00"'),  # an escaped pair
    b'{"id": ', b"[]", b"null", b"{} {}", b"", b"\xff",
    dumps({"kind": "trace", "input": {"kind": "span"}, "id": span()["id"], "name": "t",
           "start_time": "2025-03-01T12:00:00Z"}),
    dumps(span(input={"kind": "feedback"})),
]


@pytest.mark.parametrize("line", CORPUS, ids=range(len(CORPUS)))
def test_the_parsers_agree_on_the_corpus(line: bytes) -> None:
    assert_agree(line)


@PROPERTY
@given(SPANS | TRACES | FEEDBACK)
def test_the_parsers_agree_on_valid_records(rec: dict[str, Any]) -> None:
    assert_agree(json.dumps(rec).encode())


@PROPERTY
@given(near_valid() | RECORDISH)
def test_the_parsers_agree_on_near_valid_records(rec: dict[str, Any]) -> None:
    assert_agree(json.dumps(rec).encode())


@PROPERTY
@given(JSONISH | st.binary(max_size=256))
def test_the_parsers_agree_on_anything(value: Any) -> None:
    assert_agree(value if isinstance(value, bytes) else json.dumps(value).encode())
