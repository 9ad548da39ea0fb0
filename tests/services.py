"""Real servers for tests: InfluxDB 1.6.7 behind nginx, the machine's Mosquitto, private Mosquittos.

Loaded from tests/conftest.py (``pytest_plugins = ["tests.services"]``). Fixtures:

- ``influxdb`` (session): influxd plus nginx mapping ``/api/v2/write`` onto ``/write`` exactly
  as InfluxDB 1.8 does (services.md); ``.url`` is the nginx front, ``.create_database(name)``
  and ``.query(q, db=...)`` talk to it. ``f"{url}/_answer_{code}"`` for code 429, 502, 503
  or 413 is a base URL where the same nginx answers every request with that status, as a
  proxy in front of an overloaded or stopped InfluxDB does.
- ``influx_settings``: a fresh database per test, as ``StoreSettings``.
- ``embedded_settings``: the embedded store in the test's tmp_path.
- ``mqtt_settings`` and ``site_id``: the shared broker on 127.0.0.1:1883, and a site id no
  other test uses, so tests on the shared broker never see each other's messages.
- ``private_mosquitto``: a factory starting ``mosquitto -c <generated config>`` on a free
  port with extra config lines (auth, ACLs, persistence, limits); returns
  ``(host, port, stop)``. Pass ``port=`` to restart a stopped broker on the same port.

Invariants:
- every server listens on 127.0.0.1 only, on ports the kernel handed out as free, so test
  runs side by side do not collide;
- a server this module starts is stopped by the PID of the process it started, never by
  name; every server runs in the foreground as our child, so its PID is known for sure;
- a server that cannot be started fails the test run with a message naming the server
  and the reason (and the tail of its log); nothing here ever skips (services.md, Rules).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx
import pytest

from ingest.store import StoreSettings
from wire import MqttSettings

INFLUXD = "/usr/bin/influxd"
NGINX = "/usr/sbin/nginx"
# VIGIL_TEST_MOSQUITTO runs the private brokers on another build (e.g. a newer Mosquitto
# built from Debian's source package; see README, "Ingest", on Mosquitto 2.0.11).
MOSQUITTO = os.environ.get("VIGIL_TEST_MOSQUITTO", "/usr/sbin/mosquitto")
SHARED_BROKER = ("127.0.0.1", 1883)
START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's choice, so runs do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text[-lines:]) or "(log is empty)"


def _require_binary(server: str, path: str, package: str) -> None:
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{server}: {path} is missing or not executable; install the Debian package "
            f"{package!r} (scripts/test does it)",
            pytrace=False,
        )


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Stop one child we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


# -- InfluxDB behind nginx ---------------------------------------------------------------------

INFLUXD_CONF = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{tmp}/meta"
[data]
  dir = "{tmp}/data"
  wal-dir = "{tmp}/wal"
[http]
  bind-address = "127.0.0.1:{influx_port}"
[coordinator]
[retention]
"""

# The mapping of services.md, plus what it takes to run nginx as a foreground child with
# every path in our folder: ``daemon off`` so the PID we hold is nginx's master, temp paths
# here so it never touches /var/lib/nginx, and, when we are root, ``user root`` because
# otherwise its workers switch to ``nobody``, who cannot enter pytest's 0700 temp folder to
# buffer request bodies (a 5,000-line write is far larger than the in-memory buffer).
NGINX_CONF = """\
{user_line}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  client_max_body_size 64m;
  map $arg_precision $v1_precision {{ ns n; us u; ms ms; s s; default n; }}
  server {{
    listen 127.0.0.1:{front_port};
    location = /api/v2/write {{
      rewrite ^ /write?db=$arg_bucket&precision=$v1_precision break;
      proxy_pass http://127.0.0.1:{influx_port};
    }}
    location / {{ proxy_pass http://127.0.0.1:{influx_port}; }}
    # Not in services.md: what a proxy in front of InfluxDB answers when InfluxDB is
    # overloaded, down, or the body is too big. Point a store at <url>/_answer_<code> to
    # see how it takes each answer through influxdb-client's real error path.
    location /_answer_429/ {{ return 429 '{{"message":"too many requests, slow down"}}'; }}
    location /_answer_502/ {{ return 502 'bad gateway: influxd is not answering'; }}
    location /_answer_503/ {{ return 503 '{{"error":"engine is shutting down"}}'; }}
    location /_answer_413/ {{ return 413 '{{"error":"request entity too large"}}'; }}
  }}
}}
"""


@dataclass
class InfluxServer:
    """A running influxd behind nginx; ``url`` is the front that Vigil is pointed at."""

    url: str
    influx_url: str  # influxd itself, without nginx; for diagnosis only
    folder: Path
    _http: httpx.Client = field(repr=False)
    _procs: list[subprocess.Popen[bytes]] = field(repr=False, default_factory=list)

    @property
    def influxd_pid(self) -> int:
        return self._procs[0].pid

    def stop(self) -> None:
        """Stop nginx, then influxd, by the PIDs of the processes we started."""
        self._http.close()
        for proc in reversed(self._procs):
            _stop(proc)

    def query(self, q: str, *, db: str | None = None, method: str = "GET") -> dict[str, Any]:
        """Run InfluxQL; return the decoded JSON reply; fail the test on any error."""
        params = {"q": q, "epoch": "ms"}
        if db is not None:
            params["db"] = db
        if method == "GET":
            r = self._http.get(f"{self.url}/query", params=params)
        else:
            r = self._http.post(f"{self.url}/query", data=params)
        body: dict[str, Any] = r.json()
        errors = [res["error"] for res in body.get("results", []) if "error" in res]
        if r.status_code != 200 or "error" in body or errors:
            pytest.fail(f"InfluxDB refused {q!r}: HTTP {r.status_code} {r.text[:500]}", pytrace=False)
        return body

    def create_database(self, name: str) -> None:
        # InfluxQL identifiers in double quotes; names here come from tests, never users.
        self.query(f'CREATE DATABASE "{name}"', method="POST")


def _wait_ready(
    what: str, ready: Callable[[], bool], procs: Sequence[tuple[str, subprocess.Popen[bytes], Path]]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc, log in procs:
            if proc.poll() is not None:
                pytest.fail(
                    f"{name} exited with code {proc.returncode} while starting; its log ({log}):\n"
                    f"{_log_tail(log)}",
                    pytrace=False,
                )
        if ready():
            return
        time.sleep(0.05)
    details = "\n".join(f"--- {name} log ({log}):\n{_log_tail(log)}" for name, _, log in procs)
    pytest.fail(f"{what} did not answer within {START_TIMEOUT_S:.0f} s\n{details}", pytrace=False)


def start_influx(tmp: Path) -> InfluxServer:
    """Start influxd 1.6.7 behind the nginx ``/api/v2/write`` mapping in ``tmp``; the caller
    stops it with ``.stop()``. Used by the ``influxdb`` fixture and by the benchmarks."""
    _require_binary("influxd", INFLUXD, "influxdb")
    _require_binary("nginx", NGINX, "nginx")
    tmp.mkdir(parents=True, exist_ok=True)
    influx_port, rpc_port, front_port = free_port(), free_port(), free_port()
    influxd_conf = tmp / "influxd.conf"
    influxd_conf.write_text(INFLUXD_CONF.format(tmp=tmp, rpc_port=rpc_port, influx_port=influx_port))
    nginx_conf = tmp / "nginx.conf"
    user_line = "user root;" if os.geteuid() == 0 else ""
    nginx_conf.write_text(
        NGINX_CONF.format(tmp=tmp, user_line=user_line, front_port=front_port, influx_port=influx_port)
    )
    nginx_log = tmp / "nginx-error.log"
    http = httpx.Client(timeout=10.0)
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(name: str, argv: list[str], log: Path) -> None:
        with (tmp / f"{name}.out").open("wb") as out:
            procs.append((name, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), log))

    try:
        start("influxd", [INFLUXD, "-config", str(influxd_conf)], tmp / "influxd.out")
        # -e: the error log from the first moment, instead of the compiled-in
        # /var/log/nginx/error.log that a non-root user cannot open.
        start("nginx", [NGINX, "-p", f"{tmp}/", "-e", str(nginx_log), "-c", str(nginx_conf)], nginx_log)
        front = f"http://127.0.0.1:{front_port}"

        def ping() -> bool:
            try:
                return http.get(f"{front}/ping").status_code == 204
            except httpx.HTTPError:
                return False

        _wait_ready(f"InfluxDB through nginx at {front}/ping", ping, procs)
    except BaseException:
        http.close()
        for _, proc, _ in reversed(procs):
            _stop(proc)
        raise
    return InfluxServer(url=front, influx_url=f"http://127.0.0.1:{influx_port}", folder=tmp, _http=http,
                        _procs=[proc for _, proc, _ in procs])


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """influxd 1.6.7 behind the nginx ``/api/v2/write`` mapping, for the whole session."""
    server = start_influx(tmp_path_factory.mktemp("influxdb"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influx_settings(influxdb: InfluxServer) -> StoreSettings:
    """A database of its own for this test, on the session's InfluxDB."""
    db = "t_" + uuid.uuid4().hex[:12]
    influxdb.create_database(db)
    return StoreSettings(influx_url=influxdb.url, influx_bucket=db)


@pytest.fixture
def embedded_settings(tmp_path: Path) -> StoreSettings:
    return StoreSettings(path=tmp_path / "ts.db")


# -- Mosquitto -----------------------------------------------------------------------------------


@pytest.fixture
def mqtt_settings() -> MqttSettings:
    """The machine's Mosquitto on 127.0.0.1:1883 (services.md); fails loudly if it is not there."""
    host, port = SHARED_BROKER
    if not port_open(host, port):
        pytest.fail(
            f"Mosquitto is not listening on {host}:{port}; start it with "
            "`mosquitto -d -c /etc/mosquitto/mosquitto.conf` (scripts/test does it)",
            pytrace=False,
        )
    return MqttSettings(host=host, port=port)


@pytest.fixture
def site_id() -> str:
    """A site id no other test uses: the shared broker delivers a site's topics to this test only."""
    return "t" + uuid.uuid4().hex[:10]


class MosquittoHandle(NamedTuple):
    host: str
    port: int
    stop: Callable[[], None]


class MosquittoFactory(Protocol):
    def __call__(self, extra_lines: Sequence[str] = (), *, port: int | None = None) -> MosquittoHandle: ...


def start_mosquitto(
    folder: Path, extra_lines: Sequence[str] = (), *, port: int | None = None
) -> tuple[MosquittoHandle, subprocess.Popen[bytes]]:
    """Start ``mosquitto -c <generated config>`` in ``folder``: a loopback listener on a free
    port (or ``port``), a log file there and, unless the extra lines say otherwise, anonymous
    clients allowed. Used by ``private_mosquitto`` and by the benchmarks."""
    _require_binary("mosquitto", MOSQUITTO, "mosquitto")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    log = folder / "mosquitto.log"
    lines = [f"listener {port} 127.0.0.1", f"log_dest file {log}",
             "log_type error", "log_type warning", "log_type notice", "log_type information"]
    if not any(line.split()[:1] == ["allow_anonymous"] for line in extra_lines):
        lines.append("allow_anonymous true")
    # As root, mosquitto drops to the ``mosquitto`` user, who cannot read files in
    # pytest's 0700 folders (password files, ACLs, persistence): stay who we are.
    if os.geteuid() == 0 and not any(line.split()[:1] == ["user"] for line in extra_lines):
        lines.append(f"user {getpass.getuser()}")
    lines.extend(extra_lines)
    config = folder / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    with (folder / "mosquitto.out").open("wb") as out:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)

    def stop() -> None:
        _stop(proc)

    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_open("127.0.0.1", port, timeout_s=0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            pytest.fail(
                f"mosquitto -c {config} did not start on 127.0.0.1:{port} "
                f"(exit code {proc.returncode}); config:\n{config.read_text()}\n"
                f"log:\n{_log_tail(log)}\n{_log_tail(folder / 'mosquitto.out')}",
                pytrace=False,
            )
        time.sleep(0.05)
    return MosquittoHandle("127.0.0.1", port, stop), proc


@pytest.fixture
def private_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoFactory]:
    """Brokers of the test's own: ``host, port, stop = private_mosquitto(["allow_anonymous false"])``.

    The generated config has a loopback listener on a free port (or ``port``, to restart a
    stopped broker where its clients expect it), logs to a file in its folder and, unless the
    extra lines say otherwise, allows anonymous clients. Every broker still running at the end
    of the test is stopped by its PID.
    """
    _require_binary("mosquitto", MOSQUITTO, "mosquitto")
    started: list[subprocess.Popen[bytes]] = []

    def start(extra_lines: Sequence[str] = (), *, port: int | None = None) -> MosquittoHandle:
        handle, proc = start_mosquitto(tmp_path_factory.mktemp("mosquitto"), extra_lines, port=port)
        started.append(proc)
        return handle

    yield start
    for proc in started:
        with contextlib.suppress(OSError):
            _stop(proc)


# -- PostgreSQL ----------------------------------------------------------------------------------

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path, prefix: str = "t") -> Iterator[str]:
    """A database of its own, as a SQLAlchemy URL: a SQLite file in ``folder``, or a new
    database on the machine's PostgreSQL (services.md), dropped when the block ends."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'vigil.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 ({e.orig}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`",
            pytrace=False,
        )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- API credentials --------------------------------------------------------------------------


def api_token(database_url: str, *, role: str = "admin", sites: Sequence[str] | None = None,
              user: str = "test-admin", expires_in_s: float | None = None) -> str:
    """A bearer token for the API on ``database_url``, made directly in the database: the user
    (created with a random password if missing, else given this role and sites) and a token of
    that role and sites. Use as ``{"Authorization": f"Bearer {api_token(url)}"}``.
    ``expires_in_s`` may be negative, for an already expired token."""
    import secrets as _secrets

    from api.security import store as security_store
    from api.security import tables as security_tables
    from wire import database

    engine = database.create(database_url)
    try:
        security_tables.upgrade(engine)
        now = time.time_ns() // 1_000_000
        with engine.begin() as conn:
            if security_store.get_user(conn, user) is None:
                security_store.create_user(conn, user, _secrets.token_urlsafe(18), role, sites, now)
            else:
                security_store.update_user(conn, user, now, role=role, sites=sites, disabled=False)
            expires = None if expires_in_s is None else now + int(expires_in_s * 1000)
            if expires is not None and expires <= now:
                _token, secret = security_store.create_token(conn, user, now - 10**6, name="test",
                                                             expires_ms=now - 10**6 + 1)
                conn.execute(security_tables.tokens.update()
                             .where(security_tables.tokens.c.id == _token.id).values(expires_ms=expires))
                return secret
            _token, secret = security_store.create_token(conn, user, now, name="test", expires_ms=expires)
            return secret
    finally:
        engine.dispose()


def auth_headers(database_url: str, **kwargs: Any) -> dict[str, str]:
    """``{"Authorization": "Bearer ..."}`` for ``api_token(database_url, **kwargs)``."""
    return {"Authorization": f"Bearer {api_token(database_url, **kwargs)}"}


__all__ = [
    "InfluxServer",
    "MosquittoFactory",
    "MosquittoHandle",
    "api_token",
    "auth_headers",
    "free_port",
    "fresh_database",
    "port_open",
    "start_influx",
    "start_mosquitto",
]


def wait_until(cond: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> bool:
    """Poll ``cond`` every 50 ms; True once it holds, AssertionError naming ``what`` after
    ``timeout_s`` (so a test that waits never passes by timing out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
