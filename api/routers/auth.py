"""Logging in and out of the dashboard: ``POST /api/v1/auth/login`` checks a user's password
and sets the ``vigil_session`` cookie (HttpOnly, SameSite=Lax, Secure unless
``cookie_secure`` is false); ``POST /api/v1/auth/logout`` ends it; ``GET /api/v1/auth/me``
says who the caller is.

Abuse limits: at most ``login_attempts_per_min`` attempts a minute per client address (429
with Retry-After), and ``lockout_after`` wrong passwords in a row lock the account for
``lockout_s`` (429 with Retry-After; kept in the database, so every API process agrees).
A wrong user name and a wrong password get the same answer, in the same time.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import SESSION_COOKIE, PrincipalDep
from api.deps import EngineDep, SettingsDep
from api.schemas import ErrorBody
from api.security import policy, store

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=64, description="User name, e.g. `jane.doe`.")
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    user: str
    role: str
    sites: list[str] | None = Field(description="The sites this caller sees; null: every site.")
    permissions: list[str]
    token_id: str | None = None


def _me(p: Any) -> Me:
    from api.auth import PERMISSIONS

    return Me(user=p.user, role=p.role, sites=None if p.sites is None else sorted(p.sites),
              permissions=sorted(x.value for x in PERMISSIONS[p.role]), token_id=p.token_id)


@router.post("/login", summary="Log in: sets the session cookie",
             responses={401: {"model": ErrorBody}, 429: {"model": ErrorBody}})
async def login(body: LoginIn, request: Request, response: Response, db: EngineDep,
                settings: SettingsDep) -> Me:
    client = policy.client_of(request)
    wait_s = policy.limits(request).login_per_client.hit(client, time.monotonic())
    if wait_s:
        raise HTTPException(429, f"Too many login attempts from this address; retry in {wait_s} s.",
                            headers={"Retry-After": str(wait_s)})
    now = policy.now_ms()

    def attempt() -> tuple[store.LoginResult, str | None, Any]:
        with db.begin() as conn:
            result = store.check_login(conn, body.user, body.password, now,
                                       lockout_after=settings.lockout_after,
                                       lockout_ms=int(settings.lockout_s * 1000))
            cookie = p = None
            if result.ok:
                cookie = store.create_session(conn, body.user, now, int(settings.session_ttl_s * 1000))
                p = store.resolve_session(conn, cookie, now)
            store.record(conn, now, body.user, "login" if result.ok else "login.failed", body.user,
                         outcome="ok" if result.ok else result.reason, client=client)
        return result, cookie, p

    result, cookie, p = await run_in_threadpool(attempt)
    if result.reason == "unknown_user":
        wait = policy.limits(request).unknown_users.hit(body.user.lower(), time.monotonic())
        result = store.LoginResult(False, "locked", wait) if wait else result
    if result.reason == "locked":
        raise HTTPException(429, f"Too many failed logins: the account is locked for "
                                 f"{result.retry_after_s} s.",
                            headers={"Retry-After": str(result.retry_after_s)})
    if not result.ok or cookie is None or isinstance(p, str) or p is None:
        raise HTTPException(401, "Wrong user name or password (or the account is disabled).")
    response.set_cookie(SESSION_COOKIE, cookie, max_age=int(settings.session_ttl_s), httponly=True,
                        samesite="lax", secure=settings.cookie_secure, path="/")
    return _me(p)


@router.post("/logout", summary="Log out: ends the session of the cookie sent, if any", status_code=204)
async def logout(request: Request, response: Response, db: EngineDep) -> None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        def end() -> None:
            with db.begin() as conn:
                p = store.resolve_session(conn, cookie, policy.now_ms())
                store.end_session(conn, cookie)
                if not isinstance(p, str):
                    store.record(conn, policy.now_ms(), p.user, "logout", p.user,
                                 client=policy.client_of(request))

        await run_in_threadpool(end)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


@router.get("/me", summary="Who the caller is: user, role, sites and permissions")
async def me(caller: PrincipalDep) -> Me:
    return _me(caller)
