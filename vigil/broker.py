"""The demo's embedded MQTT broker (amqtt), run on its own asyncio loop in a thread.

Only for ``vigil demo``: one process, no servers to install. Production runs Mosquitto or
EMQX (``deploy/``). It listens on loopback only and allows anonymous clients, which is
acceptable for a demo bound to 127.0.0.1 and for nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from amqtt.broker import Broker


class BrokerStartError(RuntimeError):
    pass


class _SnapshotKeys(dict[str, Any]):
    """amqtt 0.12's topic-filter table, iterated over a copy of its keys.

    amqtt's connect handler loops over every filter with an ``await`` per filter; a client
    subscribing to a new filter meanwhile (dozens of edge agents connecting at once, each
    subscribing to its own ack topic) changes the dict's size and kills that connection with
    "RuntimeError: dictionary changed size during iteration"."""

    def __iter__(self) -> Any:
        return iter(list(super().keys()))


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1884) -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedded-broker", daemon=True)
        self._broker: Any = None

    def start(self, timeout_s: float = 10.0) -> None:
        # amqtt logs every connection at INFO; the demo's own log is what a newcomer reads.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        try:
            fut.result(timeout_s)
        except Exception as e:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise BrokerStartError(
                f"embedded MQTT broker could not listen on {self.host}:{self.port}: {e} "
                "(is the port taken? set VIGIL_DEMO_MQTT_PORT to another one)"
            ) from None

    async def _start(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config, loop=self._loop)
        self._broker._subscriptions = _SnapshotKeys(self._broker._subscriptions)
        await self._broker.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(timeout_s)
            except Exception as e:  # shutting down anyway; say so rather than hang
                logging.getLogger("vigil.demo").warning("embedded broker did not shut down cleanly: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
