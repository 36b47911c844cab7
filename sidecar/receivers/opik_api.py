"""Opik's REST write paths as spool records: what the Opik SDK sends, unchanged.

The SDK (``OPIK_URL_OVERRIDE=http://LISTEN/api``) creates spans and traces in
batches from a background thread, sends ``span.update()``, ``span.end()`` and
``trace.end()`` as a ``PATCH`` each (usually before the batch holding the
create: updates are not batched), and scores with ``PUT .../feedback-scores``.
Found by running the SDK (2.2.x) against a server that logged every path.

Field names are Opik's already (the spool's records follow Opik's write
models), so a create is the body's item minus what the spool does not know
(``source``, ``project_id``...). The ``Comet-Workspace`` header, when it is
not the default, is kept in ``metadata.opik_workspace``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sidecar.receivers.errors import BadRequest

Item = dict[str, Any]
# (method, path under /api) -> (handler, what the route is, for logs)
Handler = Callable[[Any, Mapping[str, str], str | None], list[Item]]

SPAN_FIELDS = ("id", "trace_id", "parent_span_id", "name", "type", "start_time", "end_time",
               "input", "output", "metadata", "tags", "model", "provider", "usage",
               "total_estimated_cost", "error_info", "project_name", "last_updated_at")
TRACE_FIELDS = ("id", "name", "start_time", "end_time", "input", "output", "metadata", "tags",
                "error_info", "thread_id", "project_name", "last_updated_at")
_OBJECTS = ("input", "output", "metadata")
DEFAULT_WORKSPACE = "default"


def _item(raw: Any, fields: tuple[str, ...], where: str, workspace: str | None) -> Item:
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: must be a JSON object")
    out = {k: raw[k] for k in fields if raw.get(k) is not None}
    for key in _OBJECTS:  # Opik takes any JSON here; the spool takes objects
        if key in out and not isinstance(out[key], dict):
            out[key] = {"value": out[key]}
    if workspace and workspace != DEFAULT_WORKSPACE:
        out["metadata"] = {**out.get("metadata", {}), "opik_workspace": workspace}
    return out


def _listed(body: Any, key: str) -> list[Any]:
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequest(f'the body needs "{key}": a non-empty list')
    return items


def _span(raw: Any, where: str, workspace: str | None) -> Item:
    out = _item(raw, SPAN_FIELDS, where, workspace)
    out.setdefault("name", out.get("type", "span"))
    return out


def _trace(raw: Any, where: str, workspace: str | None) -> Item:
    out = _item(raw, TRACE_FIELDS, where, workspace)
    out["kind"] = "trace"
    out.setdefault("name", "trace")
    return out


def spans_batch(body: Any, params: Mapping[str, str], workspace: str | None) -> list[Item]:
    return [_span(s, f"spans[{i}]", workspace) for i, s in enumerate(_listed(body, "spans"))]


def traces_batch(body: Any, params: Mapping[str, str], workspace: str | None) -> list[Item]:
    return [_trace(t, f"traces[{i}]", workspace) for i, t in enumerate(_listed(body, "traces"))]


def one_span(body: Any, params: Mapping[str, str], workspace: str | None) -> list[Item]:
    return [_span(body, "span", workspace)]


def one_trace(body: Any, params: Mapping[str, str], workspace: str | None) -> list[Item]:
    return [_trace(body, "trace", workspace)]


def _update(kind: str, fields: tuple[str, ...]) -> Handler:
    """A PATCH as an update record: the id from the path, the time it came
    as its version (the SDK sends none), only the fields it sets."""
    def update(body: Any, params: Mapping[str, str], workspace: str | None) -> list[Item]:
        # the workspace goes with metadata the update sets, never alone (it would replace it)
        out = _item(body, fields, "the body", None)
        if "metadata" in out and workspace and workspace != DEFAULT_WORKSPACE:
            out["metadata"] = {**out["metadata"], "opik_workspace": workspace}
        out.pop("id", None)
        out.pop("start_time", None)
        out.setdefault("last_updated_at", datetime.now(UTC).isoformat())
        return [{"kind": kind, "id": params["id"], **out}]
    return update


def _scores(target: str) -> Handler:
    def scores(body: Any, params: Mapping[str, str], workspace: str | None) -> list[Item]:
        out = []
        for i, raw in enumerate(_listed(body, "scores")):
            if not isinstance(raw, dict):
                raise BadRequest(f"scores[{i}]: must be a JSON object")
            item = {"kind": "feedback", "target": target,
                    **{k: raw[k] for k in ("id", "name", "value", "reason", "project_name")
                       if raw.get(k) is not None}}
            out.append(item)
        return out
    return scores


ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/private/spans/batch"): spans_batch,
    ("POST", "/v1/private/traces/batch"): traces_batch,
    ("POST", "/v1/private/spans"): one_span,
    ("POST", "/v1/private/traces"): one_trace,
    ("PUT", "/v1/private/spans/feedback-scores"): _scores("span"),
    ("PUT", "/v1/private/traces/feedback-scores"): _scores("trace"),
    ("PATCH", "/v1/private/spans/{id}"): _update("span_update", SPAN_FIELDS),
    ("PATCH", "/v1/private/traces/{id}"): _update("trace_update", TRACE_FIELDS),
}
