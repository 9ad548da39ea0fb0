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
from typing import Any, ClassVar

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
    from api.dashboard.demo import seed_floor_plans, seed_rounds  # for the dashboard's pages

    seed_floor_plans(service.engine, [(a.site, d.device) for a in plan.agents for d in a.devices])
    seed_rounds(service.engine)
    service.start()
    return service


def _first_site(sim: SimSettings) -> str | None:
    """The fleet's first site: the demo's site-scoped user sees only it."""
    from simulators.fleet import plan_fleet

    plan = plan_fleet(seed=sim.seed, devices=sim.devices, sites=sim.sites,
                      agents_per_site=sim.agents_per_site, kinds=sim.kinds, interval_s=sim.interval_s,
                      site_ids=sim.site_ids)
    return plan.agents[0].site if plan.agents else None


def _start_meter_agent(
    settings: DemoSettings, mqtt: MqttSettings, site: str | None
) -> tuple[Any, threading.Event, threading.Thread]:
    """A real protocol path: an energy meter served over Modbus TCP (pymodbus) and an edge
    agent polling it with the ``modbus`` driver from a YAML config, like a plant-room gateway."""
    import yaml

    from edge.runtime import run as run_edge
    from edge.settings import EdgeSettings
    from simulators.modbus_meter import POINTS, UNIT, EnergyMeter

    meter = EnergyMeter(seed=settings.seed).start()
    config = settings.data_dir / "edge-meter.yaml"
    config.write_text(yaml.safe_dump({
        "site": site or "demo", "agent": "meter-gw",
        "devices": [{"id": "meter-main", "kind": "energy_meter", "driver": "modbus",
                     "poll_interval_s": max(settings.interval_s, 1.0),
                     "options": {"host": meter.host, "port": meter.port, "unit": UNIT, "points": POINTS}}],
    }, sort_keys=False))
    edge_settings = EdgeSettings.load(None, mqtt=mqtt, config=config, client_id="vigil-demo-meter-gw")
    agent_stop = threading.Event()

    def _run() -> None:
        try:
            run_edge(edge_settings, agent_stop)
        except Exception:  # the rest of the demo goes on without the meter
            log.exception("demo: the Modbus meter's edge agent stopped")

    agent = threading.Thread(target=_run, name="edge-meter", daemon=True)
    agent.start()
    return meter, agent_stop, agent


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
    # mode "demo": open /docs and the demo users' known passwords; plain HTTP, so no Secure cookie
    api_settings = ApiSettings.load(None, host=settings.host, port=settings.port, store=store_settings,
                                    database_url=database_url, mode="demo", cookie_secure=False,
                                    mqtt=mqtt)  # the dashboard's live stream listens to the demo's broker
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
    # it keeps its learned state in the data folder and trains its models on the store's history
    analytics = AnalyticsService(AnalyticsSettings.load(
        None, mqtt=mqtt, share_group=None, client_id="vigil-demo-analytics", database_url=database_url,
        model_dir=settings.data_dir / "models", state_dir=settings.data_dir / "analytics",
        model_retry_s=600), history=store)
    analytics.start()
    # maintenance migrates its tables and seeds the asset ledger from the fleet's plan before
    # the API starts, so a newcomer sees equipment (and, as anomalies arrive, work orders).
    maintenance = _start_maintenance(settings, mqtt, database_url, sim_settings)
    # alerting: a demo rotation paging into a file, ack links pointing at the demo's API
    alerting, pages_file = start_demo_alerting(mqtt, database_url, settings.data_dir,
                                               f"http://{settings.host}:{settings.port}")
    # the demo's users (known passwords, printed below): every request to the API needs a login
    from api.security.setup import demo_users

    logins = demo_users(database_url, _first_site(sim_settings))
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
    meter, meter_stop, meter_agent = _start_meter_agent(settings, mqtt, _first_site(sim_settings))
    url = f"http://{settings.host}:{settings.port}"
    print(
        f"\nVigil demo is running.\n"
        f"  dashboard:     {url}/ (control room: alarms, work orders, fleet, floor plans; log in below)\n"
        f"  API and docs:  {url}/docs\n"
        f"  devices:       {url}/api/v1/devices\n"
        f"  health:        {url}/healthz\n"
        f"  anomalies:     {url}/api/v1/anomalies (and on the bus: vigil/v1/+/_alarm/+)\n"
        f"  equipment:     {url}/api/v1/equipment   work orders: {url}/api/v1/work-orders\n"
        f"  pages:         {pages_file} (on call: {url}/api/v1/alerting/oncall, "
        f"incidents: {url}/api/v1/alerting/incidents)\n"
        f"  MQTT broker:   127.0.0.1:{settings.mqtt_port} (subscribe to vigil/v1/#)\n"
        f"  Modbus meter:  {meter.host}:{meter.port} (pymodbus), polled by edge agent meter-gw "
        f"with the modbus driver ({settings.data_dir / 'edge-meter.yaml'})\n"
        f"  fleet:         {settings.devices} simulated devices in {settings.sites} buildings, "
        f"seed {settings.seed}\n"
        f"  faults:        {settings.fault_rate_per_day:g} per device per day at random; ground truth in "
        f"{settings.data_dir / 'ground_truth.json'}\n"
        f"  data:          {store_settings.path}\n"
        f"  logins (demo only; log in at {url}/login, or POST {url}/api/v1/auth/login):\n"
        + "".join(f"    {user:<11} password {password:<22} {role}, {sites}\n"
                  for user, password, role, sites in logins)
        + "Press Ctrl-C to stop.\n",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        log.info("demo: stopping the fleet")
        fleet_stop.set()
        fleet.join(15)
        meter_stop.set()
        meter_agent.join(15)
        meter.stop()
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
