"""Liveness for load balancers and the demo: healthy means the store answers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StoreDep
from api.schemas import Health, Unhealthy
from ingest.store import StoreError

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Whether the API can reach its store",
    response_model=Health,
    responses={503: {"model": Unhealthy, "description": "The store did not answer; the reason says why."}},
)
def healthz(store: StoreDep) -> Health | JSONResponse:
    try:
        store.ping()
    except StoreError as e:
        return JSONResponse(
            {"status": "unavailable", "detail": f"The time-series store did not answer: {e}"},
            status_code=503,
        )
    return Health(status="ok")
