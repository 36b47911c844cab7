"""The README's layout list is the tree (issue 18): every module and package
under ``sidecar/`` is listed where it lies, and nothing listed is gone.

``docs/architecture.md`` names every package in its "Where each concern
lives" table, so the two documents and the tree cannot drift apart.
"""

from __future__ import annotations

import re

from .tools import REPO

PACKAGE = REPO / "sidecar"
# An entry: indentation, then a module (name.py) or a package (name/) first.
ENTRY = re.compile(r"^(?P<indent> *)(?P<name>[A-Za-z0-9_]+(?:\.py|/))(?:\s|$)")


def tree() -> set[str]:
    """Every module (but ``__init__.py``) and every package under sidecar/."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*"):
        rel = path.relative_to(PACKAGE)
        if "__pycache__" in rel.parts:
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            found.add(f"{rel.as_posix()}/")
        elif path.suffix == ".py" and path.name != "__init__.py":
            found.add(rel.as_posix())
    return found


def listed(text: str) -> set[str]:
    """The paths the README's layout block names, nested by indentation."""
    block = text.split("## Layout\n", 1)[1].split("```\n", 2)[1]
    lines = block.splitlines()
    assert lines[0] == "sidecar/", lines[0]
    found: set[str] = set()
    parents: list[tuple[int, str]] = []
    for line in lines[1:]:
        entry = ENTRY.match(line)
        if entry is None:
            continue  # a description carried onto the next line
        indent = len(entry["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = "".join(name for _, name in parents) + entry["name"]
        found.add(path)
        if path.endswith("/"):
            parents.append((indent, entry["name"]))
    return found


def test_the_readme_lists_every_module_and_nothing_that_is_gone() -> None:
    have, say = tree(), listed((REPO / "README.md").read_text(encoding="utf-8"))
    assert sorted(have - say) == [], "modules missing from the README's Layout list"
    assert sorted(say - have) == [], "listed in the README's Layout but not in the tree"


def test_the_architecture_names_every_package() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = {p for p in tree() if p.endswith("/") and p.count("/") == 1}
    named = set(re.findall(r"`sidecar/([a-z_]+/)`", text))
    assert sorted(packages - named) == []
    assert sorted(named - packages) == []


def test_the_listing_reads_nesting() -> None:
    """A module listed at the wrong depth is not taken for the right one."""
    text = "## Layout\n\n```\nsidecar/\n  store/\n    pool.py  x\n  pool.py  y\n```\n"
    assert listed(text) == {"store/", "store/pool.py", "pool.py"}
