"""Ingest throughput and latency: simulated publishers → Mosquitto → `vigil ingest` workers → InfluxDB.

Starts its own Mosquitto (deploy/mosquitto.conf: inflight window, queue, TCP_NODELAY)
and its own InfluxDB 1.6.7 behind nginx (as the tests do), runs ``--workers`` ingest
processes in one shared subscription group, and offers a steady load from publisher
processes that stamp every reading with the time they publish it. Reports:

- readings_per_s: readings durably written per second by ingest over the steady window;
- p50_s / p99_s: from a reading's edge timestamp to its write being acknowledged by
  InfluxDB (from then on it is queryable), as ingest measures it;
- stored vs published: counted in InfluxDB at the end, so a lost reading shows;
- CPU% (of one core) and RSS of every process; ``rss_start_mb``/``rss_end_mb`` of the ingest
  workers at the start and end of the window (flat over ``--duration 600`` means no leak);
- with ``--outage S``: influxd is killed S seconds into the window and started again;
  ``catch_up_s`` is from its restart until ingest is back within one second of the
  offered load, and ``catch_up_readings_per_s`` the write rate meanwhile.

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import INFLUXD, port_open, start_influx, start_mosquitto  # noqa: E402
from tests.test_ingest_deploy import deploy_lines  # noqa: E402
from wire import MqttSettings  # noqa: E402
from wire.mqtt import make_client  # noqa: E402
from wire.topics import TelemetryTopic  # noqa: E402

SITE = "bench"


def publisher(idx: int, port: int, devices: list[str], metrics: int, samples: int, msg_rate: float,
              duration_s: float, start_at: float, result: Any) -> None:
    """Publish ``msg_rate`` messages/s of ``metrics x samples`` readings, round-robin over devices."""
    client = make_client(MqttSettings(port=port), f"bench-pub-{idx}", max_inflight=1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topics = [TelemetryTopic(SITE, f"gw{idx}", d).format() for d in devices]
    names = [f"m{k}" for k in range(metrics)]
    last_ts = dict.fromkeys(devices, 0)
    while time.time() < start_at:
        time.sleep(0.01)
    sent_msgs = sent = seq = 0
    t0 = time.time()
    while True:
        now = time.time()
        if now - t0 >= duration_s:
            break
        due = int((now - t0) * msg_rate) - sent_msgs
        for _ in range(due):
            i = sent_msgs % len(devices)
            dev = devices[i]
            now_ms = int(time.time() * 1000)
            first = max(now_ms - samples + 1, last_ts[dev] + 1)
            last_ts[dev] = first + samples - 1
            parts = [
                f'{{"ts_ms":{first + s},"metric":"{n}","value":{(seq + s + k) % 1000 / 10}}}'
                for s in range(samples) for k, n in enumerate(names)
            ]
            payload = f'{{"v":1,"seq":{seq},"readings":[{",".join(parts)}]}}'.encode()
            client.publish(topics[i], payload, qos=1)
            seq += 1
            sent_msgs += 1
            sent += samples * metrics
        time.sleep(0.002)
    # Wait for the broker to have acknowledged everything we published.
    deadline = time.time() + 60
    while client._out_messages and time.time() < deadline:  # paho keeps unacked QoS 1 here
        time.sleep(0.05)
    client.disconnect()
    client.loop_stop()
    result[idx] = sent


class Sampler:
    """CPU seconds and RSS of a process over the steady window."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.cpu0 = 0.0
        self.rss_max = 0

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system + getattr(t, "children_user", 0) + getattr(t, "children_system", 0))

    def begin(self) -> None:
        self.cpu0 = self._cpu()

    def sample(self) -> None:
        self.rss_max = max(self.rss_max, self.proc.memory_info().rss)

    def end(self, wall_s: float) -> tuple[float, float]:
        return 100 * (self._cpu() - self.cpu0) / wall_s, self.rss_max / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50_000, help="offered readings/s (default 50000)")
    ap.add_argument("--duration", type=float, default=20, help="seconds of steady load (default 20)")
    ap.add_argument("--warmup", type=float, default=3, help="seconds before the window starts (default 3)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    ap.add_argument("--devices", type=int, default=200, help="devices in all (default 200)")
    ap.add_argument("--metrics", type=int, default=10, help="metrics per device (default 10)")
    ap.add_argument("--samples", type=int, default=10,
                    help="samples per metric in one message; readings/message = metrics x samples")
    ap.add_argument("--workers", type=int, default=1, help="ingest worker processes (default 1)")
    ap.add_argument("--outage", type=float, default=0,
                    help="seconds of InfluxDB outage, starting 5 s into the window (default 0: none)")
    ap.add_argument("--inflight", type=int, default=100,
                    help="broker inflight window per client = ingest batch_max_messages (default 100)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    influx = start_influx(tmp / "influx")
    (_host, mq_port, stop_mosquitto), mosquitto = start_mosquitto(tmp / "mosquitto", [
        *deploy_lines(tmp / "mosquitto-data"),
        f"max_inflight_messages {args.inflight}",
    ])
    mosq_pid = mosquitto.pid
    influx.create_database("bench")
    stats: dict[int, list[tuple[float, dict[str, float]]]] = {}
    workers: list[subprocess.Popen[str]] = []
    readers = []
    subscribed: list[threading.Event] = []
    for w in range(args.workers):
        env = {
            **os.environ,
            "VIGIL_INGEST_MQTT__PORT": str(mq_port),
            "VIGIL_INGEST_STORE__INFLUX_URL": influx.url,
            "VIGIL_INGEST_STORE__INFLUX_BUCKET": "bench",
            "VIGIL_INGEST_CLIENT_ID": f"bench-ingest-{w}",
            "VIGIL_INGEST_BATCH_MAX_MESSAGES": str(args.inflight),
            "VIGIL_INGEST_STATS_INTERVAL_S": "1",
            "VIGIL_INGEST_RETRY_MAX_S": "1",
            **({"VIGIL_INGEST_SEEN_INTERVAL_S": "60"} if os.environ.get("BENCH_NO_GOSSIP") else {}),
        }
        proc = subprocess.Popen([str(ROOT / ".venv/bin/vigil"), "ingest"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        workers.append(proc)
        stats[w] = []
        subscribed.append(threading.Event())
        reader = threading.Thread(target=read_stats, args=(proc, stats[w], subscribed[w]), daemon=True)
        reader.start()
        readers.append(reader)
    # Publish only once every worker has subscribed: before the group's first subscription the
    # broker has nobody to queue for and drops what is published (that, not ingest, was the
    # "lost readings" of earlier runs whose workers started slowly).
    deadline = time.time() + 120
    for event in subscribed:
        if not event.wait(max(0.0, deadline - time.time())):
            sys.exit("bench: an ingest worker did not subscribe within 120 s; see its errors above")

    per_pub = args.devices // args.publishers
    readings_per_msg = args.metrics * args.samples
    msg_rate = args.rate / readings_per_msg / args.publishers
    total_s = args.warmup + args.duration
    manager = mp.Manager()
    result = manager.dict()
    start_at = time.time() + 1
    pubs = [mp.Process(target=publisher, args=(
        i, mq_port, [f"dev-{i}-{d:04d}" for d in range(per_pub)], args.metrics, args.samples, msg_rate,
        total_s, start_at, result)) for i in range(args.publishers)]
    for p in pubs:
        p.start()
    samplers = {"ingest": [Sampler(w.pid) for w in workers], "mosquitto": [Sampler(mosq_pid)],
                "influxd": [Sampler(influx.influxd_pid)], "publishers": [Sampler(p.pid or 0) for p in pubs]}
    time.sleep(start_at - time.time() + args.warmup)
    t1 = time.time()
    for group in samplers.values():
        for s in group:
            s.begin()
    rss_start = sum(sm.proc.memory_info().rss for sm in samplers["ingest"]) / 2**20
    outage_at = t1 + 5 if args.outage else None
    rss_outage = rss_catch_up = 0.0

    def ingest_rss() -> float:
        return sum(sm.proc.memory_info().rss for sm in samplers["ingest"] if sm.proc.is_running()) / 2**20

    restarted_at: float | None = None
    stored_at_restart = 0.0
    caught_up_at: float | None = None
    restarted: subprocess.Popen[bytes] | None = None
    while time.time() - t1 < args.duration or (restarted_at is not None and caught_up_at is None
                                                and time.time() - restarted_at < 300):
        time.sleep(0.5)
        now = time.time()
        if now - t1 < args.duration:
            for group in samplers.values():
                for s in group:
                    if s.proc.is_running():
                        s.sample()
        if outage_at is not None and now >= outage_at and restarted_at is None and restarted is None:
            os.kill(influx.influxd_pid, signal.SIGKILL)
            print(f"influxd killed for {args.outage:.0f} s", file=sys.stderr)
            back_at = time.time() + args.outage
            while time.time() < back_at:  # ingest's RSS while it holds a batch it cannot write
                time.sleep(0.5)
                rss_outage = max(rss_outage, ingest_rss())
            restarted = restart_influxd(influx)
            restarted_at = now = time.time()
            stored_at_restart = total_readings(stats, restarted_at)
            print(f"influxd back; backlog {args.rate * (restarted_at - start_at) - stored_at_restart:.0f} "
                  "readings", file=sys.stderr)
            continue
        if restarted_at is not None and caught_up_at is None:
            rss_catch_up = max(rss_catch_up, ingest_rss())
            offered = args.rate * (min(now, start_at + total_s) - start_at)
            # Within two seconds of traffic: ingest's stats lines come once a second.
            if total_readings(stats, now) >= offered - 2 * args.rate:
                caught_up_at = now
    t2 = min(time.time(), t1 + args.duration)
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    for name, group in samplers.items():
        ends = [s.end(t2 - t1) for s in group]
        cpu[name] = sum(f[0] for f in ends)
        rss[name] = sum(f[1] for f in ends)
    rss_end = sum(sm.proc.memory_info().rss for sm in samplers["ingest"]) / 2**20
    # Ingest logs cumulative counters every second; rate over the entries inside the window.
    rate = 0.0
    for series in stats.values():
        window = [(t, s["readings"]) for t, s in series if t1 <= t <= t2]
        (ta, ra), (tb, rb) = window[0], window[-1]
        rate += (rb - ra) / (tb - ta)
    for p in pubs:
        p.join()
    published = sum(result.values())
    # Let ingest finish what the broker holds, then count what InfluxDB has.
    deadline = time.time() + 120
    while time.time() < deadline and total_readings(stats, time.time()) < published:
        time.sleep(0.5)
    for proc in workers:
        proc.send_signal(signal.SIGINT)
    for proc in workers:
        proc.wait(30)
    for reader in readers:
        reader.join(5)
    finals = [series[-1][1] for series in stats.values()]
    for w, f in enumerate(finals):
        print(f"worker {w} final stats: {json.dumps(f)}", file=sys.stderr)
    counted = influx.query('SELECT count("value") FROM /^m[0-9]+$/', db="bench")
    stored = sum(s["values"][0][1] for r in counted["results"] for s in r.get("series", []))
    stop_mosquitto()
    influx.stop()
    if restarted is not None:
        restarted.terminate()
        restarted.wait(30)

    figures: dict[str, float] = {
        "workers": args.workers,
        "offered_readings_per_s": args.rate,
        "readings_per_s": round(rate, 1),
        # Each worker reports its own quantiles; the worst is reported, so it never flatters.
        "p50_s": max(f["latency_p50_s"] for f in finals),
        "p99_s": max(f["latency_p99_s"] for f in finals),
        "published_readings": published,
        "stored_readings": stored,
        "lost_readings": published - stored,
        "dead_letters": sum(f["dead_letters"] for f in finals),
        "duplicates": sum(f.get("duplicates", 0) for f in finals),
        "readings_per_message": readings_per_msg,
        "duration_s": args.duration,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_mb": round(rss_end, 1),
        **{f"{k}_cpu_pct": round(v, 1) for k, v in cpu.items()},
        **{f"{k}_rss_max_mb": round(v, 1) for k, v in rss.items()},
    }
    if restarted_at is not None:
        figures["outage_s"] = args.outage
        figures["ingest_rss_outage_max_mb"] = round(rss_outage, 1)
        figures["ingest_rss_catch_up_max_mb"] = round(rss_catch_up, 1)
        figures["catch_up_s"] = round(caught_up_at - restarted_at, 1) if caught_up_at else -1
        if caught_up_at:
            written = total_readings(stats, caught_up_at) - stored_at_restart
            figures["catch_up_readings_per_s"] = round(written / max(caught_up_at - restarted_at, 1e-3))
    for k, v in figures.items():
        print(f"{k:>28}: {v}")
    print(json.dumps(figures))


def read_stats(proc: subprocess.Popen[str], out: list[tuple[float, dict[str, float]]],
               subscribed: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if "ingest: subscribed" in line:
            subscribed.set()
        elif "ingest stats " in line:
            out.append((time.time(), json.loads(line.split("ingest stats ", 1)[1])))
        elif "ERROR" in line or "Traceback" in line or "CRITICAL" in line:
            print("ingest:", line.rstrip()[:300], file=sys.stderr)


def total_readings(stats: dict[int, list[tuple[float, dict[str, float]]]], at: float) -> float:
    """Readings written by all workers, by their latest stats line at or before ``at``."""
    total = 0.0
    for series in stats.values():
        seen = [s["readings"] for t, s in list(series) if t <= at]
        total += seen[-1] if seen else 0
    return total


def restart_influxd(influx: Any) -> subprocess.Popen[bytes]:
    """influxd again from its own config (same ports and data); nginx in front never stopped."""
    proc = subprocess.Popen([INFLUXD, "-config", str(influx.folder / "influxd.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = int(influx.influx_url.rsplit(":", 1)[1])
    deadline = time.time() + 30
    while not port_open("127.0.0.1", port) and time.time() < deadline:
        time.sleep(0.05)
    return proc


if __name__ == "__main__":
    main()
