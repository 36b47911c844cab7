"""Prompts and completions of an OTel span as our ``input`` and ``output``.

Instrumentations put them in four places, and each has its key in the
resulting object (``input`` and ``output`` must be JSON objects):

- whole attributes: the GenAI conventions' ``gen_ai.input.messages`` /
  ``gen_ai.output.messages`` (structured, or JSON text when the SDK cannot
  record structures), ``gen_ai.system_instructions``, the older
  ``gen_ai.prompt`` / ``gen_ai.completion``, a tool's
  ``gen_ai.tool.call.arguments`` / ``.result``; OpenInference's
  ``input.value`` / ``output.value`` (JSON text parsed unless its mime type
  says text) and ``tool.parameters``;
- indexed attributes, flattened by index: ``gen_ai.prompt.N.role``,
  ``gen_ai.completion.N.content`` (OpenLLMetry), and OpenInference's
  ``llm.input_messages.N.message.*`` / ``llm.output_messages.N.message.*``,
  rebuilt into lists of objects (the ``message.`` level dropped);
- span events: ``gen_ai.system.message``, ``gen_ai.user.message``,
  ``gen_ai.assistant.message``, ``gen_ai.tool.message`` (input messages,
  their role from the event name unless it carries one) and
  ``gen_ai.choice`` (output messages), used when the attributes hold no
  messages; ``gen_ai.client.inference.operation.details`` carries the
  whole-attribute keys above. Events used this way leave ``events``.

What is taken leaves the attributes; what cannot be placed (an index that
clashes with a value) stays there, so it lands in ``metadata``.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.receivers.otlp_decode import OtelEvent

_INPUT_KEYS = {"gen_ai.input.messages": "messages", "gen_ai.system_instructions":
               "system_instructions", "gen_ai.prompt": "prompt",
               "gen_ai.tool.call.arguments": "arguments", "tool.parameters": "parameters",
               "input.value": "value"}
_OUTPUT_KEYS = {"gen_ai.output.messages": "messages", "gen_ai.completion": "completion",
                "gen_ai.tool.call.result": "result", "output.value": "value"}
_INDEXED_INPUT = ("gen_ai.prompt.", "llm.input_messages.")
_INDEXED_OUTPUT = ("gen_ai.completion.", "llm.output_messages.")
_EVENT_ROLES = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}
_DETAILS = "gen_ai.client.inference.operation.details"
_WHOLE_KEYS = frozenset((*_INPUT_KEYS, *_OUTPUT_KEYS, "input.mime_type", "output.mime_type"))
_INDEXED = (*_INDEXED_INPUT, *_INDEXED_OUTPUT)
_MAX_PARTS = 8  # deeper paths stay one dotted key: no recursion on hostile keys


def take_messages(attrs: dict[str, Any], events: list[OtelEvent]
                  ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[OtelEvent]]:
    """``(input, output, events left)``; moves what it uses out of ``attrs``."""
    inp: dict[str, Any] = {}
    out: dict[str, Any] = {}
    if not _WHOLE_KEYS.isdisjoint(attrs):  # one set operation decides the usual span
        text_in = attrs.pop("input.mime_type", None) == "text/plain"
        text_out = attrs.pop("output.mime_type", None) == "text/plain"
        inp = _take_keys(attrs, _INPUT_KEYS, text_in)
        out = _take_keys(attrs, _OUTPUT_KEYS, text_out)
    indexed: list[str] | None = None  # the keys under any indexed prefix, found once
    for field, prefixes in ((inp, _INDEXED_INPUT), (out, _INDEXED_OUTPUT)):
        for prefix in prefixes:
            if "messages" in field:
                break
            if indexed is None:
                indexed = [k for k in attrs if k.startswith(_INDEXED)]
            if indexed and (found := _take_indexed(attrs, prefix, indexed)):
                field["messages"] = _unwrap(found)
    left = _take_events(events, inp, out) if events else events
    return inp or None, out or None, left


def _take_keys(attrs: dict[str, Any], keys: dict[str, str], text: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, name in keys.items():
        if key in attrs:
            value = attrs.pop(key)
            found[name] = value if text and name == "value" else json_or_text(value)
    return found


def json_or_text(value: Any) -> Any:
    """JSON text parsed (instrumentations send structures as JSON strings), else as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _take_events(events: list[OtelEvent], inp: dict[str, Any], out: dict[str, Any]
                 ) -> list[OtelEvent]:
    asked, answered, left = [], [], []
    for event in events:
        role = _EVENT_ROLES.get(event.name)
        if role is not None and "messages" not in inp:
            asked.append({"role": role, **event.attributes})
        elif event.name == "gen_ai.choice" and "messages" not in out:
            answered.append(dict(event.attributes))
        elif event.name == _DETAILS and not (inp or out):
            attrs = dict(event.attributes)
            inp.update(_take_keys(attrs, _INPUT_KEYS, False))
            out.update(_take_keys(attrs, _OUTPUT_KEYS, False))
            if attrs:
                left.append(OtelEvent(event.name, event.time_ns, attrs))
        else:
            left.append(event)
    if asked:
        inp["messages"] = [{k: json_or_text(v) for k, v in m.items()} for m in asked]
    if answered:
        out["messages"] = [{k: json_or_text(v) for k, v in m.items()} for m in answered]
    return left


def _take_indexed(attrs: dict[str, Any], prefix: str, candidates: list[str]
                  ) -> list[Any] | None:
    """``prefix.N.a.b = v`` attributes as ``[{a: {b: v}}, ...]`` in index order.

    ``candidates``: the keys of ``attrs`` (in its order) to look among; the
    prefixes are disjoint, so another prefix's take never removes one of them.
    """
    cut = len(prefix)
    keys = [k for k in candidates
            if k.startswith(prefix) and _index(k[cut:].split(".", 1)[0])]
    if not keys:
        return None
    root: dict[str, Any] = {}
    for key in keys:
        if _place(root, key[cut:].split(".", _MAX_PARTS), attrs[key]):
            del attrs[key]
    listed = _listify(root)
    return listed if isinstance(listed, list) else None


def _index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def _place(root: dict[str, Any], parts: list[str], value: Any) -> bool:
    node = root
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return False
        node = child
    if parts[-1] in node:
        return False
    node[parts[-1]] = value
    return True


def _listify(node: Any, depth: int = 0) -> Any:
    """Objects whose keys are all indexes become lists, JSON text at the leaves parsed."""
    if not isinstance(node, dict) or not node or depth > _MAX_PARTS:
        return json_or_text(node)
    items = {k: _listify(v, depth + 1) for k, v in node.items()}
    if all(_index(k) for k in items):
        return [items[k] for k in sorted(items, key=lambda k: (len(k.lstrip("0")), k))]
    return items


def _unwrap(messages: list[Any]) -> list[Any]:
    """OpenInference nests each message as ``{"message": {...}}``: one level less."""
    return [m["message"] if isinstance(m, dict) and len(m) == 1
            and isinstance(m.get("message"), dict) else m for m in messages]
