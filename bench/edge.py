"""One edge agent with its disk outbox: throughput, backlog drain and outbox size.

Starts a private Mosquitto and, in a child process, an *acker* that stands in for ingest:
it subscribes to the agent's telemetry and acknowledges every sequence number it received
(``wire.agent.Ack``) every 100 ms, and measures how late live readings arrive. (Ingest's own
write throughput is bench/ingest.py's business; here the agent is measured.) Then:

1. throughput: one agent (``--devices`` simulated devices of ``--points`` readings per
   poll, one message per poll, polled every ``--fast-interval`` s: more than it can do)
   polls, stamps, commits to the outbox, publishes and deletes on ack for ``--duration``
   s: ``readings_per_s`` is what the broker acknowledged per second (the whole
   poll-stamp-queue-publish path), ``messages_queued_per_s`` what went into the outbox;
2. backlog drain: the outbox is filled with ``--backlog`` readings (default 300,000:
   500 devices x 10 min at 1/s) stamped over the last 10 minutes, as an outage leaves it;
   the agent then starts with those 500 devices live at 1/s. ``backlog_drain_s`` is the
   time until every backlog message is acknowledged; ``live_p99_s`` is the p99 of
   (arrival at the acker - reading time) of live readings meanwhile (target: drain
   <= 120 s with live p99 <= 5 s). ``--outage S`` instead stops the broker for S seconds
   under the live load (e.g. the 60-s outage of the issue) and measures its drain;
3. ``outbox_bytes_per_reading``: the SQLite files' size (database + WAL) per held reading.

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.agent import Agent, PollPlan  # noqa: E402
from edge.drivers import SimulatedDriver  # noqa: E402
from edge.drivers.simulated import SimulatedOptions, WaveformSource  # noqa: E402
from edge.health import percentile  # noqa: E402
from edge.outbox import Outbox, OutboxLimits  # noqa: E402
from edge.runtime import AgentRuntime, Scheduler, wall_ms  # noqa: E402
from tests.services import start_mosquitto  # noqa: E402
from wire import MqttSettings, encode  # noqa: E402
from wire.agent import Ack  # noqa: E402
from wire.payloads import decode_telemetry  # noqa: E402
from wire.topics import AckTopic, telemetry_filter  # noqa: E402

SITE, AGENT = "bench", "gw1"


def acker(port: int, results: Any, stop: Any) -> None:
    """Child process: acknowledge every telemetry seq received; report live latencies."""
    import msgspec

    from wire.mqtt import make_client

    lock = threading.Lock()
    seqs: list[int] = []
    lat: list[float] = []
    counts = {"received": 0, "historical": 0}

    class Head(msgspec.Struct):
        seq: int
        historical: bool = False

    head = msgspec.json.Decoder(Head)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        # A replayed message only needs its number (cheap); a live one is decoded in full for
        # its reading time. The bench's readings are one per message.
        h = head.decode(msg.payload)
        now = time.time() * 1000
        t = None if h.historical else decode_telemetry(msg.payload)
        with lock:
            seqs.append(h.seq)
            counts["received"] += 1
            if t is None:
                counts["historical"] += 1
            else:
                lat.append((now - t.readings[0].ts_ms) / 1000.0)

    client = make_client(MqttSettings(port=port), "bench-acker", max_inflight=1000)
    client.on_message = on_message
    # Subscribed on every connect: the broker may be restarted (--outage), with a clean session.
    client.on_connect = lambda c, u, f, r, p: c.subscribe(telemetry_filter(SITE, AGENT), qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic = AckTopic(SITE, AGENT).format()
    while not stop.is_set():
        time.sleep(0.1)
        with lock:
            batch, seqs[:] = sorted(set(seqs)), []
            report, lat[:] = (dict(counts), list(lat)), []
        results.put(report)
        ranges: list[tuple[int, int]] = []
        for s in batch:
            if ranges and s == ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], s)
            else:
                ranges.append((s, s))
        for i in range(0, len(ranges), 10_000):
            ack = Ack(v=1, worker="bench", ts_ms=wall_ms(), ranges=tuple(ranges[i : i + 10_000]))
            client.publish(topic, encode(ack), qos=1)
    client.disconnect()
    client.loop_stop()


class AckerProcess:
    def __init__(self, port: int) -> None:
        ctx = mp.get_context("spawn")
        self.results: Any = ctx.Queue()
        self.stop_event: Any = ctx.Event()
        self.proc = ctx.Process(target=acker, args=(port, self.results, self.stop_event), daemon=True)
        self.proc.start()
        self.received = 0
        self.historical = 0
        self.latencies: list[float] = []

    def collect(self) -> None:
        while not self.results.empty():
            counts, lat = self.results.get()
            self.received, self.historical = counts["received"], counts["historical"]
            self.latencies.extend(lat)

    def close(self) -> None:
        self.stop_event.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()


def drivers(n: int, points: int = 1) -> dict[str, SimulatedDriver]:
    """``n`` simulated devices of ``points`` waveform points each (one reading per point and poll)."""
    out = {}
    for i in range(n):
        spec = [
            {
                "metric": f"temp{p}_c",
                "unit": "degC",
                "base": 21,
                "amplitude": 2,
                "period_s": 600,
                "noise": 0.1,
            }
            for p in range(points)
        ]
        options = SimulatedOptions.model_validate({"seed": i, "points": spec})
        out[f"dev-{i:04d}"] = SimulatedDriver(WaveformSource(options))
    return out


# The agent's MQTT window (edge.settings default). Larger is slower: paho walks its whole
# window of unacknowledged messages on every PUBACK (Client._update_inflight).
INFLIGHT = 100


def runtime(port: int, outbox: Outbox, devices: int, interval_s: float, points: int = 1) -> AgentRuntime:
    ds = drivers(devices, points)
    core = Agent(
        site=SITE,
        agent=AGENT,
        boot=outbox.boot,
        first_seq=outbox.next_seq,
        devices=[PollPlan(d, max(1, round(interval_s * 1000)), kind="sensor") for d in ds],
    )
    return AgentRuntime(
        core,
        ds,
        MqttSettings(port=port),
        outbox=outbox,
        max_inflight=INFLIGHT,
        max_queued_messages=100_000,
        health_interval_s=5,
    )


def file_bytes(path: Path) -> int:
    """Database and WAL bytes, after a checkpoint (the WAL is a transient, reused file)."""
    with sqlite3.connect(path, timeout=5) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def held_below(path: Path, seq: int) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return int(db.execute("SELECT count(*) FROM messages WHERE seq < ?", (seq,)).fetchone()[0])


def throughput(args: argparse.Namespace, port: int, folder: Path, ack: AckerProcess) -> dict[str, float]:
    box = Outbox(
        folder / "tp.outbox", identity=f"{SITE}/{AGENT}", now_ms=wall_ms(), synchronous=args.synchronous
    )
    rt = runtime(port, box, args.devices, args.fast_interval, args.points)
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler([rt]).run, args=(stop,), name="agent")
    thread.start()
    try:
        time.sleep(args.warmup)
        ack.collect()
        s0, q0, t0 = rt.stats(), box.next_seq, time.monotonic()
        time.sleep(args.duration)
        ack.collect()
        s1, q1, t1 = rt.stats(), box.next_seq, time.monotonic()
    finally:
        stop.set()
        thread.join(30)
    held = box.stats().depth
    box.close()
    window = t1 - t0
    return {
        # Polled, stamped, committed to the outbox, published and acknowledged by the broker.
        "readings_per_s": round((s1.readings_acked - s0.readings_acked) / window, 1),
        "messages_queued_per_s": round((q1 - q0) / window, 1),
        "readings_asked_per_s": round(args.devices * args.points / args.fast_interval, 1),
        "messages_per_s": round((s1.messages_acked - s0.messages_acked) / window, 1),
        "held_at_end": held,
    }


def prefill(box: Outbox, devices: int, backlog: int, span_s: float) -> float:
    """Fill the outbox as an outage of ``span_s`` leaves it; return the seconds it took."""
    t0 = time.monotonic()
    ds = drivers(devices)
    core = Agent(
        site=SITE,
        agent=AGENT,
        boot=box.boot,
        first_seq=box.next_seq,
        check_readings=False,
        devices=[PollPlan(d, 1000, kind="sensor") for d in ds],
    )
    rounds = max(1, backlog // devices)
    start = wall_ms() - int(span_s * 1000)
    step = span_s * 1000 / rounds
    for r in range(rounds):
        now = start + int(r * step)
        batch = []
        for name, drv in ds.items():
            for p in core.telemetry(name, drv.read(now)):
                batch.append((p.message.seq, p.topic, p.payload))  # type: ignore[union-attr]
        box.add(batch, now, online=False)
    return time.monotonic() - t0


def cpu_s(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = 0.0
    return out


def drain(
    args: argparse.Namespace, port: int, folder: Path, ack: AckerProcess, broker: Broker
) -> dict[str, float]:
    restart_broker = broker.outage
    path = folder / "drain.outbox"
    box = Outbox(
        path,
        identity=f"{SITE}/{AGENT}",
        now_ms=wall_ms(),
        synchronous=args.synchronous,
        limits=OutboxLimits(replay_window=args.replay_window, replay_batch=args.replay_batch),
    )
    figures: dict[str, float] = {}
    if args.outage is None:
        figures["prefill_s"] = round(prefill(box, args.live_devices, args.backlog, 600.0), 1)
        figures["outbox_bytes_per_reading"] = round(file_bytes(path) / max(1, box.stats().depth), 1)
        backlog_end = box.next_seq
        print(
            f"backlog of {backlog_end} readings written in {figures['prefill_s']} s "
            f"({file_bytes(path) / 2**20:.1f} MiB)",
            flush=True,
        )
    rt = runtime(port, box, args.live_devices, 1.0)
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler([rt]).run, args=(stop,), name="agent")
    try:
        if args.outage is not None:
            thread.start()
            time.sleep(3)
            restart_broker(args.outage)  # stops it for --outage seconds, under the live load
            backlog_end = box.next_seq
            figures["outbox_bytes_per_reading"] = round(file_bytes(path) / max(1, box.stats().depth), 1)
            figures["outage_readings"] = box.stats().depth
        ack.collect()
        ack.latencies.clear()
        procs = {"agent": psutil.Process(), "acker": psutil.Process(ack.proc.pid), "broker": broker.process()}
        cpu0 = cpu_s(procs)
        t0 = time.monotonic()
        if args.outage is None:
            thread.start()
        while held_below(path, backlog_end) > 0:
            if time.monotonic() - t0 > args.max_drain:
                print(
                    f"gave up after {args.max_drain} s: {held_below(path, backlog_end)} still held",
                    flush=True,
                )
                break
            time.sleep(0.5)
            ack.collect()
            print(
                f"  {time.monotonic() - t0:5.1f} s: {held_below(path, backlog_end):7d} "
                "backlog readings left, "
                f"live p99 so far {percentile(ack.latencies, 0.99):.2f} s",
                flush=True,
            )
        figures["backlog_drain_s"] = round(time.monotonic() - t0, 1)
        cpu1 = cpu_s(procs)
        for name in procs:  # where the CPU went (100 = one core): the drain is CPU-bound
            figures[f"{name}_cpu_pct"] = round(
                100 * (cpu1[name] - cpu0[name]) / figures["backlog_drain_s"], 1
            )
        figures["load_avg_1m"] = round(psutil.getloadavg()[0], 2)
        time.sleep(1)
        ack.collect()
        figures["live_p99_s"] = round(percentile(ack.latencies, 0.99), 3)
        figures["live_readings_during_drain"] = len(ack.latencies)
        figures["backlog_readings"] = backlog_end
    finally:
        stop.set()
        thread.join(30)
        box.close()
    return figures


class Broker:
    """A private Mosquitto and the acker on it, for one phase (no leftovers between phases)."""

    LINES = ("max_inflight_messages 1000", "max_queued_messages 1000000", "set_tcp_nodelay true")

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.starts = 0
        self._stop = self._start(None)
        self.port = self._port
        self.ack = AckerProcess(self.port)
        time.sleep(1.5)  # the acker subscribed

    def _start(self, port: int | None) -> Any:
        self.starts += 1
        (_h, self._port, stop), self._proc = start_mosquitto(
            self.folder / f"mosquitto-{self.starts}", self.LINES, port=port
        )
        return stop

    def process(self) -> psutil.Process:
        return psutil.Process(self._proc.pid)

    def outage(self, seconds: float) -> None:
        self._stop()
        print(f"broker stopped for {seconds:.0f} s", flush=True)
        time.sleep(seconds)
        self._stop = self._start(self.port)

    def close(self) -> None:
        self.ack.close()
        self._stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000, help="devices of the throughput run")
    ap.add_argument("--points", type=int, default=10, help="readings per poll of each (a meter's registers)")
    ap.add_argument("--fast-interval", type=float, default=0.2, help="their poll interval, s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured in the throughput run")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--live-devices", type=int, default=500, help="devices polled at 1/s during the drain")
    ap.add_argument("--backlog", type=int, default=300_000, help="readings in the outbox before the drain")
    ap.add_argument(
        "--outage",
        type=float,
        default=None,
        help="instead of a pre-filled backlog, stop the broker this many seconds under load",
    )
    ap.add_argument("--replay-window", type=int, default=5_000)
    ap.add_argument("--replay-batch", type=int, default=1_000)
    ap.add_argument("--max-drain", type=float, default=300.0, help="give up the drain after this, s")
    ap.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-edge-") as tmp:
        folder = Path(tmp)
        if not args.skip_throughput:
            b = Broker(folder / "tp")
            try:
                figures.update(throughput(args, b.port, folder, b.ack))
            finally:
                b.close()
            print(f"throughput: {figures}", flush=True)
        b = Broker(folder / "drain")
        try:
            figures.update(drain(args, b.port, folder, b.ack, b))
        finally:
            b.close()
        figures["synchronous"] = args.synchronous
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
