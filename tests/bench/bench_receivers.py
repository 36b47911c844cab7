"""Receivers benchmark (issue 20): OTLP exporter and Opik SDK into the daemon's receiver.

Run on demand (not part of the test suite):

    .venv/bin/python tests/bench/bench_receivers.py --spans 61440 --runs 3
    .venv/bin/python tests/bench/bench_receivers.py --spans 122880 --senders 2 --only otlp

1. OTLP: sender processes (``--senders``) with the real
   ``opentelemetry-exporter-otlp-proto-http`` exporter post batches of 512
   GenAI spans (bench_otlp's, ~0.9 KiB each) to ``/v1/traces``, each one
   after another, as a BatchSpanProcessor does. (a) no sink
   enabled (the receiver appends to the spool only): spans/s from the first
   export to the last answer; (b) Postgres and the Opik emulator (in this
   process) shipping: spans/s until the last span is in both. The daemon's
   CPU (user+sys from /proc) divided by the spans is its cost a span.
2. Opik SDK: an agent process with ``@opik.track`` nested functions (a trace
   of 2 spans per call), ``opik.flush_tracker()`` at the end, pointed at the
   receiver (both sinks on) and then straight at the emulator: spans/s and the
   agent's CPU a span (getrusage in the agent, from the first call to the end
   of the flush; the import and the client's start are left out).

3. Ceilings (``--ceilings``, in the same rounds): the same senders into a
   receiver that does nothing (an aiohttp server answering 200 with an empty
   ``ExportTraceServiceResponse``), one and two senders; and the Opik
   emulator alone, fed the Opik sink's own span requests by two threads of
   another process. With both sinks, every party's CPU a span is measured:
   the senders (getrusage), the daemon (/proc), the emulator's thread
   (/proc/self/task) and the daemon's Postgres backends (/proc of the pids
   ``pg_stat_activity`` lists under the run's ``application_name``).

``--baseline DIR`` runs a second daemon from another tree (e.g. the receiver
before a change, beside the same other packages), alternating with this one
in every round, so before and after share the machine's load; ``--tree DIR``
runs "this one" from a copy too (other engineers' edits mid-run stay out):

    .venv/bin/python tests/bench/bench_receivers.py --spans 122880 --senders 2 --runs 3 \
        --only otlp --ceilings --tree /tmp/after --baseline /tmp/before

The median run of each is reported, with min and max; the load average is
printed with each figure (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_opik import wait
from tests.bench.bench_pipeline import count, daemon_cmd, drop_schema, make_schema, proc_sample
from tests.opik_emulator import OpikEmulator
from tests.support import PG_DSN

ROOT = Path(__file__).resolve().parents[2]

# The OTLP sender: builds one set of distinct batches, then sends copies of
# them with every trace and span id XORed with the round, so that each span
# sent is a new one (re-sent ids would be no-ops in both sinks).
SENDER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext
from tests.bench.bench_otlp import genai_spans

url, batch, batches, distinct, first = sys.argv[2], *map(int, sys.argv[3:7])
pool = [genai_spans(batch) for _ in range(min(distinct, batches))]

def ctx(c, k):
    return SpanContext(c.trace_id ^ (k << 64), c.span_id ^ k, c.is_remote, c.trace_flags)

def copy(s, k):
    return ReadableSpan(name=s.name, context=ctx(s.context, k),
                        parent=ctx(s.parent, k) if s.parent else None, resource=s.resource,
                        attributes=s.attributes, events=s.events, links=s.links, kind=s.kind,
                        status=s.status, start_time=s.start_time, end_time=s.end_time,
                        instrumentation_scope=s.instrumentation_scope)

todo = [[copy(s, first + i // len(pool)) for s in pool[i % len(pool)]] for i in range(batches)]
exporter = OTLPSpanExporter(endpoint=url, timeout=60)
print("ready", flush=True)
sys.stdin.readline()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for spans in todo:
    assert exporter.export(spans) == SpanExportResult.SUCCESS
t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({"t0": t0, "t1": t1, "cpu_s": cpu}))
"""

# The Opik SDK agent: ``traces`` calls of two nested tracked functions.
AGENT = r"""
import json, os, resource, sys, time
os.environ.setdefault("OPIK_SENTRY_ENABLE", "false")
os.environ.setdefault("OPIK_ANALYTICS_ENABLE", "false")
import opik
from opik import track

@track(name="llm-call", type="llm")
def llm(q):
    return "answer to " + q

@track(name="agent", project_name="bench")
def agent(q):
    return llm(q)

agent("warm")  # the client's start, the first request
opik.flush_tracker()
n = int(sys.argv[1])
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for i in range(n):
    agent(f"question {i}")
opik.flush_tracker()
t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": t1 - t0,
                  "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}))
"""

# The ceiling: a receiver that reads each body and answers 200 with an empty
# ExportTraceServiceResponse, nothing else.
NULL_RECEIVER = r"""
import sys
from aiohttp import web

async def traces(request):
    await request.read()
    return web.Response(body=b"", headers={"Content-Type": "application/x-protobuf"})

app = web.Application(client_max_size=64 << 20)
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

# The Opik emulator alone: the Opik sink's own requests for the bench's spans
# (parse_otlp's records, planned as the sink plans them: 1000 items a request),
# posted by two threads at once (the sink's max_batches_in_flight).
OPIK_CLIENT = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from sidecar.client.serialize import dumps_line
from sidecar.receivers.otlp import parse_otlp
from sidecar.records import parse_line
from sidecar.sinks.opik_payloads import ROUTES, bodies_of, envelope, plan
from tests.bench.bench_otlp import genai_spans

base, n, batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
work, spans = [], 0
for _ in range(n // batch):
    body = encode_spans(genai_spans(batch)).SerializeToString()
    records = [parse_line(dumps_line(r)[:-1])
               for r in parse_otlp(body, "application/x-protobuf", None).records]
    for g in plan(records, "bench", 1000, 8 << 20).groups:
        method, path, _ = ROUTES[g.endpoint]
        work.append((method, f"{base}/{path}", envelope(g.endpoint, bodies_of(g, g.records))))
        spans += len(g.records) if g.endpoint == "spans" else 0
print("ready", flush=True)
sys.stdin.readline()
lock = threading.Lock()

def post():
    with httpx.Client(timeout=120, headers={"Content-Type": "application/json"}) as client:
        while True:
            with lock:
                if not work:
                    return
                method, url, body = work.pop()
            client.request(method, url, content=body).raise_for_status()

t0 = time.perf_counter()
threads = [threading.Thread(target=post) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"t0": t0, "t1": time.perf_counter(), "spans": spans}))
"""


def load() -> float:
    return os.getloadavg()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """The daemon with the receiver on a free loopback port."""

    def __init__(self, root: Path, name: str, emu: OpikEmulator | None,
                 tree: Path = ROOT) -> None:
        self.spool, self.state = root / f"spool-{name}", root / f"state-{name}"
        self.spool.mkdir()
        self.state.mkdir()
        self.schema = f"bench_recv_{name}_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.pg = emu is not None
        if self.pg:
            asyncio.run(make_schema(self.schema))
        cfg = {"spool": {"dir": str(self.spool), "state_dir": str(self.state)},
               "postgres": {"enabled": self.pg, "schema": self.schema,
                            "dsn": f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}"
                                   f"application_name={self.schema}"},
               "opik": ({"enabled": True, "url": emu.base_url} if emu is not None
                        else {"enabled": False}),
               "receivers": {"enabled": True, "listen": f"127.0.0.1:{self.port}"},
               "http": {"enabled": False}, "health": {"enabled": False},
               "logging": {"level": "warning", "format": "json"}}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cmd = daemon_cmd(path)
        cmd[cmd.index(str(ROOT))] = str(tree)  # the tree whose sidecar runs
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait(self._listening, timeout=30, step=0.05)

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"daemon exited with {self.proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return proc_sample(self.proc.pid)[0]

    def pg_cpu(self) -> dict[int, float]:
        """CPU seconds of each Postgres backend serving this daemon now."""
        if not self.pg:
            return {}
        pids = asyncio.run(backends(self.schema))
        out = {}
        for pid in pids:
            try:
                out[pid] = proc_sample(pid)[0]
            except OSError:  # gone since
                pass
        return out

    def rows(self) -> int:
        return asyncio.run(count(self.schema))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if self.pg:
            asyncio.run(drop_schema(self.schema))


async def backends(app_name: str) -> list[int]:
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                                app_name)
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


def thread_cpu(tid: int) -> float:
    """CPU seconds of one thread of this process."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def emulator_cpu(emu: OpikEmulator) -> float:
    thread = emu._thread  # the emulator's event loop: all of its work
    assert thread is not None and thread.native_id is not None
    return thread_cpu(thread.native_id)


def send(url: str, n: int, batch: int, senders: int,
         ready: Callable[[], None]) -> dict[str, float]:
    """``senders`` exporter processes, ``n`` spans in all; started together
    (after ``ready()``) once each has built its spans: first send, last
    answer, their CPU."""
    procs = [subprocess.Popen(
        [sys.executable, "-c", SENDER, str(ROOT), url, str(batch), str(n // batch // senders),
         "40", str(1 + k * 10_000)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for k in range(senders)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    ready()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
    sent = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
    for p in procs:
        p.wait(30)
    return {"t0": min(s["t0"] for s in sent), "t1": max(s["t1"] for s in sent),
            "cpu_s": sum(s["cpu_s"] for s in sent)}


def otlp_run(root: Path, emu: OpikEmulator | None, n: int, batch: int, senders: int,
             name: str, tree: Path = ROOT) -> dict[str, float]:
    if emu is not None:
        emu.reset()
    daemon = Daemon(root, name, emu, tree)
    n = n // batch // senders * batch * senders
    try:
        before: list[Any] = []
        sent = send(f"{daemon.url}/v1/traces", n, batch, senders, lambda: before.extend(
            (daemon.cpu(), load(), daemon.pg_cpu(), emulator_cpu(emu) if emu else 0.0)))
        cpu0, load0, pg0, emu0 = before
        t_end = sent["t1"]
        if emu is not None:
            t_end = wait(lambda: emu.stored() >= n and daemon.rows() >= n, step=0.05)
        cpu = daemon.cpu() - cpu0
        pg = sum(c - pg0.get(pid, 0.0) for pid, c in daemon.pg_cpu().items())
        emu_cpu = emulator_cpu(emu) - emu0 if emu else 0.0
    finally:
        daemon.stop()
    seconds = t_end - sent["t0"]
    out = {"spans_per_s": n / seconds, "seconds": seconds,
           "accepted_spans_per_s": n / (sent["t1"] - sent["t0"]),
           "daemon_cpu_us_per_span": cpu / n * 1e6,
           "sender_cpu_us_per_span": sent["cpu_s"] / n * 1e6,
           "load_before": load0, "load_after": load()}
    if emu is not None:
        out.update(emulator_cpu_us_per_span=emu_cpu / n * 1e6,
                   postgres_cpu_us_per_span=pg / n * 1e6,
                   all_cpu_us_per_span=(cpu + pg + emu_cpu + sent["cpu_s"]) / n * 1e6)
    return out


def null_run(n: int, batch: int, senders: int) -> dict[str, float]:
    """The senders into a receiver that does nothing: what they can send."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", NULL_RECEIVER, str(port)])
    try:
        def listening() -> bool:
            if server.poll() is not None:
                raise SystemExit("the null receiver exited")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait(listening, timeout=30, step=0.05)
        n = n // batch // senders * batch * senders
        before: list[float] = []
        sent = send(f"http://127.0.0.1:{port}/v1/traces", n, batch, senders,
                    lambda: before.extend((proc_sample(server.pid)[0], load())))
        cpu = proc_sample(server.pid)[0] - before[0]
    finally:
        server.terminate()
        server.wait(30)
    seconds = sent["t1"] - sent["t0"]
    return {"spans_per_s": n / seconds, "seconds": seconds,
            "server_cpu_us_per_span": cpu / n * 1e6,
            "sender_cpu_us_per_span": sent["cpu_s"] / n * 1e6,
            "load_before": before[1], "load_after": load()}


def emulator_run(emu: OpikEmulator, n: int, batch: int) -> dict[str, float]:
    """The Opik emulator alone: the sink's span requests as fast as it answers."""
    emu.reset()
    client = subprocess.Popen([sys.executable, "-c", OPIK_CLIENT, str(ROOT),
                               emu.base_url, str(n), str(batch)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    assert client.stdout.readline().strip() == b"ready"
    cpu0, load0 = emulator_cpu(emu), load()
    client.stdin.write(b"go\n")
    client.stdin.flush()
    done = json.loads(client.stdout.readline())
    client.wait(30)
    cpu = emulator_cpu(emu) - cpu0
    emu.reset()
    spans = done["spans"]
    return {"spans_per_s": spans / (done["t1"] - done["t0"]),
            "emulator_cpu_us_per_span": cpu / spans * 1e6,
            "load_before": load0, "load_after": load()}


def sdk_run(base_url: str, traces: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k != "OPIK_API_KEY"}
    env.update(OPIK_URL_OVERRIDE=f"{base_url}/api", OPIK_WORKSPACE="bench",
               OPIK_CONFIG_PATH=os.devnull)
    load0 = load()
    done = subprocess.run([sys.executable, "-c", AGENT, str(traces)], env=env,
                          capture_output=True, timeout=600, check=True)
    out: dict[str, float] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    spans = 2 * traces
    return {"spans_per_s": spans / out["seconds"],
            "agent_cpu_us_per_span": out["cpu_s"] / spans * 1e6,
            "load_before": load0, "load_after": load()}


def median(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {k: {"median": statistics.median(r[k] for r in runs),
                "min": min(r[k] for r in runs), "max": max(r[k] for r in runs)}
            for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=61_440, help="OTLP spans a run")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--senders", type=int, default=1, help="OTLP exporter processes at once")
    ap.add_argument("--traces", type=int, default=5_000, help="Opik SDK traces a run (2 spans)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("otlp", "sdk"), default=None)
    ap.add_argument("--ceilings", action="store_true",
                    help="each round also: a do-nothing receiver (1 and 2 senders), "
                         "the Opik emulator alone")
    ap.add_argument("--tree", type=Path, default=ROOT,
                    help="the tree whose sidecar runs as this daemon (default: this checkout)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a tree whose sidecar runs as the 'before' daemon, alternating")
    ap.add_argument("--out", type=Path, default=Path("tests/bench/out/receivers.json"))
    args = ap.parse_args()
    results: dict[str, Any] = {"spans": args.spans, "batch": args.batch,
                               "senders": args.senders, "traces": args.traces}
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, OpikEmulator() as emu:
        root = Path(tmp)
        trees = [("", args.tree)] + ([("_baseline", args.baseline)] if args.baseline else [])
        for r in range(args.runs):
            if args.ceilings:
                for senders in (1, 2):
                    key = f"null_receiver_{senders}_senders"
                    out = null_run(args.spans, args.batch, senders)
                    runs.setdefault(key, []).append(out)
                    print(json.dumps({key: out}), flush=True)
                out = emulator_run(emu, args.spans, args.batch)
                runs.setdefault("emulator_alone", []).append(out)
                print(json.dumps({"emulator_alone": out}), flush=True)
            if args.only in (None, "otlp"):
                # before and after take turns, starting with the other each round
                for suffix, tree in (trees if r % 2 == 0 else trees[::-1]):
                    for name, sink in (("spool_only", None), ("both_sinks", emu)):
                        key = f"otlp_{name}{suffix}"
                        out = otlp_run(root, sink, args.spans, args.batch, args.senders,
                                       f"{name}{r}{suffix}", tree)
                        runs.setdefault(key, []).append(out)
                        print(json.dumps({key: out}), flush=True)
            if args.only in (None, "sdk"):
                daemon = Daemon(root, f"sdk{r}", emu)
                try:
                    out = sdk_run(daemon.url, args.traces)
                finally:
                    daemon.stop()
                runs.setdefault("sdk_via_sidecar", []).append(out)
                print(json.dumps({"sdk_via_sidecar": out}), flush=True)
                emu.reset()
                out = sdk_run(emu.base_url.removesuffix("/api"), args.traces)
                runs.setdefault("sdk_straight_to_emulator", []).append(out)
                print(json.dumps({"sdk_straight_to_emulator": out}), flush=True)
                emu.reset()
    results.update({k: median(v) for k, v in runs.items()})
    if "otlp_both_sinks" in runs:  # what 20,000 spans/s on 2 cores leaves the daemon
        both = results["otlp_both_sinks"]
        others = sum(both[k]["median"] for k in (
            "sender_cpu_us_per_span", "emulator_cpu_us_per_span", "postgres_cpu_us_per_span"))
        results["budget_at_20k"] = {
            "cores": os.cpu_count(), "us_per_span_all": 2 / 20_000 * 1e6,
            "others_us_per_span": others,
            "left_for_daemon_us_per_span": 2 / 20_000 * 1e6 - others}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
