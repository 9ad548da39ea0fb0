"""What authentication costs: a login (argon2id verify), and the guard on every request.

Runs the real app in-process (FastAPI's TestClient) on a fresh SQLite database and the
embedded store, and times: logins (argon2id verify + session insert), ``GET /healthz``
(public: no guard work) against ``GET /api/v1/auth/me`` with a bearer token and with a
session cookie (the guard's token/session lookup, rate limit and permission check), and
``GET /api/v1/equipment`` as a site-limited token (the site filter in SQL).

    .venv/bin/python bench/security.py [--requests 500] [--logins 10]

The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from api.main import create_app  # noqa: E402
from api.settings import ApiSettings  # noqa: E402
from ingest.store import StoreSettings  # noqa: E402
from tests.services import api_token  # noqa: E402

PASSWORD = "bench-password-long-enough"


def _times(n: int, call: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests per kind (default 500)")
    parser.add_argument("--logins", type=int, default=10, help="logins timed (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vigil-bench-security-") as tmp:
        url = f"sqlite:///{tmp}/vigil.db"
        settings = ApiSettings.load(None, database_url=url, store=StoreSettings(path=Path(tmp) / "ts.db"),
                                    cookie_secure=False, token_rate_per_s=1e5, token_burst=10**6,
                                    login_attempts_per_min=10_000, bootstrap_admin="bench",
                                    bootstrap_admin_password=PASSWORD)
        with TestClient(create_app(settings)) as c:
            token = {"Authorization": f"Bearer {api_token(url, user='bench-token')}"}
            scoped_token = api_token(url, role="viewer", sites=["s1"], user="bench-s1")
            limited = {"Authorization": f"Bearer {scoped_token}"}
            c.post("/api/v1/sites", json={"id": "s1"}, headers=token)
            for i in range(200):
                c.post("/api/v1/equipment", json={"site": "s1", "code": f"P-{i}", "kind": "pump"},
                       headers=token)
            logins = _times(args.logins, lambda: c.post(
                "/api/v1/auth/login", json={"user": "bench", "password": PASSWORD}).raise_for_status())
            health = _times(args.requests, lambda: c.get("/healthz"))
            by_token = _times(args.requests, lambda: c.get("/api/v1/auth/me", headers=token))
            by_cookie = _times(args.requests, lambda: c.get("/api/v1/auth/me"))  # the login's cookie
            scoped = _times(args.requests, lambda: c.get("/api/v1/equipment", headers=limited))
    figures = {
        "login_p50_s": round(statistics.median(logins), 4),
        "healthz_p50_s": round(statistics.median(health), 5),
        "token_me_p50_s": round(statistics.median(by_token), 5),
        "token_me_p99_s": round(_p(by_token, 0.99), 5),
        "cookie_me_p50_s": round(statistics.median(by_cookie), 5),
        "guard_overhead_p50_s": round(statistics.median(by_token) - statistics.median(health), 5),
        "scoped_equipment_p50_s": round(statistics.median(scoped), 5),
        "token_requests_per_s": round(len(by_token) / sum(by_token), 1),
    }
    print(f"login (argon2id verify + session): p50 {figures['login_p50_s'] * 1000:.0f} ms")
    print(f"/healthz p50 {figures['healthz_p50_s'] * 1000:.2f} ms; /auth/me with a token p50 "
          f"{figures['token_me_p50_s'] * 1000:.2f} ms (p99 {figures['token_me_p99_s'] * 1000:.2f} ms), "
          f"with a cookie p50 {figures['cookie_me_p50_s'] * 1000:.2f} ms")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
