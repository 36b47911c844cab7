"""The configuration reference, generated from the settings models.

``python -m sidecar.config.reference > docs/configuration.md`` writes every
key of ``sidecar.config.settings.Settings`` with its type, default, limits and the
comment written beside it in the code, so the reference cannot drift from
what the daemon accepts (a test regenerates it and compares).
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from sidecar.config.settings import Settings

COMMAND = "python -m sidecar.config.reference > docs/configuration.md"
INTRO = f"""\
# Configuration reference

Generated from the settings models (`sidecar/config/settings.py`) by
`{COMMAND}`; edit the models and their comments, not this file.

The configuration is one YAML file (`span-sidecar run --config FILE`). Every
key has a default, so an empty file is valid; an unknown key is an error.
`${{VAR}}` and `${{VAR:-default}}` in values are expanded from the
environment, which is where secrets belong. An `environments:` section holds
overrides for `development`, `staging` and `production`, applied over the
file when `SIDECAR_ENV` names one of them. `span-sidecar check-config` prints
the effective configuration, secrets masked.
"""
_LIMITS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="),
           ("min_length", "length >="), ("max_length", "length <="))


def render() -> str:
    """The whole reference as Markdown."""
    parts = [INTRO]
    for key, field in Settings.model_fields.items():
        parts.append(_section(key, _model(field)))
    return "\n".join(parts)


def _model(field: FieldInfo) -> type[BaseModel]:
    """The section model a field of ``Settings`` holds."""
    model = field.annotation
    assert isinstance(model, type) and issubclass(model, BaseModel), model
    return model


def _section(path: str, model: type[BaseModel]) -> str:
    """A heading, the model's docstring if any, and a table of its keys."""
    lines = [f"## `{path}`", ""]
    doc = inspect.getdoc(model)
    if doc and model.__doc__:  # its own docstring, not one inherited
        lines += [doc, ""]
    lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    lines += [_row(key, field, notes) for key, field, notes in _leaves(path, model)]
    return "\n".join(lines) + "\n"


def _leaves(prefix: str, model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo, str]]:
    """(dotted key, field, comment) of every leaf key under ``model``."""
    comments = _field_comments(model)
    for name, field in model.model_fields.items():
        key = f"{prefix}.{field.alias or name}"
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            yield from _leaves(key, nested)
        else:
            yield key, field, field.description or comments.get(name, "")


def _row(key: str, field: FieldInfo, notes: str) -> str:
    cells = [f"`{key}`", _type_name(field.annotation), _default(field), _limits(field), notes]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _type_name(annotation: Any) -> str:
    """A reader's name for a type: ``int``, ``path``, ``"a" or "b"``, ``float or null``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    names = {type(None): "null", Path: "path", SecretStr: "secret string"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    return f"`{json.dumps(value, default=str)}`"


def _limits(field: FieldInfo) -> str:
    """The constraints pydantic enforces on a value (``>= 1``, ``pattern ...``)."""
    found = []
    for meta in field.metadata:
        for attr, symbol in _LIMITS:
            if getattr(meta, attr, None) is not None:
                found.append(f"{symbol} {getattr(meta, attr)}")
        if getattr(meta, "pattern", None) is not None:
            found.append(f"pattern `{meta.pattern}`")
    return ", ".join(found)


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comment in the source: the lines just above it and its line's tail."""
    source = textwrap.dedent(inspect.getsource(model))
    comments = _comments_by_line(source)
    out = {}
    (cls,) = ast.parse(source).body
    assert isinstance(cls, ast.ClassDef)
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above: list[str] = []
            line = node.lineno - 1
            while line in comments and comments[line][0]:
                above.insert(0, comments[line][1])
                line -= 1
            tail = comments.get(node.lineno)
            if tail is not None and not tail[0]:
                above.append(tail[1])
            out[node.target.id] = " ".join(above)
    return out


def _comments_by_line(source: str) -> dict[int, tuple[bool, str]]:
    """Line -> (whether the comment is the whole line, its text)."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            whole = not tok.line[: tok.start[1]].strip()
            found[tok.start[0]] = (whole, tok.string.lstrip("#").strip())
    return found


if __name__ == "__main__":
    print(render(), end="")
