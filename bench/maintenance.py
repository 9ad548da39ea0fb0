"""Maintenance figures: anomaly events into work orders, work order list latency, CSV import.

- events_per_s: anomaly events applied per second by the consumer's batch path
  (``maintenance.service.apply_messages``: decode, dedupe, work order create/attach/clear,
  audit rows; one committed transaction per batch of 200, as ``vigil maintenance`` does),
  over a mix of new faults, replays, updates and clears on 2,000 devices;
- list_p50_s / list_p99_s: ``GET /api/v1/work-orders`` with random filters and pages, through
  the real app (FastAPI TestClient, no network), with ``--work-orders`` orders stored;
- import_10k_s: ``POST /api/v1/assets/import`` of a ``--csv-rows`` CSV of new equipment.

The database is a fresh SQLite file by default (``--database-url`` for PostgreSQL; a
database there must be empty). The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from api.main import create_app  # noqa: E402
from api.settings import ApiSettings  # noqa: E402
from ingest.store import StoreSettings, open_store  # noqa: E402
from maintenance import core  # noqa: E402
from maintenance.db import open_engine  # noqa: E402
from maintenance.models import WorkOrder  # noqa: E402
from maintenance.service import Message, Stats, apply_messages  # noqa: E402
from maintenance.workorders import Policy  # noqa: E402
from tests.services import auth_headers  # noqa: E402
from wire import AlarmTopic  # noqa: E402
from wire.anomaly import Anomaly, AnomalyState  # noqa: E402
from wire.payloads import Severity  # noqa: E402

T0 = 1_795_000_000_000
SEVERITIES: tuple[Severity, ...] = ("critical", "major", "minor", "warning")
FAULTS = ("vibration_high", "sensor_stuck", "flow_low", "temp_drift")


def events(n: int, devices: int, rng: random.Random) -> list[Message]:
    """``n`` events: each anomaly opens, is updated, maybe replayed, then clears."""
    out: list[Message] = []
    k = 0
    while len(out) < n:
        dev = f"pump-{rng.randrange(devices):04d}"
        fault = rng.choice(FAULTS)
        aid = f"a{k}"
        ts = T0 + k * 1000
        k += 1
        topic = AlarmTopic("bench", dev).format()
        sev = rng.choice(SEVERITIES)
        steps: tuple[tuple[AnomalyState, int], ...] = (
            ("open", 0),
            ("updated", 10),
            ("updated", 20),
            ("cleared", 30),
        )
        for state, dt in steps:
            a = Anomaly(
                v=1,
                id=aid,
                state=state,
                ts_ms=ts + dt,
                started_ms=ts,
                severity=sev,
                fault=fault,
                summary=f"{fault} on {dev}",
                kind="pump",
                cleared_ms=ts + dt if state == "cleared" else None,
            )
            body = msgspec.json.encode(a)
            out.append(Message(len(out), 1, topic, body))
            if rng.random() < 0.2:  # redelivered
                out.append(Message(len(out), 1, topic, body))
    return out[:n]


def bench_events(url: str, n: int, batch: int) -> tuple[float, Stats]:
    engine = open_engine(url)
    msgs = events(n, 2000, random.Random(1))
    stats = Stats()
    policy = Policy()
    t0 = time.perf_counter()
    for i in range(0, len(msgs), batch):
        with Session(engine) as s, s.begin():
            apply_messages(s, msgs[i : i + batch], now_ms=T0 + i, policy=policy, stats=stats)
    elapsed = time.perf_counter() - t0
    engine.dispose()
    return len(msgs) / elapsed, stats


def fill(url: str, total: int) -> None:
    engine = open_engine(url)
    rng = random.Random(2)
    states = (
        "new",
        "assigned",
        "in_progress",
        "on_hold",
        "resolved",
        "closed",
        "closed",
        "closed",
        "cancelled",
    )
    rows = []
    for i in range(total):
        state = rng.choice(states)
        created = T0 + i * 1000
        rows.append(
            {
                "title": f"bench order {i}",
                "description": "",
                "source": rng.choice(("anomaly", "manual", "pm")),
                "state": state,
                "priority": rng.choice(core.PRIORITIES),
                "site_id": f"site-{rng.randrange(20)}",
                "device": f"pump-{rng.randrange(5000):04d}",
                "fault": rng.choice(FAULTS),
                "assignee": rng.choice(("tom", "ann", "raj", "li", None)),
                "crew": rng.choice(("mech", "elec", None)),
                "requested_by": "bench",
                "created_ms": created,
                "updated_ms": created,
                "occurrences": 1,
                "anomaly_active": False,
                "reopened": 0,
                "respond_due_ms": created + 3_600_000,
                "resolve_due_ms": created + 86_400_000,
            }
        )
    with engine.begin() as conn:
        for i in range(0, total, 10_000):
            conn.execute(insert(WorkOrder), rows[i : i + 10_000])
        # Planner statistics, as a running system has them (PostgreSQL's autovacuum; the
        # maintenance sweep's PRAGMA optimize on SQLite).
        conn.execute(text("ANALYZE"))
    engine.dispose()


def bench_list(client: TestClient, queries: int) -> list[float]:
    rng = random.Random(3)
    times = []
    for _ in range(queries):
        params: dict[str, object] = {"limit": rng.choice((20, 50, 100))}
        for name, values in (
            ("state", ("new", "assigned", "in_progress", "resolved", "closed")),
            ("priority", core.PRIORITIES),
            ("site", [f"site-{i}" for i in range(20)]),
            ("assignee", ("tom", "ann", "raj")),
            ("crew", ("mech", "elec")),
            ("open", ("true", "false")),
            ("source", ("anomaly", "manual", "pm")),
        ):
            if rng.random() < 0.35:
                params[name] = rng.choice(values)
        if rng.random() < 0.3:
            params["cursor"] = rng.randrange(1, 100_000)
        t0 = time.perf_counter()
        r = client.get("/api/v1/work-orders", params=params)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
    return times


def csv_text(rows: int) -> str:
    lines = [
        "site,building,floor,space,code,name,kind,manufacturer,model,serial,install_date,criticality,devices"
    ]
    kinds = ("pump", "chiller", "ahu", "door", "power_meter")
    for i in range(rows):
        kind = kinds[i % len(kinds)]
        lines.append(
            f"csv-site-{i % 5},B{i % 7},L{i % 30},R{i % 50},EQ-{i:05d},{kind} {i},{kind},Acme,M{i % 9},"
            f"SN{i},2024-01-{1 + i % 28:02d},{('low', 'medium', 'high', 'critical')[i % 4]},dev-{i:05d}"
        )
    return "\n".join(lines) + "\n"


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="anomaly events to apply (default 20000)")
    p.add_argument("--batch", type=int, default=200, help="events per transaction (default 200)")
    p.add_argument("--work-orders", type=int, default=100_000, help="orders stored for the list test")
    p.add_argument("--queries", type=int, default=500, help="list requests to time (default 500)")
    p.add_argument("--csv-rows", type=int, default=10_000, help="rows of the imported CSV (default 10000)")
    p.add_argument("--database-url", default=None, help="default: a fresh SQLite file in a temp folder")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="vigil-bench-maint-") as tmp:
        base = args.database_url
        url_events = base or f"sqlite:///{tmp}/events.db"
        url_list = base or f"sqlite:///{tmp}/list.db"
        rate, stats = bench_events(url_events, args.events, args.batch)
        print(
            f"events: {args.events} in batches of {args.batch}: {rate:,.0f} events/s "
            f"({stats.applied} applied, {stats.duplicates} replays ignored)",
            flush=True,
        )
        fill(url_list, args.work_orders)
        store = open_store(StoreSettings(path=Path(tmp) / "ts.db"))
        app = create_app(ApiSettings.load(None, database_url=url_list), store)
        # every route needs a caller: an admin token made in the bench's database
        with TestClient(app, headers=auth_headers(url_list, user="bench")) as client:
            bench_list(client, 20)  # warm caches
            times = bench_list(client, args.queries)
            print(
                f"list: {args.queries} filtered pages over {args.work_orders:,} orders: "
                f"p50 {statistics.median(times) * 1000:.1f} ms, p99 {percentile(times, 0.99) * 1000:.1f} ms",
                flush=True,
            )
            text = csv_text(args.csv_rows)
            t0 = time.perf_counter()
            r = client.post("/api/v1/assets/import", content=text, headers={"Content-Type": "text/csv"})
            import_s = time.perf_counter() - t0
            r.raise_for_status()
            rep = r.json()
            print(
                f"import: {args.csv_rows:,} rows in {import_s:.2f} s ({rep['created']} created, "
                f"{len(rep['errors'])} errors)",
                flush=True,
            )
        store.close()
    print(
        json.dumps(
            {
                "events_per_s": round(rate, 1),
                "events": args.events,
                "batch": args.batch,
                "list_p50_s": round(statistics.median(times), 4),
                "list_p99_s": round(percentile(times, 0.99), 4),
                "work_orders": args.work_orders,
                "import_10k_s": round(import_s, 3),
                "csv_rows": args.csv_rows,
                "database": "postgresql" if base and base.startswith("postgresql") else "sqlite",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
