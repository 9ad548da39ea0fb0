"""The role x endpoint x site matrix, generated from the app's own routes.

For every API route except the public ones (``/healthz``, login/logout, the signed phone
links, the dashboard's HTML pages which send visitors to /login themselves, and the docs in
demo mode), the app must refuse: no token (401), a malformed, expired or revoked token
(401), a token of each role that lacks the route's permission (403), and a token limited to
another site for a route that names a site or an object of a site (404, as for a missing
one). A token of a role that has the permission, for the right site, is let through the
guard (whatever the handler then says, it is not 401/403). The expected permission is read
off the route (``requires``) or the policy table, so a new route is covered the day it is
added — and ``test_every_route_is_classified`` fails until someone decides who may call it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from alerting import tables as alerting_tables
from analytics import db as analytics_db
from api.auth import PERMISSIONS, ROLES, Permission, Role
from api.main import create_app
from api.security import policy
from api.settings import ApiSettings
from ingest.store import StoreSettings
from tests.services import api_token
from wire.anomaly import Anomaly

SITE, OTHER = "s1", "s2"
NOW_MS = int(time.time() * 1000)
PUBLIC_PATHS = {("POST", "/api/v1/auth/login"), ("POST", "/api/v1/auth/logout"), ("GET", "/healthz"),
                ("GET", "/api/v1/alerting/links/{token}"), ("POST", "/api/v1/alerting/links/{token}")}


@dataclass
class World:
    client: TestClient
    database_url: str
    ids: dict[str, str]  # path parameter -> an object of SITE
    tokens: dict[tuple[Role, str | None], str]  # (role, site or None) -> bearer token
    expired: str
    revoked: str

    def headers(self, role: Role, site: str | None = SITE) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[(role, site)]}"}


def _seed(c: TestClient, admin: dict[str, str], engine: sa.Engine) -> dict[str, str]:
    """One object of SITE for every path parameter that names one."""
    for site in (SITE, OTHER):
        assert c.post("/api/v1/sites", json={"id": site, "name": site}, headers=admin).status_code == 201
    eq = c.post("/api/v1/equipment", json={"site": SITE, "code": "P-1", "kind": "pump"}, headers=admin).json()
    wo = c.post("/api/v1/work-orders", json={"title": "Leak", "site": SITE}, headers=admin).json()
    route = c.post("/api/v1/routes", headers=admin, json={
        "site": SITE, "name": "Plant", "checkpoints": [{"name": "Pump", "equipment_id": eq["id"]}]}).json()
    rnd = c.post("/api/v1/rounds", json={"route_id": route["id"], "scheduled_ms": NOW_MS},
                 headers=admin).json()
    pm = c.post("/api/v1/pm-schedules", headers=admin, json={
        "title": "Grease", "equipment_id": eq["id"], "kind": "calendar", "next_due": "2030-01-01"}).json()
    analytics_db.save(engine, SITE, "pump-1", Anomaly(
        v=1, id="an-matrix", state="open", ts_ms=NOW_MS, started_ms=NOW_MS, severity="major",
        fault="vibration_high", summary="Pump vibration high"))
    with engine.begin() as conn:
        conn.execute(alerting_tables.incident.insert().values(
            id="inc-matrix", key="k", site=SITE, building="b", severity="major", state="open", title="t",
            life_safety=False, created_ms=NOW_MS, step=0, round=0, folded=0, alert_count=0, version=0))
        conn.execute(alerting_tables.silence.insert().values(
            id="sil-matrix", match={"sites": [SITE]}, start_ms=NOW_MS, end_ms=NOW_MS + 3_600_000,
            reason="r", created_by="x", created_ms=NOW_MS))
    return {"site": SITE, "device": "pump-1", "eq_id": str(eq["id"]), "wo_id": str(wo["id"]),
            "route_id": str(route["id"]), "round_id": str(rnd["id"]), "pm_id": str(pm["id"]),
            "cp_id": str(route["checkpoints"][0]["id"]), "anomaly_id": "an-matrix",
            "incident_id": "inc-matrix", "silence_id": "sil-matrix", "token_id": "0123456789abcdef",
            "name": "nobody", "rotation": "day", "override_id": "1", "floor_id": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder: Path = tmp_path_factory.mktemp("matrix")
    url = f"sqlite:///{folder / 'vigil.db'}"
    # Generous limits: the matrix makes a few hundred calls with a handful of tokens.
    settings = ApiSettings.load(None, database_url=url, store=StoreSettings(path=folder / "ts.db"),
                                token_rate_per_s=10_000, token_burst=10_000)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        admin = {"Authorization": f"Bearer {api_token(url, user='matrix-admin')}"}
        engine = sa.create_engine(url)
        ids = _seed(c, admin, engine)
        engine.dispose()
        tokens = {(role, site): api_token(url, role=role, sites=None if site is None else [site],
                                          user=f"m-{role}-{site or 'all'}")
                  for role in ROLES for site in (SITE, OTHER, None)}
        expired = api_token(url, user="m-expired", expires_in_s=-60)
        revoked = api_token(url, user="m-revoked")
        assert c.delete(f"/api/v1/tokens/{revoked[4:20]}", headers=admin).status_code == 200
        yield World(c, url, ids, tokens, expired, revoked)


def _routes() -> list[tuple[str, str, Any]]:
    app = create_app(ApiSettings.load(None))
    return [(m, p, r) for m, p, r in policy.api_routes(app) if m != "HEAD"]


ROUTES = _routes()
GUARDED = [(m, p, r) for m, p, r in ROUTES if not policy.is_public(r)]


def _needed(route: Any, method: str) -> Permission:
    perm = policy.declared_permission(route) or policy.required_permission(route, method)
    assert perm is not None
    return perm


def _path(world: World, path: str, *, missing: bool = False) -> str:
    for name, value in world.ids.items():
        path = path.replace("{" + name + "}", _MISSING.get(name, "999999") if missing else value)
    assert "{" not in path, f"no test object for a parameter of {path}"
    return path


# Ids of objects that do not exist, where a number will not do.
_MISSING = {"site": SITE, "device": "nope", "anomaly_id": "an-nope", "incident_id": "inc-nope",
            "silence_id": "sil-nope", "token_id": "fedcba9876543210", "name": "nobody", "rotation": "nope"}
# Routes whose answer never ends (server-sent events): only their refusals are called.
STREAMING = {"/api/v1/stream"}


def _call(world: World, method: str, path: str, headers: dict[str, str], *, missing: bool = False) -> int:
    # An empty JSON body: the guard answers before the body is validated.
    r = world.client.request(method, _path(world, path, missing=missing), headers=headers,
                             json={} if method in ("POST", "PUT", "PATCH") else None, follow_redirects=False)
    if r.status_code == 303 and r.headers.get("location", "").startswith("/login") \
            and not path.startswith("/api/"):
        return 401  # the dashboard sends a browser without a session to the login page
    return int(r.status_code)


def test_every_route_is_classified() -> None:
    """Each route is public on purpose, declares ``requires``, or is in the policy table."""
    unclassified = []
    for method, path, route in ROUTES:
        key = policy.endpoint_key(route.endpoint)
        if policy.is_public(route):
            assert (method, path) in PUBLIC_PATHS or key.startswith(("api.dashboard.pages.",)), (method, path)
        elif policy.declared_permission(route) is None and key not in policy.ROUTE_PERMISSIONS \
                and method not in ("GET", "HEAD"):
            unclassified.append(f"{method} {path} ({key})")
    assert not unclassified, f"writes with no permission decided (policy.ROUTE_PERMISSIONS): {unclassified}"
    assert len(GUARDED) > 60


@pytest.mark.parametrize(("method", "path", "route"), GUARDED, ids=[f"{m} {p}" for m, p, _ in GUARDED])
def test_route_refuses_callers_who_may_not_use_it(world: World, method: str, path: str, route: Any) -> None:
    needed = _needed(route, method)
    # nobody, a mistyped token, an expired one and a revoked one: 401
    for headers in ({}, {"Authorization": "Bearer vgt_0000000000000000_" + "x" * 43},
                    {"Authorization": f"Bearer {world.expired}"},
                    {"Authorization": f"Bearer {world.revoked}"},
                    {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        assert _call(world, method, path, headers) == 401, (method, path, headers)
    # another site's token, with a role that may: the object "does not exist" for it
    if any("{" + p + "}" in path for p in (*policy.SITE_OF, "site")):
        able = next(r for r in ROLES if needed in PERMISSIONS[r])
        assert _call(world, method, path, world.headers(able, OTHER)) == 404, (method, path, able)
    for role in ROLES:
        if needed in PERMISSIONS[role]:
            if path in STREAMING:
                continue
            # A DELETE that passes would remove the shared object: it is sent to a missing one.
            status = _call(world, method, path, world.headers(role), missing=method == "DELETE")
            assert status not in (401, 403), (method, path, role, status)
        else:
            assert _call(world, method, path, world.headers(role)) == 403, (method, path, role)
