"""Floor plans (one image per floor of the ledger) and where devices sit on them.

- ``GET  /api/v1/sites/{site}/floorplans``: the site's buildings and floors, whether each has
  a plan, and the devices placed on it;
- ``PUT  /api/v1/floors/{floor_id}/plan``: upload the plan, the image as the request body
  (``Content-Type: image/png`` or ``image/jpeg``; no multipart, so no extra parser);
- ``GET  /api/v1/floors/{floor_id}/plan``: the image;
- ``PUT  /api/v1/floors/{floor_id}/placements/{device}`` ``{"x": 0.4, "y": 0.7}``: place (or
  move) a device, its position as fractions of the plan's width and height, so a re-uploaded
  plan of another resolution keeps every device where it was; ``DELETE`` takes it off.

Only PNG and JPEG are accepted: an SVG plan could carry script into every viewer's page.
Reading needs ``read``; changing needs ``assets.write``. Floors of sites the caller may not see
answer 404.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Final

from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, delete, insert, select, update

from api.auth import Principal
from api.dashboard.routes import AssetsDep, ReadDep
from api.dashboard.tables import floor_plans, placements
from api.deps import EngineDep, NowMsDep
from maintenance.models import Building, Floor, Site
from wire import WireError, check_id

router = APIRouter(prefix="/api/v1", tags=["assets"])

MAX_IMAGE_BYTES: Final = 8 * 1024 * 1024
CONTENT_TYPES: Final = ("image/png", "image/jpeg")
FloorId = Annotated[int, Path(ge=1, description="Floor id, from `/api/v1/sites/{site}/locations`.")]


class ImageError(ValueError):
    """The uploaded bytes are not a usable PNG or JPEG; the message says what is wrong."""


def image_size(content_type: str, data: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG's IHDR or a JPEG's SOF marker; ImageError otherwise."""
    if content_type == "image/png":
        if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
            raise ImageError("the body is not a PNG image (no PNG signature and IHDR header)")
        w, h = struct.unpack(">II", data[16:24])
    elif content_type == "image/jpeg":
        if data[:2] != b"\xff\xd8":
            raise ImageError("the body is not a JPEG image (no SOI marker)")
        i, w, h = 2, 0, 0
        while i + 9 < len(data):
            if data[i] != 0xFF:
                raise ImageError(f"the JPEG is malformed at byte {i}")
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            # SOF0..SOF15 carry the size, except DHT (C4), JPG (C8) and DAC (CC).
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                break
            i += 2 + length
        if not w:
            raise ImageError("the JPEG has no frame header giving its size")
    else:
        raise ImageError(f"Content-Type {content_type!r} is not accepted; send image/png or image/jpeg")
    if not (0 < w <= 20_000 and 0 < h <= 20_000):
        raise ImageError(f"the image is {w}x{h} pixels; a plan must be 1-20000 pixels each way")
    return w, h


def _floor_site(conn: Connection, floor_id: int, p: Principal) -> str:
    row = conn.execute(
        select(Building.site_id).join(Floor, Floor.building_id == Building.id).where(Floor.id == floor_id)
    ).first()
    if row is None or not p.sees(row[0]):
        raise HTTPException(
            404, f"floor {floor_id} does not exist; list floors at /api/v1/sites/{{site}}/locations"
        )
    return str(row[0])


@router.get(
    "/sites/{site}/floorplans", summary="A site's floors, whether each has a plan, and placed devices"
)
def site_floorplans(site: str, p: ReadDep, engine: EngineDep) -> dict[str, Any]:
    try:
        check_id("site", site)
    except WireError as e:
        raise HTTPException(422, str(e)) from None
    with engine.connect() as conn:
        if not p.sees(site) or conn.execute(select(Site.id).where(Site.id == site)).first() is None:
            raise HTTPException(404, f"site {site!r} is not in the ledger")
        floors = conn.execute(
            select(
                Floor.id,
                Floor.code,
                Floor.name,
                Floor.level,
                Building.code.label("building"),
                Building.name.label("building_name"),
            )
            .join(Building, Building.id == Floor.building_id)
            .where(Building.site_id == site)
            .order_by(Building.code, Floor.level, Floor.code)
        ).all()
        plans = {
            r.floor_id: r
            for r in conn.execute(
                select(
                    floor_plans.c.floor_id,
                    floor_plans.c.width,
                    floor_plans.c.height,
                    floor_plans.c.updated_ms,
                )
            )
        }
        placed: dict[int, list[dict[str, Any]]] = {}
        for r in conn.execute(select(placements).where(placements.c.site_id == site)):
            placed.setdefault(r.floor_id, []).append({"device": r.device, "x": r.x, "y": r.y})
    return {
        "site": site,
        "floors": [
            {
                "id": f.id,
                "code": f.code,
                "name": f.name or f.code,
                "level": f.level,
                "building": f.building,
                "building_name": f.building_name or f.building,
                "plan": (
                    {
                        "width": plans[f.id].width,
                        "height": plans[f.id].height,
                        "updated_ms": plans[f.id].updated_ms,
                        "url": f"/api/v1/floors/{f.id}/plan?v={plans[f.id].updated_ms}",
                    }
                    if f.id in plans
                    else None
                ),
                "devices": placed.get(f.id, []),
            }
            for f in floors
        ],
    }


@router.put("/floors/{floor_id}/plan", summary="Upload a floor's plan (PNG or JPEG as the request body)")
async def upload_plan(
    floor_id: FloorId, request: Request, p: AssetsDep, engine: EngineDep, now: NowMsDep
) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_IMAGE_BYTES:
            raise HTTPException(
                413, f"the plan is over {MAX_IMAGE_BYTES // (1024 * 1024)} MiB; send a smaller image"
            )
    try:
        width, height = image_size(content_type, bytes(data))
    except ImageError as e:
        raise HTTPException(422, str(e)) from None
    values = {
        "content_type": content_type,
        "image": bytes(data),
        "width": width,
        "height": height,
        "updated_ms": now,
        "updated_by": p.user,
    }
    with engine.begin() as conn:
        _floor_site(conn, floor_id, p)
        if (
            conn.execute(
                update(floor_plans).where(floor_plans.c.floor_id == floor_id).values(**values)
            ).rowcount
            == 0
        ):
            conn.execute(insert(floor_plans).values(floor_id=floor_id, **values))
    return {"floor_id": floor_id, "width": width, "height": height, "updated_ms": now}


@router.get("/floors/{floor_id}/plan", summary="A floor's plan image", response_class=Response)
def get_plan(floor_id: FloorId, p: ReadDep, engine: EngineDep) -> Response:
    with engine.connect() as conn:
        _floor_site(conn, floor_id, p)
        row = conn.execute(
            select(floor_plans.c.content_type, floor_plans.c.image).where(floor_plans.c.floor_id == floor_id)
        ).first()
    if row is None:
        raise HTTPException(
            404, f"floor {floor_id} has no plan yet; upload one with PUT /api/v1/floors/{floor_id}/plan"
        )
    # private: the plan is only for users who may see the site.
    return Response(
        row.image, media_type=row.content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


class PlacementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: float = Field(ge=0, le=1, description="From the plan's left edge, as a fraction of its width.")
    y: float = Field(ge=0, le=1, description="From the plan's top edge, as a fraction of its height.")


@router.put("/floors/{floor_id}/placements/{device}", summary="Place or move a device on a floor's plan")
def place_device(
    floor_id: FloorId, device: str, body: PlacementIn, p: AssetsDep, engine: EngineDep, now: NowMsDep
) -> dict[str, Any]:
    try:
        check_id("device", device)
    except WireError as e:
        raise HTTPException(422, str(e)) from None
    with engine.begin() as conn:
        site = _floor_site(conn, floor_id, p)
        values = {"floor_id": floor_id, "x": body.x, "y": body.y, "updated_ms": now, "updated_by": p.user}
        done = conn.execute(
            update(placements)
            .where(placements.c.site_id == site, placements.c.device == device)
            .values(**values)
        )
        if done.rowcount == 0:
            conn.execute(insert(placements).values(site_id=site, device=device, **values))
    return {"site": site, "device": device, "floor_id": floor_id, "x": body.x, "y": body.y}


@router.delete(
    "/floors/{floor_id}/placements/{device}", status_code=204, summary="Take a device off the plan"
)
def unplace_device(floor_id: FloorId, device: str, p: AssetsDep, engine: EngineDep) -> Response:
    with engine.begin() as conn:
        site = _floor_site(conn, floor_id, p)
        conn.execute(
            delete(placements).where(
                placements.c.site_id == site, placements.c.device == device, placements.c.floor_id == floor_id
            )
        )
    return Response(status_code=204)
