"""The SNMP driver against Debian's real net-snmp ``snmpd`` on a free loopback port, v2c and v3."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import parse_config
from edge.drivers import DRIVERS
from edge.drivers.base import DeviceInfo, Driver
from edge.drivers.snmp import SnmpOptions
from edge.errors import DriverError, EdgeConfigError

SNMPD = Path("/usr/sbin/snmpd")
T0 = 1_700_000_000_000
DEVICE = DeviceInfo(site="s", agent="a", device="nvr-1", kind="nvr")
COMMUNITY = "vigil-ro-7f3a"
USER, AUTH_KEY, PRIV_KEY = "vigilops", "auth-pass-123", "priv-pass-456"

SYS_NAME = "1.3.6.1.2.1.1.5.0"
SYS_LOCATION = "1.3.6.1.2.1.1.6.0"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_OPER_STATUS_LO = "1.3.6.1.2.1.2.2.1.8.1"  # interface 1 is the loopback: up
IF_MTU_LO = "1.3.6.1.2.1.2.2.1.4.1"


def extend_output(name: str) -> str:
    """NET-SNMP-EXTEND-MIB::nsExtendOutput1Line."name": the first line a configured command prints."""
    return "1.3.6.1.4.1.8072.1.3.2.3.1.1." + ".".join(str(x) for x in [len(name), *name.encode()])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Snmpd:
    def __init__(self, workdir: Path) -> None:
        self.port = free_udp_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Snmpd:
        if not SNMPD.exists():
            pytest.fail(f"{SNMPD} is missing: install Debian's snmpd (scripts/test does)")
        (self.workdir / "persist").mkdir()
        conf = self.workdir / "snmpd.conf"
        # A camera recorder's view: its recording state and disk use come from `extend`
        # commands, the way an NVR vendor's MIB would expose them.
        conf.write_text(
            f"agentAddress udp:127.0.0.1:{self.port}\n"
            f"rocommunity {COMMUNITY} 127.0.0.1\n"
            f'createUser {USER} SHA "{AUTH_KEY}" AES "{PRIV_KEY}"\n'
            f"rouser {USER} priv\n"
            "sysName nvr-b1\n"
            "sysLocation plant room B1\n"
            "extend recording /bin/echo recording\n"
            "extend disk_used_pct /bin/echo 42.5\n"
        )
        env = {**os.environ, "SNMP_PERSISTENT_DIR": str(self.workdir / "persist"), "MIBS": ""}
        self.proc = subprocess.Popen(
            [str(SNMPD), "-f", "-Lf", str(self.workdir / "snmpd.log"), "-C", "-c", str(conf),
             "-M", str(self.workdir), "-p", str(self.workdir / "snmpd.pid")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        probe = DRIVERS["snmp"].build(DEVICE, v2c(self.port, [{"metric": "name", "oid": SYS_NAME}],
                                                  timeout_s=0.2, retries=0))
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    log = (self.workdir / "snmpd.log").read_text(errors="replace")
                    pytest.fail(f"snmpd exited with {self.proc.returncode}: {log[-2000:]}")
                try:
                    probe.read(T0)
                    return
                except DriverError:
                    time.sleep(0.1)
        finally:
            probe.stop()
        pytest.fail(f"snmpd did not answer on udp 127.0.0.1:{self.port} within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmpd]:
    agent = Snmpd(tmp_path_factory.mktemp("snmpd"))
    try:
        yield agent.start()
    finally:
        agent.stop()


def v2c(port: int, points: list[dict[str, Any]], **kw: Any) -> SnmpOptions:
    return SnmpOptions.model_validate({"host": "127.0.0.1", "port": port, "version": "2c",
                                       "community": COMMUNITY, "timeout_s": 1, "retries": 0,
                                       "points": points, **kw})


def v3(port: int, points: list[dict[str, Any]], **kw: Any) -> SnmpOptions:
    return SnmpOptions.model_validate({
        "host": "127.0.0.1", "port": port, "version": 3, "user": USER,
        "auth_protocol": "sha", "auth_key": AUTH_KEY, "priv_protocol": "aes", "priv_key": PRIV_KEY,
        "timeout_s": 1, "retries": 0, "points": points, **kw})


NVR_POINTS: list[dict[str, Any]] = [
    {"metric": "name", "oid": SYS_NAME},
    {"metric": "location", "oid": "." + SYS_LOCATION},
    {"metric": "uptime_s", "oid": SYS_UPTIME, "scale": 0.01, "unit": "s"},
    {"metric": "lo_status", "oid": IF_OPER_STATUS_LO, "states": {1: "up", 2: "down", 7: "lowerLayerDown"}},
    {"metric": "lo_up", "oid": IF_OPER_STATUS_LO, "states": {1: True, 2: False}},
    {"metric": "lo_mtu", "oid": IF_MTU_LO, "unit": "B"},
    {"metric": "recording", "oid": extend_output("recording"),
     "states": {"recording": True, "stopped": False}},
    {"metric": "disk_used", "oid": extend_output("disk_used_pct"), "value_type": "number", "unit": "%"},
]


def read_once(options: SnmpOptions) -> dict[str, Any]:
    driver: Driver = DRIVERS["snmp"].build(DEVICE, options)
    driver.start()
    try:
        return {r.metric: r.value for r in driver.read(T0)}
    finally:
        driver.stop()


@pytest.mark.parametrize("make", [v2c, v3], ids=["v2c", "v3-authpriv"])
def test_reads_gauges_states_and_text(snmpd: Snmpd, make: Any) -> None:
    got = read_once(make(snmpd.port, NVR_POINTS, max_oids_per_request=3))
    uptime = got.pop("uptime_s")
    assert isinstance(uptime, float) and 0 < uptime < 600
    assert got == {"name": "nvr-b1", "location": "plant room B1", "lo_status": "up", "lo_up": True,
                   "lo_mtu": 65536.0, "recording": True, "disk_used": 42.5}


def test_missing_oid_fails_only_its_point(snmpd: Snmpd, caplog: pytest.LogCaptureFixture) -> None:
    points = [{"metric": "name", "oid": SYS_NAME}, {"metric": "ghost", "oid": "1.3.6.1.2.1.1.99.0"}]
    driver = DRIVERS["snmp"].build(DEVICE, v2c(snmpd.port, points))
    try:
        for k in range(3):
            assert [r.metric for r in driver.read(T0 + k)] == ["name"]
    finally:
        driver.stop()
    logged = [r.getMessage() for r in caplog.records if "ghost" in r.getMessage()]
    assert len(logged) == 1 and "NoSuchObject" in logged[0]


def test_every_point_missing_fails_the_poll(snmpd: Snmpd) -> None:
    with pytest.raises(DriverError, match="none of its 1 due point"):
        read_once(v2c(snmpd.port, [{"metric": "ghost", "oid": "1.3.6.1.2.1.1.99.0"}]))


def test_wrong_community_times_out(snmpd: Snmpd) -> None:
    # snmpd drops requests with an unknown community: the poll fails on the timeout.
    with pytest.raises(DriverError, match="No SNMP response"):
        read_once(v2c(snmpd.port, NVR_POINTS[:1], community="public", timeout_s=0.3))


def test_wrong_v3_key_is_refused(snmpd: Snmpd) -> None:
    with pytest.raises(DriverError, match=r"(?i)digest|authentic|decrypt|No SNMP response"):
        read_once(v3(snmpd.port, NVR_POINTS[:1], auth_key="not-the-key", timeout_s=0.3))


def test_secrets_never_show_in_errors_or_repr() -> None:
    opts = v3(161, NVR_POINTS[:1])
    assert AUTH_KEY not in repr(opts) and PRIV_KEY not in repr(opts)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"version": "2c"}, "version 2c needs community"),
        ({"version": "2c", "community": "x", "user": "u"}, "user are for version 3"),
        ({"version": 3}, "version 3 needs user"),
        ({"version": 3, "user": "u", "auth_protocol": "sha"}, "authentication needs both"),
        ({"version": 3, "user": "u", "auth_protocol": "sha", "auth_key": "short"}, "at least 8"),
        ({"version": 3, "user": "u", "priv_protocol": "aes", "priv_key": "12345678"}, "privacy needs auth"),
        ({"version": 3, "user": "u", "auth_protocol": "sha1", "auth_key": "12345678"},
         "auth_protocol: Input should be 'md5', 'sha'"),
        ({"version": "2c", "community": "x", "points": [{"metric": "m", "oid": "ifOperStatus.1"}]},
         "points[0].oid: String should match pattern"),
    ],
)
def test_config_mistakes_name_the_key(options: dict[str, Any], message: str) -> None:
    config = {"site": "s", "agent": "a", "devices": [{
        "id": "nvr-1", "kind": "nvr", "driver": "snmp",
        "options": {"host": "10.1.2.3", "points": [{"metric": "m", "oid": SYS_NAME}], **options},
    }]}
    with pytest.raises(EdgeConfigError) as e:
        parse_config(config, source="/etc/vigil/edge.yaml")
    assert "/etc/vigil/edge.yaml" in str(e.value)
    assert "devices[0] (nvr-1).options" in str(e.value)
    assert message in str(e.value)
