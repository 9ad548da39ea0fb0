"""The security audit log, newest first: logins and failed logins, user, role and token
changes, acknowledgements, work-order state changes. Administrators only (``users.admin``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import EngineDep
from api.security import store

router = APIRouter(prefix="/api/v1", tags=["audit"])


@router.get("/security/audit", summary="The security audit log, newest first (pages by `before_id`)")
def list_audit(
    db: EngineDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, description="`next_before_id` of the last page.")] = None,
    actor: Annotated[str | None, Query(max_length=100)] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. `login.failed`.")] = None,
    since_ms: Annotated[int | None, Query(ge=0, le=1 << 53)] = None,
) -> dict[str, Any]:
    with db.connect() as conn:
        rows = store.list_audit(conn, limit=limit, before_id=before_id, actor=actor, action=action,
                                since_ms=since_ms)
    return {"entries": rows, "next_before_id": rows[-1]["id"] if len(rows) == limit else None}
