"""Serving the API with uvicorn, started and stopped from code (``vigil api``, the demo, tests).

Invariants:
- ``run`` returns only after the server has stopped and the store it opened is closed;
- the listening socket is bound before uvicorn starts, so a busy port or a bad host raises
  ``ConfigError`` naming the address and the settings to change (the CLI prints those
  without a traceback) instead of uvicorn's ``sys.exit``, which in a thread would end it
  silently; ``port = 0`` takes a free port, reported through ``ready``;
- the store is opened before serving when none is passed, so a misconfigured store
  raises ``StoreError`` from ``run`` rather than failing inside the ASGI lifespan;
- stopping: setting ``stop_event`` makes uvicorn finish in-flight requests (up to
  ``GRACEFUL_S``) and return. In the main thread uvicorn also handles SIGINT/SIGTERM
  itself: it shuts down gracefully, restores the previous handlers and re-raises the
  signal (so Ctrl-C ends in KeyboardInterrupt after a clean stop). In any other thread
  it installs no signal handlers (signals can only be handled in the main thread), and
  only ``stop_event`` stops it;
- logging goes to the process's own logging set-up: uvicorn is given ``log_config=None``
  so it does not replace the handlers of the demo or the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

import uvicorn

from api.errors import ApiError
from api.main import create_app
from api.settings import ApiSettings
from ingest.store import Store, open_store
from wire import ConfigError

log = logging.getLogger(__name__)

GRACEFUL_S = 5
_POLL_S = 0.05


def run(
    settings: ApiSettings,
    stop_event: threading.Event | None = None,
    store: Store | None = None,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the API until ``stop_event`` is set (or a signal, in the main thread).

    ``store``, if given, is used and left open; otherwise ``settings.store`` is opened here
    and closed on return. ``ready`` is called once with the base URL (``http://host:port``)
    when the server accepts connections.
    """
    sock = _bind(settings.host, settings.port)
    try:
        owned = open_store(settings.store) if store is None else None
        try:
            _serve(settings, sock, stop_event, owned or store, ready)
        finally:
            if owned is not None:
                owned.close()
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted API rebind while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; set VIGIL_API_HOST / VIGIL_API_PORT "
            "(api.host / api.port) to a free local address"
        ) from None
    return sock


def _serve(
    settings: ApiSettings,
    sock: socket.socket,
    stop_event: threading.Event | None,
    store: Store | None,
    ready: Callable[[str], None] | None,
) -> None:
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"
    config = uvicorn.Config(
        create_app(settings, store),
        host=settings.host,
        port=port,
        log_config=None,
        access_log=settings.access_log,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_S,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        notified = False
        while True:
            done, _ = await asyncio.wait({task}, timeout=_POLL_S)
            if done:
                break
            if stop_event is not None and stop_event.is_set():
                server.should_exit = True
            if not notified and server.started:
                notified = True
                log.info("api: serving on %s", url)
                if ready is not None:
                    ready(url)
        task.result()

    try:
        asyncio.run(serve())
    except SystemExit as e:
        # uvicorn exits this way when the app's startup fails; it has logged why.
        raise ApiError(f"the API on {url} failed to start (exit {e.code}); the log above says why") from None
