"""The ``span-sidecar`` command: the only place that turns errors into exit codes.

Commands other than ``run`` log at warning and above unless ``-v`` (their
output is what they print); the daemon logs at ``logging.level``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from sidecar import __version__
from sidecar.config.loader import ConfigError, LoadedConfig, load_config
from sidecar.config.secrets import redacted, scrub
from sidecar.config.settings import Settings
from sidecar.config.sources import example_config
from sidecar.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_USAGE, HELP

log = structlog.get_logger("sidecar.cli")


CONFIG_HELP = ("YAML config file (default: $SIDECAR_CONFIG, else ./config/sidecar.yaml, "
               "else /etc/span-sidecar/sidecar.yaml, else none)")
VERBOSE_HELP = "log at logging.level (info by default), not only warnings and errors"
# Where a client writes when nothing names a directory: the daemon's variable,
# then the client's older one (sidecar.client.tracer.default_spool_dir).
SPOOL_DIR_ENVS = ("SIDECAR_SPOOL_DIR", "SPAN_SIDECAR_SPOOL_DIR")


def _version() -> str:
    return f"span-sidecar {__version__} (Python {platform.python_version()})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="span-sidecar", description=__doc__, epilog=HELP)
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        # SUPPRESS: given after the command it wins, else the one before it stays.
        c.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
        c.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help=VERBOSE_HELP)
        return c

    cmd("run", "run the daemon")
    cmd("migrate", "create or upgrade the Postgres schema (idempotent)")
    cc = cmd("check-config", "validate and print the effective config, secrets masked")
    cc.add_argument("--connect", action="store_true",
                    help="also run each enabled sink's own check, and PING the cache's "
                         "Redis when cache.backend is redis")
    cc.add_argument("--example", action="store_true",
                    help="print the example config shipped with the package, and exit")
    st = cmd("status", "spool files and lag per sink, breaker states, quarantine counts")
    st.add_argument("--json", action="store_true")
    stats = cmd("stats", "latency percentiles and quality metrics per agent")
    stats.add_argument("--window", default="1h", help="1h, 24h, 7d or any <n>m|h|d")
    stats.add_argument("--agent", default=None)
    stats.add_argument("--json", action="store_true")
    tr = cmd("trace", "the stored spans of one trace, as a tree")
    tr.add_argument("trace_id", metavar="TRACE_ID")
    tr.add_argument("--json", action="store_true")
    ret = cmd("retention", "remove spans older than retention.ttl_days now")
    ret.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    emit = cmd("emit", "write a test span into the spool, as an agent would")
    emit.add_argument("--name", default="span-sidecar.test")
    emit.add_argument("--agent", default="span-sidecar-cli")
    emit.add_argument("--type", default="general", choices=("general", "llm", "tool", "guardrail"))
    emit.add_argument("--count", type=int, default=1, help="spans to write, all in one file")
    emit.add_argument("--spool-dir", type=Path, default=None,
                      help="default: $SIDECAR_SPOOL_DIR, else $SPAN_SIDECAR_SPOOL_DIR, "
                           "else spool.dir of the config")
    rq = cmd("replay-quarantine", "re-read quarantined records and ship those now valid")
    rq.add_argument("--sink", default=None)
    rq.add_argument("--json", action="store_true")
    fs = cmd("forget-sink", "forget a disabled sink's progress, so its backlog no longer "
             "holds spool files (refused for an enabled sink)")
    fs.add_argument("sink", metavar="NAME")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config" and args.example:
        sys.stdout.write(example_config())
        return EXIT_OK
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"span-sidecar: invalid configuration in {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_USAGE
    from sidecar.logging import configure, register_secrets

    configure(loaded.settings.logging)
    register_secrets(loaded.settings)  # masked in every log line and error text from now on
    if args.command != "run" and not args.verbose:
        _quiet(loaded.settings.logging.level)
    args.loaded = loaded
    handler: Callable[[Settings, argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(loaded.settings, args)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as exc:
        print(f"span-sidecar {args.command}: {type(exc).__name__}: {scrub(str(exc))}",
              file=sys.stderr)
        return EXIT_ERROR


def _quiet(configured: str) -> None:
    """A command's output is what it prints: its logs only at warning and up."""
    from sidecar.logging import set_level

    order = ["debug", "info", "warning", "error"]
    set_level(max(configured, "warning", key=order.index))


def _check_config(settings: Settings, args: argparse.Namespace) -> int:
    loaded: LoadedConfig = args.loaded
    print(f"# config file: {loaded.file.path or 'none'} ({loaded.file.origin})")
    sources = loaded.sources()
    print("# values that are not defaults, and where they came from:"
          if sources else "# every value is its default")
    for key, value, origin in sources:
        print(f"#   {key} = {json.dumps(value, default=str)}  <- {origin}")
    yaml.safe_dump(redacted(settings), sys.stdout, sort_keys=False)
    if not args.connect:
        return EXIT_OK
    from sidecar.commands.check_config import check_all, render_checks

    results = asyncio.run(check_all(settings))
    print(render_checks(results))
    down = [r.name for r in results if r.ok is False]
    if down:
        print(f"span-sidecar check-config: cannot reach {', '.join(down)}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.daemon import run_daemon

    try:
        return asyncio.run(run_daemon(settings, args.config))
    except (OSError, ExceptionGroup) as exc:
        bind = _bind_error(exc)
        if bind is None:
            raise
        print(f"span-sidecar run: cannot listen on {settings.http.listen} "
              f"(http.listen, or SIDECAR_HTTP_LISTEN): {os.strerror(bind.errno or 0).lower()}; "
              "choose another address with either, or set http.enabled: false",
              file=sys.stderr)
        return EXIT_ERROR


def _bind_error(exc: BaseException) -> OSError | None:
    """The HTTP server's failed bind (aiohttp's "error while attempting to
    bind"), alone or inside an exception group; None for any other error."""
    if isinstance(exc, BaseExceptionGroup):
        found = [_bind_error(e) for e in exc.exceptions]
        return next((e for e in found if e is not None), None)
    if isinstance(exc, OSError) and (exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
                                     or "bind" in str(exc)):
        return exc
    return None


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.store.migrate import migrate
    from sidecar.store.pool import connect

    async def go() -> list[str]:
        # The store's one way to connect outside a pool (PgBouncer-safe, the
        # password kept apart from the DSN), as the daemon's pool connects.
        conn = await connect(settings.postgres)
        try:
            return await migrate(conn, settings.postgres.db_schema)
        finally:
            await conn.close()

    applied = asyncio.run(go())
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    return EXIT_OK


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.commands.status import collect, render

    report = collect(settings)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return EXIT_OK


def _emit(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.client import emit_test_spans

    emitted = emit_test_spans(_emit_dir(settings, args.spool_dir), args.name, args.agent,
                              args.count, type=args.type)
    for span_id in emitted.ids:
        print(span_id)
    print(f"wrote {len(emitted.ids)} span{'s' if len(emitted.ids) != 1 else ''} "
          f"to {emitted.path}", file=sys.stderr)
    return EXIT_OK


def _emit_dir(settings: Settings, given: Path | None, env: dict[str, str] | None = None) -> Path:
    """Where ``emit`` writes, in the client's order: ``--spool-dir``, the two
    variables, then the config's ``spool.dir`` (a file's, else the default)."""
    env = dict(os.environ) if env is None else env
    if given is not None:
        return given
    for name in SPOOL_DIR_ENVS:
        if env.get(name):
            return Path(env[name])
    return settings.spool.dir


def _stats(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.commands import read as read_cli

    return read_cli.stats(settings, args)


def _trace(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.commands import read as read_cli

    return read_cli.trace(settings, args)


def _retention(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.commands import read as read_cli

    return read_cli.retention(settings, args)


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.spool.replay import replay

    result: dict[str, Any] = replay(settings, args.sink)
    print(json.dumps(result) if args.json else _render_replay(result))
    return EXIT_OK


def _render_replay(result: dict[str, Any]) -> str:
    rows = result["results"]
    if not rows:
        return "nothing quarantined"
    lines = []
    for r in rows:
        line = f"{r['sink']}: replayed {r['replayed']}, still quarantined {r['still_invalid']}"
        files = r["spool_files"]
        lines.append(line + (f" (written to {', '.join(files)})" if files else ""))
    return "\n".join(lines)


def _forget_sink(settings: Settings, args: argparse.Namespace) -> int:
    from sidecar.spool.disabled_sinks import ForgetRefused, forget_sink

    try:
        gone = forget_sink(settings, args.sink)
    except ForgetRefused as exc:
        print(f"span-sidecar forget-sink: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not gone:
        print(f"nothing to forget: {args.sink} has no checkpoint")
    for path in gone:
        print(f"removed {path}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "run": _run, "migrate": _migrate, "check-config": _check_config, "status": _status,
    "emit": _emit, "stats": _stats, "replay-quarantine": _replay,
    "trace": _trace, "retention": _retention, "forget-sink": _forget_sink,
}


if __name__ == "__main__":
    sys.exit(main())
