"""One way to build a paho-mqtt client from ``MqttSettings``, used by every process.

MQTT 3.1.1 is used because it is what every broker Vigil runs against speaks (Mosquitto,
EMQX, and the demo's embedded amqtt); Mosquitto serves ``$share`` to 3.1.1 clients too.
TCP_NODELAY is set on every connection: without it, Nagle's algorithm adds 30-70 ms to
small QoS 1 messages (performance.md), and paho 2.x does not set it itself.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from wire.config import MqttSettings

log = logging.getLogger(__name__)


def make_client(
    settings: MqttSettings,
    client_id: str,
    *,
    clean_session: bool = True,
    manual_ack: bool = False,
    max_inflight: int = 100,
    max_queued: int = 0,
) -> mqtt.Client:
    """A configured, not yet connected client; ``connect()`` with ``settings.host/port``."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        client.tls_set(ca_certs=str(settings.ca_file) if settings.ca_file else None,
                       certfile=str(settings.cert_file) if settings.cert_file else None,
                       keyfile=str(settings.key_file) if settings.key_file else None,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(max_queued)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect_in_background(client: mqtt.Client, settings: MqttSettings) -> None:
    """Start connecting and the network loop; paho keeps reconnecting on its own, so a
    broker that is down at start is waited for, not a reason to stop."""
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
    client.loop_start()


def wait_connected(connected: threading.Event, settings: MqttSettings, who: str, timeout_s: float) -> bool:
    """Wait for the first connection; log once, naming the broker, if it does not come."""
    if connected.wait(timeout_s):
        return True
    log.warning("%s: broker %s:%s not reachable yet; retrying in the background", who, settings.host,
                settings.port)
    return False


def set_nodelay(client: mqtt.Client) -> None:
    """Disable Nagle on the client's current socket; call from ``on_connect``."""
    sock: Any = client.socket()
    if sock is not None and hasattr(sock, "setsockopt"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
