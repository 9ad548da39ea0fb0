"""The route policy: every request to the API passes ``guard`` (installed app-wide by
``api.main.create_app``), which authenticates the caller, applies the per-token rate limit,
checks the permission the route needs and hides objects of sites the caller may not see.

Which permission a route needs comes, in this order, from:
1. ``PUBLIC``: no login at all (health, login, the phone links whose signed token is the
   credential — they keep their own check);
   The dashboard's HTML pages (``PUBLIC_MODULES``) are public here too: they resolve the
   caller themselves and send a visitor without a session to /login;
2. a ``requires(permission)`` dependency declared on the route itself (new routes);
3. ``ROUTE_PERMISSIONS`` below, for the routers written before authentication existed and
   for routes that check ``Principal.can`` in their body (the matrix tests read this table);
4. a route that takes the caller (``PrincipalDep``) and checks it itself: READ here;
5. otherwise READ for GET/HEAD and USERS_ADMIN for anything else: an unclassified write is
   admin-only until someone classifies it (tests/test_security_matrix.py fails on it).

Site scope (``Principal.sees``): a ``site`` path parameter, and every path parameter naming
an object that belongs to a site (``SITE_OF``), answer 404 when the caller may not see the
site — the same reply as for an object that does not exist. Objects with no site (a silence
without a site matcher, a rotation override) are only for callers who see every site.
Lists filter themselves with ``visible_sites``/``check_site_filter``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

import sqlalchemy as sa
from fastapi import HTTPException, Request
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api.auth import SESSION_COOKIE, Permission, Principal
from api.security import store
from api.security.limits import TokenBuckets, WindowCounter
from api.settings import ApiSettings

P = Permission

# Endpoints are named "<module>.<function>" (module without the "api.routers." prefix).
PUBLIC: set[str] = {
    "health.healthz",
    "auth.login",
    "auth.logout",  # ends the session it is sent with, if any; harmless without one
    "alerting_incidents.link_page",
    "alerting_incidents.use_link",
}
PUBLIC_MODULES: set[str] = {"api.dashboard.pages"}

ROUTE_PERMISSIONS: dict[str, Permission] = {
    # assets ledger, floor plans, PM schedules, routes
    **{f"maint_assets.{n}": P.ASSETS_WRITE for n in (
        "create_site", "add_location", "create_equipment", "patch_equipment", "delete_equipment",
        "bind_device", "unbind_device", "add_relation", "import_csv")},
    **{f"maint_pm.{n}": P.ASSETS_WRITE for n in ("create_pm", "set_meter", "refresh_meter", "create_route")},
    # inspection rounds are work done on site
    "maint_pm.create_round": P.WORKORDER_UPDATE,
    "maint_pm.check_in": P.WORKORDER_UPDATE,
    "maint_workorders.create_work_order": P.WORKORDER_CREATE,
    **{f"maint_workorders.{n}": P.WORKORDER_UPDATE for n in (
        "patch_work_order", "transition", "assign", "comment", "labour", "part")},
    # the maintenance audit trail and rejected events span sites: administrators only
    "maint_workorders.audit_trail": P.USERS_ADMIN,
    "maint_workorders.rejected": P.USERS_ADMIN,
    "alerting_incidents.ack": P.ALARM_ACK,
    "alerting_incidents.resolve": P.ALARM_ACK,
    "alerting_oncall.add_silence": P.ALARM_ACK,
    "alerting_oncall.delete_silence": P.ALARM_ACK,
    "alerting_oncall.add_override": P.ONCALL_WRITE,
    "alerting_oncall.delete_override": P.ONCALL_WRITE,
    # raw payloads of any site, with the reason they were refused: engineers and admins
    "dead_letters.list_dead_letters": P.DEAD_LETTERS_REPLAY,
    # dashboard routes that check the caller in their body: the same permissions, here too
    "api.dashboard.routes.ack_alarm": P.ALARM_ACK,
    "api.dashboard.routes.assign_alarm": P.ALARM_ACK,
    "api.dashboard.routes.silence_alarm": P.ALARM_ACK,
    "api.dashboard.routes.alarm_work_order": P.WORKORDER_CREATE,
    "floorplans.upload_plan": P.ASSETS_WRITE,
    "floorplans.place_device": P.ASSETS_WRITE,
    "floorplans.unplace_device": P.ASSETS_WRITE,
    # users, tokens, the security audit log
    **{f"users.{n}": P.USERS_ADMIN for n in (
        "list_users", "create_user", "get_user", "update_user", "set_password", "list_tokens",
        "create_token", "revoke_token")},
    "audit.list_audit": P.USERS_ADMIN,
    "auth.me": P.READ,
}

# Actions written to the security audit log when the route succeeds (the maintenance and
# alerting tables keep their own detailed history; this is the one place to read who did what).
AUDITED: dict[str, str] = {
    "alerting_incidents.ack": "incident.ack",
    "alerting_incidents.resolve": "incident.resolve",
    "alerting_oncall.add_silence": "silence.add",
    "alerting_oncall.delete_silence": "silence.delete",
    "alerting_oncall.add_override": "override.add",
    "alerting_oncall.delete_override": "override.delete",
    "maint_workorders.create_work_order": "workorder.create",
    "maint_workorders.patch_work_order": "workorder.update",
    "maint_workorders.transition": "workorder.transition",
    "maint_workorders.assign": "workorder.assign",
    "maint_assets.import_csv": "assets.import",
    "maint_assets.delete_equipment": "equipment.delete",
    "api.dashboard.routes.ack_alarm": "alarm.ack",
    "api.dashboard.routes.assign_alarm": "alarm.assign",
    "api.dashboard.routes.silence_alarm": "alarm.silence",
    "api.dashboard.routes.alarm_work_order": "workorder.create",
}

# path parameter -> SQL giving the site of the object it names (one row, column "site").
SITE_OF: Final[dict[str, str]] = {
    "eq_id": "SELECT site_id AS site FROM maint_equipment WHERE id = :v",
    "wo_id": "SELECT site_id AS site FROM maint_work_orders WHERE id = :v",
    "pm_id": "SELECT e.site_id AS site FROM maint_pm_schedules p JOIN maint_equipment e "
             "ON e.id = p.equipment_id WHERE p.id = :v",
    "route_id": "SELECT site_id AS site FROM maint_routes WHERE id = :v",
    "round_id": "SELECT r.site_id AS site FROM maint_rounds o JOIN maint_routes r ON r.id = o.route_id "
                "WHERE o.id = :v",
    "cp_id": "SELECT r.site_id AS site FROM maint_checkpoints c JOIN maint_routes r ON r.id = c.route_id "
             "WHERE c.id = :v",
    "incident_id": "SELECT site FROM alerting_incident WHERE id = :v",
    "anomaly_id": "SELECT site FROM analytics_anomalies WHERE id = :v",
    "silence_id": "SELECT match FROM alerting_silence WHERE id = :v",
    "override_id": "SELECT NULL AS site FROM alerting_override WHERE id = :v",
}
_INT_PARAMS: Final = frozenset({"eq_id", "wo_id", "pm_id", "route_id", "round_id", "cp_id", "override_id"})


def endpoint_key(endpoint: Callable[..., Any] | None) -> str:
    if endpoint is None:
        return ""
    return f"{endpoint.__module__.removeprefix('api.routers.')}.{endpoint.__name__}"


@dataclass(slots=True)
class Limits:
    """The process's rate limiters, built once per app from its settings."""

    per_token: TokenBuckets
    login_per_client: WindowCounter
    # Failed logins of names that are no user: they "lock" after as many failures as a real
    # account does, so a lockout does not tell which names exist.
    unknown_users: WindowCounter

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> Limits:
        return cls(TokenBuckets(settings.token_rate_per_s, settings.token_burst),
                   WindowCounter(settings.login_attempts_per_min, 60.0),
                   WindowCounter(settings.lockout_after - 1, settings.lockout_s))


def limits(request: Request) -> Limits:
    return cast(Limits, request.app.state.vigil_limits)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="vigil"'})


async def authenticate(request: Request) -> Principal:
    """The caller from ``Authorization: Bearer`` or the session cookie; 401 saying why not."""
    engine = cast(Engine, request.state.engine)
    header = request.headers.get("authorization")
    now = now_ms()
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _unauthorized("The Authorization header must be 'Bearer <token>'.")

        def by_token() -> Principal | str:
            with engine.begin() as conn:
                return store.resolve_token(conn, credentials.strip(), now)

        found = await run_in_threadpool(by_token)
    elif (cookie := request.cookies.get(SESSION_COOKIE)) is not None:
        def by_session() -> Principal | str:
            with engine.connect() as conn:
                return store.resolve_session(conn, cookie, now)

        found = await run_in_threadpool(by_session)
    else:
        raise _unauthorized("Authentication is required: send 'Authorization: Bearer <token>' or log "
                            "in at POST /api/v1/auth/login.")
    if isinstance(found, str):
        raise _unauthorized(found)
    return found


def _declared(route: Any) -> tuple[Permission | None, bool]:
    """(permission of a ``requires(...)`` dependency on the route, whether it takes the caller)."""
    cached = getattr(route, "__vigil_declared__", None)
    if cached is not None:
        return cast(tuple[Permission | None, bool], cached)
    from api.auth import principal

    found: Permission | None = None
    takes_caller = False
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", []) or [])
    while stack:
        dep = stack.pop()
        perm = getattr(dep.call, "__vigil_permission__", None)
        if isinstance(perm, Permission):
            found = perm
        takes_caller = takes_caller or dep.call is principal
        stack.extend(dep.dependencies)
    with contextlib.suppress(AttributeError):  # a route object that refuses attributes: no cache
        route.__vigil_declared__ = (found, takes_caller)
    return found, takes_caller


def declared_permission(route: Any) -> Permission | None:
    """The permission of a ``requires(...)`` dependency declared on the route, if any."""
    return _declared(route)[0]


def required_permission(route: Any, method: str) -> Permission | None:
    """What a route needs: None when it is public or checks its own ``requires``."""
    key = endpoint_key(getattr(route, "endpoint", None))
    if is_public(route):
        return None
    declared, takes_caller = _declared(route)
    if declared is not None:
        return None  # the route's own dependency checks it (and answers 403 itself)
    if key in ROUTE_PERMISSIONS:
        return ROUTE_PERMISSIONS[key]
    if takes_caller:
        return P.READ  # and the route checks the rest in its body
    return P.READ if method in ("GET", "HEAD") else P.USERS_ADMIN


def is_public(route: Any) -> bool:
    endpoint = getattr(route, "endpoint", None)
    return (endpoint_key(endpoint) in PUBLIC or getattr(endpoint, "__module__", "") in PUBLIC_MODULES
            or getattr(endpoint, "__vigil_public__", False) is True)


def _sites_of(engine: Engine, param: str, value: str) -> tuple[bool, tuple[str, ...]]:
    """(exists, sites) of the object a path parameter names; no sites: it belongs to none."""
    arg: Any = value
    if param in _INT_PARAMS:
        try:
            arg = int(value)
        except ValueError:
            return False, ()  # FastAPI answers 422 for it right after
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text(SITE_OF[param]), {"v": arg}).first()
    except sa.exc.SQLAlchemyError:
        # The site cannot be told (a package's tables missing): a site-limited caller gets
        # 404, as for an object of no site — failing closed.
        return True, ()
    if row is None:
        return False, ()
    if param == "silence_id":
        # A silence spans the sites it matches: visible when the caller sees all of them.
        match = row[0] if isinstance(row[0], dict) else {}
        return True, tuple(str(x) for x in match.get("sites") or ())
    return True, () if row[0] is None else (str(row[0]),)


async def check_scope(request: Request, caller: Principal) -> None:
    """404 for a site, or an object of a site, the caller may not see."""
    params = request.path_params
    site = params.get("site")
    if isinstance(site, str) and not caller.sees(site):
        raise HTTPException(404, f"There is no site {site!r} (or it is not yours to see).")
    if caller.sites is None:
        return
    engine = cast(Engine, request.state.engine)
    for name, value in params.items():
        if name not in SITE_OF:
            continue
        exists, sites = await run_in_threadpool(_sites_of, engine, name, str(value))
        if exists and (not sites or not all(caller.sees(x) for x in sites)):
            raise HTTPException(404, f"There is no {name.removesuffix('_id').replace('_', ' ')} "
                                     f"{value!r} (or it is not yours to see).")


def rate_limit(request: Request, caller: Principal) -> None:
    key = f"token:{caller.token_id}" if caller.token_id else f"user:{caller.user}"
    wait_s = limits(request).per_token.take(key, time.monotonic())
    if wait_s > 0:
        retry = max(1, math.ceil(wait_s))
        raise HTTPException(429, f"Too many requests for this {'token' if caller.token_id else 'session'}; "
                                 f"retry in {retry} s.", headers={"Retry-After": str(retry)})


def audit(request: Request, caller: Principal | None, action: str, target: str = "", *,
          outcome: str = "ok", **detail: Any) -> None:
    """Append to the security audit log (synchronously: call it from a worker thread)."""
    engine = cast(Engine, request.state.engine)
    actor = "anonymous" if caller is None else (
        f"{caller.user} (token {caller.token_id})" if caller.token_id else caller.user)
    with engine.begin() as conn:
        store.record(conn, now_ms(), actor, action, target, outcome=outcome, client=client_of(request),
                     **detail)


async def guard(request: Request) -> AsyncIterator[None]:
    """The app-wide dependency: authenticate, rate-limit, authorise, scope, then audit."""
    route = request.scope.get("route")
    if route is None or is_public(route):
        yield
        return
    from api.auth import principal

    # Through the app's dependency overrides, as FastAPI resolves ``PrincipalDep``: a test that
    # overrides ``principal`` drives the guard too.
    resolve = request.app.dependency_overrides.get(principal, principal)
    got = resolve(request) if inspect.signature(resolve).parameters else resolve()
    caller = cast(Principal, await got if inspect.isawaitable(got) else got)
    request.state.vigil_principal = caller
    rate_limit(request, caller)
    needed = required_permission(route, request.method)
    if needed is not None and not caller.can(needed):
        raise HTTPException(403, f"Role {caller.role!r} may not do this (it needs permission "
                                 f"{needed.value!r}); ask an administrator for a role that has it.")
    await check_scope(request, caller)
    key = endpoint_key(getattr(route, "endpoint", None))
    action = AUDITED.get(key)
    if action is None:
        yield
        return
    target = "/".join(str(v) for v in request.path_params.values()) or request.url.path
    try:
        yield
    except Exception as e:
        await run_in_threadpool(audit, request, caller, action, target, outcome="failed",
                                error=type(e).__name__)
        raise
    await run_in_threadpool(audit, request, caller, action, target)


def visible_sites(caller: Principal, sites: Iterable[str]) -> list[str]:
    return [s for s in sites if caller.sees(s)]


def check_site_filter(caller: Principal, site: str | None) -> None:
    """A list's ``site`` filter naming a site the caller may not see answers 404."""
    if site is not None and not caller.sees(site):
        raise HTTPException(404, f"There is no site {site!r} (or it is not yours to see).")


def require_site(caller: Principal, site: str | None, field: str = "site") -> None:
    """A site named in a request body must be one the caller sees: 404 otherwise (as for a
    site that does not exist). ``None`` (no site) is for callers who see every site."""
    if site is None:
        if caller.sites is not None:
            raise HTTPException(404, f"{field}: is required for a user limited to sites "
                                     f"{', '.join(sorted(caller.sites))}.")
        return
    if not caller.sees(site):
        raise HTTPException(404, f"{field}: there is no site {site!r} (or it is not yours to see).")


def require_every_site(caller: Principal, what: str) -> None:
    """Actions on the whole deployment (adding a site): only for callers who see every site."""
    if caller.sites is not None:
        raise HTTPException(403, f"Only a user who sees every site may {what}; you see "
                                 f"{', '.join(sorted(caller.sites))}.")


def refuse_fields(caller: Principal, body: Any, fields: dict[str, Permission]) -> None:
    """No mass assignment: a field set in ``body`` whose permission the caller's role lacks is
    refused with 403 naming it (rather than silently dropped, so the client knows)."""
    given: set[str] = getattr(body, "model_fields_set", set())
    for name, permission in fields.items():
        if name in given and getattr(body, name, None) is not None and not caller.can(permission):
            raise HTTPException(403, f"field {name!r}: role {caller.role!r} may not set it (it needs "
                                     f"permission {permission.value!r}); leave it out.")


def api_routes(app: Any) -> list[tuple[str, str, Any]]:
    """(method, full path, route) of every API route of ``app``, included routers walked
    (FastAPI keeps an included router's routes under it, with the prefix on the side)."""
    from fastapi.routing import APIRoute

    found: list[tuple[str, str, Any]] = []

    def walk(routes: Iterable[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                for method in sorted(route.methods or ()):
                    found.append((method, prefix + route.path, route))
            elif hasattr(route, "original_router"):
                walk(route.original_router.routes, prefix + route.include_context.prefix)

    walk(app.router.routes, "")
    return found
