"""What route handlers receive: the store and settings built in ``lifespan``, the clock, checked ids.

Handlers take these as ``Annotated`` aliases (``StoreDep``, ``SettingsDep``, ``NowMsDep``,
``DeviceRefDep``); tests swap the clock with ``app.dependency_overrides[now_ms]``.
Nothing here is created at import time: the store and settings live in the lifespan
state of the app that ``create_app`` built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Path, Request
from sqlalchemy import Engine

from api.settings import ApiSettings
from ingest.store import Store
from wire import check_id


async def store(request: Request) -> Store:
    return cast(Store, request.state.store)


async def engine(request: Request) -> Engine:
    return cast(Engine, request.state.engine)


async def settings(request: Request) -> ApiSettings:
    return cast(ApiSettings, request.state.settings)


async def now_ms() -> int:
    """Wall-clock epoch milliseconds: the reference for default ranges and staleness."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class DeviceRef:
    site: str
    device: str


async def device_ref(
    site: Annotated[str, Path(description="Site id, e.g. `hq-tower`.")],
    device: Annotated[str, Path(description="Device id within the site, e.g. `ahu-3`.")],
) -> DeviceRef:
    """The device named by the path, with both ids checked against the wire contract."""
    return DeviceRef(check_id("site", site), check_id("device", device))


StoreDep = Annotated[Store, Depends(store)]
EngineDep = Annotated[Engine, Depends(engine)]
SettingsDep = Annotated[ApiSettings, Depends(settings)]
NowMsDep = Annotated[int, Depends(now_ms)]
DeviceRefDep = Annotated[DeviceRef, Depends(device_ref)]
