"""What ingest stores about agents, as the API shows it: health reports and per-agent accounting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.auth import Principal, principal
from ingest.store import AgentTally, StoreSettings, open_store
from tests.test_api import NOW, _api_settings, _client
from wire import Status, StatusTopic
from wire.agent import AgentHealth, DeviceHealth
from wire.topics import HealthTopic


@pytest.fixture(params=["all", "hq"])
def client(embedded_settings: StoreSettings, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    store = open_store(embedded_settings)
    try:
        store.write_status(StatusTopic("hq", "gw1"), Status(v=1, state="online", ts_ms=NOW - 60_000, boot=4))
        store.write_status(StatusTopic("hq", "gw2"), Status(v=1, state="online", ts_ms=NOW - 60_000, boot=1))
        store.write_health(HealthTopic("hq", "gw1"), AgentHealth(
            v=1, ts_ms=NOW - 5_000, boot=4, outbox_depth=120, outbox_bytes=64_000, oldest_unacked_age_s=42.5,
            dropped=3, poll_errors=9, publish_p99_s=0.25, version="1.4.0",
            devices={"pump-1": DeviceHealth(state="online", since_ms=NOW - 60_000),
                     "door-1": DeviceHealth(state="offline", since_ms=NOW - 30_000, poll_errors=9,
                                            reason="Modbus timeout")}))
        store.write_health(HealthTopic("mall", "gw9"), AgentHealth(
            v=1, ts_ms=NOW - 1_000, boot=2, outbox_depth=0, outbox_bytes=0, oldest_unacked_age_s=0, dropped=0,
            poll_errors=0, publish_p99_s=0.01))
        store.write_accounting([
            AgentTally(site="hq", agent="gw1", worker="w1", ts_ms=NOW - 20_000, received_messages=100,
                       received_readings=5000, stored_messages=98, stored_readings=4900, duplicates=2,
                       dead_letters={"wrong_type": 1}, gaps_opened=1, missing_messages=5,
                       open_gaps=((10, 14),)),
            AgentTally(site="hq", agent="gw1", worker="w2", ts_ms=NOW - 10_000, received_messages=50,
                       received_readings=2500, stored_messages=49, stored_readings=2450,
                       dead_letters={"wrong_type": 1, "unknown_device": 3}, gaps_opened=1, missing_messages=2,
                       open_gaps=((12, 13),)),
            AgentTally(site="mall", agent="gw9", worker="w1", ts_ms=NOW - 20_000, received_messages=1),
        ])
    finally:
        store.close()
    client = _client(_api_settings(embedded_settings))
    # A viewer of site hq only: lists leave out the sites a caller may not see.
    client.app.dependency_overrides[principal] = lambda: Principal(  # type: ignore[attr-defined]
        user="t", role="viewer", sites=frozenset({"hq"}) if request.param == "hq" else None)
    with client as c:
        yield c


def test_agents_show_their_latest_health(client: TestClient) -> None:
    r = client.get("/api/v1/agents")
    assert r.status_code == 200, r.text
    agents = {(a["site"], a["agent"]): a for a in r.json()["agents"]}
    if ("mall", "gw9") not in agents:  # the viewer of hq only
        assert list(agents) == [("hq", "gw1"), ("hq", "gw2")]
        return
    assert list(agents) == [("hq", "gw1"), ("hq", "gw2"), ("mall", "gw9")]
    h = agents[("hq", "gw1")]["health"]
    assert (h["outbox_depth"], h["oldest_unacked_age_s"], h["dropped"]) == (120, 42.5, 3)
    assert h["version"] == "1.4.0"
    assert h["devices"]["door-1"] == {"state": "offline", "since_ms": NOW - 30_000, "poll_errors": 9,
                                      "reason": "Modbus timeout"}
    assert "health" not in agents[("hq", "gw2")]  # no report: the earlier shape
    assert agents[("mall", "gw9")]["state"] == "unknown"  # a report but no status yet


def test_accounting_sums_workers_and_takes_gaps_from_the_latest(client: TestClient) -> None:
    r = client.get("/api/v1/ingest/accounting", params={"site": "hq"})
    assert r.status_code == 200, r.text
    [gw1] = r.json()["agents"]
    assert (gw1["received_messages"], gw1["stored_readings"], gw1["duplicates"]) == (150, 7350, 2)
    assert gw1["dead_letters"] == {"unknown_device": 3, "wrong_type": 2}
    assert gw1["open_gaps"] == [{"first_seq": 12, "last_seq": 13, "missing": 2}]
    assert gw1["missing_messages"] == 2
    assert [w["worker"] for w in gw1["workers"]] == ["w1", "w2"]
    every = client.get("/api/v1/ingest/accounting").json()["agents"]
    assert [(a["site"], a["agent"]) for a in every] in ([("hq", "gw1"), ("mall", "gw9")], [("hq", "gw1")])
    bad = client.get("/api/v1/ingest/accounting", params={"agent": "no/such"})
    assert bad.status_code == 422 and "agent id" in bad.json()["detail"]
