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

from api.settings import ApiSettings
from ingest.service import IngestService
from ingest.settings import IngestSettings
from ingest.store import StoreSettings, open_store
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


def run(settings: DemoSettings, stop: threading.Event) -> None:
    from api.server import run as run_api
    from simulators.fleet import run as run_fleet

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
        interval_s=settings.interval_s,
    )

    broker = EmbeddedBroker("127.0.0.1", settings.mqtt_port)
    broker.start()
    store = open_store(store_settings)
    ingest = IngestService(ingest_settings, store)
    ingest.start()
    api_stop, fleet_stop, api_ready = threading.Event(), threading.Event(), threading.Event()
    api = threading.Thread(target=run_api, args=(api_settings, api_stop, store),
                           kwargs={"ready": lambda _url: api_ready.set()}, name="api", daemon=True)
    fleet = threading.Thread(target=run_fleet, args=(sim_settings, fleet_stop), name="fleet", daemon=True)
    api.start()
    while not api_ready.wait(0.1):
        if not api.is_alive():  # it said why in the log (port taken, ...)
            fleet_stop.set()
            ingest.stop(drain_s=0)
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
        f"  MQTT broker:   127.0.0.1:{settings.mqtt_port} (subscribe to vigil/v1/#)\n"
        f"  fleet:         {settings.devices} simulated devices in {settings.sites} buildings, "
        f"seed {settings.seed}\n"
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
        api_stop.set()
        api.join(10)
        broker.stop()
        store.close()
        log.info("demo: stopped; %d readings stored this run", ingest.stats.readings)
