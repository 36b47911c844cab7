"""The runtime dependency closure of span-sidecar, as pins for the image.

``python -m tests.deploy.runtime_deps > deploy/constraints.txt`` writes the
versions installed in this venv of everything ``span-sidecar`` needs at run
time (its dependencies, theirs, ...), leaving out the test and optional
extras. Run it after changing the dependencies in pyproject.toml.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# Runtime dependencies of span-sidecar, pinned to versions tested together.
# The image installs exactly these (deploy/Dockerfile); test and optional
# extras are left out. Regenerate from a venv with the project installed:
#   python -m tests.deploy.runtime_deps > deploy/constraints.txt
"""


def closure(root: str = "span-sidecar") -> dict[str, str]:
    """Installed name -> version of every package ``root`` needs, transitively."""
    pins: dict[str, str] = {}
    todo = [root]
    while todo:
        for text in distribution(todo.pop()).requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an extra, or another platform's or Python's
            name = canonicalize_name(req.name)
            if name in pins:
                continue
            try:
                pins[name] = distribution(name).version
            except PackageNotFoundError:
                raise SystemExit(f"{name} is required but not installed") from None
            todo.append(name)
    return pins


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


if __name__ == "__main__":
    print(render(closure()), end="")
