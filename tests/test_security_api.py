"""API authentication and abuse limits, through the real app on SQLite and PostgreSQL:
sessions (cookie flags, logout, password change), users and tokens (routes and the CLI),
login rate limit and lockout, per-token rate limit, body size limit, CORS, docs behind a
login, placeholder secrets, mass assignment, the actor of a change, and the audit log."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.security.setup import DEMO_PASSWORD_SUFFIX, demo_users
from api.settings import ApiSettings
from ingest.store import StoreSettings
from tests.services import api_token, auth_headers, fresh_database
from wire import ConfigError

PASSWORD = "correct horse battery staple"
VIGIL = Path(sys.executable).parent / "vigil"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory.mktemp("sec-db"), "sec") as url:
        yield url


def _settings(database_url: str, tmp_path: Path, **kw: Any) -> ApiSettings:
    values: dict[str, Any] = {"database_url": database_url, "store": StoreSettings(path=tmp_path / "ts.db"),
                              "cookie_secure": False, **kw}
    return ApiSettings.load(None, **values)


@pytest.fixture
def admin(database_url: str) -> dict[str, str]:
    return auth_headers(database_url, user="sec-admin")


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(database_url, tmp_path)), raise_server_exceptions=False) as c:
        yield c


def _new_user(c: TestClient, admin: dict[str, str], name: str, role: str = "operator",
              sites: list[str] | None = None) -> None:
    r = c.post("/api/v1/users", headers=admin, json={"name": name, "password": PASSWORD, "role": role,
                                                      "sites": sites})
    assert r.status_code == 201, r.text


def _uniq(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_login_sets_a_safe_session_cookie_and_logout_ends_it(
        client: TestClient, admin: dict[str, str]) -> None:
    name = _uniq("op")
    _new_user(client, admin, name, "operator", ["s1"])
    r = client.post("/api/v1/auth/login", json={"user": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json() == {"user": name, "role": "operator", "sites": ["s1"], "token_id": None,
                        "permissions": ["alarm.ack", "read", "workorder.create"]}
    cookie = r.headers["set-cookie"]
    assert "vigil_session=" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert client.get("/api/v1/auth/me").json()["user"] == name
    assert client.post("/api/v1/auth/logout").status_code == 204
    assert client.get("/api/v1/auth/me").status_code == 401
    # the cookie's value no longer works even if a client kept it
    assert client.get("/api/v1/auth/me", cookies={"vigil_session": cookie.split(";")[0].split("=", 1)[1]}
                      ).status_code == 401


def test_secure_cookie_by_default(database_url: str, tmp_path: Path, admin: dict[str, str]) -> None:
    with TestClient(create_app(ApiSettings.load(None, database_url=database_url,
                                                store=StoreSettings(path=tmp_path / "ts.db")))) as c:
        name = _uniq("sc")
        _new_user(c, admin, name)
        r = c.post("/api/v1/auth/login", json={"user": name, "password": PASSWORD})
        assert "Secure" in r.headers["set-cookie"]


def test_wrong_password_and_unknown_user_get_the_same_answer_then_lockout(
        database_url: str, tmp_path: Path, admin: dict[str, str]) -> None:
    settings = _settings(database_url, tmp_path, lockout_after=3, lockout_s=60)
    with TestClient(create_app(settings)) as c:
        name = _uniq("lk")
        _new_user(c, admin, name)
        wrong = c.post("/api/v1/auth/login", json={"user": name, "password": "nope"})
        unknown = c.post("/api/v1/auth/login", json={"user": "no-such-user", "password": "nope"})
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        c.post("/api/v1/auth/login", json={"user": name, "password": "nope"})
        locked = c.post("/api/v1/auth/login", json={"user": name, "password": "nope"})
        assert locked.status_code == 429 and "locked" in locked.json()["detail"]
        assert int(locked.headers["retry-after"]) == 60
        # while locked, even the right password is refused
        r = c.post("/api/v1/auth/login", json={"user": name, "password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["retry-after"]) <= 60
        # a name that is no user "locks" after as many failures: a lockout reveals nothing
        ghost = _uniq("ghost")
        codes = [c.post("/api/v1/auth/login", json={"user": ghost, "password": "nope"}).status_code
                 for _ in range(3)]
        assert codes == [401, 401, 429]
        audit = c.get("/api/v1/security/audit", headers=admin, params={"actor": name}).json()["entries"]
        assert [e["action"] for e in audit].count("login.failed") >= 4
        assert any(e["outcome"] == "locked" for e in audit)


def test_login_attempts_per_client_are_limited(database_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(database_url, tmp_path, login_attempts_per_min=3))) as c:
        codes = [c.post("/api/v1/auth/login", json={"user": "x", "password": "y"}).status_code
                 for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        r = c.post("/api/v1/auth/login", json={"user": "x", "password": "y"})
        assert 1 <= int(r.headers["retry-after"]) <= 60


def test_per_token_rate_limit_answers_429_with_retry_after(database_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(database_url, tmp_path, token_rate_per_s=0.5, token_burst=3))) as c:
        mine, other = auth_headers(database_url, user="rl-1"), auth_headers(database_url, user="rl-2")
        codes = [c.get("/api/v1/sites", headers=mine).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/api/v1/sites", headers=mine)
        assert r.status_code == 429 and int(r.headers["retry-after"]) in (1, 2)
        assert c.get("/api/v1/sites", headers=other).status_code == 200  # per token, not global


def test_large_bodies_are_refused_with_413(database_url: str, tmp_path: Path, admin: dict[str, str]) -> None:
    with TestClient(create_app(_settings(database_url, tmp_path, max_body_bytes=2048))) as c:
        r = c.post("/api/v1/assets/import", headers={**admin, "content-type": "text/csv"},
                   content=b"site,code,kind\n" + b"x" * 4096)
        assert r.status_code == 413, r.text
        assert c.post("/api/v1/auth/login", json={"user": "u", "password": "p" * 4000}).status_code == 413


def test_cors_is_closed_by_default_and_opens_only_to_listed_origins(
        database_url: str, tmp_path: Path, admin: dict[str, str]) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    with TestClient(create_app(_settings(database_url, tmp_path))) as c:
        r = c.get("/api/v1/sites", headers={**admin, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.options("/api/v1/sites", headers=preflight).headers
    settings = _settings(database_url, tmp_path, cors_origins=("https://ops.example",))
    with TestClient(create_app(settings)) as c:
        r = c.get("/api/v1/sites", headers={**admin, "Origin": "https://ops.example"})
        assert r.headers["access-control-allow-origin"] == "https://ops.example"
        r = c.get("/api/v1/sites", headers={**admin, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_docs_need_a_login_in_production_and_are_open_in_demo(
        database_url: str, tmp_path: Path, admin: dict[str, str]) -> None:
    with TestClient(create_app(_settings(database_url, tmp_path))) as c:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert c.get(path, follow_redirects=False).status_code in (401, 303), path
        assert c.get("/openapi.json", headers=admin).json()["info"]["title"] == "Vigil API"
    with TestClient(create_app(_settings(database_url, tmp_path, mode="demo"))) as c:
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200


def test_settings_refuse_placeholder_secrets_outside_demo_mode() -> None:
    for bad in ("changeme", "admin", "short-1"):
        with pytest.raises(ConfigError, match="bootstrap_admin_password"):
            ApiSettings.load(None, bootstrap_admin_password=bad)
    assert ApiSettings.load(None, mode="demo", bootstrap_admin_password="admin").mode == "demo"


def test_bootstrap_admin_is_created_once_on_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'boot.db'}"
    settings = _settings(url, tmp_path, bootstrap_admin="root", bootstrap_admin_password="a-Long-enough-pass")
    with TestClient(create_app(settings)) as c:
        assert c.post("/api/v1/auth/login", json={"user": "root", "password": "a-Long-enough-pass"}
                      ).json()["role"] == "admin"


def test_users_and_tokens_routes_and_their_audit(
        client: TestClient, admin: dict[str, str], database_url: str) -> None:
    name = _uniq("tech")
    _new_user(client, admin, name, "technician", ["s1", "s2"])
    r = client.post("/api/v1/users", headers=admin,
                    json={"name": name, "password": PASSWORD, "role": "viewer"})
    assert r.status_code == 422 and "already exists" in r.json()["detail"]
    r = client.post("/api/v1/users", headers=admin,
                    json={"name": _uniq("w"), "password": "short", "role": "viewer"})
    assert r.status_code == 422 and "password" in r.json()["detail"]
    r = client.post("/api/v1/users", headers=admin,
                    json={"name": _uniq("w"), "password": PASSWORD, "role": "boss"})
    assert r.status_code == 422
    # a token at most the user's role and within its sites
    r = client.post("/api/v1/tokens", headers=admin, json={"user": name, "role": "admin"})
    assert r.status_code == 422 and "role" in r.json()["detail"]
    r = client.post("/api/v1/tokens", headers=admin, json={"user": name, "sites": ["s3"]})
    assert r.status_code == 422 and "s3" in r.json()["detail"]
    r = client.post("/api/v1/tokens", headers=admin, json={"user": name, "sites": ["s1"], "name": "bms"})
    assert r.status_code == 201, r.text
    token = r.json()
    bearer = {"Authorization": f"Bearer {token['token']}"}
    me = client.get("/api/v1/auth/me", headers=bearer).json()
    assert (me["role"], me["sites"], me["token_id"]) == ("technician", ["s1"], token["id"])
    listed = client.get("/api/v1/tokens", headers=admin, params={"user": name}).json()["tokens"]
    assert [t["id"] for t in listed] == [token["id"]] and "token" not in listed[0]
    # demoting the user demotes the token at once; revoking it ends it at once
    assert client.patch(f"/api/v1/users/{name}", headers=admin, json={"role": "viewer"}).status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer).json()["role"] == "viewer"
    assert client.delete(f"/api/v1/tokens/{token['id']}", headers=admin).status_code == 200
    r = client.get("/api/v1/auth/me", headers=bearer)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # disabling a user refuses their login
    assert client.patch(f"/api/v1/users/{name}", headers=admin, json={"disabled": True}).status_code == 200
    assert client.post("/api/v1/auth/login", json={"user": name, "password": PASSWORD}).status_code == 401
    actions = [e["action"] for e in client.get("/api/v1/security/audit", headers=admin,
                                               params={"limit": 1000}).json()["entries"]
               if e["target"] in (name, token["id"])]
    assert {"user.create", "token.create", "user.update", "token.revoke"} <= set(actions), actions
    # only admins manage users
    engineer = auth_headers(database_url, role="engineer", user="sec-eng")
    assert client.get("/api/v1/users", headers=engineer).status_code == 403


def test_the_actor_is_the_caller_and_mass_assignment_is_refused(
        client: TestClient, admin: dict[str, str], database_url: str) -> None:
    site = _uniq("site")
    assert client.post("/api/v1/sites", headers=admin, json={"id": site}).status_code == 201
    operator = auth_headers(database_url, role="operator", user="sec-operator")
    # an operator may raise a work order but not dispatch it
    r = client.post("/api/v1/work-orders", headers=operator,
                    json={"title": "Leak", "site": site, "assignee": "tom"})
    assert r.status_code == 403 and "'assignee'" in r.json()["detail"]
    # unknown fields are refused, naming the field
    r = client.post("/api/v1/work-orders", headers=operator,
                    json={"title": "Leak", "site": site, "requested_by": "ceo"})
    assert r.status_code == 422 and "requested_by" in r.json()["detail"]
    # the old header names nobody any more: the audit trail has the caller
    r = client.post("/api/v1/work-orders", headers={**operator, "X-Vigil-User": "ceo"},
                    json={"title": "Leak", "site": site})
    assert r.status_code == 201 and r.json()["requested_by"] == "sec-operator"
    # a site-limited engineer cannot create equipment elsewhere, nor add sites
    limited = auth_headers(database_url, role="engineer", sites=["elsewhere"], user="sec-limited")
    r = client.post("/api/v1/equipment", headers=limited, json={"site": site, "code": "P-1", "kind": "pump"})
    assert r.status_code == 404
    assert client.post("/api/v1/sites", headers=limited, json={"id": _uniq("s")}).status_code == 403
    # lists leave other sites out
    assert all(w["site_id"] != site for w in
               client.get("/api/v1/work-orders", headers=limited).json()["work_orders"])
    assert client.get("/api/v1/work-orders", headers=limited, params={"site": site}).status_code == 404
    audit = client.get("/api/v1/security/audit", headers=admin, params={"action": "workorder.create"}).json()
    assert any(e["actor"].startswith("sec-operator") for e in audit["entries"])


def test_demo_users_log_in_with_their_printed_passwords(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    logins = demo_users(url, "hq")
    assert {u for u, *_ in logins} == {"admin", "engineer", "operator", "technician", "viewer"}
    with TestClient(create_app(_settings(url, tmp_path, mode="demo"))) as c:
        for user, password, role, _sites in logins:
            assert password == user + DEMO_PASSWORD_SUFFIX
            r = c.post("/api/v1/auth/login", json={"user": user, "password": password})
            assert r.json()["role"] == role
        assert c.get("/api/v1/auth/me").json()["sites"] == ["hq"]  # viewer, logged in last


def test_cli_users_and_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from vigil.cli import main as vigil_main

    monkeypatch.setenv("VIGIL_API_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")

    def vigil(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = vigil_main([*args])
        out, err = capsys.readouterr()
        return code, out, err

    assert vigil("user", "add", "jane", "technician", "--sites", "hq", "--password-stdin",
                 stdin=PASSWORD + "\n")[0] == 0
    assert "jane\ttechnician\thq\tactive" in vigil("user", "list")[1]
    assert vigil("user", "role", "jane", "engineer")[0] == 0
    assert "jane\tengineer\thq" in vigil("user", "list")[1]  # sites kept
    code, _out, err = vigil("user", "passwd", "jane", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 12" in err
    code, out, err = vigil("token", "create", "jane", "--role", "viewer", "--name", "bms")
    assert code == 0, err
    token_id = out.strip().splitlines()[-1][4:20]
    assert f"{token_id}\tjane\tviewer\tbms\tactive" in vigil("token", "list")[1]
    assert vigil("token", "revoke", token_id)[0] == 0
    assert "revoked" in vigil("token", "list")[1]
    code, _out, err = vigil("token", "create", "jane", "--role", "admin")
    assert code == 2 and "role" in err
    # and the installed command is wired to the same code
    env = {"VIGIL_API_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(VIGIL), "user", "list"], capture_output=True, text=True, timeout=60,
                         check=False, env=env)
    assert run.returncode == 0 and "jane\tengineer" in run.stdout, run.stderr


def test_api_token_helper_makes_scoped_and_expired_tokens(database_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(database_url, tmp_path))) as c:
        token = api_token(database_url, role="viewer", sites=["a"], user="h-v")
        scoped = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/v1/auth/me", headers=scoped).json()["sites"] == ["a"]
        old = {"Authorization": f"Bearer {api_token(database_url, user='h-old', expires_in_s=-1)}"}
        r = c.get("/api/v1/auth/me", headers=old)
        assert r.status_code == 401 and "expired" in r.json()["detail"]
