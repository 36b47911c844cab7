"""The policy stage: sample, then redact, then truncate, once per record.

Transforms between parse and batch (Vector's transforms are the model). One
``PolicyStage`` is built by the app and shared by every sink's pipeline: each
pipeline parses its own copy of a line and the decisions are deterministic,
so every sink gets the same result. Counters of what the stage did
(redactions per pattern, truncated fields) are counted by one pipeline only
(``apply(..., count=True)``), so a record counts once whatever the number of
sinks; sampled-out records are counted by each pipeline, per sink.

``configure`` swaps the compiled policies in one assignment (a SIGHUP
reload): records handled after it get the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from sidecar.policies.limits import truncate_json
from sidecar.policies.redaction import Counts, Redactor
from sidecar.policies.sampling import Sampler
from sidecar.records import ErrorInfo, Event, Record, SpanRecord, TraceRecord
from sidecar.settings import Settings
from sidecar.stats import PolicyStats


class SampledOut:
    """The answer for a record the sampling policy drops."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SAMPLED_OUT"


SAMPLED_OUT: Final = SampledOut()
JSON_FIELDS = ("input", "output", "metadata")
LIMITED_FIELDS = (*JSON_FIELDS, "events", "error_info")


@dataclass(frozen=True, slots=True)
class Policies:
    """One compiled configuration; replaced whole, never changed."""

    sampler: Sampler
    redactor: Redactor | None
    max_field_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings, environment: str) -> Policies:
        r = settings.spans.redaction
        key = settings.opik.api_key.get_secret_value() if settings.opik.api_key else None
        return cls(Sampler(settings.sampling, environment),
                   Redactor(r, key) if r.enabled else None, settings.spans.max_field_bytes)


class PolicyStage:
    def __init__(self, settings: Settings, environment: str = "") -> None:
        self.policies = Policies.from_settings(settings, environment)
        self.environment = environment
        self._redactions: Counts = {}
        self._truncated: Counts = {}

    def configure(self, settings: Settings) -> None:
        """Use ``settings``' policies for every record handled from now on."""
        self.policies = Policies.from_settings(settings, self.environment)

    def apply(self, record: Record, raw: bytes | None = None,
              count: bool = True) -> Record | SampledOut:
        """The record to ship (redacted, truncated), or ``SAMPLED_OUT``.

        ``raw`` is the record's spool line: when given, a record whose line
        has no candidate secret and fits the field limit is returned as it is
        without looking at its fields.
        """
        p = self.policies
        if not p.sampler.keep(record):
            return SAMPLED_OUT
        if not isinstance(record, SpanRecord | TraceRecord):
            return record
        redactions: Counts = {}
        truncated: Counts = {}
        if p.redactor is not None and (raw is None or p.redactor.may_match(raw)):
            record = _redact(record, p.redactor, redactions)
        if raw is None or len(raw) > p.max_field_bytes:
            record = _truncate(record, p.max_field_bytes, truncated)
        if count:
            _add(self._redactions, redactions)
            _add(self._truncated, truncated)
        return record

    def stats(self) -> PolicyStats:
        return PolicyStats(tuple(sorted(self._redactions.items())),
                           tuple(sorted(self._truncated.items())))


def _add(total: Counts, more: Counts) -> None:
    for name, n in more.items():
        total[name] = total.get(name, 0) + n


# -- the adapter for today's pydantic records ------------------------------------
# (kept small: the byte-level functions above are the policies themselves)

Rec = SpanRecord | TraceRecord


def _redact(record: Rec, redactor: Redactor, counts: Counts) -> Rec:
    update: dict[str, Any] = {}
    for name in (*JSON_FIELDS, "tags"):
        value = getattr(record, name)
        if value is not None:
            update[name] = redactor.redact_value(value, counts)
    if record.error_info is not None:
        info = record.error_info
        update["error_info"] = info.model_copy(update={
            k: redactor.redact_value(v, counts) for k, v in
            (("exception_type", info.exception_type), ("message", info.message),
             ("traceback", info.traceback)) if v is not None})
    events = getattr(record, "events", None)
    if events:
        update["events"] = [e.model_copy(update={
            "name": redactor.redact_value(e.name, counts),
            "attributes": redactor.redact_value(e.attributes, counts)}) for e in events]
    return record.model_copy(update=update) if counts else record


def _truncate(record: Rec, limit: int, counts: Counts) -> Rec:
    update: dict[str, Any] = {}
    for name in LIMITED_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            continue
        raw = orjson.dumps(_plain(value))
        short = truncate_json(name, raw, limit)
        if short is not None:
            counts[name] = counts.get(name, 0) + 1
            update[name] = _typed(name, orjson.loads(short))
    return record.model_copy(update=update) if update else record


def _plain(value: Any) -> Any:
    if isinstance(value, ErrorInfo):
        return value.model_dump()
    if isinstance(value, list) and value and isinstance(value[0], Event):
        return [e.model_dump(mode="json", exclude_none=True) for e in value]
    return value


def _typed(name: str, value: Any) -> Any:
    if name == "error_info":
        return ErrorInfo.model_validate(value)
    if name == "events":
        return [Event.model_validate(e) for e in value]
    return value
