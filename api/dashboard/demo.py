"""The demo's floor plans and inspection routes, so the building view and the rounds page show
something on first start (a real site uploads its own plans and sets up its own routes):
one building and floor per site with a drawn plan and every device placed, and one route per
site walked every two hours, with an earlier round of today already missed."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from api.dashboard.tables import floor_plans, placements
from maintenance import pm
from maintenance.models import Building, Checkpoint, Equipment, Floor, Round, Route, Site

WIDTH, HEIGHT = 960, 540
ROOMS_X, ROOMS_Y = 4, 2  # a corridor runs between the two rows of rooms
AROUND = ((0.0, 0.0), (0.09, 0.1), (-0.09, 0.1), (0.09, -0.1), (-0.09, -0.1))


def plan_png(width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """A plain floor plan: outer walls, two rows of rooms and a corridor, as an RGB PNG."""
    wall, floor, corridor = b"\x3a\x40\x48", b"\xe9\xec\xef", b"\xd4\xd9\xde"
    top, bottom = height * 2 // 5, height * 3 // 5  # the corridor's band
    rows = []
    for y in range(height):
        in_corridor = top <= y < bottom
        line = bytearray(b"\x00")
        for x in range(width):
            edge = x < 6 or y < 6 or x >= width - 6 or y >= height - 6
            room_wall = not in_corridor and (
                x % (width // ROOMS_X) < 3 or abs(y - top) < 3 or abs(y - bottom) < 3
            )
            line += wall if edge or room_wall else (corridor if in_corridor else floor)
        rows.append(bytes(line))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
        + chunk(b"IEND", b"")
    )


def seed_floor_plans(engine: Engine, devices: Iterable[tuple[str, str]]) -> int:
    """Give each site without floors a building ``b1`` with floor ``l1``, the drawn plan, and its
    devices placed one per room spot; returns how many devices were placed. Idempotent."""
    by_site: dict[str, list[str]] = {}
    for site, device in devices:
        by_site.setdefault(site, []).append(device)
    now = time.time_ns() // 1_000_000
    image = plan_png()
    placed = 0
    with Session(engine) as s, s.begin():
        for site, names in sorted(by_site.items()):
            if s.get(Site, site) is None:
                continue
            if s.scalar(select(Building.id).where(Building.site_id == site)) is not None:
                continue  # the site has its own buildings: leave them alone
            b = Building(site_id=site, code="b1", name="Building 1")
            s.add(b)
            s.flush()
            f = Floor(building_id=b.id, code="l1", name="Ground floor", level=0)
            s.add(f)
            s.flush()
            s.execute(
                insert(floor_plans).values(
                    floor_id=f.id,
                    content_type="image/png",
                    image=image,
                    width=WIDTH,
                    height=HEIGHT,
                    updated_ms=now,
                    updated_by="system:demo",
                )
            )
            spots = [((i + 0.5) / ROOMS_X, y) for y in (0.2, 0.8) for i in range(ROOMS_X)]
            for n, device in enumerate(sorted(names)):
                x, y = spots[n % len(spots)]
                # devices sharing a room sit around its middle, far enough apart for their labels
                dx, dy = AROUND[(n // len(spots)) % len(AROUND)]
                x, y = min(0.97, max(0.03, x + dx)), min(0.95, max(0.05, y + dy))
                s.execute(
                    insert(placements).values(
                        site_id=site,
                        device=device,
                        floor_id=f.id,
                        x=x,
                        y=y,
                        updated_ms=now,
                        updated_by="system:demo",
                    )
                )
                placed += 1
    return placed


def seed_rounds(engine: Engine, now_ms: int | None = None) -> int:
    """One inspection route per site without routes: three checkpoints at its first equipment
    items, a round every two hours (maintenance's sweep schedules them), and a round from
    earlier today left undone, which the sweep flags as missed. Returns the routes added."""
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    added = 0
    with Session(engine) as s, s.begin():
        for site in s.scalars(select(Site.id).order_by(Site.id)):
            if s.scalar(select(Route.id).where(Route.site_id == site)) is not None:
                continue
            equipment = list(
                s.scalars(
                    select(Equipment).where(Equipment.site_id == site).order_by(Equipment.code).limit(3)
                )
            )
            if not equipment:
                continue
            route = Route(
                site_id=site,
                name="Plant room walk",
                shifts=[f"{h:02d}:00" for h in range(0, 24, 2)],
                window_minutes=120,
            )
            s.add(route)
            s.flush()
            for n, eq in enumerate(equipment, start=1):
                s.add(
                    Checkpoint(
                        route_id=route.id,
                        position=n,
                        name=f"{eq.name}",
                        code=pm.new_code(),
                        equipment_id=eq.id,
                        checklist=[
                            {"key": "leaks", "type": "pass_fail", "label": "No leaks"},
                            {"key": "remarks", "type": "note"},
                        ],
                    )
                )
            hour = 3_600_000
            start = now - now % (2 * hour) - 4 * hour  # two shifts ago: its window is over
            if start >= now - now % (24 * hour):  # only a round of today
                s.add(
                    Round(
                        route_id=route.id,
                        scheduled_ms=start,
                        due_ms=start + 2 * hour,
                        state="scheduled",
                        missed_checkpoints=[],
                    )
                )
            added += 1
    return added
