"""The project's Opik emulator plus Opik's update paths (PATCH of a span or a
trace), which the sink sends for updates whose create was in another batch.

Kept here rather than in ``tests/opik_emulator.py``: only the receiver's
tests send updates. An update is recorded as it came; ``merged`` lays each
target's updates over its stored create, as Opik keeps them.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from aiohttp import web

from tests.opik_emulator import OpikEmulator


class PatchingEmulator(OpikEmulator):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.patches: list[tuple[str, str, dict[str, Any]]] = []  # (kind, id, body)
        self._patch_lock = threading.Lock()

    def _routes(self, app: web.Application) -> None:
        """The emulator's own routes, and the PATCHes."""
        super()._routes(app)
        app.router.add_patch("/api/v1/private/spans/{id}", self._patch("spans"))
        app.router.add_patch("/api/v1/private/traces/{id}", self._patch("traces"))

    def _patch(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read())
            with self._patch_lock:
                self.patches.append((kind, request.match_info["id"], body))
            return web.Response(status=204)
        return handle

    def merged(self, kind: str) -> dict[str, dict[str, Any]]:
        """Each stored span or trace with the updates it got laid over it."""
        rows = self.spans() if kind == "spans" else self.traces()
        with self._patch_lock:
            patches = list(self.patches)
        for k, target, body in patches:
            if k == kind and target in rows:
                rows[target] = {**rows[target], **{f: v for f, v in body.items()
                                                   if v is not None}}
        return rows
