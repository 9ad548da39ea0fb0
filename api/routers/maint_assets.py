"""The asset ledger: sites, their buildings/floors/spaces, equipment with Brick classes,
bound devices and points, relations, CSV import and export, and the devices seen on the
bus that no equipment claims yet."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import PrincipalDep
from api.deps import NowMsDep, StoreDep
from api.routers.maint_common import ERRORS, ActorDep, CursorQ, LimitQ, SessionDep
from api.security.policy import check_site_filter, require_every_site, require_site
from maintenance import ledger
from maintenance.errors import ConflictError, InvalidError, NotFoundError
from maintenance.models import Building, Device, Equipment, Floor, Point, Relation, Site, Space
from maintenance.workorders import audit
from wire import WireError, check_id

router = APIRouter(prefix="/api/v1", tags=["assets"], responses=ERRORS)

IdStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
EqId = Annotated[int, Path(ge=1, description="Equipment id.")]
Criticality = Literal["low", "medium", "high", "critical"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteIn(_In):
    id: IdStr = Field(description="The site id used on the bus, e.g. `tower-a`.")
    name: str = Field("", max_length=200)


class SiteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str


class LocationIn(_In):
    building: IdStr
    floor: IdStr | None = None
    space: IdStr | None = None
    name: str = Field("", max_length=200, description="Name of the deepest level given.")
    level: int | None = Field(None, ge=-20, le=300, description="Floor level, when a floor is given.")


class SpaceNode(BaseModel):
    id: int
    code: str
    name: str


class FloorNode(BaseModel):
    id: int
    code: str
    name: str
    level: int | None
    spaces: list[SpaceNode]


class BuildingNode(BaseModel):
    id: int
    code: str
    name: str
    floors: list[FloorNode]


class EquipmentIn(_In):
    site: IdStr
    code: IdStr = Field(description="Unique within the site, e.g. `P-101`.")
    kind: str = Field(min_length=1, max_length=64, description="e.g. pump, chiller, ahu, door.")
    brick_class: str | None = Field(
        None, max_length=128, description="Defaults from the kind, e.g. brick:Pump."
    )
    name: str = Field("", max_length=200)
    space_id: int | None = Field(None, ge=1)
    manufacturer: str = Field("", max_length=200)
    model: str = Field("", max_length=200)
    serial: str = Field("", max_length=200)
    install_date: dt.date | None = None
    warranty_end: dt.date | None = None
    criticality: Criticality = "medium"
    responsible: str = Field("", max_length=200, description="Responsible crew or contractor.")


class EquipmentPatch(_In):
    kind: str | None = Field(None, min_length=1, max_length=64)
    brick_class: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=200)
    space_id: int | None = Field(None, ge=1)
    manufacturer: str | None = Field(None, max_length=200)
    model: str | None = Field(None, max_length=200)
    serial: str | None = Field(None, max_length=200)
    install_date: dt.date | None = None
    warranty_end: dt.date | None = None
    criticality: Criticality | None = None
    responsible: str | None = Field(None, max_length=200)


class PointIn(_In):
    metric: str = Field(min_length=1, max_length=64)
    brick_class: str = Field("brick:Point", max_length=128)
    unit: str = Field("", max_length=32)


class DeviceIn(_In):
    device: IdStr = Field(description="The device id on the bus, in the equipment's site.")
    points: list[PointIn] = Field(default_factory=list, max_length=200)


class RelationIn(_In):
    predicate: Literal["feeds", "serves"]
    equipment_id: int | None = Field(None, ge=1, description="For `feeds`: the equipment fed.")
    space_id: int | None = Field(None, ge=1, description="For `serves`: the space served.")


class PointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    metric: str
    brick_class: str
    unit: str


class DeviceOut(BaseModel):
    site: str
    device: str
    points: list[PointOut]


class RelationOut(BaseModel):
    id: int
    predicate: str
    equipment_id: int | None
    space_id: int | None


class EquipmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    site_id: str
    code: str
    name: str
    kind: str
    brick_class: str
    space_id: int | None
    manufacturer: str
    model: str
    serial: str
    install_date: dt.date | None
    warranty_end: dt.date | None
    criticality: str
    responsible: str


class EquipmentDetail(EquipmentOut):
    devices: list[DeviceOut]
    relations: list[RelationOut]


class EquipmentPage(BaseModel):
    equipment: list[EquipmentOut]
    next_cursor: int | None


class ImportOut(BaseModel):
    created: int
    updated: int
    unchanged: int
    devices_bound: int
    relations: int
    errors: list[dict[str, object]] = Field(
        description="Rows refused: row number (header = 1), column, problem."
    )


class UnmatchedOut(BaseModel):
    site: str
    device: str
    agent: str
    last_seen_ms: int


def checked_site(s: Session, site: str) -> str:
    try:
        check_id("site", site)
    except WireError as e:
        raise InvalidError("site", str(e)) from None
    if s.get(Site, site) is None:
        raise NotFoundError(f"site {site!r} is not in the ledger; create it with POST /api/v1/sites")
    return site


def _equipment(s: Session, eq_id: int) -> Equipment:
    eq = s.get(Equipment, eq_id)
    if eq is None:
        raise NotFoundError(f"equipment {eq_id} does not exist")
    return eq


def _check_values(s: Session, site: str, values: dict[str, object]) -> None:
    brick = values.get("brick_class")
    if isinstance(brick, str) and (problem := ledger.check_brick(brick)) is not None:
        raise InvalidError("brick_class", problem)
    space_id = values.get("space_id")
    if isinstance(space_id, int):
        sp = s.get(Space, space_id)
        fl = s.get(Floor, sp.floor_id) if sp else None
        b = s.get(Building, fl.building_id) if fl else None
        if b is None or b.site_id != site:
            raise InvalidError("space_id", f"space {space_id} is not a space of site {site!r}")


def _detail(s: Session, eq: Equipment) -> EquipmentDetail:
    devices = []
    for d in s.scalars(select(Device).where(Device.equipment_id == eq.id).order_by(Device.device)):
        pts = s.scalars(select(Point).where(Point.device_id == d.id).order_by(Point.metric))
        devices.append(
            DeviceOut(site=d.site_id, device=d.device, points=[PointOut.model_validate(p) for p in pts])
        )
    rels = [
        RelationOut(
            id=r.id, predicate=r.predicate, equipment_id=r.object_equipment_id, space_id=r.object_space_id
        )
        for r in s.scalars(select(Relation).where(Relation.subject_id == eq.id).order_by(Relation.id))
    ]
    return EquipmentDetail(**EquipmentOut.model_validate(eq).model_dump(), devices=devices, relations=rels)


# -- sites and locations ----------------------------------------------------------------------


@router.get("/sites", response_model=list[SiteOut], summary="Sites in the ledger")
def list_sites(s: SessionDep, caller: PrincipalDep) -> list[SiteOut]:
    return [SiteOut.model_validate(x) for x in s.scalars(select(Site).order_by(Site.id)) if caller.sees(x.id)]


@router.post("/sites", status_code=201, response_model=SiteOut, summary="Add a site")
def create_site(body: SiteIn, s: SessionDep, user: ActorDep, now: NowMsDep, caller: PrincipalDep) -> SiteOut:
    require_every_site(caller, "add a site")
    if s.get(Site, body.id) is not None:
        raise ConflictError(f"site {body.id!r} already exists")
    site = Site(id=body.id, name=body.name)
    s.add(site)
    audit(s, actor=user, entity="site", entity_id=body.id, action="create", now_ms=now, name=body.name)
    s.commit()
    return SiteOut.model_validate(site)


@router.get(
    "/sites/{site}/locations",
    response_model=list[BuildingNode],
    summary="A site's buildings, floors and spaces",
)
def locations(site: str, s: SessionDep) -> list[BuildingNode]:
    checked_site(s, site)
    out = []
    for b in s.scalars(select(Building).where(Building.site_id == site).order_by(Building.code)):
        floors = []
        for f in s.scalars(select(Floor).where(Floor.building_id == b.id).order_by(Floor.code)):
            spaces = [
                SpaceNode(id=x.id, code=x.code, name=x.name)
                for x in s.scalars(select(Space).where(Space.floor_id == f.id).order_by(Space.code))
            ]
            floors.append(FloorNode(id=f.id, code=f.code, name=f.name, level=f.level, spaces=spaces))
        out.append(BuildingNode(id=b.id, code=b.code, name=b.name, floors=floors))
    return out


@router.post(
    "/sites/{site}/locations",
    status_code=201,
    response_model=list[BuildingNode],
    summary="Add a building, a floor in it, or a space on a floor (created as needed)",
)
def add_location(
    site: str, body: LocationIn, s: SessionDep, user: ActorDep, now: NowMsDep
) -> list[BuildingNode]:
    checked_site(s, site)
    if body.space and not body.floor:
        raise InvalidError("floor", "is required when space is given")
    b = s.scalar(select(Building).where(Building.site_id == site, Building.code == body.building))
    if b is None:
        b = Building(site_id=site, code=body.building, name=body.name if not body.floor else body.building)
        s.add(b)
        s.flush()
    if body.floor:
        f = s.scalar(select(Floor).where(Floor.building_id == b.id, Floor.code == body.floor))
        if f is None:
            f = Floor(
                building_id=b.id,
                code=body.floor,
                level=body.level,
                name=body.name if not body.space else body.floor,
            )
            s.add(f)
            s.flush()
        if (
            body.space
            and s.scalar(select(Space).where(Space.floor_id == f.id, Space.code == body.space)) is None
        ):
            s.add(Space(floor_id=f.id, code=body.space, name=body.name or body.space))
    path = "/".join(x for x in (body.building, body.floor, body.space) if x)
    audit(s, actor=user, entity="location", entity_id=f"{site}/{path}", action="create", now_ms=now)
    s.commit()
    return locations(site, s)


# -- equipment ----------------------------------------------------------------------------------


@router.get("/equipment", response_model=EquipmentPage, summary="Equipment, with filters")
def list_equipment(
    s: SessionDep,
    caller: PrincipalDep,
    limit: LimitQ = 100,
    cursor: CursorQ = None,
    site: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    brick_class: Annotated[str | None, Query(max_length=128)] = None,
    criticality: Criticality | None = None,
    responsible: Annotated[str | None, Query(max_length=200)] = None,
) -> EquipmentPage:
    check_site_filter(caller, site)
    q = select(Equipment)
    if caller.sites is not None:
        q = q.where(Equipment.site_id.in_(sorted(caller.sites)))
    if cursor is not None:
        q = q.where(Equipment.id > cursor)
    for column, value in (
        (Equipment.site_id, site),
        (Equipment.kind, kind),
        (Equipment.brick_class, brick_class),
        (Equipment.criticality, criticality),
        (Equipment.responsible, responsible),
    ):
        if value is not None:
            q = q.where(column == value)
    rows = list(s.scalars(q.order_by(Equipment.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return EquipmentPage(
        equipment=[EquipmentOut.model_validate(e) for e in rows], next_cursor=rows[-1].id if more else None
    )


@router.post("/equipment", status_code=201, response_model=EquipmentDetail, summary="Add equipment")
def create_equipment(
    body: EquipmentIn, s: SessionDep, user: ActorDep, now: NowMsDep, caller: PrincipalDep
) -> EquipmentDetail:
    require_site(caller, body.site)
    checked_site(s, body.site)
    values = body.model_dump(exclude={"site"})
    values["brick_class"] = body.brick_class or ledger.brick_class_for(body.kind)
    _check_values(s, body.site, values)
    if s.scalar(select(Equipment.id).where(Equipment.site_id == body.site, Equipment.code == body.code)):
        raise ConflictError(f"equipment {body.code!r} already exists in site {body.site!r}")
    eq = Equipment(site_id=body.site, **values)
    s.add(eq)
    s.flush()
    audit(
        s,
        actor=user,
        entity="equipment",
        entity_id=eq.id,
        action="create",
        now_ms=now,
        code=eq.code,
        site=eq.site_id,
    )
    s.commit()
    return _detail(s, eq)


@router.get("/equipment/{eq_id}", response_model=EquipmentDetail, summary="One equipment item")
def get_equipment(eq_id: EqId, s: SessionDep) -> EquipmentDetail:
    return _detail(s, _equipment(s, eq_id))


@router.patch("/equipment/{eq_id}", response_model=EquipmentDetail, summary="Change equipment fields")
def patch_equipment(
    eq_id: EqId, body: EquipmentPatch, s: SessionDep, user: ActorDep, now: NowMsDep
) -> EquipmentDetail:
    eq = _equipment(s, eq_id)
    changes = body.model_dump(exclude_unset=True)
    _check_values(s, eq.site_id, changes)
    before = {k: str(getattr(eq, k)) for k in changes}
    for k, v in changes.items():
        setattr(eq, k, v)
    audit(
        s,
        actor=user,
        entity="equipment",
        entity_id=eq.id,
        action="update",
        now_ms=now,
        before=before,
        after={k: str(v) for k, v in changes.items()},
    )
    s.commit()
    return _detail(s, eq)


@router.delete("/equipment/{eq_id}", status_code=204, summary="Remove equipment (its work orders stay)")
def delete_equipment(eq_id: EqId, s: SessionDep, user: ActorDep, now: NowMsDep) -> None:
    eq = _equipment(s, eq_id)
    audit(
        s,
        actor=user,
        entity="equipment",
        entity_id=eq.id,
        action="delete",
        now_ms=now,
        code=eq.code,
        site=eq.site_id,
    )
    s.delete(eq)
    s.commit()


@router.post(
    "/equipment/{eq_id}/devices",
    status_code=201,
    response_model=EquipmentDetail,
    summary="Bind a bus device (and its points) to the equipment",
)
def bind_device(eq_id: EqId, body: DeviceIn, s: SessionDep, user: ActorDep, now: NowMsDep) -> EquipmentDetail:
    eq = _equipment(s, eq_id)
    d = s.scalar(select(Device).where(Device.site_id == eq.site_id, Device.device == body.device))
    if d is not None and d.equipment_id != eq.id:
        raise ConflictError(
            f"device {body.device!r} of site {eq.site_id!r} is bound to equipment "
            f"{d.equipment_id}; unbind it there first"
        )
    if d is None:
        d = Device(site_id=eq.site_id, device=body.device, equipment_id=eq.id)
        s.add(d)
        s.flush()
    have = {p.metric for p in s.scalars(select(Point).where(Point.device_id == d.id))}
    for i, p in enumerate(body.points):
        if (problem := ledger.check_brick(p.brick_class)) is not None:
            raise InvalidError(f"points[{i}].brick_class", problem)
        if p.metric not in have:
            s.add(Point(device_id=d.id, metric=p.metric, brick_class=p.brick_class, unit=p.unit))
    audit(
        s,
        actor=user,
        entity="equipment",
        entity_id=eq.id,
        action="bind_device",
        now_ms=now,
        device=body.device,
        points=[p.metric for p in body.points],
    )
    s.commit()
    return _detail(s, eq)


@router.delete("/equipment/{eq_id}/devices/{device}", status_code=204, summary="Unbind a device")
def unbind_device(eq_id: EqId, device: str, s: SessionDep, user: ActorDep, now: NowMsDep) -> None:
    eq = _equipment(s, eq_id)
    d = s.scalar(select(Device).where(Device.equipment_id == eq.id, Device.device == device))
    if d is None:
        raise NotFoundError(f"device {device!r} is not bound to equipment {eq_id}")
    s.delete(d)
    audit(
        s, actor=user, entity="equipment", entity_id=eq.id, action="unbind_device", now_ms=now, device=device
    )
    s.commit()


@router.post(
    "/equipment/{eq_id}/relations",
    status_code=201,
    response_model=EquipmentDetail,
    summary="Say what this equipment feeds or which space it serves",
)
def add_relation(
    eq_id: EqId, body: RelationIn, s: SessionDep, user: ActorDep, now: NowMsDep, caller: PrincipalDep
) -> EquipmentDetail:
    eq = _equipment(s, eq_id)
    if body.predicate == "feeds":
        if body.equipment_id is None or body.space_id is not None:
            raise InvalidError("equipment_id", "is required for feeds (and space_id is not allowed)")
        fed = _equipment(s, body.equipment_id)
        if not caller.sees(fed.site_id):
            raise NotFoundError(f"equipment {body.equipment_id} does not exist")
    else:
        if body.space_id is None or body.equipment_id is not None:
            raise InvalidError("space_id", "is required for serves (and equipment_id is not allowed)")
        _check_values(s, eq.site_id, {"space_id": body.space_id})
    s.add(
        Relation(
            subject_id=eq.id,
            predicate=body.predicate,
            object_equipment_id=body.equipment_id,
            object_space_id=body.space_id,
        )
    )
    audit(
        s,
        actor=user,
        entity="equipment",
        entity_id=eq.id,
        action="relate",
        now_ms=now,
        predicate=body.predicate,
        equipment_id=body.equipment_id,
        space_id=body.space_id,
    )
    s.commit()
    return _detail(s, eq)


# -- CSV and the bus ----------------------------------------------------------------------------


@router.get("/assets/export.csv", response_class=PlainTextResponse, summary="The equipment ledger as CSV")
def export_csv(
    s: SessionDep, caller: PrincipalDep, site: Annotated[str | None, Query(max_length=64)] = None
) -> PlainTextResponse:
    check_site_filter(caller, site)
    if site is None and caller.sites is not None:
        # One export per visible site, under one header row.
        parts = [ledger.export_csv(s, x).splitlines(keepends=True) for x in sorted(caller.sites)]
        text = "".join(parts[0][:1] + [line for p in parts for line in p[1:]]) if parts else ""
        return PlainTextResponse(text, media_type="text/csv")
    return PlainTextResponse(ledger.export_csv(s, site), media_type="text/csv")


@router.post(
    "/assets/import",
    response_model=ImportOut,
    summary="Create or update equipment from CSV (the export's columns); bad rows are listed",
)
def import_csv(
    s: SessionDep,
    user: ActorDep,
    now: NowMsDep,
    caller: PrincipalDep,
    body: Annotated[str, Body(media_type="text/csv", description="CSV text with a header row.")],
) -> ImportOut:
    if caller.sites is not None:
        # Every row must be of a site the caller sees; a row of another site refuses the import.
        for line, row in enumerate(csv.DictReader(io.StringIO(body)), start=2):
            site = (row.get("site") or "").strip()
            if site and not caller.sees(site):
                raise NotFoundError(f"line {line}: there is no site {site!r} (or it is not yours to see)")
    report = ledger.import_csv(s, body, actor=user, now_ms=now)
    s.commit()
    return ImportOut(
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        devices_bound=report.devices_bound,
        relations=report.relations,
        errors=report.errors,
    )


@router.get(
    "/assets/unmatched-devices",
    response_model=list[UnmatchedOut],
    summary="Devices seen on the bus that no equipment claims yet",
)
def unmatched_devices(
    s: SessionDep, store: StoreDep, caller: PrincipalDep,
    site: Annotated[str | None, Query(max_length=64)] = None,
) -> list[UnmatchedOut]:
    check_site_filter(caller, site)
    seen = [(d.site, d.device, d.agent, d.last_seen_ms) for d in store.devices()
            if site in (None, d.site) and caller.sees(d.site)]
    return [
        UnmatchedOut(site=a, device=b, agent=c, last_seen_ms=t) for a, b, c, t in ledger.unmatched(s, seen)
    ]
