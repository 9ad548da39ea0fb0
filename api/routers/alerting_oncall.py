"""On-call: who is on call now, rotations, escalation policies and routes (from the running
alerting service's on-call file), and the run-time silences and rotation overrides.

Rotations, policies and routes are read-only here: they live in the on-call file, so that
they are reviewed like code; the service publishes the file it runs with to the database.
Silences, maintenance windows and overrides (swaps, cover) change at run time, here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field, ValidationError

from alerting import store as alerting_store
from alerting.config import OnCallConfig, Override, Severity, SilenceRule
from alerting.rotation import on_call, upcoming
from api.auth import Principal, PrincipalDep
from api.deps import EngineDep, NowMsDep
from api.security.policy import check_site_filter

router = APIRouter(prefix="/api/v1/alerting", tags=["alerting"])


def _config(db: EngineDep) -> tuple[OnCallConfig, dict[str, list[tuple[int, Override]]]]:
    with db.connect() as conn:
        cfg = alerting_store.read_config(conn)
        overrides = alerting_store.overrides(conn)
    if cfg is None:
        raise HTTPException(503, "the alerting service has not started yet against this database; "
                                 "start `vigil alerting` (or the demo) with the same database_url.")
    return cfg, overrides


def _sees_rotation(caller: Principal, rot_sites: tuple[str, ...] | list[str]) -> bool:
    """A rotation of no site in particular covers every site: everyone sees it."""
    return caller.sites is None or not rot_sites or any(caller.sees(x) for x in rot_sites)


def _owns_sites(caller: Principal, sites: tuple[str, ...] | list[str]) -> bool:
    """Changing something that spans sites needs all of them (every site when it names none)."""
    return caller.sites is None or (bool(sites) and all(caller.sees(x) for x in sites))


@router.get("/oncall", summary="Who is on call now, per rotation (for one site or all)")
def who_is_on_call(db: EngineDep, now: NowMsDep, caller: PrincipalDep,
                   site: Annotated[str | None, Query(description="Only rotations of this site.")] = None,
                   ) -> dict[str, Any]:
    check_site_filter(caller, site)
    cfg, overrides = _config(db)
    out = []
    for name, rot in cfg.rotations.items():
        if site is not None and rot.sites and site not in rot.sites:
            continue
        if not _sees_rotation(caller, rot.sites):
            continue
        shift = on_call(rot, now, [o for _, o in overrides.get(name, [])])
        person = cfg.people.get(shift.person)
        out.append({"rotation": name, "person": shift.person, "name": person.name if person else "",
                    "since_ms": shift.start_ms, "until_ms": shift.end_ms, "override": shift.override})
    return {"now_ms": now, "on_call": out}


@router.get("/rotations", summary="Rotations with their next shifts and overrides")
def rotations(db: EngineDep, now: NowMsDep, caller: PrincipalDep,
              shifts: Annotated[int, Query(ge=1, le=60)] = 4) -> dict[str, Any]:
    cfg, overrides = _config(db)
    out = {}
    for name, rot in cfg.rotations.items():
        if not _sees_rotation(caller, rot.sites):
            continue
        out[name] = {
            **rot.model_dump(mode="json"),
            "upcoming": [{"person": s.person, "start_ms": s.start_ms, "end_ms": s.end_ms}
                         for s in upcoming(rot, now, shifts)],
            "run_time_overrides": [{"id": oid, **o.model_dump()} for oid, o in overrides.get(name, [])],
        }
    return {"rotations": out}


@router.get("/policies", summary="Escalation policies")
def policies(db: EngineDep) -> dict[str, Any]:
    cfg, _ = _config(db)
    return {"policies": {k: v.model_dump(mode="json") for k, v in cfg.policies.items()},
            "default_policy": cfg.default_policy}


@router.get("/routes", summary="Routing rules, in the order they are tried")
def routes(db: EngineDep) -> dict[str, Any]:
    cfg, _ = _config(db)
    return {"routes": [r.model_dump(mode="json") for r in cfg.routes],
            "life_safety": [r.model_dump(mode="json") for r in cfg.life_safety]}


class OverrideIn(BaseModel):
    person: str = Field(description="A person id of the on-call file.")
    start_ms: int
    end_ms: int
    reason: str = Field("", max_length=512)


@router.post("/rotations/{rotation}/overrides", summary="Put someone on call for a while (cover, swap)")
def add_override(db: EngineDep, now: NowMsDep, rotation: str, body: OverrideIn,
                 caller: PrincipalDep) -> dict[str, Any]:
    cfg, _ = _config(db)
    if rotation not in cfg.rotations or not _owns_sites(caller, cfg.rotations[rotation].sites):
        known = ", ".join(sorted(cfg.rotations)) or "none"
        raise HTTPException(404, f"no rotation {rotation!r}; known: {known}.")
    if body.person not in cfg.people:
        raise HTTPException(422, f"person {body.person!r} is not in the on-call file.")
    try:
        o = Override(person=body.person, start_ms=body.start_ms, end_ms=body.end_ms)
    except ValidationError as e:
        raise HTTPException(422, e.errors()[0]["msg"]) from None
    with db.begin() as conn:
        oid = alerting_store.add_override(conn, rotation, o, body.reason, now)
    return {"id": oid, "rotation": rotation, **o.model_dump()}


@router.delete("/overrides/{override_id}", summary="Remove an override")
def delete_override(db: EngineDep, override_id: int) -> dict[str, Any]:
    with db.begin() as conn:
        if not alerting_store.delete_override(conn, override_id):
            raise HTTPException(404, f"no override {override_id}.")
    return {"deleted": override_id}


class SilenceIn(BaseModel):
    sites: tuple[str, ...] = ()
    buildings: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    min_severity: Severity = "info"
    start_ms: int
    end_ms: int
    reason: str = Field(min_length=1, max_length=512, description="Why, e.g. `chiller 2 overhaul`.")
    created_by: str | None = Field(
        None, min_length=1, max_length=128,
        description="Always the caller; if sent, it must be the caller's user name.")


@router.get("/silences", summary="Silences and maintenance windows not yet over")
def list_silences(db: EngineDep, now: NowMsDep, caller: PrincipalDep) -> dict[str, Any]:
    with db.connect() as conn:
        rows = alerting_store.silences(conn, now)
    return {"silences": [{"id": sid, **rule.model_dump(mode="json"), **meta} for sid, rule, meta in rows
                         if _owns_sites(caller, rule.sites)]}


@router.post("/silences", summary="Silence matching alerts (life-safety alerts still page)")
def add_silence(db: EngineDep, now: NowMsDep, body: SilenceIn, caller: PrincipalDep) -> dict[str, Any]:
    if body.created_by is not None and body.created_by != caller.user:
        raise HTTPException(403, f"field 'created_by': a silence is created by the caller ({caller.user!r}); "
                                 "leave it out.")
    if not _owns_sites(caller, body.sites):
        raise HTTPException(404, "field 'sites': name only sites you see (a user limited to sites must "
                                 "name them: a silence of every site would hide other sites' pages).")
    if body.end_ms <= body.start_ms:
        raise HTTPException(422, "end_ms must be after start_ms.")
    if not any((body.sites, body.buildings, body.devices, body.kinds, body.event_types)):
        raise HTTPException(422, "a silence must match something: give sites, buildings, devices, kinds or "
                                 "event_types (a silence of everything would hide every page).")
    rule = SilenceRule(**body.model_dump(exclude={"created_by"}))
    with db.begin() as conn:
        sid = alerting_store.add_silence(conn, rule, caller.user, now)
    return {"id": sid, **rule.model_dump(mode="json")}


@router.delete("/silences/{silence_id}", summary="End a silence")
def delete_silence(db: EngineDep, silence_id: str) -> dict[str, Any]:
    with db.begin() as conn:
        if not alerting_store.delete_silence(conn, silence_id):
            raise HTTPException(404, f"no silence {silence_id!r}.")
    return {"deleted": silence_id}
