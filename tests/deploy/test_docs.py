"""The documentation agrees with itself and with the code (issue 21, item 8).

Figures are quoted once: every throughput or memory figure in deploy/ and
docs/ must be one of the README's measured tables ("Performance"), so a
guide can never keep a stale number of its own. The README's tables have no
gaps, its changelog has one entry per version and the first is
``--version``'s, its quickstart installs the runtime and, for development,
exactly what CI installs, creates the database its DSN names, and its
hand-written span is a complete one. The spool's mode is written one way.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from sidecar import __version__
from sidecar.records import Rejected, SpanRecord, parse_line

from .tools import DEPLOY, REPO, SPOOL_MODE

README = REPO / "README.md"
DOCS = REPO / "docs"
TEXT_SUFFIXES = {".md", ".yaml", ".yml", ".json", ".conf", ".service", ".txt", ""}
# A figure with a unit that measures the daemon: rates and memory.
FIGURE = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s*-\s*[\d,.]+)?"
                    r"\s*(rows/s|spans/s|records/s|MB)\b")
NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])\d+(?:\.\d+)?")


def section(text: str, heading: str) -> str:
    """The body of a ``## heading`` section, up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    end = re.search(rf"^{level} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def readme() -> str:
    return README.read_text()


def table_numbers(text: str) -> set[str]:
    """Every number in the rows of the tables of ``text``."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return {n.replace(",", "") for row in rows for n in NUMBER.findall(row)}


def quoted_figures() -> list[tuple[Path, str, str]]:
    """(file, number, unit) of every figure in deploy/ and docs/, ranges' both ends."""
    files = [p for p in [*DEPLOY.rglob("*"), *DOCS.rglob("*")]
             if p.is_file() and p.suffix in TEXT_SUFFIXES and p.name != "constraints.txt"]
    found = []
    for path in files:
        for match in FIGURE.finditer(path.read_text()):
            for number in re.findall(r"[\d,.]*\d", match[0]):
                found.append((path, number.replace(",", ""), match[2]))
    return found


def test_figures_in_deploy_and_docs_are_the_readmes_measured_ones() -> None:
    measured = table_numbers(section(readme(), "## Performance"))
    figures = quoted_figures()
    assert len(figures) >= 5, "the guides quote the memory figures at least"
    stray = [f"{path.relative_to(REPO)}: {number} {unit}" for path, number, unit in figures
             if number not in measured]
    assert not stray, "figures not in the README's Performance tables: " + "; ".join(stray)


def test_the_figure_check_catches_a_stale_figure() -> None:
    """The check itself: a number the tables do not hold is found."""
    measured = table_numbers(section(readme(), "## Performance"))
    old = "limit (about 12,000 rows/s into Postgres on a 2-core machine)"
    [(number, unit)] = [(m[1].replace(",", ""), m[2]) for m in FIGURE.finditer(old)]
    assert (number, unit) == ("12000", "rows/s") and number not in measured


def tables(text: str) -> list[list[str]]:
    """Runs of table lines; a blank line between two runs splits a table."""
    runs: list[list[str]] = []
    previous_was_row = False
    for line in text.splitlines():
        is_row = line.startswith("|")
        if is_row and previous_was_row:
            runs[-1].append(line)
        elif is_row:
            runs.append([line])
        previous_was_row = is_row
    return runs


def test_every_readme_table_is_whole() -> None:
    """A table's rows follow one another; a run of rows without the header
    separator is a table split by a blank line (it renders as plain text)."""
    for run in tables(readme()):
        assert len(run) >= 2 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", run[1]), \
            f"a table split by a blank line, or without its header: {run[0][:80]}"
    commands = tables(section(readme(), "## Commands"))
    assert len(commands) == 1, "the command table is one table"
    assert any("--version" in row for row in commands[0])


def test_the_changelog_has_one_entry_per_version_the_first_being_the_current() -> None:
    log = section(readme(), "## Changelog and departures from the contract")
    versions = re.findall(r"^### (\d+\.\d+\.\d+)(?: \(unreleased\))?$", log, re.MULTILINE)
    assert versions and versions[0] == __version__
    assert len(versions) == len(set(versions)), versions
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))),
                              reverse=True)
    assert not re.search(r"^- \d+\.\d+\.\d+", log, re.MULTILINE), "versions are headings"


def quickstart() -> str:
    body = section(readme(), "## The two commands")
    block = re.search(r"```sh\n(.*?)```", body, re.DOTALL)
    assert block is not None
    return block[1]


def test_the_quickstart_installs_the_runtime_and_for_development_what_ci_installs() -> None:
    text = quickstart()
    assert re.findall(r"^# (\d)\. ", text, re.MULTILINE) == ["1", "2"]
    first, second = re.split(r"^# 2\. ", text, flags=re.MULTILINE)
    assert re.search(r"\.venv/bin/pip install \.$", first, re.MULTILINE)
    assert "[test]" not in first
    ci = (REPO / ".ci" / "run").read_text()
    [ci_install] = re.findall(r"^\.venv/bin/pip install .*'\.\[test\]'$", ci, re.MULTILINE)
    [dev_install] = re.findall(r"^\.venv/bin/pip install .*'\.\[test\]'$", second, re.MULTILINE)
    assert dev_install == ci_install.replace(" --quiet", ""), (dev_install, ci_install)
    assert re.search(r"^\.venv/bin/pytest -q$", second, re.MULTILINE)
    assert re.search(r"^\.venv/bin/pytest -q$", ci, re.MULTILINE)


def test_the_quickstart_creates_the_database_its_dsn_names() -> None:
    text = section(readme(), "## The two commands")
    dsns = set(re.findall(r"postgresql://postgres@127\.0\.0\.1/(\w+)", text))
    [created] = re.findall(r"^createdb -h 127\.0\.0\.1 -U postgres (\w+)", quickstart(),
                           re.MULTILINE)
    assert dsns == {created}, dsns


def test_the_quickstart_names_the_http_port_and_its_variable() -> None:
    text = section(readme(), "## The two commands")
    assert "127.0.0.1:9464" in text and "SIDECAR_HTTP_LISTEN" in text


def test_the_readmes_hand_written_span_is_complete(tmp_path: Path) -> None:
    """Run the README's printf as a user would: the line parses as a span
    with an end time, so its latency is not blank."""
    body = section(readme(), "## The two commands")
    block = re.search(r"```sh\n(printf .*?)\n# or:", body, re.DOTALL)
    assert block is not None, "the first-span block starts with printf"
    spool = tmp_path / "spool"
    spool.mkdir()
    out = subprocess.run(["bash", "-c", block[1]], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "SIDECAR_SPOOL_DIR": str(spool)})
    assert out.returncode == 0, out.stderr
    [path] = list(spool.iterdir())
    [line] = path.read_bytes().splitlines()
    record = parse_line(line)
    assert not isinstance(record, Rejected), record
    assert isinstance(record, SpanRecord) and record.end_time is not None
    assert record.end_time > record.start_time


@pytest.mark.parametrize("path", [README, DEPLOY / "README.md"], ids=["README", "deploy-README"])
def test_the_spool_mode_is_written_one_way(path: Path) -> None:
    text = path.read_text()
    mode = f"{SPOOL_MODE:o}"
    assert mode in text
    others = set(re.findall(r"(?<![\d.])[23][0-7]7[0-7](?![\d.])", text)) - {mode}
    assert not others, f"{path.name} names other spool modes: {others}"
    assert "span-spool" not in text, "one group: span-sidecar"


def test_tmpfiles_and_sysusers_name_the_location_the_guide_installs_them_in() -> None:
    guide = (DEPLOY / "README.md").read_text()
    for kind in ("tmpfiles.d", "sysusers.d"):
        conf = (DEPLOY / "systemd" / kind / "span-sidecar.conf").read_text()
        assert f"/etc/{kind}/span-sidecar.conf" in conf and "/usr/lib/" not in conf
        assert f"/etc/{kind}/" in guide
