"""Who is calling and what they may do: the one interface every route and page uses.

INTERFACE (fixed; the security work fills in the bodies marked TODO, nothing else changes
its shape without telling every user of it):

- ``Principal``: the authenticated caller — a user (session cookie ``vigil_session``, set by
  ``POST /api/v1/auth/login``) or an API token (``Authorization: Bearer <token>``).
- ``principal(request)``: FastAPI dependency; 401 with a clear ``detail`` when there is no
  valid session or token. ``PrincipalDep`` is its ``Annotated`` alias.
- ``requires(permission)``: dependency factory; 403 when the caller's role lacks it.
- ``Principal.sees(site)``: the site scope. Objects of a site the caller may not see answer
  404 (not 403: their existence is not disclosed); lists leave them out.
- Roles, lowest to highest: viewer, operator, technician, engineer, admin; what each may do
  is ``PERMISSIONS`` below (one table, so the route matrix tests can be generated from it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

from fastapi import Depends, HTTPException, Request

Role = Literal["viewer", "operator", "technician", "engineer", "admin"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "operator", "technician", "engineer", "admin")
SESSION_COOKIE: Final = "vigil_session"


class Permission(StrEnum):
    READ = "read"  # see devices, readings, anomalies, work orders, pages of visible sites
    ALARM_ACK = "alarm.ack"  # acknowledge / assign / silence alarms and pages
    WORKORDER_CREATE = "workorder.create"
    WORKORDER_UPDATE = "workorder.update"  # move along its lifecycle, comment, close
    ASSETS_WRITE = "assets.write"  # ledger, floor plans, device placement, PM schedules, routes
    ONCALL_WRITE = "oncall.write"  # rotations, overrides, policies, routes, channels
    DEAD_LETTERS_REPLAY = "deadletters.replay"
    USERS_ADMIN = "users.admin"  # users, roles, site scopes, API tokens of others, audit log


_P = Permission
PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    "viewer": frozenset({_P.READ}),
    "operator": frozenset({_P.READ, _P.ALARM_ACK, _P.WORKORDER_CREATE}),
    "technician": frozenset({_P.READ, _P.ALARM_ACK, _P.WORKORDER_UPDATE}),
    "engineer": frozenset({_P.READ, _P.ALARM_ACK, _P.WORKORDER_CREATE, _P.WORKORDER_UPDATE,
                           _P.ASSETS_WRITE, _P.ONCALL_WRITE, _P.DEAD_LETTERS_REPLAY}),
    "admin": frozenset(Permission),
}


@dataclass(frozen=True, slots=True)
class Principal:
    user: str  # user name; for a token, the user who owns it
    role: Role
    sites: frozenset[str] | None  # None: every site
    token_id: str | None = None  # set when authenticated by an API token

    def can(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    def sees(self, site: str) -> bool:
        return self.sites is None or site in self.sites


async def principal(request: Request) -> Principal:
    """The caller, from the session cookie or a bearer token; 401 otherwise.

    Resolved once per request (the app-wide guard usually has already) and kept on
    ``request.state``; a bearer token wins over a cookie when both are sent."""
    cached = getattr(request.state, "vigil_principal", None)
    if isinstance(cached, Principal):
        return cached
    from api.security.policy import authenticate  # the machinery imports this module

    found = await authenticate(request)
    request.state.vigil_principal = found
    return found


PrincipalDep = Annotated[Principal, Depends(principal)]

# What ``requires`` returns: a dependency that also says which permission it checks, so the
# route policy and the route-matrix tests can read it off a route.
RequiresDep = Callable[[Principal], Awaitable[Principal]]


def requires(permission: Permission) -> RequiresDep:
    """A dependency that returns the caller when its role has ``permission``; 403 otherwise."""

    async def dependency(caller: PrincipalDep) -> Principal:
        if not caller.can(permission):
            raise HTTPException(
                403, f"Role {caller.role!r} may not do this (it needs permission {permission.value!r}); "
                     "ask an administrator for a role that has it.")
        return caller

    dependency.__vigil_permission__ = permission  # type: ignore[attr-defined]
    dependency.__name__ = f"requires_{permission.name.lower()}"
    return dependency
