"""The asset ledger: sites → buildings → floors → spaces → equipment → devices and points,
with Brick classes and relations, imported from and exported to CSV.

Invariants:
- an import applies every valid row and reports every bad one (row number, column,
  problem); a bad row changes nothing, and relations naming a bad row are reported too;
- importing the file an export wrote changes nothing (same rows, same relations);
- a device id on the bus (site, device) is bound to at most one equipment item; the CSV's
  ``devices`` column moves a device to the row's equipment, with an audit row.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from maintenance.models import Building, Device, Equipment, Floor, Relation, Site, Space
from maintenance.workorders import audit
from wire import WireError, check_id

BRICK_CLASSES: Final[dict[str, str]] = {
    "pump": "brick:Pump",
    "chiller": "brick:Chiller",
    "ahu": "brick:Air_Handling_Unit",
    "power_meter": "brick:Electrical_Meter",
    "door": "brick:Access_Control_Equipment",
    "space_sensor": "brick:Sensor",
    "camera": "brick:Video_Surveillance_Equipment",
    "lift": "brick:Elevator",
    "fire_panel": "brick:Fire_Control_Panel",
    "boiler": "brick:Boiler",
    "fan": "brick:Fan",
    "valve": "brick:Valve",
    "meter": "brick:Meter",
    "leak_detector": "brick:Leak_Sensor",
    "smoke_detector": "brick:Smoke_Detection_Alarm",
}
CRITICALITIES: Final = ("low", "medium", "high", "critical")
PREDICATES: Final = ("feeds", "serves")
COLUMNS: Final = ("site", "building", "floor", "space", "code", "name", "kind", "brick_class",
                  "manufacturer", "model", "serial", "install_date", "warranty_end", "criticality",
                  "responsible", "devices", "feeds", "serves")
REQUIRED: Final = ("site", "code", "kind")


def brick_class_for(kind: str) -> str:
    return BRICK_CLASSES.get(kind, "brick:Equipment")


def check_brick(value: str) -> str | None:
    """None if ``value`` looks like a Brick class (``brick:Name``), else the problem."""
    if not value.startswith("brick:") or not value[6:].replace("_", "").isalnum():
        return f"must be a Brick class such as brick:Pump, got {value!r}"
    return None


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    devices_bound: int = 0
    relations: int = 0
    errors: list[dict[str, object]] = field(default_factory=list)

    def error(self, row: int, column: str, problem: str) -> None:
        self.errors.append({"row": row, "column": column, "problem": problem})


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(";") if v.strip()]


def _date(value: str) -> dt.date | None:
    return dt.date.fromisoformat(value) if value else None


class _Locations:
    """Sites, buildings, floors and spaces by code, created on first use."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.sites = {s.id: s for s in session.scalars(select(Site))}
        self.buildings = {(b.site_id, b.code): b for b in session.scalars(select(Building))}
        self.floors = {(f.building_id, f.code): f for f in session.scalars(select(Floor))}
        self.spaces = {(sp.floor_id, sp.code): sp for sp in session.scalars(select(Space))}
        self.space_by_site: dict[tuple[str, str], list[Space]] = {}
        building_site = {b.id: b.site_id for b in self.buildings.values()}
        floor_site = {f.id: building_site.get(f.building_id, "") for f in self.floors.values()}
        for sp in self.spaces.values():
            self.space_by_site.setdefault((floor_site.get(sp.floor_id, ""), sp.code), []).append(sp)

    def space(self, site: str, building: str, floor: str, space: str) -> Space | None:
        if site not in self.sites:
            self.sites[site] = Site(id=site, name=site)
            self.s.add(self.sites[site])
            self.s.flush()  # no ORM relationships: rows go in by flush order, parents first
        if not building:
            return None
        b = self.buildings.get((site, building))
        if b is None:
            b = self.buildings[(site, building)] = Building(site_id=site, code=building, name=building)
            self.s.add(b)
            self.s.flush()
        if not floor:
            return None
        f = self.floors.get((b.id, floor))
        if f is None:
            f = self.floors[(b.id, floor)] = Floor(building_id=b.id, code=floor, name=floor)
            self.s.add(f)
            self.s.flush()
        if not space:
            return None
        sp = self.spaces.get((f.id, space))
        if sp is None:
            sp = self.spaces[(f.id, space)] = Space(floor_id=f.id, code=space, name=space)
            self.s.add(sp)
            self.s.flush()
            self.space_by_site.setdefault((site, space), []).append(sp)
        return sp


_FIELDS: Final = ("name", "kind", "brick_class", "manufacturer", "model", "serial", "install_date",
                  "warranty_end", "criticality", "responsible", "space_id")


def _parse_row(n: int, row: dict[str, str], report: ImportReport) -> dict[str, object] | None:
    before = len(report.errors)
    v = {k: (row.get(k) or "").strip() for k in COLUMNS}
    for col in REQUIRED:
        if not v[col]:
            report.error(n, col, "is required")
    for col in ("site", "building", "floor", "space", "code"):
        if v[col]:
            try:
                check_id(col, v[col])
            except WireError as e:
                report.error(n, col, str(e))
    if v["floor"] and not v["building"]:
        report.error(n, "building", "is required when floor is given")
    if v["space"] and not v["floor"]:
        report.error(n, "floor", "is required when space is given")
    brick = v["brick_class"] or brick_class_for(v["kind"])
    if (problem := check_brick(brick)) is not None:
        report.error(n, "brick_class", problem)
    crit = v["criticality"] or "medium"
    if crit not in CRITICALITIES:
        report.error(n, "criticality", f"must be one of {', '.join(CRITICALITIES)}, got {crit!r}")
    dates: dict[str, dt.date | None] = {}
    for col in ("install_date", "warranty_end"):
        try:
            dates[col] = _date(v[col])
        except ValueError:
            report.error(n, col, f"must be a date YYYY-MM-DD, got {v[col]!r}")
    for d in _split(v["devices"]):
        try:
            check_id("device", d)
        except WireError as e:
            report.error(n, "devices", str(e))
    if len(report.errors) > before:
        return None
    return {**v, "brick_class": brick, "criticality": crit, **dates}


def import_csv(session: Session, text: str, *, actor: str, now_ms: int) -> ImportReport:
    """Create or update equipment (by site and code) from CSV rows; see the module invariants."""
    report = ImportReport()
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [h for h in REQUIRED if h not in header]
    if unknown or missing or not header:
        if unknown:
            report.error(1, ",".join(unknown), f"unknown column(s); the columns are {', '.join(COLUMNS)}")
        if missing or not header:
            report.error(1, ",".join(missing) or "header", "required column(s) missing")
        return report
    reader.fieldnames = header
    locs = _Locations(session)
    equipment = {(e.site_id, e.code): e for e in session.scalars(select(Equipment))}
    devices = {(d.site_id, d.device): d for d in session.scalars(select(Device))}
    parsed: list[tuple[int, dict[str, object], Equipment]] = []
    audits: list[tuple[Equipment, str, list[str]]] = []
    seen: dict[tuple[str, str], int] = {}
    for n, row in enumerate(reader, start=2):
        if None in row:
            report.error(n, "", "has more values than the header has columns")
            continue
        values = _parse_row(n, row, report)
        if values is None:
            continue
        site, code = str(values["site"]), str(values["code"])
        if (site, code) in seen:
            report.error(n, "code", f"{code!r} in site {site!r} is also on row {seen[(site, code)]}")
            continue
        seen[(site, code)] = n
        sp = locs.space(site, str(values["building"]), str(values["floor"]), str(values["space"]))
        values["space_id"] = sp.id if sp is not None else None
        eq = equipment.get((site, code))
        fields = {k: values[k] for k in _FIELDS}
        if eq is None:
            eq = Equipment(site_id=site, code=code, **fields)
            session.add(eq)
            equipment[(site, code)] = eq
            report.created += 1
            action, changed = "create", fields
        else:
            changed = {k: val for k, val in fields.items() if getattr(eq, k) != val}
            for k, val in changed.items():
                setattr(eq, k, val)
            if changed:
                report.updated += 1
            else:
                report.unchanged += 1
            action = "update"
        parsed.append((n, values, eq))
        if changed:
            audits.append((eq, action, sorted(changed)))
    session.flush()  # one flush for every row: the new equipment gets its ids here
    for eq, action, changed_fields in audits:
        audit(session, actor=actor, entity="equipment", entity_id=eq.id, action=action, now_ms=now_ms,
              source="csv", changed=changed_fields)
    relations: dict[int, list[Relation]] = {}
    for r in session.scalars(select(Relation)):
        relations.setdefault(r.subject_id, []).append(r)
    for n, values, eq in parsed:
        site = eq.site_id
        for dev in _split(str(values["devices"])):
            bound = devices.get((site, dev))
            if bound is None:
                devices[(site, dev)] = Device(site_id=site, device=dev, equipment_id=eq.id)
                session.add(devices[(site, dev)])
            elif bound.equipment_id != eq.id:
                audit(session, actor=actor, entity="device", entity_id=f"{site}/{dev}", action="rebind",
                      now_ms=now_ms, before=bound.equipment_id, after=eq.id)
                bound.equipment_id = eq.id
            else:
                continue
            report.devices_bound += 1
        report.relations += _relations(session, n, values, eq, equipment, locs, report,
                                       relations.get(eq.id, []))
    session.flush()
    return report


def _relations(session: Session, n: int, values: dict[str, object], eq: Equipment,
               equipment: dict[tuple[str, str], Equipment], locs: _Locations, report: ImportReport,
               current: list[Relation]) -> int:
    wanted: set[tuple[str, int | None, int | None]] = set()
    for code in _split(str(values["feeds"])):
        target = equipment.get((eq.site_id, code))
        if target is None:
            report.error(n, "feeds",
                         f"no equipment {code!r} in site {eq.site_id!r} (in the ledger or this file)")
            continue
        wanted.add(("feeds", target.id, None))
    for code in _split(str(values["serves"])):
        spaces = locs.space_by_site.get((eq.site_id, code), [])
        if len(spaces) != 1:
            report.error(n, "serves", f"{'no' if not spaces else 'more than one'} space {code!r} "
                         f"in site {eq.site_id!r}")
            continue
        wanted.add(("serves", None, spaces[0].id))
    existing = {(r.predicate, r.object_equipment_id, r.object_space_id): r for r in current}
    for key, rel in existing.items():
        if key not in wanted:
            session.delete(rel)
    added = 0
    for key in wanted - existing.keys():
        session.add(Relation(subject_id=eq.id, predicate=key[0], object_equipment_id=key[1],
                             object_space_id=key[2]))
        added += 1
    return added


def export_csv(session: Session, site: str | None = None) -> str:
    """Every equipment item (of ``site``) as CSV rows, in the columns ``import_csv`` reads."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    spaces = {sp.id: sp for sp in session.scalars(select(Space))}
    floors = {f.id: f for f in session.scalars(select(Floor))}
    buildings = {b.id: b for b in session.scalars(select(Building))}
    q = select(Equipment).order_by(Equipment.site_id, Equipment.code)
    if site:
        q = q.where(Equipment.site_id == site)
    eqs = list(session.scalars(q))
    codes = {e.id: e.code for e in session.scalars(select(Equipment))}
    devs: dict[int, list[str]] = {}
    for d in session.scalars(select(Device).order_by(Device.device)):
        devs.setdefault(d.equipment_id, []).append(d.device)
    rels: dict[int, dict[str, list[str]]] = {}
    for r in session.scalars(select(Relation).order_by(Relation.id)):
        target = codes.get(r.object_equipment_id or -1) if r.object_equipment_id else (
            spaces[r.object_space_id].code if r.object_space_id in spaces else None)
        if target:
            rels.setdefault(r.subject_id, {}).setdefault(r.predicate, []).append(target)
    for e in eqs:
        sp = spaces.get(e.space_id or -1)
        fl = floors.get(sp.floor_id) if sp else None
        b = buildings.get(fl.building_id) if fl else None
        w.writerow([e.site_id, b.code if b else "", fl.code if fl else "", sp.code if sp else "", e.code,
                    e.name, e.kind, e.brick_class, e.manufacturer, e.model, e.serial,
                    e.install_date.isoformat() if e.install_date else "",
                    e.warranty_end.isoformat() if e.warranty_end else "", e.criticality, e.responsible,
                    ";".join(devs.get(e.id, [])), ";".join(sorted(rels.get(e.id, {}).get("feeds", []))),
                    ";".join(sorted(rels.get(e.id, {}).get("serves", [])))])
    return out.getvalue()


def unmatched(session: Session, seen: Iterable[tuple[str, str, str, int]]) -> list[tuple[str, str, str, int]]:
    """Of the devices seen on the bus (site, device, agent, last_seen_ms), those bound to no equipment."""
    bound = {(d.site_id, d.device) for d in session.scalars(select(Device))}
    return [d for d in seen if (d[0], d[1]) not in bound]


def seed(session: Session, devices: Iterable[tuple[str, str, str]], *, actor: str, now_ms: int) -> int:
    """Add one equipment item per (site, device, kind) not yet in the ledger, bound to its
    device (the demo's fleet); return how many were added. Existing rows are left alone."""
    have = {(d.site_id, d.device) for d in session.scalars(select(Device))}
    codes = {(e.site_id, e.code) for e in session.scalars(select(Equipment))}
    sites = {s.id for s in session.scalars(select(Site))}
    added = 0
    for site, device, kind in devices:
        if (site, device) in have or (site, device) in codes:
            continue
        if site not in sites:
            session.add(Site(id=site, name=site))
            session.flush()
            sites.add(site)
        eq = Equipment(site_id=site, code=device, name=f"{kind} {device}", kind=kind,
                       brick_class=brick_class_for(kind))
        session.add(eq)
        session.flush()
        session.add(Device(site_id=site, device=device, equipment_id=eq.id))
        audit(session, actor=actor, entity="equipment", entity_id=eq.id, action="create", now_ms=now_ms,
              source="seed", code=device)
        added += 1
    return added
