"""``GET /api/v1/stream``: live dashboard events as server-sent events.

Each event is one ``data:`` line of JSON (see ``api.dashboard.live.event_from_message``),
with the event's ``type`` as the SSE event name, so a page listens with
``new EventSource('/api/v1/stream')`` and ``addEventListener('alarm', ...)``. A caller only
receives events of the sites it may see. A comment line every ``PING_S`` keeps proxies from
closing an idle stream and lets the server notice a phone that went away.

SSE rather than WebSocket: the flow is one way (actions are ordinary POSTs with the
session cookie and CSRF rules of the rest of the API), EventSource reconnects by itself,
and it passes through any HTTP proxy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api.dashboard.routes import ReadDep, hub_of

router = APIRouter(prefix="/api/v1", tags=["dashboard"])

PING_S: Final = 15.0


def _frame(event: dict[str, object]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()


@router.get(
    "/stream",
    summary="Live events (alarms, work orders, agents) as server-sent events",
    response_class=StreamingResponse,
)
async def stream(request: Request, p: ReadDep) -> StreamingResponse:
    hub = hub_of(request)
    sub = hub.subscribe(p.sites)

    async def events() -> AsyncIterator[bytes]:
        try:
            # Tells the page the stream is up (and whether the bus is), so it can refetch what it
            # may have missed while it was reconnecting.
            yield _frame({"type": "hello", "live": hub.connected})
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), PING_S)
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                yield _frame(event)
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
