"""docs/configuration.md is what the settings models generate, key for key."""

from __future__ import annotations

from pydantic import BaseModel

from sidecar.config import reference as config_reference
from sidecar.config.settings import Settings

from .tools import REPO

DOC = REPO / "docs" / "configuration.md"


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            keys += leaf_keys(nested, key + ".")
        else:
            keys.append(key)
    return keys


def test_the_committed_reference_matches_the_code() -> None:
    assert DOC.read_text() == config_reference.render(), (
        "docs/configuration.md is stale; regenerate it with: "
        f"{config_reference.COMMAND}")


def test_every_key_is_listed_with_its_comment() -> None:
    text = config_reference.render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == leaf_keys(Settings)
    watch = next(row for row in rows if row.startswith("| `spool.watch`"))
    assert '"inotify" or "poll"' in watch and "network volumes" in watch
    schema = next(row for row in rows if row.startswith("| `postgres.schema`"))
    assert "pattern `^[A-Za-z_]" in schema  # the alias, with its constraint
    assert "| `batch.queue_batches` | int | `1` | >= 1, <= 16 |" in text
