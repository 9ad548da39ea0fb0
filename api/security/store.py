"""Users, API tokens, sessions and the audit log in the database: the operations the
routes, the CLI and the test helpers share. Plain functions on a SQLAlchemy ``Connection``;
the caller owns the transaction.

Invariants:
- a secret (password, token, session id) is never stored: argon2id for passwords, SHA-256
  for the 256-bit random token and session secrets;
- a token can never do more than its user: it is created at most at the user's role and
  within the user's sites, and when it is used its role and sites are cut down again to the
  user's *current* ones (demoting or disabling a user demotes or disables their tokens);
- every refusal says why in a sentence a person can act on, but never whether a user name
  exists (``login`` answers the same for a wrong name and a wrong password).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import Connection

from api.auth import ROLES, Principal, Role
from api.security import passwords
from api.security.tables import audit, sessions, tokens, users
from wire import WireError, check_id

TOKEN_PREFIX: Final = "vgt_"
_TOKEN_RE: Final = re.compile(r"^vgt_([0-9a-f]{16})_([A-Za-z0-9_\-]{43})\Z")
_USER_RE: Final = re.compile(r"^[A-Za-z0-9_.@\-]{1,64}\Z")


class SecurityError(ValueError):
    """A request about users or tokens is refused; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFoundError(LookupError):
    """No such user or token."""


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def rank(role: str) -> int:
    return ROLES.index(role)  # type: ignore[arg-type,unused-ignore]


def check_user_name(name: str) -> str:
    if not _USER_RE.match(name):
        raise SecurityError("user", f"{name[:80]!r} is not a valid user name: use 1-64 letters, digits, "
                                    "'_', '.', '@' or '-'")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise SecurityError("role", f"{role!r} is not a role; roles are {', '.join(ROLES)}")
    return role


def check_sites(sites: Iterable[str] | None) -> list[str] | None:
    if sites is None:
        return None
    out: list[str] = []
    for site in sites:
        try:
            out.append(check_id("site", site))
        except WireError as e:
            raise SecurityError("sites", str(e)) from None
    return sorted(set(out))


def _sites(value: Any) -> frozenset[str] | None:
    return None if value is None else frozenset(value)


def _narrow(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    if a is None:
        return b
    return a if b is None else a & b


# -- users -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    sites: frozenset[str] | None
    disabled: bool
    locked_until_ms: int | None
    created_ms: int

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role,
                "sites": None if self.sites is None else sorted(self.sites),
                "disabled": self.disabled, "locked_until_ms": self.locked_until_ms,
                "created_ms": self.created_ms}


def _user(row: Any) -> User:
    return User(row.name, row.role, _sites(row.sites), bool(row.disabled), row.locked_until_ms,
                row.created_ms)


def get_user(conn: Connection, name: str) -> User | None:
    row = conn.execute(sa.select(users).where(users.c.name == name)).first()
    return None if row is None else _user(row)


def list_users(conn: Connection) -> list[User]:
    return [_user(r) for r in conn.execute(sa.select(users).order_by(users.c.name))]


def count_users(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())


def create_user(conn: Connection, name: str, password: str, role: str, sites: Iterable[str] | None,
                now_ms: int, *, check_strength: bool = True) -> User:
    check_user_name(name)
    role = check_role(role)
    site_list = check_sites(sites)
    if check_strength:
        try:
            passwords.check_strength(password, name)
        except passwords.WeakPasswordError as e:
            raise SecurityError("password", str(e)) from None
    if get_user(conn, name) is not None:
        raise SecurityError("user", f"a user named {name!r} already exists")
    conn.execute(users.insert().values(
        name=name, password_hash=passwords.hash_password(password), role=role, sites=site_list,
        disabled=False, failed_logins=0, locked_until_ms=None, created_ms=now_ms, updated_ms=now_ms))
    user = get_user(conn, name)
    assert user is not None
    return user


def _require_user(conn: Connection, name: str) -> User:
    user = get_user(conn, name)
    if user is None:
        raise NotFoundError(f"there is no user {name!r}")
    return user


def set_password(conn: Connection, name: str, password: str, now_ms: int) -> None:
    _require_user(conn, name)
    try:
        passwords.check_strength(password, name)
    except passwords.WeakPasswordError as e:
        raise SecurityError("password", str(e)) from None
    conn.execute(users.update().where(users.c.name == name).values(
        password_hash=passwords.hash_password(password), failed_logins=0, locked_until_ms=None,
        updated_ms=now_ms))
    # A new password ends every session opened with the old one.
    conn.execute(sessions.delete().where(sessions.c.user == name))


def update_user(conn: Connection, name: str, now_ms: int, *, role: str | None = None,
                sites: Iterable[str] | bool | None = False, disabled: bool | None = None) -> User:
    """Change a user's role, sites (``False``: unchanged; ``None``: every site) or disabled flag."""
    _require_user(conn, name)
    values: dict[str, Any] = {"updated_ms": now_ms}
    if role is not None:
        values["role"] = check_role(role)
    if sites is not False:
        values["sites"] = check_sites(sites)  # type: ignore[arg-type]
    if disabled is not None:
        values["disabled"] = disabled
        if not disabled:
            values["failed_logins"] = 0
            values["locked_until_ms"] = None
    conn.execute(users.update().where(users.c.name == name).values(**values))
    if disabled:
        conn.execute(sessions.delete().where(sessions.c.user == name))
    return _require_user(conn, name)


# -- login and sessions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginResult:
    ok: bool
    reason: str  # "ok", "bad_credentials", "unknown_user", "locked", "disabled"
    retry_after_s: int = 0


def check_login(conn: Connection, name: str, password: str, now_ms: int, *, lockout_after: int,
                lockout_ms: int) -> LoginResult:
    """Verify a password and keep the lockout count: ``lockout_after`` failures in a row lock
    the account for ``lockout_ms`` (attempts while locked do not even verify the password)."""
    row = conn.execute(sa.select(users).where(users.c.name == name)).first()
    if row is None:
        passwords.verify(None, password)  # same time as a wrong password
        return LoginResult(False, "unknown_user")  # the caller answers it as bad_credentials
    if row.locked_until_ms is not None and row.locked_until_ms > now_ms:
        return LoginResult(False, "locked", max(1, -(-(row.locked_until_ms - now_ms) // 1000)))
    if not passwords.verify(row.password_hash, password):
        failed = int(row.failed_logins or 0) + 1
        locked = now_ms + lockout_ms if failed >= lockout_after else None
        conn.execute(users.update().where(users.c.name == name).values(
            failed_logins=0 if locked else failed, locked_until_ms=locked))
        if locked:
            return LoginResult(False, "locked", max(1, lockout_ms // 1000))
        return LoginResult(False, "bad_credentials")
    if row.disabled:
        return LoginResult(False, "disabled")
    values: dict[str, Any] = {"failed_logins": 0, "locked_until_ms": None}
    if passwords.needs_rehash(row.password_hash):
        values["password_hash"] = passwords.hash_password(password)
    conn.execute(users.update().where(users.c.name == name).values(**values))
    return LoginResult(True, "ok")


def create_session(conn: Connection, user: str, now_ms: int, ttl_ms: int) -> str:
    """A new session for ``user``; returns the cookie value (only its hash is stored)."""
    secret = secrets.token_urlsafe(32)
    conn.execute(sessions.insert().values(id_sha256=_sha256(secret), user=user, created_ms=now_ms,
                                          expires_ms=now_ms + ttl_ms))
    # Expired sessions of anyone go at each login: the table stays the size of live sessions.
    conn.execute(sessions.delete().where(sessions.c.expires_ms <= now_ms))
    return secret


def end_session(conn: Connection, cookie: str) -> None:
    conn.execute(sessions.delete().where(sessions.c.id_sha256 == _sha256(cookie)))


def resolve_session(conn: Connection, cookie: str, now_ms: int) -> Principal | str:
    """The principal of a session cookie, or why it is refused."""
    row = conn.execute(
        sa.select(sessions.c.expires_ms, users.c.name, users.c.role, users.c.sites, users.c.disabled)
        .join(users, users.c.name == sessions.c.user)
        .where(sessions.c.id_sha256 == _sha256(cookie))).first()
    if row is None:
        return "The session is unknown or was ended; log in again at POST /api/v1/auth/login."
    if row.expires_ms <= now_ms:
        return "The session has expired; log in again at POST /api/v1/auth/login."
    if row.disabled:
        return f"User {row.name!r} is disabled; ask an administrator."
    return Principal(user=row.name, role=row.role, sites=_sites(row.sites))


# -- API tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    user: str
    name: str
    role: Role
    sites: frozenset[str] | None
    created_ms: int
    expires_ms: int | None
    revoked_ms: int | None
    last_used_ms: int | None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "name": self.name, "role": self.role,
                "sites": None if self.sites is None else sorted(self.sites),
                "created_ms": self.created_ms, "expires_ms": self.expires_ms,
                "revoked_ms": self.revoked_ms, "last_used_ms": self.last_used_ms}


def _token(row: Any) -> Token:
    return Token(row.id, row.user, row.name, row.role, _sites(row.sites), row.created_ms,
                 row.expires_ms, row.revoked_ms, row.last_used_ms)


def create_token(conn: Connection, user: str, now_ms: int, *, name: str = "", role: str | None = None,
                 sites: Iterable[str] | None = None, expires_ms: int | None = None) -> tuple[Token, str]:
    """A new token of ``user``: its role (default: the user's) and sites (default: the user's)
    may only narrow the user's. Returns the token and its secret, shown once."""
    owner = _require_user(conn, user)
    token_role = owner.role if role is None else check_role(role)
    if rank(token_role) > rank(owner.role):
        raise SecurityError("role", f"a token of {user!r} cannot have role {token_role!r}: the user is "
                                    f"only {owner.role!r}")
    site_list = check_sites(sites)
    if site_list is None:
        site_list = None if owner.sites is None else sorted(owner.sites)
    elif owner.sites is not None and not set(site_list) <= owner.sites:
        outside = sorted(set(site_list) - owner.sites)
        raise SecurityError("sites", f"user {user!r} may not see {', '.join(outside)}")
    if expires_ms is not None and expires_ms <= now_ms:
        raise SecurityError("expires", "the expiry must be in the future")
    if len(name) > 100:
        raise SecurityError("name", "at most 100 characters")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute(tokens.insert().values(
        id=token_id, secret_sha256=_sha256(secret), user=user, name=name, role=token_role,
        sites=site_list, created_ms=now_ms, expires_ms=expires_ms, revoked_ms=None, last_used_ms=None))
    row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).one()
    return _token(row), f"{TOKEN_PREFIX}{token_id}_{secret}"


def get_token(conn: Connection, token_id: str) -> Token | None:
    row = conn.execute(sa.select(tokens).where(tokens.c.id == token_id)).first()
    return None if row is None else _token(row)


def list_tokens(conn: Connection, user: str | None = None) -> list[Token]:
    q = sa.select(tokens).order_by(tokens.c.created_ms, tokens.c.id)
    if user is not None:
        q = q.where(tokens.c.user == user)
    return [_token(r) for r in conn.execute(q)]


def revoke_token(conn: Connection, token_id: str, now_ms: int) -> Token:
    token = get_token(conn, token_id)
    if token is None:
        raise NotFoundError(f"there is no token {token_id!r}")
    if token.revoked_ms is None:
        conn.execute(tokens.update().where(tokens.c.id == token_id).values(revoked_ms=now_ms))
    got = get_token(conn, token_id)
    assert got is not None
    return got


def resolve_token(conn: Connection, bearer: str, now_ms: int) -> Principal | str:
    """The principal of a bearer token, or why it is refused."""
    m = _TOKEN_RE.match(bearer)
    if m is None:
        return "The bearer token is malformed: Vigil tokens look like vgt_<16 hex>_<43 characters>."
    token_id, secret = m.groups()
    row = conn.execute(
        sa.select(tokens, users.c.role.label("user_role"), users.c.sites.label("user_sites"),
                  users.c.disabled).join(users, users.c.name == tokens.c.user)
        .where(tokens.c.id == token_id)).first()
    # Compare hashes even when the id is unknown, so timing says nothing about which ids exist.
    stored = row.secret_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(stored, _sha256(secret)) or row is None:
        return "The bearer token is not valid (unknown or mistyped)."
    if row.revoked_ms is not None:
        return f"Token {token_id} was revoked; create a new one (vigil token create)."
    if row.expires_ms is not None and row.expires_ms <= now_ms:
        return f"Token {token_id} has expired; create a new one (vigil token create)."
    if row.disabled:
        return f"User {row.user!r}, who owns token {token_id}, is disabled."
    role: Role = row.role if rank(row.role) <= rank(row.user_role) else row.user_role
    # Recorded at most once a minute: a busy integration should not write on every call.
    if row.last_used_ms is None or now_ms - row.last_used_ms > 60_000:
        conn.execute(tokens.update().where(tokens.c.id == token_id).values(last_used_ms=now_ms))
    return Principal(user=row.user, role=role, sites=_narrow(_sites(row.sites), _sites(row.user_sites)),
                     token_id=token_id)


# -- audit log --------------------------------------------------------------------------------------


def record(conn: Connection, now_ms: int, actor: str, action: str, target: str = "", *,
           outcome: str = "ok", client: str = "", **detail: Any) -> None:
    """Append one security-relevant action to the audit log."""
    conn.execute(audit.insert().values(ts_ms=now_ms, actor=actor[:100], action=action[:64],
                                       target=target[:300], outcome=outcome[:16], client=client[:64],
                                       detail=detail))


def list_audit(conn: Connection, *, limit: int = 100, before_id: int | None = None,
               actor: str | None = None, action: str | None = None,
               since_ms: int | None = None) -> list[dict[str, Any]]:
    q = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
    if before_id is not None:
        q = q.where(audit.c.id < before_id)
    if actor is not None:
        q = q.where(audit.c.actor == actor)
    if action is not None:
        q = q.where(audit.c.action == action)
    if since_ms is not None:
        q = q.where(audit.c.ts_ms >= since_ms)
    return [dict(r._mapping) for r in conn.execute(q)]
