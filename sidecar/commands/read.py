"""``span-sidecar stats``, ``trace`` and ``retention``: one-shot runs of the read side.

Each returns an exit code (0 done, 1 failed, 2 bad usage), as ``cli.main`` expects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from uuid import UUID

from sidecar.clock import SystemClock
from sidecar.config.settings import Settings
from sidecar.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from sidecar.read.repository import SpanRepository, check_window
from sidecar.read.service import ReadSide
from sidecar.read.stats import check_agent, render_stats, render_trace
from sidecar.store.retention import RetentionResult


def _usage(command: str, message: str) -> int:
    print(f"span-sidecar {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def stats(settings: Settings, args: argparse.Namespace) -> int:
    """Without ``--agent``, every agent but the daemon's own health spans;
    ``--agent span-sidecar`` shows those."""
    try:
        check_window(args.window, settings.stats.max_window)
        check_agent(args.agent)
    except ValueError as exc:
        return _usage("stats", str(exc))

    async def go() -> str:
        async with ReadSide(settings, SystemClock()) as read:
            report = await read.stats.report(args.window, args.agent)
        if args.json:
            return json.dumps(report.model_dump(mode="json"), indent=2)
        return render_stats(report)

    print(asyncio.run(go()))
    return EXIT_OK


def trace(settings: Settings, args: argparse.Namespace) -> int:
    try:
        trace_id = UUID(args.trace_id)
    except ValueError:
        return _usage("trace", f"invalid trace id {args.trace_id!r}: expected a UUID")

    async def go() -> list[dict[str, object]] | str | None:
        async with ReadSide(settings, SystemClock()) as read:
            repo = SpanRepository(await read.pool.get(), settings.postgres.db_schema)
            spans = await repo.trace(trace_id)
        if not spans:
            return None
        return [s.model_dump(mode="json") for s in spans] if args.json else render_trace(spans)

    out = asyncio.run(go())
    if out is None:
        print(f"span-sidecar trace: no stored spans for trace {trace_id}", file=sys.stderr)
        return EXIT_ERROR
    print(out if isinstance(out, str) else json.dumps(out, indent=2))
    return EXIT_OK


def retention(settings: Settings, args: argparse.Namespace) -> int:
    if settings.retention.ttl_days is None:
        print("retention.ttl_days is not set: spans are kept forever; nothing to remove")
        return EXIT_OK

    async def go() -> RetentionResult:
        async with ReadSide(settings, SystemClock()) as read:
            return await read.retention.apply(dry_run=args.dry_run)

    print(render_retention(asyncio.run(go())))
    return EXIT_OK


def render_retention(result: RetentionResult) -> str:
    if result.locked_out:
        return "skipped: another sidecar is applying retention now (it holds the lock)"
    lines = [f"created partition {name}" for name in result.created]
    expiry = result.expiry
    if expiry is None:
        return "\n".join(lines)
    verb = "would drop" if expiry.dry_run else "dropped"
    lines.append(f"spans started before {expiry.cutoff:%Y-%m-%d %H:%M:%S} UTC:")
    lines += [f"  {verb} partition {name} ({rows} rows)" for name, rows in expiry.dropped]
    verb = "would delete" if expiry.dry_run else "deleted"
    lines += [f"  {verb} {rows} rows from {name}" for name, rows in expiry.deleted]
    total = "would remove" if expiry.dry_run else "removed"
    lines.append(f"  {total} {expiry.rows} spans in all")
    if expiry.pending_updates:
        before = ("the cutoff" if expiry.pending_cutoff in (None, expiry.cutoff)
                  else f"{expiry.pending_cutoff:%Y-%m-%d %H:%M:%S} UTC (partial days are kept)")
        lines.append(f"  {verb} {expiry.pending_updates} pending span updates "
                     f"received before {before}")
    return "\n".join(lines)
