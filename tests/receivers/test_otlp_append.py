"""OTLP's records are appended without being parsed again (the receiver's
check of each line, ~3 us a span). That is sound only because the spool
takes every record ``parse_otlp`` makes: the property tests hold it over
arbitrary spans (tests/receivers/test_otlp_properties.py), and here over
the extremes each field's coercion exists for. The Opik routes, whose
records come from the client's JSON, are still checked line by line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.config.settings import ReceiversSettings
from sidecar.receivers import appender as appender_module
from sidecar.receivers.appender import Appender
from sidecar.receivers.otlp import parse_otlp
from sidecar.receivers.server import ReceiverServer
from sidecar.records import Rejected, SpanRecord, parse_line

from .test_otlp_support import CHILD, ROOT, both, request, span
from .test_refusals import SPANS, post, spool_bytes
from .test_refusals import span as opik_span

U64_MAX = 2**64 - 1


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value


EXTREMES: dict[str, Any] = {
    "gen_ai.agent.name": "\U0001f600" * 600,  # astral, past agent_name's 512
    "gen_ai.response.model": "", "gen_ai.request.model": 7, "llm.model_name": "m\x00",
    "gen_ai.usage.input_tokens": 2**40, "gen_ai.usage.output_tokens": -5,
    "llm.token_count.total": 2**31 - 1, "gen_ai.usage.cost": math.nan,
    "llm.cost.total": -1.0, "big": 2**63 - 1, "small": -(2**63), "inf": math.inf,
    "nested": deep(25),  # json_format (how the test builds protobuf) stops near 30
    "input.value": "[" * 300 + "]" * 300,
    "output.value": '{"a":' * 300 + "1" + "}" * 300, "gen_ai.prompt.0.content": "x",
    "llm.output_messages.0.message.content": "y", "llm.output_messages.0": "clash",
    "openinference.span.kind": "TOOL", "otel": "an attribute named like our key",
}


def extreme_request() -> dict[str, Any]:
    exception = {"name": "exception", "timeUnixNano": str(U64_MAX),
                 "attributes": [{"key": "exception.type", "value": {"stringValue": ""}},
                                {"key": "exception.message", "value": {"intValue": "5"}}]}
    return request(
        span("", ROOT, attrs=EXTREMES, startTimeUnixNano="0", endTimeUnixNano=str(U64_MAX),
             status={"code": 2, "message": "m"}, events=[exception],
             traceState="spansidecar=not-a-uuid"),
        span("child", CHILD, ROOT, attrs={"gen_ai.input.messages": "{not json"},
             endTimeUnixNano="0"),
        resource={"service.name": "", "openinference.project.name": "p" * 2000})


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_extreme_spans_map_to_lines_the_spool_takes_unchanged(encoding: str,
                                                                tmp_path: Path) -> None:
    body, content_type = both(extreme_request())[encoding]
    result = parse_otlp(body, content_type, None)
    assert result.status == 200 and len(result.records) == 2
    appender = Appender(tmp_path, "never")
    unchecked = appender.mapped_lines(result.records)
    checked = appender.lines(result.records, [f"item {i}" for i in range(2)])
    assert unchecked == checked  # the same bytes: the check would have changed nothing
    for line in unchecked:
        parsed = parse_line(line[:-1])
        assert isinstance(parsed, SpanRecord), parsed
    appender.close()


async def test_the_otlp_path_appends_without_parsing_again_the_opik_path_checks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []

    def counting(line: bytes) -> Any:
        parsed.append(line)
        return parse_line(line)

    monkeypatch.setattr(appender_module, "parse_line", counting)
    settings = ReceiversSettings(enabled=True, listen="127.0.0.1:0", token="s3cret-token")
    async with ReceiverServer(settings, tmp_path, otlp=parse_otlp) as server:
        base = f"http://127.0.0.1:{server.port}"
        body, content_type = both(extreme_request())["protobuf"]
        status, _, _ = await post(base + "/v1/traces", body, {"Content-Type": content_type})
        assert status == 200 and parsed == []
        bad = b'{"spans": [' + b'{"id": "nope"}' + b"]}"
        assert (await post(base + SPANS, bad))[0] == 400  # still checked
        good = orjson.dumps({"spans": [opik_span(1)]})
        assert (await post(base + SPANS, good))[0] == 204
        assert len(parsed) == 2
    lines = spool_bytes(tmp_path).splitlines()
    assert len(lines) == 3
    assert not any(isinstance(parse_line(line), Rejected) for line in lines)
