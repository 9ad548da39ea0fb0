"""The demo command, as a newcomer runs it: starts, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.services import free_port

VIGIL = Path(sys.executable).parent / "vigil"


def test_demo_starts_serves_the_fleet_and_stops_on_sigint(tmp_path: Path) -> None:
    port, mqtt_port = free_port(), free_port()
    env = {**os.environ, "VIGIL_DEMO_PORT": str(port), "VIGIL_DEMO_MQTT_PORT": str(mqtt_port),
           "VIGIL_DEMO_DATA_DIR": str(tmp_path / "demo")}
    proc = subprocess.Popen([str(VIGIL), "demo"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        healthy = False
        while time.monotonic() - started < 30 and proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                healthy = httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            if healthy:
                break
            time.sleep(0.2)
        assert healthy, f"demo did not answer /healthz within 30 s (exit {proc.poll()})"
        # every route needs a login: the demo's users are printed in its banner (and README)
        assert httpx.get(f"{url}/api/v1/devices", timeout=5).status_code == 401
        web = httpx.Client(base_url=url, timeout=5)
        login = web.post("/api/v1/auth/login", json={"user": "admin", "password": "admin-demo-pass"})
        assert login.status_code == 200, login.text
        devices: list[dict[str, object]] = []
        while time.monotonic() - started < 45:
            devices = web.get("/api/v1/devices").json()["devices"]
            if len(devices) >= 50:
                break
            time.sleep(0.5)
        assert len(devices) >= 50
        assert len({d["site"] for d in devices}) >= 2
        # the site-scoped demo viewer sees one site only
        viewer = httpx.Client(base_url=url, timeout=5)
        assert viewer.post("/api/v1/auth/login",
                           json={"user": "viewer", "password": "viewer-demo-pass"}).status_code == 200
        assert len({d["site"] for d in viewer.get("/api/v1/devices").json()["devices"]}) == 1
        assert len({str(d["device"]).rstrip("0123456789-") for d in devices}) >= 4
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "Vigil demo is running" in out and "demo: stopped" in out
    assert "admin-demo-pass" in out  # the banner names the demo logins
    assert "Traceback" not in out, out
