"""Simulated fleet at scale: how many devices one process publishes through the edge runtime.

Starts a private Mosquitto (inflight window and queue raised, TCP_NODELAY), builds a fleet
of ``--devices`` simulated devices under ``--agents`` edge agents (one paho client each)
in this one process, polls every device once per ``--interval`` seconds, and measures over
the steady window after ``--warmup``:

- readings_per_s / messages_per_s: acknowledged by the broker (QoS 1) per second;
- polls_per_s: device polls per second (one telemetry message each), against the
  ``devices / interval`` the schedule asks for (``kept_up`` says whether it did);
- lag_p50_s / lag_p99_s / lag_max_s: per scheduler tick, how far the most overdue device
  was behind its schedule (wall seconds), so ``lag_p99_s <= 1`` means every device was
  read within a second of when it was due;
- kb_per_device: the process's resident memory growth per device, once every device has
  been read (models, agent cores, runtimes and their clients);
- cpu_pct: CPU of this process over the window (100 = one core); cpu_us_per_poll and
  polls_per_core_s: its CPU per device poll, and so how many polls a second one whole core
  carries (the machine's load average is printed too: on a shared machine the process may
  get less than a core, and then falls behind however cheap a poll is).

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulators.fleet import Progress, build_fleet, percentile, plan_fleet  # noqa: E402
from tests.services import start_mosquitto  # noqa: E402
from wire import MqttSettings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=10,
                    help="edge agents (MQTT clients), over the sites; fewer cost less CPU per poll, "
                    "but each client's network thread carries only so many acknowledgements a second")
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between polls of a device")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds measured, after the warm-up")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    ap.add_argument("--inflight", type=int, default=1000, help="QoS 1 window, broker and clients")
    ap.add_argument("--tick", type=float, default=0.1, help="scheduler tick, seconds")
    ap.add_argument("--check-readings", action="store_true",
                    help="keep the edge's contract check of every payload (off: the models are tested)")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="random faults per device per day")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="sys.setswitchinterval for this process (Python's default is 0.005 s)")
    args = ap.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    proc = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="vigil-bench-fleet-") as tmp:
        (_host, port, stop_mosquitto), _broker = start_mosquitto(Path(tmp) / "mosquitto", [
            f"max_inflight_messages {args.inflight}",
            "max_queued_messages 1000000",
            "set_tcp_nodelay true",
        ])
        try:
            run(args, port, proc)
        finally:
            stop_mosquitto()


def run(args: argparse.Namespace, port: int, proc: psutil.Process) -> None:
    per_site = max(1, args.agents // args.sites)
    plan = plan_fleet(seed=1, devices=args.devices, sites=args.sites, agents_per_site=per_site,
                      interval_s=args.interval)
    rss0 = proc.memory_info().rss
    faults = []
    if args.fault_rate > 0:
        from simulators.scenario import random_faults

        faults = random_faults(plan.placements(), seed=1, rate_per_day=args.fault_rate,
                               start_ms=int(time.time() * 1000), horizon_s=args.warmup + args.duration + 60)
    fleet = build_fleet(plan, MqttSettings(port=port), check_readings=args.check_readings,
                        max_inflight=args.inflight, max_queued_messages=1_000_000, tick_s=args.tick,
                        faults=faults)
    stop = threading.Event()
    progress: list[Progress] = []

    def show(p: Progress) -> None:
        progress.append(p)
        print(p.line(), flush=True)

    thread = threading.Thread(target=fleet.run, args=(stop,), kwargs={"on_progress": show, "progress_s": 2.0},
                              name="fleet")
    thread.start()
    try:
        if not fleet.wait_online(30):
            raise SystemExit("the agents did not connect to the private Mosquitto within 30 s")
        time.sleep(args.warmup)
        rss1 = proc.memory_info().rss
        fleet.take_lags()
        stats0 = fleet.stats()
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        time.sleep(args.duration)
        stats1 = fleet.stats()
        cpu1, t1 = proc.cpu_times(), time.monotonic()
        lags = fleet.take_lags()
    finally:
        stop.set()
        thread.join(60)
    window = t1 - t0
    readings = sum(s.readings_acked for s in stats1) - sum(s.readings_acked for s in stats0)
    messages = sum(s.messages_acked for s in stats1) - sum(s.messages_acked for s in stats0)
    polls = sum(s.polls for s in stats1) - sum(s.polls for s in stats0)
    skipped = sum(s.skipped_polls for s in stats1) - sum(s.skipped_polls for s in stats0)
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    asked = args.devices / args.interval
    figures = {
        "devices": args.devices,
        "agents": len(plan.agents),
        "interval_s": args.interval,
        "polls_asked_per_s": round(asked, 1),
        "polls_per_s": round(polls / window, 1),
        "messages_per_s": round(messages / window, 1),
        "readings_per_s": round(readings / window, 1),
        "skipped_polls": skipped,
        "lag_p50_s": round(percentile(lags, 0.5), 4),
        "lag_p99_s": round(percentile(lags, 0.99), 4),
        "lag_max_s": round(max(lags, default=0.0), 4),
        "kept_up": polls >= 0.98 * asked * window and percentile(lags, 0.99) <= 1.0,
        "kb_per_device": round((rss1 - rss0) / 1024 / args.devices, 2),
        "rss_mb": round(rss1 / 2**20, 1),
        "cpu_pct": round(100 * cpu_s / window, 1),
        # CPU per device poll (model, message, publish, its PUBACK): what a core can carry,
        # whatever else the machine is doing; 1e6 / it is polls/s per fully available core.
        "cpu_us_per_poll": round(1e6 * cpu_s / max(polls, 1), 1),
        "polls_per_core_s": round(polls / max(cpu_s, 1e-9)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "check_readings": args.check_readings,
        "window_s": round(window, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
