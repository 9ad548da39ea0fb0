"""Dashboard figures with a big fleet: the overview page, and a 7-day equipment trend.

Loads ``--devices`` devices (default 500, over 5 sites) with ``--days`` (default 30) of
1-minute readings into the EMBEDDED store (one SQLite file, through ``Store.write`` as ingest
does), seeds the asset ledger with one equipment item per device, ``--alarms`` open anomalies
and as many open work orders, then serves the real app with uvicorn on a free port and measures:

- overview_api_s: ``GET /api/v1/dashboard/overview`` over HTTP, median of ``--repeat``;
- overview_s: the overview PAGE ready in Chromium (navigation until every site card is drawn),
  median of 5; without ``/usr/bin/chromium`` or Playwright it falls back to overview_api_s;
- trend_7d_s: ``GET /api/v1/dashboard/equipment/{id}/trend`` for the last 7 days of one item,
  downsampled by the store (SQL GROUP BY into at most 600 buckets), median over random items;
  trend_7d_p95_s its 95th percentile, trend_points the buckets returned;
- load_s: how long loading the readings took (not a target; for context).

``--data-dir`` keeps the loaded store and database between runs (loading is the slow part).
The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from analytics import db as analytics_db  # noqa: E402
from api.main import open_database  # noqa: E402
from api.server import run as run_api  # noqa: E402
from api.settings import ApiSettings  # noqa: E402
from ingest.store import StoreSettings, open_store  # noqa: E402
from maintenance import workorders as wos  # noqa: E402
from maintenance.ledger import seed  # noqa: E402
from maintenance.models import Device  # noqa: E402
from wire import Reading, Status, StatusTopic, Telemetry, TelemetryTopic  # noqa: E402
from wire.anomaly import Anomaly  # noqa: E402

MINUTE_MS = 60_000
DAY_MS = 86_400_000
RAD_PER_MS = 2 * math.pi / DAY_MS
CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "bench-admin", "bench-password-long-enough-1"


def fleet(devices: int, sites: int) -> list[tuple[str, str, str]]:
    """(site, agent, device) for every device: 10 agents per site."""
    out = []
    for i in range(devices):
        site = f"site-{i % sites:02d}"
        out.append((site, f"gw{(i // sites) % 10:02d}", f"ahu-{i:04d}"))
    return out


def load(store_path: Path, database_url: str, devices: list[tuple[str, str, str]], days: int, alarms: int,
         end_ms: int) -> float:
    """Write the readings, agent statuses, ledger, anomalies and work orders; seconds spent."""
    t0 = time.perf_counter()
    store = open_store(StoreSettings(path=store_path))
    start_ms = end_ms - days * DAY_MS
    seq = 0
    try:
        for n, (site, agent, device) in enumerate(devices):
            topic = TelemetryTopic(site, agent, device)
            phase = n * 0.37
            batch = []
            for day in range(days):
                base = start_ms + day * DAY_MS
                # a daily cycle per device, plus a little deterministic jitter
                readings = tuple(
                    Reading(ts_ms=ts, metric="supply_temp_c",
                            value=round(18.0 + 3.0 * math.sin(ts * RAD_PER_MS + phase) + ts % 7 * 0.05, 3))
                    for ts in range(base, base + DAY_MS, MINUTE_MS))
                seq += 1
                batch.append((topic, Telemetry(v=1, seq=seq, readings=readings)))
            store.write(batch)  # one transaction per device: 30 messages of 1,440 readings
            if (n + 1) % 50 == 0:
                spent = time.perf_counter() - t0
                print(f"  loaded {n + 1}/{len(devices)} devices ({spent:.0f} s)", flush=True)
        for site, agent in sorted({(s, a) for s, a, _ in devices}):
            status = Status(v=1, state="online", ts_ms=end_ms, boot=1)
            store.write_status(StatusTopic(site, agent), status)
    finally:
        store.close()
    engine = open_database(database_url)
    try:
        with Session(engine) as s, s.begin():
            seed(s, [(site, device, "ahu") for site, _, device in devices], actor="bench", now_ms=end_ms)
        rng = random.Random(7)
        picked = rng.sample(devices, min(alarms, len(devices)))
        for i, (site, _agent, device) in enumerate(picked):
            a = Anomaly(v=1, id=f"bench-{i}", state="open", ts_ms=end_ms - i * MINUTE_MS,
                        started_ms=end_ms - i * MINUTE_MS - DAY_MS // 2,
                        severity=("critical", "major", "minor", "warning")[i % 4], fault="supply_temp_drift",
                        summary="Supply temperature off its usual band", metrics=("supply_temp_c",))
            analytics_db.save(engine, site, device, a)
        with Session(engine) as s, s.begin():
            eq = {(d.site_id, d.device): d.equipment_id for d in s.query(Device)}
            for i, (site, _agent, device) in enumerate(picked):
                wos.create(s, actor="bench", now_ms=end_ms - i * 3 * MINUTE_MS, title=f"Check {device}",
                           priority=("P1", "P2", "P3", "P4")[i % 4], source="manual", policy=wos.Policy(),
                           site_id=site, equipment_id=eq[(site, device)])
        from api.security import store as security_store

        with engine.begin() as conn:
            security_store.create_user(conn, USER, PASSWORD, "admin", None, end_ms, check_strength=False)
    finally:
        engine.dispose()
    return time.perf_counter() - t0


def page_ready(url: str, sites: int, repeat: int) -> float | None:
    """Median seconds from navigation to every site card drawn, in Chromium; None without it."""
    if not Path(CHROMIUM).exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    times = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(f"{url}/login")
        page.fill("#user", USER)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/")
        for _ in range(repeat):
            t0 = time.perf_counter()
            page.goto(f"{url}/", wait_until="commit")
            page.wait_for_function(f"document.querySelectorAll('#sites section.card').length >= {sites}")
            times.append(time.perf_counter() - t0)
        browser.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--alarms", type=int, default=100, help="open anomalies (and as many open work orders)")
    ap.add_argument("--repeat", type=int, default=20, help="requests per measured figure")
    ap.add_argument("--data-dir", type=Path, help="keep (and reuse) the loaded store and database here")
    args = ap.parse_args()

    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="vigil-bench-dashboard-"))
    folder.mkdir(parents=True, exist_ok=True)
    store_path, database_url = folder / "ts.db", f"sqlite:///{folder / 'vigil.db'}"
    devices = fleet(args.devices, args.sites)
    marker = folder / "loaded.json"
    if marker.exists():
        end_ms = json.loads(marker.read_text())["end_ms"]
        load_s = json.loads(marker.read_text())["load_s"]
        print(f"reusing the data loaded in {folder}", flush=True)
    else:
        end_ms = (time.time_ns() // 1_000_000) // MINUTE_MS * MINUTE_MS
        readings = args.devices * args.days * DAY_MS // MINUTE_MS
        print(f"loading {args.devices} devices x {args.days} days of 1-minute data ({readings:,} readings) "
              f"into the embedded store at {store_path} ...", flush=True)
        load_s = load(store_path, database_url, devices, args.days, args.alarms, end_ms)
        marker.write_text(json.dumps({"end_ms": end_ms, "load_s": load_s}))
        print(f"loaded in {load_s:.0f} s ({readings / load_s:,.0f} readings/s)", flush=True)

    settings = ApiSettings.load(None, port=0, database_url=database_url, store=StoreSettings(path=store_path),
                                cookie_secure=False)
    stop, ready = threading.Event(), threading.Event()
    found: list[str] = []

    def on_ready(base_url: str) -> None:
        found.append(base_url)
        ready.set()

    server = threading.Thread(target=run_api, args=(settings, stop), kwargs={"ready": on_ready}, daemon=True)
    server.start()
    if not ready.wait(60):
        sys.exit("the API did not start")
    url = found[0]
    try:
        web = httpx.Client(base_url=url, timeout=30)
        web.post("/api/v1/auth/login", json={"user": USER, "password": PASSWORD}).raise_for_status()
        web.get("/api/v1/dashboard/overview").raise_for_status()  # warm caches once
        overview = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            body = web.get("/api/v1/dashboard/overview").raise_for_status().json()
            overview.append(time.perf_counter() - t0)
        assert len(body["sites"]) == args.sites and sum(s["devices"] for s in body["sites"]) == args.devices
        eq_ids = [e["id"] for e in web.get("/api/v1/equipment", params={"limit": 500}).json()["equipment"]]
        rng = random.Random(11)
        trend, points = [], 0
        for _ in range(args.repeat):
            eq = rng.choice(eq_ids)
            t0 = time.perf_counter()
            body = web.get(f"/api/v1/dashboard/equipment/{eq}/trend",
                           params={"start": end_ms - 7 * DAY_MS, "end": end_ms}).raise_for_status().json()
            trend.append(time.perf_counter() - t0)
            points = len(body["t"])
        page_s = page_ready(url, args.sites, 5)
    finally:
        stop.set()
        server.join(20)
    trend.sort()
    figures = {
        "store": "embedded", "devices": args.devices, "days": args.days,
        "readings": args.devices * args.days * DAY_MS // MINUTE_MS, "load_s": round(load_s, 1),
        "overview_api_s": round(statistics.median(overview), 4),
        "overview_page_s": round(page_s, 4) if page_s is not None else None,
        "overview_s": round(page_s if page_s is not None else statistics.median(overview), 4),
        "trend_7d_s": round(statistics.median(trend), 4),
        "trend_7d_p95_s": round(trend[min(len(trend) - 1, int(len(trend) * 0.95))], 4),
        "trend_points": points,
    }
    print(f"overview page ready {figures['overview_s']} s (target <= 1 s); 7-day trend "
          f"{figures['trend_7d_s']} s for {points} points (target <= 0.3 s)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
