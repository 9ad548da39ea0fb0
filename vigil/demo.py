"""``vigil demo``: every role in one process, with nothing to install or configure.

An embedded MQTT broker (amqtt), the embedded time-series store (one SQLite file), a
simulated fleet driving real edge agents, an ingest worker and the API, wired exactly as
separate processes would be: they meet only on the bus and in the store.

Stopping (Ctrl-C) goes from the edge inwards so that nothing the broker acknowledged is
lost: the fleet stops publishing, ingest drains what the broker still holds and acks it
after the store commits, then the API and the broker stop.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from sqlalchemy.orm import Session

from alerting.demo import start_demo_alerting
from analytics.service import AnalyticsService
from analytics.settings import AnalyticsSettings
from api.settings import ApiSettings
from ingest.service import IngestService
from ingest.settings import IngestSettings
from ingest.store import StoreSettings, open_store
from maintenance.ledger import seed as seed_ledger
from maintenance.service import MaintenanceService
from maintenance.settings import MaintenanceSettings
from simulators.settings import SimSettings
from vigil.broker import EmbeddedBroker
from wire import MqttSettings, RoleSettings

log = logging.getLogger("vigil.demo")


class DemoError(RuntimeError):
    """The demo could not start; the message says why and what to change."""


class DemoSettings(RoleSettings):
    section: ClassVar[str] = "demo"
    model_config = SettingsConfigDict(env_prefix="VIGIL_DEMO_")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    mqtt_port: int = Field(1884, ge=1, le=65535)  # 1883 is usually a real Mosquitto
    data_dir: Path = Path("var/demo")
    seed: int = 1
    devices: int = Field(60, ge=1, le=10_000)
    sites: int = Field(2, ge=1, le=100)
    interval_s: float = Field(1.0, gt=0, le=3600)
    # Injected faults, so the demo has something to find: random, per device per simulated
    # day, from the seed; their ground truth is written next to the data.
    fault_rate_per_day: float = Field(4.0, ge=0, le=1000)
    sim_speed: float = Field(1.0, gt=0, le=10_000)


def _drain(service: IngestService, quiet_s: float = 0.5, max_s: float = 10.0) -> None:
    """Wait until ingest has taken everything the broker still holds for it."""
    deadline = time.monotonic() + max_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        seen = service.stats.messages
        if seen != last:
            last, since = seen, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)


def _start_maintenance(settings: DemoSettings, mqtt: MqttSettings, database_url: str,
                       sim: SimSettings) -> MaintenanceService:
    """The maintenance worker on the demo's database, its ledger seeded from the fleet."""
    from simulators.fleet import plan_fleet

    plan = plan_fleet(seed=sim.seed, devices=sim.devices, sites=sim.sites,
                      agents_per_site=sim.agents_per_site, kinds=sim.kinds, interval_s=sim.interval_s,
                      site_ids=sim.site_ids)
    service = MaintenanceService(MaintenanceSettings.load(
        None, mqtt=mqtt, database_url=database_url, client_id="vigil-demo-maintenance",
        sweep_interval_s=30, verify_hold_s=300))
    with Session(service.engine) as session, session.begin():
        added = seed_ledger(session, [(a.site, d.device, d.kind) for a in plan.agents for d in a.devices],
                            actor="system:demo", now_ms=time.time_ns() // 1_000_000)
    log.info("demo: asset ledger seeded with %d equipment items", added)
    service.start()
    return service


def run(settings: DemoSettings, stop: threading.Event) -> None:
    from api.server import run as run_api
    from simulators.runner import run as run_fleet

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mqtt = MqttSettings(host="127.0.0.1", port=settings.mqtt_port)
    store_settings = StoreSettings(path=settings.data_dir / "timeseries.db")
    ingest_settings = IngestSettings.load(
        None, mqtt=mqtt, store=store_settings, share_group=None, client_id="vigil-demo-ingest",
        stats_interval_s=60,
    )
    database_url = f"sqlite:///{settings.data_dir / 'vigil.db'}"
    api_settings = ApiSettings.load(None, host=settings.host, port=settings.port, store=store_settings,
                                    database_url=database_url)
    sim_settings = SimSettings.load(
        None, mqtt=mqtt, seed=settings.seed, devices=settings.devices, sites=settings.sites,
        interval_s=settings.interval_s, fault_rate_per_day=settings.fault_rate_per_day,
        speed=settings.sim_speed, ground_truth=settings.data_dir / "ground_truth.json", progress_s=60,
    )

    broker = EmbeddedBroker("127.0.0.1", settings.mqtt_port)
    broker.start()
    store = open_store(store_settings)
    ingest = IngestService(ingest_settings, store)
    ingest.start()
    # analytics creates its tables before the API thread starts, so the two never migrate at once
    analytics = AnalyticsService(AnalyticsSettings.load(
        None, mqtt=mqtt, share_group=None, client_id="vigil-demo-analytics", database_url=database_url,
        model_dir=settings.data_dir / "models"))
    analytics.start()
    # maintenance migrates its tables and seeds the asset ledger from the fleet's plan before
    # the API starts, so a newcomer sees equipment (and, as anomalies arrive, work orders).
    maintenance = _start_maintenance(settings, mqtt, database_url, sim_settings)
    # alerting: a demo rotation paging into a file, ack links pointing at the demo's API
    alerting, pages_file = start_demo_alerting(mqtt, database_url, settings.data_dir,
                                               f"http://{settings.host}:{settings.port}")
    api_stop, fleet_stop, api_ready = threading.Event(), threading.Event(), threading.Event()
    api = threading.Thread(target=run_api, args=(api_settings, api_stop, store),
                           kwargs={"ready": lambda _url: api_ready.set()}, name="api", daemon=True)
    fleet = threading.Thread(target=run_fleet, args=(sim_settings, fleet_stop), name="fleet", daemon=True)
    api.start()
    while not api_ready.wait(0.1):
        if not api.is_alive():  # it said why in the log (port taken, ...)
            fleet_stop.set()
            ingest.stop(drain_s=0)
            analytics.stop()
            maintenance.stop()
            alerting.stop()
            broker.stop()
            store.close()
            raise DemoError(f"the API could not start on {settings.host}:{settings.port}; "
                            "set VIGIL_DEMO_PORT to a free port")
    fleet.start()
    url = f"http://{settings.host}:{settings.port}"
    print(
        f"\nVigil demo is running.\n"
        f"  API and docs:  {url}/docs\n"
        f"  devices:       {url}/api/v1/devices\n"
        f"  health:        {url}/healthz\n"
        f"  anomalies:     {url}/api/v1/anomalies (and on the bus: vigil/v1/+/_alarm/+)\n"
        f"  equipment:     {url}/api/v1/equipment   work orders: {url}/api/v1/work-orders\n"
        f"  pages:         {pages_file} (on call: {url}/api/v1/alerting/oncall, "
        f"incidents: {url}/api/v1/alerting/incidents)\n"
        f"  MQTT broker:   127.0.0.1:{settings.mqtt_port} (subscribe to vigil/v1/#)\n"
        f"  fleet:         {settings.devices} simulated devices in {settings.sites} buildings, "
        f"seed {settings.seed}\n"
        f"  faults:        {settings.fault_rate_per_day:g} per device per day at random; ground truth in "
        f"{settings.data_dir / 'ground_truth.json'}\n"
        f"  data:          {store_settings.path}\n"
        f"Press Ctrl-C to stop.\n",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        log.info("demo: stopping the fleet")
        fleet_stop.set()
        fleet.join(15)
        log.info("demo: draining ingest")
        _drain(ingest)
        ingest.stop()
        analytics.stop()
        maintenance.stop()
        alerting.stop()
        api_stop.set()
        api.join(10)
        broker.stop()
        store.close()
        log.info("demo: stopped; %d readings stored this run", ingest.stats.readings)
