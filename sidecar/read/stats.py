"""Statistics through the cache, and how ``stats`` and ``trace`` print them.

``StatsService.report`` is what ``span-sidecar stats`` and ``GET /stats``
answer: the repository's per-agent statistics for a window, cached as JSON
under ``obs_metrics:{window}:{agent}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.clock import Clock
from sidecar.read.cache import MetricsCache
from sidecar.read.repository import SpanRepository, StatsReport, TraceSpan, check_window, since_for
from sidecar.read.rollup_stats import EXACT_MAX_ROWS
from sidecar.store.pool import LazyPool

MAX_AGENT_CHARS = 512


def check_agent(agent: str | None) -> None:
    """ValueError for a name no span can have: empty, too long, NUL, lone surrogates."""
    if agent is None:
        return
    if not 0 < len(agent) <= MAX_AGENT_CHARS:
        raise ValueError(f"invalid agent: 1 to {MAX_AGENT_CHARS} characters")
    if "\x00" in agent:
        raise ValueError("invalid agent: contains NUL")
    try:
        agent.encode()
    except UnicodeEncodeError:
        raise ValueError("invalid agent: not valid Unicode text") from None


class StatsService:
    def __init__(self, pool: LazyPool, schema: str, cache: MetricsCache, clock: Clock,
                 max_window: str = "31d", exact_max_rows: int = EXACT_MAX_ROWS) -> None:
        self._pool = pool
        self.exact_max_rows = exact_max_rows
        self._schema = schema
        self.cache = cache
        self.clock = clock
        self.max_window = max_window

    async def report(self, window: str, agent: str | None = None) -> StatsReport:
        """Per-agent statistics of spans started within ``window`` (ValueError: bad
        or too long a window, bad agent). All agents leave out the health spans."""
        check_window(window, self.max_window)
        check_agent(agent)
        window = self.cache.spelling(window)

        async def compute() -> bytes:
            since = since_for(window, self.clock.wall())
            repo = SpanRepository(await self._pool.get(), self._schema,
                                  exact_max_rows=self.exact_max_rows)
            agents = await repo.agent_stats(since, agent)
            report = StatsReport(window=window, since=since, agent=agent, agents=tuple(agents))
            return report.model_dump_json().encode()

        raw = await self.cache.get_or_compute(window, agent, compute)
        return StatsReport.model_validate_json(raw)

    async def http(self, query: Mapping[str, str]) -> Any:
        """The ``GET /stats?window=1h&agent=NAME`` handler (ValueError answers 400)."""
        report = await self.report(query.get("window", "1h"), query.get("agent") or None)
        return report.model_dump(mode="json")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_stats(report: StatsReport) -> str:
    """A readable table: one line per agent."""
    head = ("agent", "spans", "errors", "err%", "p50 ms", "p95 ms", "p99 ms", "min ms",
            "max ms", "mean ms", "tokens", "cost")
    rows = [head]
    for a in report.agents:
        lat, q = a.latency, a.quality
        rows.append((a.agent_name or "(none)", str(lat.span_count), str(lat.error_count),
                     f"{100 * lat.error_rate:.1f}", _ms(lat.p50_ms), _ms(lat.p95_ms),
                     _ms(lat.p99_ms), _ms(lat.min_ms), _ms(lat.max_ms), _ms(lat.mean_ms),
                     str(q.tokens.total_tokens), f"{q.total_cost:.4f}"))
    title = (f"spans started since {report.since:%Y-%m-%d %H:%M:%S} UTC "
             f"(window {report.window}" + (f", agent {report.agent})" if report.agent else ")"))
    if len(rows) == 1:
        return f"{title}\nno spans in this window"
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    return "\n".join([title, *lines])


def render_trace(spans: list[TraceSpan]) -> str:
    """The trace as an indented tree: name, agent, duration, status."""
    lines = [f"trace {spans[0].span.trace_id} ({len(spans)} spans)"] if spans else []
    for item in spans:
        s = item.span
        err = ""
        if s.status == "error" and s.error_info:
            info = s.error_info
            err = f"  {info.get('exception_type') or ''}: {info.get('message') or ''}"
        lines.append(f"{'  ' * item.depth}{s.name} [{s.type}] agent={s.agent_name or '-'} "
                     f"{_ms(s.duration_ms)} ms {s.status} {s.span_id}{err}")
    return "\n".join(lines)
