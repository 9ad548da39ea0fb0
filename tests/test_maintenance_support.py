"""Shared set-up of the maintenance tests: a fresh database per module on SQLite and on the
machine's PostgreSQL (dropped afterwards), the API on it, a settable clock, anomaly events."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api.deps import now_ms
from api.main import create_app
from api.settings import ApiSettings
from ingest.store import Store, StoreSettings, open_store
from maintenance.db import open_engine
from maintenance.models import Device, Equipment, Site
from tests.services import auth_headers, fresh_database
from wire.anomaly import Anomaly, AnomalyState
from wire.payloads import Severity

T0 = 1_795_000_000_000  # 2026-11-17, a fixed "now" for tests that move the clock themselves


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory.mktemp("maint"), "t_maint") as url:
        yield url


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    e = open_engine(database_url)
    yield e
    e.dispose()


@pytest.fixture(scope="module")
def ts_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = open_store(StoreSettings(path=tmp_path_factory.mktemp("ts") / "ts.db"))
    yield store
    store.close()


@dataclass
class Clock:
    ms: int = T0

    def advance(self, seconds: float) -> int:
        self.ms += int(seconds * 1000)
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(database_url: str, engine: Engine, ts_store: Store, clock: Clock) -> Iterator[TestClient]:
    settings = ApiSettings.load(None, database_url=database_url)
    app = create_app(settings, ts_store)

    async def fixed_now() -> int:
        return clock.ms

    app.dependency_overrides[now_ms] = fixed_now
    # the acting user is the caller: an admin token of user "jane"
    with TestClient(app, headers=auth_headers(database_url, user="jane")) as c:
        yield c


@pytest.fixture
def as_user(database_url: str) -> Callable[..., dict[str, str]]:
    """Headers acting as another user: ``client.post(..., headers=as_user("tom", "technician"))``."""

    def make(user: str, role: str = "admin") -> dict[str, str]:
        return auth_headers(database_url, user=user, role=role)

    return make


def anomaly(
    aid: str,
    state: AnomalyState = "open",
    ts_ms: int = T0,
    *,
    fault: str = "vibration_high",
    severity: Severity = "major",
    summary: str = "Vibration 9.1 mm/s, expected under 4.5",
) -> Anomaly:
    return Anomaly(
        v=1,
        id=aid,
        state=state,
        ts_ms=ts_ms,
        started_ms=ts_ms,
        severity=severity,
        fault=fault,
        summary=summary,
        kind="pump",
        cleared_ms=ts_ms if state == "cleared" else None,
    )


def new_site() -> str:
    return "s" + uuid.uuid4().hex[:10]


def payload(a: Anomaly) -> bytes:
    return msgspec.json.encode(a)


def ledger(engine: Engine, site: str, *devices: str) -> int:
    """A site with one pump (P-101) bound to ``devices``; returns the equipment id."""
    with Session(engine) as s, s.begin():
        s.add(Site(id=site, name=site))
        s.flush()
        eq = Equipment(site_id=site, code="P-101", kind="pump", brick_class="brick:Pump")
        s.add(eq)
        s.flush()
        for d in devices:
            s.add(Device(site_id=site, device=d, equipment_id=eq.id))
        return eq.id
