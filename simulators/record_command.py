"""``vigil sim record-anomalies``: keep every anomaly published during a run, for scoring.

Registered in ``vigil.cli.ACTIONS``. Subscribes (QoS 1) to ``vigil/v1/<site>/_alarm/+``
on the sim role's broker and appends each anomaly event as one JSON line
``{"topic": ..., "payload": <anomaly>}``, the format ``vigil sim score`` reads. A message
that is not a valid anomaly is logged with the reason and not written; the rest are kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from simulators.errors import SimError
from simulators.score import parse_line
from simulators.score_command import duration
from simulators.settings import SimSettings
from wire import WireError
from wire.mqtt import make_client
from wire.topics import alarm_filter

log = logging.getLogger("vigil.sim")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file to append to")
    p.add_argument("--site", action="append", help="only this site; repeat for several (default: every site)")
    p.add_argument("--duration", type=duration, default=0.0, help="stop after this long (default: Ctrl-C)")


def main(settings: SimSettings, args: argparse.Namespace) -> int:
    try:
        kept, refused = record(settings, args.out, sites=args.site or (), duration_s=args.duration,
                               stop=threading.Event())
    except (SimError, WireError) as e:
        print(f"vigil sim record-anomalies: {e}", file=sys.stderr)
        return 2
    print(f"kept {kept} anomaly event(s), refused {refused}", file=sys.stderr)
    return 0


def record(settings: SimSettings, out_path: Path, *, sites: Sequence[str] = (), duration_s: float = 0.0,
           stop: threading.Event, ready: threading.Event | None = None) -> tuple[int, int]:
    """Record the anomalies of ``sites`` (none: every site) until ``stop`` is set,
    ``duration_s`` passed (0: no limit) or Ctrl-C; return (kept, refused)."""
    m = settings.mqtt
    filters = [alarm_filter(s) for s in sites] or [alarm_filter()]
    topic = ", ".join(filters)
    counts = [0, 0]
    lock = threading.Lock()
    subscribed = ready or threading.Event()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out = out_path.open("a", encoding="utf-8")

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload = json.loads(bytes(msg.payload))
            line = json.dumps({"topic": msg.topic, "payload": payload}, separators=(",", ":"))
            parse_line(line)  # the check score will make: refuse it now, saying why
        except (ValueError, WireError) as e:
            with lock:
                counts[1] += 1
            log.warning("refused a message on %s: %s", msg.topic, e)
            return
        with lock:
            out.write(line + "\n")
            out.flush()
            counts[0] += 1

    client = make_client(m, f"vigil-sim-recorder-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters])
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(m.host, m.port, m.keepalive_s)
    except OSError as e:
        out.close()
        raise SimError(f"cannot connect to the broker at {m.host}:{m.port}: {e}") from None
    client.loop_start()
    try:
        if subscribed.wait(10):
            print(f"recording anomalies on {topic} into {out_path}; Ctrl-C stops", file=sys.stderr,
                  flush=True)
        deadline = time.monotonic() + duration_s if duration_s > 0 else None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            stop.wait(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    except KeyboardInterrupt:  # Ctrl-C is how an open-ended recording ends
        pass
    finally:
        client.disconnect()
        client.loop_stop()
        out.close()
    return counts[0], counts[1]
