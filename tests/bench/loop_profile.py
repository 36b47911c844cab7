"""Where a running daemon's event loop spends its CPU, task by task.

Used by ``bench_pod.py --loop-profile DIR``; by hand::

    python tests/bench/loop_profile.py OUT START TREE run --config CFG

runs the daemon of the checkout at TREE as usual, and from the moment the
file START exists (the bench creates it when its measuring window opens)
times every callback the event loop runs on the thread's CPU clock, under
the name of the task it steps or wakes (a task's coroutine), or of the
callback itself. At exit OUT gets, per name, callbacks a second and
milliseconds of CPU a second, the busiest first.

A profiler of the loop's turns, not of functions: at a trickle of spans
the daemon's CPU is a few hundred microseconds here and there, spread over
30-70 turns a second, and a sampling profiler sees too few of them to say
which task costs what. The loop's own work between callbacks (the
``epoll`` wait, its timer heap) is not in any row.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

CHECK_EVERY_S = 0.5  # how often the start file is looked for


def callback_name(callback: Any) -> str:
    """A task's coroutine (its first step and its wake-ups apart), else the callback."""
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        kind = "wakeup" if name.endswith("wakeup") else "step"
        return f"{kind}:{getattr(coro, '__qualname__', type(coro).__name__)}"
    return str(name)


def install(out: Path, start: Path) -> None:
    """Time every ``Handle._run`` from when ``start`` exists; write ``out`` at exit."""
    counts: Counter[str] = Counter()
    cpu: dict[str, float] = {}
    since: list[float] = []  # when the start file was seen (empty: not yet)
    looked = [0.0]
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        if not since:
            now = time.monotonic()
            if now - looked[0] >= CHECK_EVERY_S:
                looked[0] = now
                if start.exists():
                    since.append(now)
            run(handle)
            return
        t0 = time.thread_time()
        run(handle)
        key = callback_name(getattr(handle, "_callback", None))
        cpu[key] = cpu.get(key, 0.0) + time.thread_time() - t0
        counts[key] += 1

    asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]

    def dump() -> None:
        elapsed = time.monotonic() - since[0] if since else 0.0
        rows = [(k, counts[k] / elapsed, 1000 * cpu[k] / elapsed)
                for k in sorted(cpu, key=cpu.__getitem__, reverse=True)] if elapsed else []
        out.write_text(json.dumps({
            "elapsed_s": round(elapsed, 1),
            "cpu_ms_per_s": round(sum(ms for _, _, ms in rows), 3),
            "callbacks": [{"name": k, "per_s": round(n, 2), "cpu_ms_per_s": round(ms, 3)}
                          for k, n, ms in rows]}, indent=1))

    atexit.register(dump)


def main() -> int:
    out, start, tree, *args = sys.argv[1:]
    sys.argv = [sys.argv[0], *args]
    sys.path.insert(0, tree)
    install(Path(out), Path(start))
    from sidecar.cli import main as sidecar_main

    return int(sidecar_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
