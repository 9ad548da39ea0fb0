"""The maintenance REST API on SQLite and PostgreSQL: the ledger, CSV, work orders and their
lifecycle, validation errors, the audit trail, PM schedules and inspection rounds."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ingest.store import Store
from maintenance.service import Message, apply_messages
from maintenance.workorders import Policy
from tests import test_maintenance_support as support
from tests.test_maintenance_support import T0, Clock, anomaly, new_site, payload
from wire import AlarmTopic, Reading, Telemetry, TelemetryTopic

# The shared fixtures (a fresh database per module on SQLite and on PostgreSQL, ...).
client = support.client
as_user = support.as_user
clock = support.clock
database_url = support.database_url
engine = support.engine
ts_store = support.ts_store


def _site(c: TestClient) -> str:
    site = new_site()
    assert c.post("/api/v1/sites", json={"id": site, "name": "Tower"}).status_code == 201
    return site


def _pump(c: TestClient, site: str, code: str = "P-101", **extra: object) -> dict[str, object]:
    r = c.post("/api/v1/equipment", json={"site": site, "code": code, "kind": "pump", **extra})
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def test_ledger_crud_devices_relations_and_locations(client: TestClient) -> None:
    site = _site(client)
    tree = client.post(
        f"/api/v1/sites/{site}/locations",
        json={"building": "B1", "floor": "L2", "space": "plant-room", "level": 2},
    ).json()
    space_id = tree[0]["floors"][0]["spaces"][0]["id"]
    pump = _pump(
        client,
        site,
        manufacturer="Grundfos",
        model="CR 32",
        serial="A1",
        install_date="2024-03-01",
        warranty_end="2027-03-01",
        criticality="high",
        responsible="Mech crew",
        space_id=space_id,
    )
    assert pump["brick_class"] == "brick:Pump"
    chiller = _pump(client, site, "CH-1", kind="chiller")
    assert chiller["brick_class"] == "brick:Chiller"
    r = client.post(
        f"/api/v1/equipment/{pump['id']}/devices",
        json={
            "device": "pump-01",
            "points": [{"metric": "vibration_mm_s", "brick_class": "brick:Vibration_Sensor"}],
        },
    )
    assert r.status_code == 201, r.text
    r = client.post(
        f"/api/v1/equipment/{pump['id']}/relations",
        json={"predicate": "feeds", "equipment_id": chiller["id"]},
    )
    assert r.status_code == 201
    detail = client.get(f"/api/v1/equipment/{pump['id']}").json()
    assert detail["devices"] == [
        {
            "site": site,
            "device": "pump-01",
            "points": [{"metric": "vibration_mm_s", "brick_class": "brick:Vibration_Sensor", "unit": ""}],
        }
    ]
    assert detail["relations"][0]["equipment_id"] == chiller["id"]
    # A device belongs to one equipment item.
    r = client.post(f"/api/v1/equipment/{chiller['id']}/devices", json={"device": "pump-01"})
    assert r.status_code == 409 and "bound to equipment" in r.json()["detail"]
    r = client.patch(f"/api/v1/equipment/{pump['id']}", json={"criticality": "critical"})
    assert r.json()["criticality"] == "critical"
    page = client.get("/api/v1/equipment", params={"site": site, "limit": 1}).json()
    assert len(page["equipment"]) == 1 and page["next_cursor"] is not None
    page2 = client.get("/api/v1/equipment", params={"site": site, "cursor": page["next_cursor"]}).json()
    assert [e["code"] for e in page["equipment"] + page2["equipment"]] == ["P-101", "CH-1"]
    trail = client.get("/api/v1/audit", params={"entity": "equipment", "entity_id": str(pump["id"])}).json()
    assert {a["action"] for a in trail} == {"create", "bind_device", "relate", "update"}
    assert {a["actor"] for a in trail} == {"jane"}


def test_validation_errors_name_the_field(client: TestClient) -> None:
    site = _site(client)
    r = client.post("/api/v1/equipment", json={"site": site, "code": "bad code", "kind": "pump"})
    assert r.status_code == 422 and "'code'" in r.json()["detail"]
    r = client.post(
        "/api/v1/equipment", json={"site": site, "code": "X", "kind": "pump", "brick_class": "Pump"}
    )
    assert r.status_code == 422 and r.json()["field"] == "brick_class"
    r = client.post(
        "/api/v1/equipment", json={"site": site, "code": "X", "kind": "pump", "install_date": "01/02/2024"}
    )
    assert r.status_code == 422 and "install_date" in r.json()["detail"]
    r = client.post("/api/v1/work-orders", json={"title": "Leak", "priority": "P9", "site": site})
    assert r.status_code == 422 and "priority" in r.json()["detail"]
    r = client.post("/api/v1/work-orders", json={"title": "Leak"})
    assert r.status_code == 422 and r.json()["field"] == "site"
    # who acts is the authenticated caller: no token, no change
    r = client.post("/api/v1/work-orders", json={"title": "Leak", "site": site},
                    headers={"Authorization": ""})
    assert r.status_code == 401
    assert client.get("/api/v1/work-orders/999999").status_code == 404
    assert client.post("/api/v1/sites", json={"id": site}).status_code == 409


def test_manual_work_order_lifecycle_labour_parts_comments_and_audit(
    client: TestClient, clock: Clock, as_user: Callable[..., dict[str, str]]
) -> None:
    site = _site(client)
    pump = _pump(client, site)
    r = client.post(
        "/api/v1/work-orders",
        json={
            "title": "Water on the floor of plant room 2",
            "source": "tenant",
            "equipment_id": pump["id"],
            "priority": "P2",
        },
        headers=as_user("tenant.acme", "operator"),
    )
    assert r.status_code == 201, r.text
    wo = r.json()
    assert (wo["state"], wo["site_id"], wo["requested_by"], wo["allowed"]) == (
        "new",
        site,
        "tenant.acme",
        ["assigned", "cancelled"],
    )
    url = f"/api/v1/work-orders/{wo['id']}"
    # An invalid transition: 409 with the allowed ones.
    r = client.post(f"{url}/transition", json={"to": "resolved"})
    assert r.status_code == 409
    assert r.json()["allowed"] == ["assigned", "cancelled"] and r.json()["state"] == "new"
    r = client.post(f"{url}/transition", json={"to": "assigned"})
    assert r.status_code == 422 and r.json()["field"] == "assignee"
    clock.advance(60)
    assert (
        client.post(f"{url}/assign", json={"assignee": "tom", "crew": "mech"}).json()["state"] == "assigned"
    )
    clock.advance(60)
    tom = as_user("tom", "technician")
    r = client.post(f"{url}/transition", json={"to": "in_progress"}, headers=tom)
    assert r.json()["responded_ms"] == clock.ms
    assert client.post(f"{url}/comments", json={"text": "Seal leaking"}).status_code == 201
    assert (
        client.post(f"{url}/labour", json={"minutes": 45}, headers=tom).status_code == 201
    )
    assert (
        client.post(
            f"{url}/parts", json={"part_number": "SEAL-32", "quantity": 1, "unit_cost": 42.5}
        ).status_code
        == 201
    )
    client.post(f"{url}/transition", json={"to": "on_hold", "note": "waiting for parts"})
    client.post(f"{url}/transition", json={"to": "in_progress"})
    r = client.post(f"{url}/transition", json={"to": "resolved"})
    assert r.json()["allowed"] == ["closed", "in_progress", "assigned", "new"]
    client.post(f"{url}/transition", json={"to": "closed"})
    assert client.post(f"{url}/transition", json={"to": "cancelled"}).json()["allowed"] == ["assigned", "new"]
    d = client.get(url).json()
    assert d["labour_minutes"] == 45 and d["labour"][0]["technician"] == "tom"
    assert d["parts"][0]["part_number"] == "SEAL-32" and d["comments"][0]["author"] == "jane"
    moves = [
        (h["from_state"], h["to_state"], h["actor"]) for h in d["history"] if h["action"] == "transition"
    ]
    assert moves == [
        ("new", "assigned", "jane"),
        ("assigned", "in_progress", "tom"),
        ("in_progress", "on_hold", "jane"),
        ("on_hold", "in_progress", "jane"),
        ("in_progress", "resolved", "jane"),
        ("resolved", "closed", "jane"),
    ]
    assert [h["action"] for h in d["history"]][:2] == ["create", "assign"]
    assert d["history"][0]["actor"] == "tenant.acme"


def test_list_filters_and_pages(client: TestClient, engine: Engine) -> None:
    site = _site(client)
    with Session(engine) as s, s.begin():
        msgs = [
            Message(
                i,
                1,
                AlarmTopic(site, f"pump-{i:02d}").format(),
                payload(anomaly(f"{site}-{i}", severity="critical" if i % 3 == 0 else "minor")),
            )
            for i in range(12)
        ]
        apply_messages(s, msgs, now_ms=T0, policy=Policy())
    p1 = client.get("/api/v1/work-orders", params={"site": site, "priority": "P1"}).json()
    assert len(p1["work_orders"]) == 4 and p1["next_cursor"] is None
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"site": site, "limit": 5, "open": True, "source": "anomaly"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/work-orders", params=params).json()
        seen += [w["id"] for w in page["work_orders"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 12 == len(set(seen)) and seen == sorted(seen, reverse=True)
    r = client.get("/api/v1/work-orders", params={"state": ["new", "bogus"]})
    assert r.status_code == 422 and "state" in r.json()["detail"]
    both = client.get("/api/v1/work-orders", params={"site": site, "priority": ["P1", "P3"]}).json()
    assert len(both["work_orders"]) == 12


def test_csv_import_export_round_trip_and_bad_rows(
    client: TestClient, engine: Engine, ts_store: Store
) -> None:
    site = new_site()
    text = (
        "site,building,floor,space,code,name,kind,brick_class,manufacturer,model,serial,install_date,"
        "warranty_end,criticality,responsible,devices,feeds,serves\n"
        f"{site},B1,L1,plant,P-1,Pump 1,pump,,Grundfos,CR,S1,2024-01-02,2027-01-02,high,Mech,"
        "pump-01;pump-01b,CH-1,plant\n"
        f"{site},B1,L1,plant,CH-1,Chiller 1,chiller,,Carrier,30XA,S2,,,critical,Acme HVAC,chiller-01,,\n"
        f"{site},B1,L1,,BAD-DATE,,pump,,,,,2024-13-01,,low,,,,\n"
        f"{site},B1,,,BAD-CRIT,,pump,,,,,,,urgent,,,,\n"
        f"{site},,,,P-2,,pump,brick:Pump,,,,,,,,,NOPE,\n"
    )
    r = client.post("/api/v1/assets/import", content=text, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert (rep["created"], rep["devices_bound"], rep["relations"]) == (3, 3, 2)
    assert {(e["row"], e["column"]) for e in rep["errors"]} == {
        (4, "install_date"),
        (5, "criticality"),
        (6, "feeds"),
    }
    exported = client.get("/api/v1/assets/export.csv", params={"site": site}).text
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [r["code"] for r in rows] == ["CH-1", "P-1", "P-2"]
    p1 = rows[1]
    assert (p1["devices"], p1["feeds"], p1["serves"], p1["brick_class"], p1["space"]) == (
        "pump-01;pump-01b",
        "CH-1",
        "plant",
        "brick:Pump",
        "plant",
    )
    again = client.post(
        "/api/v1/assets/import", content=exported, headers={"Content-Type": "text/csv"}
    ).json()
    assert (again["created"], again["updated"], again["unchanged"], again["errors"]) == (0, 0, 3, [])
    r = client.post(
        "/api/v1/assets/import", content="site,code,colour\n", headers={"Content-Type": "text/csv"}
    )
    assert r.json()["errors"][0]["column"] == "colour"
    # Devices seen on the bus and claimed by no equipment are listed for an engineer.
    ts_store.write(
        [
            (
                TelemetryTopic(site, "gw1", dev),
                Telemetry(v=1, seq=1, readings=(Reading(ts_ms=T0, metric="flow_lps", value=1.0),)),
            )
            for dev in ("pump-01", "door-07")
        ]
    )
    unmatched = client.get("/api/v1/assets/unmatched-devices", params={"site": site}).json()
    assert [(u["device"], u["agent"]) for u in unmatched] == [("door-07", "gw1")]


def test_anomaly_work_order_uses_the_ledger(client: TestClient, engine: Engine) -> None:
    site = _site(client)
    pump = _pump(client, site)
    client.post(f"/api/v1/equipment/{pump['id']}/devices", json={"device": "pump-01"})
    with Session(engine) as s, s.begin():
        apply_messages(
            s,
            [Message(1, 1, AlarmTopic(site, "pump-01").format(), payload(anomaly(site + "a")))],
            now_ms=T0,
            policy=Policy(),
        )
    [wo] = client.get("/api/v1/work-orders", params={"equipment_id": pump["id"]}).json()["work_orders"]
    assert (wo["source"], wo["fault"], wo["device"], wo["priority"]) == (
        "anomaly",
        "vibration_high",
        "pump-01",
        "P2",
    )


def test_pm_schedules_and_an_inspection_round(
    client: TestClient, ts_store: Store, clock: Clock, as_user: Callable[..., dict[str, str]]
) -> None:
    site = _site(client)
    pump = _pump(client, site)
    r = client.post(
        "/api/v1/pm-schedules",
        json={"title": "Grease", "equipment_id": pump["id"], "kind": "calendar", "every": 3},
    )
    assert r.status_code == 422 and r.json()["field"] == "next_due"
    r = client.post(
        "/api/v1/pm-schedules",
        json={
            "title": "Overhaul",
            "equipment_id": pump["id"],
            "kind": "meter",
            "meter_metric": "running",
            "meter_every": 2000,
            "meter_value": 2500,
            "device": "pump-01",
        },
    )
    assert r.status_code == 201 and r.json()["meter_next_due"] == 4000
    r = client.post(
        "/api/v1/routes",
        json={
            "site": site,
            "name": "Plant room",
            "shifts": ["06:00"],
            "checkpoints": [
                {
                    "name": "Pump P-101",
                    "equipment_id": pump["id"],
                    "checklist": [
                        {"key": "pressure_bar", "type": "number", "min": 1.5, "max": 3.0, "unit": "bar"},
                        {"key": "no_leaks", "type": "pass_fail"},
                        {"key": "remarks", "type": "note"},
                    ],
                },
                {"name": "Panel", "checklist": []},
            ],
        },
    )
    assert r.status_code == 201, r.text
    route = r.json()
    cp1, cp2 = route["checkpoints"]
    svg = client.get(cp1["qr_svg"])
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    bad = client.post("/api/v1/routes", json={"site": site, "name": "x", "shifts": ["25:00"]})
    assert bad.status_code == 422 and bad.json()["field"] == "shifts[0]"
    rnd = client.post("/api/v1/rounds", json={"route_id": route["id"], "scheduled_ms": clock.ms}).json()
    url = f"/api/v1/rounds/{rnd['id']}/check-ins"
    r = client.post(url, json={"code": "cp-not-here", "results": {}})
    assert r.status_code == 422 and r.json()["field"] == "code"
    r = client.post(url, json={"code": cp1["code"], "results": {"pressure_bar": "high", "no_leaks": True}})
    assert r.status_code == 422 and r.json()["field"] == "results.pressure_bar"
    clock.advance(120)
    r = client.post(
        url,
        json={"code": cp1["code"], "results": {"pressure_bar": 3.4, "no_leaks": True}},
        headers=as_user("tom", "technician"),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["work_order"]["source"] == "inspection" and "pressure_bar" in body["work_order"]["title"]
    assert body["work_order"]["equipment_id"] == pump["id"] and body["readings_stored"] == 1
    [raw] = ts_store.readings(site, cp1["code"], "pressure_bar", clock.ms - 1, clock.ms + 1, 10)
    assert raw.value == 3.4
    assert (
        client.post(
            url, json={"code": cp1["code"], "results": {"pressure_bar": 2.0, "no_leaks": True}}
        ).status_code
        == 422
    )  # once per checkpoint and round
    r = client.post(url, json={"code": cp2["code"]})
    assert r.json()["round"]["state"] == "done" and r.json()["work_order"] is None
