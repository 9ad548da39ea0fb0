"""``vigil user add|passwd|role|list|disable|enable`` and ``vigil token create|revoke|list``:
users and API tokens, straight in the API's database (``[api] database_url``), for the first
administrator and for scripts. Every change is written to the security audit log as
``cli:<os user>``. Passwords are read from the terminal (or ``--password-stdin``), never
from the command line, where other users of the machine could see them.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

from api.auth import ROLES
from api.security import store, tables
from api.settings import ApiSettings
from wire import database


def _sites(text: str | None) -> list[str] | None:
    if text is None or text.strip() in ("", "*", "all"):
        return None
    return [s.strip() for s in text.split(",") if s.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One module serves every action of `vigil user` and `vigil token`: which one is the end
    # of the parser's prog ("vigil user add"), remembered for main.
    command, action = parser.prog.split()[-2:]
    parser.set_defaults(vigil_command=command)
    if command == "user":
        if action != "list":
            parser.add_argument("name", help="user name, e.g. jane.doe")
        if action in ("add", "role"):
            # dest: `role` is the vigil command's own ("user"), set by vigil.cli
            parser.add_argument("user_role", metavar="ROLE", choices=ROLES, help="what the user may do")
            parser.add_argument("--sites", help="comma-separated sites the user sees (default: every site)")
        if action in ("add", "passwd"):
            parser.add_argument("--password-stdin", action="store_true",
                                help="read the password from the first line of standard input")
    elif action == "create":
        parser.add_argument("user", help="the user the token acts as")
        parser.add_argument("--name", default="", help="what the token is for, e.g. bms-integration")
        parser.add_argument("--role", dest="token_role", choices=ROLES,
                            help="at most the user's role (default: the user's)")
        parser.add_argument("--sites", help="comma-separated, within the user's (default: the user's)")
        parser.add_argument("--expires-days", type=float, default=90.0,
                            help="lifetime in days; 0: until revoked (default 90)")
    elif action == "revoke":
        parser.add_argument("token_id", help="the token's id (16 hex digits, from `vigil token list`)")
    elif action == "list":
        parser.add_argument("--user", help="only this user's tokens")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise store.SecurityError("password", "the two passwords differ")
    return first


def main(settings: ApiSettings, args: argparse.Namespace) -> int:
    engine = database.create(settings.database_url)
    actor = f"cli:{getpass.getuser()}"
    command = str(args.vigil_command)
    try:
        tables.upgrade(engine)
        now = time.time_ns() // 1_000_000
        with engine.begin() as conn:
            return _run(conn, command, args, now, actor)
    except (store.SecurityError, store.NotFoundError, database.DatabaseError) as e:
        print(f"vigil {command} {args.action}: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _run(conn: Any, command: str, args: argparse.Namespace, now: int, actor: str) -> int:
    if command == "user":
        if args.action == "add":
            user = store.create_user(conn, args.name, _password(args), args.user_role, _sites(args.sites),
                                     now)
            store.record(conn, now, actor, "user.create", user.name, role=user.role, sites=_sites(args.sites))
            print(f"added {user.name} ({user.role}, {args.sites or 'every site'})")
        elif args.action == "passwd":
            store.set_password(conn, args.name, _password(args), now)
            store.record(conn, now, actor, "user.password", args.name)
            print(f"password of {args.name} changed; their sessions were ended")
        elif args.action == "role":
            # without --sites the user keeps their sites ("*" or "all": every site)
            sites: Any = False if args.sites is None else _sites(args.sites)
            user = store.update_user(conn, args.name, now, role=args.user_role, sites=sites)
            store.record(conn, now, actor, "user.update", user.name, role=user.role,
                         sites=None if user.sites is None else sorted(user.sites))
            shown = ",".join(sorted(user.sites)) if user.sites is not None else "every site"
            print(f"{user.name} is now {user.role} ({shown})")
        elif args.action in ("disable", "enable"):
            store.update_user(conn, args.name, now, disabled=args.action == "disable")
            store.record(conn, now, actor, f"user.{args.action}", args.name)
            print(f"{args.name} {args.action}d")
        else:
            for u in store.list_users(conn):
                sites = ",".join(sorted(u.sites)) if u.sites is not None else "*"
                print(f"{u.name}\t{u.role}\t{sites}\t{'disabled' if u.disabled else 'active'}")
        return 0
    if args.action == "create":
        expires = None if args.expires_days <= 0 else now + int(args.expires_days * 86_400_000)
        token, secret = store.create_token(conn, args.user, now, name=args.name, role=args.token_role,
                                           sites=_sites(args.sites), expires_ms=expires)
        store.record(conn, now, actor, "token.create", args.user, token=token.id, role=token.role)
        print(f"token {token.id} for {token.user} ({token.role}); shown once, keep it secret:\n{secret}")
    elif args.action == "revoke":
        token = store.revoke_token(conn, args.token_id, now)
        store.record(conn, now, actor, "token.revoke", token.user, token=token.id)
        print(f"token {token.id} of {token.user} revoked")
    else:
        for t in store.list_tokens(conn, args.user):
            expired = t.expires_ms is not None and t.expires_ms <= now
            state = "revoked" if t.revoked_ms else ("expired" if expired else "active")
            print(f"{t.id}\t{t.user}\t{t.role}\t{t.name}\t{state}")
    return 0


def run(_settings: ApiSettings, _stop: object) -> None:
    """``vigil user`` / ``vigil token`` without an action: say which actions there are."""
    print("choose an action: vigil user add|passwd|role|disable|enable|list, "
          "vigil token create|revoke|list (see --help)", file=sys.stderr)
