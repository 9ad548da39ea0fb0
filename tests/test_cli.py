"""The `vigil` command as a user meets it: help for every role, bad settings named at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VIGIL = str(Path(sys.executable).parent / "vigil")
ROLES = ["demo", "edge", "ingest", "api", "sim"]


def vigil(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VIGIL, *args], check=False, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=60)


def test_every_role_has_help_listing_its_settings() -> None:
    top = vigil("--help")
    assert top.returncode == 0
    for role in ROLES:
        assert role in top.stdout
        out = vigil(role, "--help")
        assert out.returncode == 0, out.stderr
        assert f"VIGIL_{role.upper()}_MQTT__HOST" in out.stdout or f"VIGIL_{role.upper()}_" in out.stdout


@pytest.mark.parametrize("role", ["ingest", "api", "sim", "demo"])
def test_a_bad_environment_setting_stops_the_role_naming_it(role: str) -> None:
    var = {"ingest": "VIGIL_INGEST_BATCH_MAX_READINGS", "api": "VIGIL_API_PORT",
           "sim": "VIGIL_SIM_DEVICES", "demo": "VIGIL_DEMO_PORT"}[role]
    out = vigil(role, env={var: "lots"})
    assert out.returncode == 2
    assert var in out.stderr and "valid integer" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_config_file_key_is_named_with_the_file(tmp_path: Path) -> None:
    config = tmp_path / "vigil.toml"
    config.write_text("[ingest]\nbatch_max_age_s = -1\nstore = { pathh = 'x' }\n")
    out = vigil("ingest", "--config", str(config))
    assert out.returncode == 2
    assert f"ingest.batch_max_age_s in {config}" in out.stderr and "greater than 0" in out.stderr
    assert "ingest.store.pathh" in out.stderr and "Extra inputs are not permitted" in out.stderr


def test_a_missing_config_file_is_reported() -> None:
    out = vigil("api", "--config", "/nonexistent/vigil.toml")
    assert out.returncode == 2 and "/nonexistent/vigil.toml does not exist" in out.stderr


def test_an_edge_config_mistake_names_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("site: s1\nagent: gw1\ndevices:\n  - id: pump-1\n    kind: pump\n    driver: nosuch\n")
    out = vigil("edge", env={"VIGIL_EDGE_CONFIG": str(config)})
    assert out.returncode == 2, out.stderr
    assert str(config) in out.stderr and "nosuch" in out.stderr
    assert "Traceback" not in out.stderr
