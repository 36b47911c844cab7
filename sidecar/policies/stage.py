"""The policy stage: sample, then redact, then truncate, once per record.

Transforms between parse and batch (Vector's transforms are the model). One
``PolicyStage`` is built by the app and shared by every sink's pipeline;
the decisions are deterministic, so every sink gets the same result (a line
the readers take together is decided once: ``sidecar/pipeline/shared_parse.py``).
Counters of what the stage did (redactions per pattern, truncated fields)
are counted by one pipeline only (``decide`` returns them, ``count`` adds
them), so a record counts once whatever the number of sinks; sampled-out
records are counted by each pipeline, per sink.

``configure`` swaps the compiled policies in one assignment (a SIGHUP
reload): records handled after it get the new ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from msgspec import Raw
from msgspec.structs import replace
from pydantic import SecretStr

from sidecar.config.settings import SamplingSettings, SpansSettings
from sidecar.policies.limits import truncate_json
from sidecar.policies.redaction import Counts, Redactor
from sidecar.policies.sampling import Sampler
from sidecar.records import (
    ErrorInfo,
    Event,
    FeedbackRecord,
    Record,
    SpanRecord,
    SpanUpdateRecord,
    TraceRecord,
    TraceUpdateRecord,
    encode_json,
)
from sidecar.snapshots import PolicyStats


class SampledOut:
    """The answer for a record the sampling policy drops."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SAMPLED_OUT"


SAMPLED_OUT: Final = SampledOut()
# What the stage did to a record: masks by pattern name, truncations by field.
Found = tuple[Counts, Counts]
JSON_FIELDS = ("input", "output", "metadata")
LIMITED_FIELDS = (*JSON_FIELDS, "events", "error_info")


@dataclass(frozen=True, slots=True)
class Policies:
    """One compiled configuration; replaced whole, never changed."""

    sampler: Sampler
    redactor: Redactor | None
    max_field_bytes: int

    @classmethod
    def compile(cls, sampling: SamplingSettings, spans: SpansSettings, environment: str,
                opik_api_key: str | None) -> Policies:
        r = spans.redaction
        return cls(Sampler(sampling, environment),
                   Redactor(r, opik_api_key) if r.enabled else None, spans.max_field_bytes)


class PolicyStage:
    """The stage of the ``sampling`` and ``spans`` sections; ``opik_api_key``
    (the Opik sink's key, read once at start) is always redacted from spans."""

    def __init__(self, sampling: SamplingSettings, spans: SpansSettings, environment: str = "",
                 *, opik_api_key: SecretStr | None = None) -> None:
        self.environment = environment
        self._opik_api_key = opik_api_key.get_secret_value() if opik_api_key else None
        self.policies = Policies.compile(sampling, spans, environment, self._opik_api_key)
        self._redactions: Counts = {}
        self._truncated: Counts = {}

    def configure(self, sampling: SamplingSettings, spans: SpansSettings) -> None:
        """Use these sections' policies for every record handled from now on."""
        self.policies = Policies.compile(sampling, spans, self.environment, self._opik_api_key)

    def screen(self, raws: Sequence[bytes]) -> tuple[Policies, set[int]]:
        """The redaction gate over many spool lines at once: the policies it
        used and the indices of the lines it could not clear. Pass the
        policies to ``apply`` as ``cleared_by`` for the other lines."""
        p = self.policies
        return p, (set() if p.redactor is None else p.redactor.suspects(raws))

    def apply(self, record: Record, raw: bytes | None = None,
              count: bool = True, cleared_by: Policies | None = None) -> Record | SampledOut:
        """The record to ship (redacted, truncated), or ``SAMPLED_OUT``;
        ``decide``, then ``count`` what it did when ``count``."""
        result, found = self.decide(record, raw, cleared_by)
        if count and found is not None:
            self.count(found)
        return result

    def decide(self, record: Record, raw: bytes | None = None,
               cleared_by: Policies | None = None) -> tuple[Record | SampledOut, Found | None]:
        """The record to ship, or ``SAMPLED_OUT``, and what was masked and
        truncated in it (None: nothing), not counted yet.

        ``raw`` is the record's spool line: when given, a record whose line
        has no candidate secret and fits the field limit is returned as it is
        without looking at its fields. ``cleared_by``: the policies whose
        ``screen`` cleared ``raw`` already; the gate is not run again unless
        a reload has replaced them since.
        """
        p = self.policies
        if not p.sampler.keep(record):
            return SAMPLED_OUT, None
        redactions: Counts = {}
        truncated: Counts = {}
        if p.redactor is not None and (raw is None or (
                cleared_by is not p and p.redactor.may_match(raw))):
            record = _redact(record, p.redactor, redactions)
        if not isinstance(record, FeedbackRecord) and (raw is None
                                                       or len(raw) > p.max_field_bytes):
            record = _truncate(record, p.max_field_bytes, truncated)
        return record, ((redactions, truncated) if redactions or truncated else None)

    def count(self, found: Found) -> None:
        """Count what ``decide`` did to one record (once, whatever the sinks)."""
        _add(self._redactions, found[0])
        _add(self._truncated, found[1])

    def stats(self) -> PolicyStats:
        return PolicyStats(tuple(sorted(self._redactions.items())),
                           tuple(sorted(self._truncated.items())))


def _add(total: Counts, more: Counts) -> None:
    for name, n in more.items():
        total[name] = total.get(name, 0) + n


# -- applying the byte-level policies to a record's fields ------------------------
# input/output/metadata and event attributes are raw JSON text (msgspec.Raw):
# they are redacted and truncated as text, decoded only when something matches.

Rec = SpanRecord | TraceRecord | SpanUpdateRecord | TraceUpdateRecord


def _redact(record: Record, redactor: Redactor, counts: Counts) -> Record:
    if isinstance(record, FeedbackRecord):
        if record.reason is None:
            return record
        reason = redactor.redact_string(record.reason, counts)
        return record if reason is record.reason else replace(record, reason=reason)
    changes: dict[str, Any] = {}
    for name in JSON_FIELDS:
        value = getattr(record, name)
        if value is not None:
            new, found = redactor.redact_json(bytes(value))
            if found:
                changes[name] = Raw(new)
                _add(counts, found)
    if record.tags:
        tags = [redactor.redact_string(tag, counts) for tag in record.tags]
        if any(new is not old for new, old in zip(tags, record.tags, strict=True)):
            changes["tags"] = tags
    if record.error_info is not None:
        info = record.error_info
        kind, message, tb = (None if v is None else redactor.redact_string(v, counts)
                             for v in (info.exception_type, info.message, info.traceback))
        if kind is not info.exception_type or message is not info.message \
                or tb is not info.traceback:
            changes["error_info"] = ErrorInfo(exception_type=kind or info.exception_type,
                                              message=message, traceback=tb)
    if isinstance(record, SpanRecord) and record.events:
        events = [_redact_event(e, redactor, counts) for e in record.events]
        if any(new is not old for new, old in zip(events, record.events, strict=True)):
            changes["events"] = events
    return replace(record, **changes) if changes else record


def _redact_event(event: Event, redactor: Redactor, counts: Counts) -> Event:
    name = redactor.redact_string(event.name, counts)
    attributes, found = redactor.redact_json(bytes(event.attributes))
    _add(counts, found)
    if name == event.name and not found:
        return event
    return Event(name=name, time=event.time, attributes=Raw(attributes))


def _truncate(record: Rec, limit: int, counts: Counts) -> Rec:
    changes: dict[str, Any] = {}
    for name in LIMITED_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            continue
        raw = bytes(value) if isinstance(value, Raw) else encode_json(value)
        short = truncate_json(name, raw, limit)
        if short is not None:
            counts[name] = counts.get(name, 0) + 1
            changes[name] = _typed(name, short)
    return replace(record, **changes) if changes else record


def _typed(name: str, short: bytes) -> Any:
    if name == "error_info":
        return msgspec.json.decode(short, type=ErrorInfo)
    if name == "events":
        return msgspec.json.decode(short, type=list[Event])
    return Raw(short)
