"""Users, their roles and site scopes, and API tokens: administrators only (``users.admin``).

Every change is written to the security audit log. Passwords and token secrets are never
returned, except a new token's secret, once, in the reply that creates it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, Role
from api.deps import EngineDep
from api.schemas import ErrorBody
from api.security import policy, store

router = APIRouter(prefix="/api/v1", tags=["users"],
                   responses={code: {"model": ErrorBody} for code in (403, 404, 422)})

UserName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$", description="User name.")]
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="Token id (16 hex digits).")]
SiteList = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
                     Field(max_length=1000, description="Sites this user sees; null: every site.")]


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")
    password: str = Field(min_length=1, max_length=1024, description="At least 12 characters.")
    role: Role
    sites: SiteList = None


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    sites: SiteList = Field(None, description="New sites; send `all_sites: true` for every site.")
    all_sites: bool = False
    disabled: bool | None = None


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=1, max_length=1024)


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(pattern=r"^[A-Za-z0-9_.@\-]{1,64}$", description="Who the token acts as.")
    name: str = Field("", max_length=100, description="What it is for, e.g. `bms-integration`.")
    role: Role | None = Field(None, description="At most the user's role; default: the user's.")
    sites: SiteList = Field(None, description="Within the user's sites; default: the user's.")
    expires_in_s: int | None = Field(90 * 86400, ge=60, le=5 * 365 * 86400,
                                     description="Lifetime; null: until revoked.")


def _refuse(e: Exception) -> HTTPException:
    if isinstance(e, store.NotFoundError):
        return HTTPException(404, str(e))
    return HTTPException(422, str(e))


def _run(request: Request, caller: Any, action: str, target: str, fn: Any, **detail: Any) -> Any:
    engine = request.state.engine
    now = policy.now_ms()
    with engine.begin() as conn:
        result = fn(conn, now)
        store.record(conn, now, caller.user, action, target, client=policy.client_of(request), **detail)
    return result


@router.get("/users", summary="Every user, with role and sites")
def list_users(db: EngineDep) -> dict[str, Any]:
    with db.connect() as conn:
        return {"users": [u.public() for u in store.list_users(conn)]}


@router.post("/users", status_code=201, summary="Create a user")
async def create_user(body: UserIn, request: Request, caller: PrincipalDep) -> dict[str, Any]:
    try:
        user = await run_in_threadpool(
            _run, request, caller, "user.create", body.name,
            lambda conn, now: store.create_user(conn, body.name, body.password, body.role, body.sites, now),
            role=body.role, sites=body.sites)
    except (store.SecurityError, store.NotFoundError) as e:
        raise _refuse(e) from None
    return user.public()  # type: ignore[no-any-return]


@router.get("/users/{name}", summary="One user")
def get_user(name: UserName, db: EngineDep) -> dict[str, Any]:
    with db.connect() as conn:
        user = store.get_user(conn, name)
    if user is None:
        raise HTTPException(404, f"There is no user {name!r}.")
    return user.public()


@router.patch("/users/{name}", summary="Change a user's role, sites, or disable them")
async def update_user(name: UserName, body: UserPatch, request: Request,
                      caller: PrincipalDep) -> dict[str, Any]:
    if name == caller.user and (body.disabled or (body.role is not None and body.role != "admin")):
        raise HTTPException(422, "role/disabled: an administrator cannot demote or disable themselves "
                                 "(another administrator must).")
    sites: Any = None if body.all_sites else (body.sites if body.sites is not None else False)
    try:
        user = await run_in_threadpool(
            _run, request, caller, "user.update", name,
            lambda conn, now: store.update_user(conn, name, now, role=body.role, sites=sites,
                                                disabled=body.disabled),
            role=body.role, sites=None if sites is False else sites, disabled=body.disabled)
    except (store.SecurityError, store.NotFoundError) as e:
        raise _refuse(e) from None
    return user.public()  # type: ignore[no-any-return]


@router.put("/users/{name}/password", status_code=204, summary="Set a user's password (ends their sessions)")
async def set_password(name: UserName, body: PasswordIn, request: Request, caller: PrincipalDep) -> None:
    try:
        await run_in_threadpool(_run, request, caller, "user.password", name,
                                lambda conn, now: store.set_password(conn, name, body.password, now))
    except (store.SecurityError, store.NotFoundError) as e:
        raise _refuse(e) from None


@router.get("/tokens", summary="API tokens (never their secrets)")
def list_tokens(db: EngineDep, user: str | None = None) -> dict[str, Any]:
    with db.connect() as conn:
        return {"tokens": [t.public() for t in store.list_tokens(conn, user)]}


@router.post("/tokens", status_code=201, summary="Create an API token; its secret is shown once")
async def create_token(body: TokenIn, request: Request, caller: PrincipalDep) -> dict[str, Any]:
    def make(conn: Any, now: int) -> tuple[store.Token, str]:
        expires = None if body.expires_in_s is None else now + body.expires_in_s * 1000
        return store.create_token(conn, body.user, now, name=body.name, role=body.role, sites=body.sites,
                                  expires_ms=expires)

    try:
        token, secret = await run_in_threadpool(_run, request, caller, "token.create", body.user, make,
                                                role=body.role, sites=body.sites, name=body.name)
    except (store.SecurityError, store.NotFoundError) as e:
        raise _refuse(e) from None
    return {**token.public(), "token": secret}


@router.delete("/tokens/{token_id}", summary="Revoke an API token (at once)")
async def revoke_token(token_id: TokenId, request: Request, caller: PrincipalDep) -> dict[str, Any]:
    try:
        token = await run_in_threadpool(_run, request, caller, "token.revoke", token_id,
                                        lambda conn, now: store.revoke_token(conn, token_id, now))
    except (store.SecurityError, store.NotFoundError) as e:
        raise _refuse(e) from None
    return token.public()  # type: ignore[no-any-return]
