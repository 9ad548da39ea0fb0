"""Benchmark of alerting: from an anomaly event on the bus to the notification received.

Starts its own Mosquitto (TCP_NODELAY) and a real HTTP receiver on loopback, one alerting
service (SQLite database in a temporary folder, Apprise ``json://`` channel), then:

1. latency: publishes critical anomalies at ``--rate`` per second, each on its own device,
   and measures, per anomaly, the time from publishing to the receiver getting its page
   (group wait 0, so it is excluded as the issue asks; no grouping window);
2. throughput: publishes ``--burst`` anomalies at once and measures notifications received
   per second until the last arrives.

Every page is one incident in the database, one link pair and one recorded attempt, so the
figures include the commit before the ack and the attempt record.

    .venv/bin/python bench/alerting.py
    .venv/bin/python bench/alerting.py --count 500 --rate 50 --burst 3000

The last line printed is one JSON object (``p50_s``, ``p99_s``, ``notifications_per_s`` ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from alerting.config import parse_config  # noqa: E402
from alerting.db import open_engine  # noqa: E402
from alerting.service import AlertingService  # noqa: E402
from alerting.settings import AlertingSettings  # noqa: E402
from tests.services import free_port, start_mosquitto  # noqa: E402
from tests.test_alerting_delivery import HttpReceiver  # noqa: E402
from wire import MqttSettings  # noqa: E402
from wire.anomaly import Anomaly  # noqa: E402
from wire.mqtt import make_client  # noqa: E402
from wire.topics import AlarmTopic  # noqa: E402

SITE = "bench-site"


def anomaly(device: str, now_ms: int) -> bytes:
    return msgspec.json.encode(Anomaly(
        v=1, id=f"a-{device}", state="open", ts_ms=now_ms, started_ms=now_ms, severity="critical",
        fault="pressure_low", summary=f"{device} pressure low", kind="pump"))


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=300, help="anomalies in the latency phase (default 300)")
    p.add_argument("--rate", type=float, default=20.0, help="anomalies per second in the latency phase")
    p.add_argument("--burst", type=int, default=2000, help="anomalies published at once for throughput")
    p.add_argument("--workers", type=int, default=4, help="sender threads of the service (default 4)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="give up waiting after this long")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-alerting-"))
    broker, _proc = start_mosquitto(tmp / "mosquitto", ["set_tcp_nodelay true", "max_inflight_messages 100",
                                                         "max_queued_messages 100000"])
    receiver = HttpReceiver(free_port()).start()
    db = open_engine(f"sqlite:///{tmp / 'vigil.db'}")
    mqtt = MqttSettings(host=broker.host, port=broker.port)
    raw = {
        "channels": {"push": {"kind": "apprise", "rate_per_min": 100_000, "timeout_s": 5}},
        "people": {"tech": {"contacts": [{"channel": "push", "to": receiver.url("tech")}]}},
        "policies": {"p": {"steps": [{"notify": ["person:tech"], "delay_min": 60}]}},
        "routes": [{"name": "all", "policy": "p", "group_wait_s": 0, "group_window_s": 0}],
    }
    settings = AlertingSettings.load(None, mqtt=mqtt, database_url=f"sqlite:///{tmp / 'vigil.db'}",
                                     signing_secret="bench-secret-0123456789abcdef", sync_interval_s=1.0,
                                     send_workers=args.workers, learn_hierarchy=False)
    service = AlertingService(settings, db, parse_config(raw))
    service.start()
    if not service.wait_connected(10):
        print("alerting could not connect to the benchmark's Mosquitto", file=sys.stderr)
        return 1
    time.sleep(0.5)
    pub = make_client(mqtt, "bench-alerting-pub", max_inflight=1000)
    pub.connect(mqtt.host, mqtt.port)
    pub.loop_start()

    def wait_for(n: int) -> bool:
        deadline = time.monotonic() + args.timeout_s
        while len(receiver.received) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(receiver.received) >= n

    try:
        # -- latency -------------------------------------------------------------------------
        sent: dict[str, float] = {}
        interval = 1.0 / args.rate
        start = time.monotonic()
        for i in range(args.count):
            target = start + i * interval
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            device = f"lat-{i:05d}"
            sent[device] = time.time()
            pub.publish(AlarmTopic(SITE, device).format(), anomaly(device, int(time.time() * 1000)), qos=1)
        ok = wait_for(args.count)
        latencies = []
        for doc, arrived in zip(receiver.received, receiver.arrivals, strict=True):
            title = str(doc.get("title", ""))  # "[CRITICAL] bench-site/<device>: ..."
            device = title.split("/")[1].split(":", maxsplit=1)[0] if "/" in title else ""
            if device in sent:
                latencies.append(arrived - sent[device])
        if not ok or not latencies:
            print(f"latency phase: only {len(receiver.received)} of {args.count} pages arrived",
                  file=sys.stderr)
            return 1
        p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
        print(f"latency: {len(latencies)} critical anomalies at {args.rate:g}/s, bus -> page received: "
              f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(latencies):.3f} s, "
              f"mean {statistics.fmean(latencies):.3f} s")

        # -- throughput ----------------------------------------------------------------------
        before = len(receiver.received)
        t0 = time.time()
        now_ms = int(t0 * 1000)
        for i in range(args.burst):
            device = f"thr-{i:06d}"
            pub.publish(AlarmTopic(SITE, device).format(), anomaly(device, now_ms), qos=1)
        ok = wait_for(before + args.burst)
        elapsed = (receiver.arrivals[-1] if receiver.arrivals else time.time()) - t0
        got = len(receiver.received) - before
        rate = got / elapsed if elapsed > 0 else 0.0
        print(f"throughput: {got} of {args.burst} pages in {elapsed:.2f} s = {rate:.0f} notifications/s "
              f"(each: incident committed, 2 links, 1 attempt recorded)")
        if not ok:
            print("throughput phase did not finish within the timeout", file=sys.stderr)
        result = {
            "p50_s": round(p50, 4), "p99_s": round(p99, 4), "max_s": round(max(latencies), 4),
            "latency_count": len(latencies), "offered_per_s": args.rate,
            "notifications_per_s": round(rate, 1), "burst": args.burst, "burst_received": got,
            "send_workers": args.workers, "database": "sqlite",
        }
        print(json.dumps(result))
        return 0 if ok else 1
    finally:
        pub.disconnect()
        pub.loop_stop()
        done = threading.Event()
        def stop_service() -> None:
            service.stop()
            done.set()

        stopper = threading.Thread(target=stop_service, daemon=True)
        stopper.start()
        done.wait(30)
        db.dispose()
        receiver.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
