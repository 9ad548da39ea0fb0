"""Broker credentials and topic ACLs for Mosquitto: ``vigil agent provision|revoke|service|list``.

Each edge agent gets its own MQTT user, ``{site}/{agent}`` (``/`` cannot occur in an id, so
names never collide), with a strong random password, and ACL entries that let it

- publish only under ``vigil/v1/{site}/{agent}/#`` (status and its last will, health,
  telemetry and events of its devices), and
- read only its own ``vigil/v1/{site}/{agent}/cmd/#`` and ``vigil/v1/{site}/{agent}/ack``.

A stolen gateway can therefore not speak for another agent's devices, nor read anything
else (``#`` and ``$SYS/#`` subscriptions are refused by the broker). Services (ingest,
analytics, alerting, maintenance, api) get accounts with the topics their role uses
(``SERVICE_ACLS``). ``revoke`` removes an account's password line and ACL block.

Files: the Mosquitto password file (one ``user:$7$...`` line each, PBKDF2-SHA512 as
``mosquitto_passwd`` writes it, so no binary is needed) and the ACL file, in which each
account is one block between ``# >>> vigil:<user>`` and ``# <<< vigil:<user>`` markers;
lines outside the markers are kept as they are. Both are rewritten atomically (temporary
file, then rename) with mode 0640. Mosquitto reads them at start and on SIGHUP: after a
change, ``systemctl reload mosquitto`` (or ``kill -HUP <pid>``).

The core (``password_line``, ``agent_acl``, ``with_block``, ``without_block``) is pure; the
file handling is a thin layer over it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import ClassVar, Final

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from wire import RoleSettings, WireError, check_id
from wire.ingest_events import INGEST_SEGMENT
from wire.topics import ALARM_SEGMENT, CMD_SEGMENT, PREFIX
from wire.workorder import SLA_SEGMENT

# Mosquitto 2's password hash: "$7$" PBKDF2-HMAC-SHA512, iterations, 12-byte salt, 64-byte
# key, base64. Mosquitto reads the iteration count from each line; 101 is mosquitto_passwd's
# default, raised here because the cost is paid once per connection, not per message (the
# passwords are 256 random bits, so this guards against nothing but a stolen file anyway).
PBKDF2_ITERATIONS: Final = 10_000
_T: Final = PREFIX  # "vigil/v1"

# What each service reads and writes (+ = any site/agent/device). From the subscriptions and
# publishes of each service (ingest/service.py, analytics/service.py, ...).
SERVICE_ACLS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "ingest": (
        ("read", f"{_T}/+/+/+/telemetry"), ("read", f"{_T}/+/+/+/event"), ("read", f"{_T}/+/+/status"),
        ("read", f"{_T}/+/+/health"), ("readwrite", f"{_T}/{INGEST_SEGMENT}/#"),
        ("write", f"{_T}/+/+/ack"), ("write", f"{_T}/+/{ALARM_SEGMENT}/+"),
    ),
    "analytics": (
        ("read", f"{_T}/+/+/+/telemetry"), ("read", f"{_T}/+/+/+/event"), ("read", f"{_T}/+/+/status"),
        ("write", f"{_T}/+/{ALARM_SEGMENT}/+"),
    ),
    "alerting": (
        ("read", f"{_T}/+/{ALARM_SEGMENT}/+"), ("read", f"{_T}/+/+/status"), ("read", f"{_T}/+/+/+/event"),
        ("read", f"{_T}/+/{SLA_SEGMENT}/#"), ("read", f"{_T}/+/+/+/telemetry"),
    ),
    "maintenance": (
        ("read", f"{_T}/+/{ALARM_SEGMENT}/+"), ("read", f"{_T}/+/+/+/telemetry"),
        ("write", f"{_T}/+/{SLA_SEGMENT}/#"),
    ),
    "api": (
        ("read", f"{_T}/+/{ALARM_SEGMENT}/+"), ("read", f"{_T}/+/{SLA_SEGMENT}/#"),
        ("read", f"{_T}/+/+/status"), ("read", f"{_T}/+/+/health"),
    ),
}


class ProvisionError(RuntimeError):
    """Credentials could not be written; the message says which file and why."""


class BrokerAuthSettings(RoleSettings):
    """Where the broker's password and ACL files are (``[agent]``, ``VIGIL_AGENT_*``)."""

    section: ClassVar[str] = "agent"
    model_config = SettingsConfigDict(env_prefix="VIGIL_AGENT_")

    password_file: Path = Path("/etc/mosquitto/vigil.passwd")
    acl_file: Path = Path("/etc/mosquitto/vigil.acl")
    password_bytes: int = Field(32, ge=16, le=128)  # of randomness, before base64


# -- the pure core ----------------------------------------------------------------------------


def agent_user(site: str, agent: str) -> str:
    return f"{check_id('site', site)}/{check_id('agent', agent)}"


def new_password(n_bytes: int = 32) -> str:
    return secrets.token_urlsafe(n_bytes)


def password_line(user: str, password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """One password-file line, as ``mosquitto_passwd`` writes it (``$7$`` PBKDF2-SHA512)."""
    if ":" in user or "\n" in user:
        raise ProvisionError(f"user {user!r} cannot be in a Mosquitto password file (':' or newline)")
    salt = secrets.token_bytes(12) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return (f"{user}:$7${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(key).decode()}")


def agent_acl(site: str, agent: str) -> list[str]:
    base = f"{_T}/{check_id('site', site)}/{check_id('agent', agent)}"
    return [f"user {agent_user(site, agent)}",
            f"topic write {base}/#",
            f"topic read {base}/{CMD_SEGMENT}/#",
            f"topic read {base}/ack"]


def service_acl(service: str, user: str | None = None) -> list[str]:
    if service not in SERVICE_ACLS:
        raise ProvisionError(f"no service {service!r}; services are {', '.join(SERVICE_ACLS)}")
    return [f"user {user or 'vigil-' + service}"] + [f"topic {a} {t}" for a, t in SERVICE_ACLS[service]]


def _markers(user: str) -> tuple[str, str]:
    return f"# >>> vigil:{user}", f"# <<< vigil:{user}"


def without_block(text: str, user: str) -> str:
    """The ACL text without ``user``'s block (unchanged if it has none)."""
    start, end = _markers(user)
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line == start:
            inside = True
        elif line == end and inside:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def with_block(text: str, user: str, lines: list[str]) -> str:
    """The ACL text with ``user``'s block replaced by (or added as) ``lines``."""
    start, end = _markers(user)
    rest = without_block(text, user).rstrip("\n")
    block = "\n".join([start, *lines, end])
    # Mosquitto applies the lines after a "user" line to that user up to the next "user"
    # line: a block therefore never leaves anonymous/general lines behind it.
    return (rest + "\n\n" if rest else "") + block + "\n"


def without_password(text: str, user: str) -> str:
    kept = [line for line in text.splitlines() if line.split(":", 1)[0] != user]
    return "\n".join(kept) + ("\n" if kept else "")


def with_password(text: str, line: str) -> str:
    user = line.split(":", 1)[0]
    return without_password(text, user) + line + "\n"


def users_in(acl_text: str) -> list[str]:
    return [line.removeprefix("# >>> vigil:") for line in acl_text.splitlines()
            if line.startswith("# >>> vigil:")]


# -- files ------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise ProvisionError(f"cannot read {path}: {e.strerror}") from None


def _write(path: Path, text: str) -> None:
    """Atomically replace ``path`` (readable by its owner and group only: it holds hashes)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except OSError as e:
        raise ProvisionError(f"cannot write {path}: {e.strerror}") from None


def provision(settings: BrokerAuthSettings, user: str, acl: list[str], password: str | None = None) -> str:
    """Give ``user`` a new password (returned) and the ACL ``acl``; replaces any earlier one."""
    password = password or new_password(settings.password_bytes)
    line = password_line(user, password)
    _write(settings.password_file, with_password(_read(settings.password_file), line))
    _write(settings.acl_file, with_block(_read(settings.acl_file), user, acl))
    return password


def revoke(settings: BrokerAuthSettings, user: str) -> bool:
    """Remove ``user``'s password and ACL block; False if it had neither."""
    pw, acl = _read(settings.password_file), _read(settings.acl_file)
    new_pw, new_acl = without_password(pw, user), without_block(acl, user)
    if new_pw == pw and new_acl == acl:
        return False
    _write(settings.password_file, new_pw)
    _write(settings.acl_file, new_acl)
    return True


# -- the command: vigil agent provision|revoke|service|list -----------------------------------------

_RELOAD = "reload the broker to apply: systemctl reload mosquitto (or kill -HUP <mosquitto pid>)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One module serves every action of `vigil agent`; the action is the last word of the prog.
    action = parser.prog.split()[-1]
    if action in ("provision", "revoke"):
        parser.add_argument("site", help="site id, e.g. hq-tower")
        parser.add_argument("agent", help="agent id, e.g. gw-1")
    if action == "provision":
        parser.add_argument("--password-out", type=Path, metavar="FILE",
                            help="write the password to FILE (mode 0600) instead of printing it")
    if action == "service":
        parser.add_argument("service", choices=sorted(SERVICE_ACLS), help="the Vigil service")
        parser.add_argument("--user", help="MQTT user name (default vigil-<service>)")
        parser.add_argument("--revoke", action="store_true", help="remove the account instead")


def main(settings: BrokerAuthSettings, args: argparse.Namespace) -> int:
    try:
        if args.action == "provision":
            user = agent_user(args.site, args.agent)
            password = provision(settings, user, agent_acl(args.site, args.agent))
            _hand_over(user, password, args.password_out)
        elif args.action == "revoke":
            user = agent_user(args.site, args.agent)
            if not revoke(settings, user):
                print(f"vigil agent revoke: {user} has no credentials in {settings.password_file} "
                      f"or {settings.acl_file}", file=sys.stderr)
                return 1
            print(f"revoked {user}; {_RELOAD}")
        elif args.action == "service":
            user = args.user or f"vigil-{args.service}"
            if args.revoke:
                print(f"revoked {user}" if revoke(settings, user) else f"{user} had no credentials")
            else:
                _hand_over(user, provision(settings, user, service_acl(args.service, user)), None)
        else:  # list
            for user in users_in(_read(settings.acl_file)):
                print(user)
    except WireError as e:
        print(f"vigil agent {args.action}: {e}", file=sys.stderr)
        return 2
    except ProvisionError as e:
        print(f"vigil agent {args.action}: {e}", file=sys.stderr)
        return 2
    return 0


def _hand_over(user: str, password: str, out: Path | None) -> None:
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        print(f"provisioned {user}; password written to {out}; {_RELOAD}")
        return
    print(f"provisioned {user}; {_RELOAD}\n"
          f"  mqtt username: {user}\n  mqtt password: {password}\n"
          "  (shown once: put it in the agent's settings, VIGIL_EDGE_MQTT__PASSWORD)")


def run(_settings: BrokerAuthSettings, _stop: object) -> None:
    """``vigil agent`` without an action: say which actions there are."""
    print("vigil agent: choose an action: provision <site> <agent>, revoke <site> <agent>, "
          "service <name>, list (see vigil agent --help)", file=sys.stderr)
