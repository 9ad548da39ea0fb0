"""Device credentials and topic ACLs on a real Mosquitto started with the production files.

The broker runs deploy/mosquitto.conf's access lines (no anonymous clients, password file,
ACL file) and deploy/mosquitto-secure.conf's TLS listeners, with ports, certificates and
file paths replaced by the test's own; the accounts are written by vigil.provision exactly
as ``vigil agent provision`` writes them. Checked: an agent cannot publish on another
agent's topics (nothing arrives), cannot subscribe to ``#``, ``$SYS/#`` or another agent's
commands; anonymous and wrong-password clients are refused; TLS with a password and mutual
TLS with a CA-signed certificate work; a revoked agent is refused after a reload (SIGHUP).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.services import free_port, start_mosquitto
from vigil import provision
from vigil.provision import BrokerAuthSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "mosquitto.conf"
SECURE = ROOT / "deploy" / "mosquitto-secure.conf"
SITE = "s1"
WAIT_S = 1.0  # how long "nothing arrives" is watched, after a later message did arrive


# -- certificates ------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False,
          san: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        # clients here connect to 127.0.0.1, so the certificate names that address too
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(san), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_pem(folder: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    agent_a: tuple[Path, Path]  # CN s1/gw-a, signed by the CA
    stranger: tuple[Path, Path]  # CN s1/gw-a, self-signed: not the deployment's CA


def make_pki(folder: Path, agent_cn: str) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("vigil-test-ca", ca_key, "vigil-test-ca", ca_key, ca=True)
    ca_path, _ = _write_pem(folder, "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _write_pem(folder, "server", _cert("localhost", server_key, "vigil-test-ca", ca_key,
                                                san="localhost"), server_key)
    agent_key = ec.generate_private_key(ec.SECP256R1())
    agent = _write_pem(folder, "agent", _cert(agent_cn, agent_key, "vigil-test-ca", ca_key), agent_key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _write_pem(folder, "stranger", _cert(agent_cn, other_key, agent_cn, other_key), other_key)
    return Pki(ca_path, server, agent, stranger)


# -- the broker ------------------------------------------------------------------------------


def _deploy_access_lines(passwd: Path, acl: Path) -> list[str]:
    """deploy/mosquitto.conf's access control, with the test's files."""
    out = []
    for raw in DEPLOY.read_text().splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "allow_anonymous":
            out.append(raw.strip())
        elif words[0] == "password_file":
            out.append(f"password_file {passwd}")
        elif words[0] == "acl_file":
            out.append(f"acl_file {acl}")
    assert out == ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"], out
    return out


def _secure_lines(pki: Pki, tls_port: int, mtls_port: int) -> list[str]:
    """deploy/mosquitto-secure.conf with the test's ports and certificates."""
    ports = iter((tls_port, mtls_port))
    paths = {"certfile": pki.server[0], "keyfile": pki.server[1], "cafile": pki.ca}
    out = []
    for raw in SECURE.read_text().splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            out.append(f"listener {next(ports)} 127.0.0.1")
        elif words[0] in paths:
            out.append(f"{words[0]} {paths[words[0]]}")
        else:
            out.append(raw.strip())
    return out


@dataclass
class Broker:
    port: int
    tls_port: int
    mtls_port: int
    pki: Pki
    files: BrokerAuthSettings
    passwords: dict[str, str]
    proc: Any

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # Mosquitto re-reads the files on its next loop


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    folder = tmp_path_factory.mktemp("secure-broker")
    files = BrokerAuthSettings.load(None, password_file=folder / "vigil.passwd",
                                    acl_file=folder / "vigil.acl")
    passwords = {}
    for agent in ("gw-a", "gw-b"):
        user = provision.agent_user(SITE, agent)
        passwords[user] = provision.provision(files, user, provision.agent_acl(SITE, agent))
    passwords["vigil-ingest"] = provision.provision(files, "vigil-ingest", provision.service_acl("ingest"))
    # The positive control for $SYS: an operator's monitoring account that may read it.
    passwords["monitor"] = provision.provision(files, "monitor", ["user monitor", "topic read $SYS/#"])
    pki = make_pki(folder / "pki", provision.agent_user(SITE, "gw-a"))
    tls_port, mtls_port = free_port(), free_port()
    lines = [*_deploy_access_lines(files.password_file, files.acl_file),
             *_secure_lines(pki, tls_port, mtls_port), "sys_interval 1"]  # $SYS traffic every second
    handle, proc = start_mosquitto(folder / "run", lines)
    try:
        yield Broker(handle.port, tls_port, mtls_port, pki, files, passwords, proc)
    finally:
        handle.stop()


# -- clients -----------------------------------------------------------------------------------


class Client:
    """A connected MQTT 5 client that records what it receives and its SUBACK codes."""

    def __init__(self, port: int, user: str | None, password: str | None, *,
                 tls: ssl.SSLContext | None = None) -> None:
        self.received: list[tuple[str, bytes | bytearray]] = []
        self.connected = threading.Event()
        self.subacked = threading.Event()
        self.connack: ReasonCode | None = None
        self.suback: list[ReasonCode] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls is not None:
            self.c.tls_set_context(tls)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.received.append((m.topic, m.payload))
        self.c.on_subscribe = self._on_subscribe
        self.port = port

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any) -> None:
        self.suback = list(codes)
        self.subacked.set()

    def start(self) -> Client:
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK within 10 s"
        return self

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure and self.c.is_connected()

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.subacked.clear()
        self.c.subscribe(topic, qos=1)
        assert self.subacked.wait(10), f"no SUBACK for {topic}"
        return self.suback

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait_for(client: Client, topic: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(t == topic for t, _ in client.received):
            return
        time.sleep(0.02)
    raise AssertionError(f"{topic} did not arrive within {timeout_s} s; got {client.received}")


def _login(broker: Broker, user: str, **kw: Any) -> Client:
    return Client(broker.port, user, broker.passwords[user], **kw).start()


# -- tests --------------------------------------------------------------------------------------


def test_anonymous_and_wrong_password_clients_are_refused(broker: Broker) -> None:
    anonymous = Client(broker.port, None, None).start()
    wrong = Client(broker.port, "s1/gw-a", "not-the-password").start()
    nobody = Client(broker.port, "s1/gw-zz", broker.passwords["s1/gw-a"]).start()
    try:
        for c in (anonymous, wrong, nobody):
            assert c.connack is not None and c.connack.is_failure, c.connack
            assert c.connack.getName() in ("Not authorized", "Bad user name or password"), c.connack
    finally:
        for c in (anonymous, wrong, nobody):
            c.stop()


def test_an_agent_cannot_publish_on_another_agents_topics(broker: Broker) -> None:
    ingest = _login(broker, "vigil-ingest")
    a = _login(broker, "s1/gw-a")
    try:
        assert not ingest.subscribe("vigil/v1/+/+/+/telemetry")[0].is_failure
        assert not ingest.subscribe("vigil/v1/+/+/status")[0].is_failure
        # Forged: agent A speaking for agent B's device and status, and for the system's alarms.
        a.publish("vigil/v1/s1/gw-b/ahu-1/telemetry", b"forged")
        a.publish("vigil/v1/s1/gw-b/status", b"forged")
        a.publish("vigil/v1/s2/gw-a/ahu-1/telemetry", b"forged other site")
        a.publish("vigil/v1/s1/_alarm/ahu-1", b"forged alarm")
        # Its own: arrives, and marks the moment the forged ones would have arrived by.
        a.publish("vigil/v1/s1/gw-a/ahu-1/telemetry", b"own")
        _wait_for(ingest, "vigil/v1/s1/gw-a/ahu-1/telemetry")
        time.sleep(WAIT_S)
        assert ingest.received == [("vigil/v1/s1/gw-a/ahu-1/telemetry", b"own")], ingest.received
    finally:
        ingest.stop()
        a.stop()


def test_an_agent_cannot_subscribe_to_everything_sys_or_another_agents_commands(broker: Broker) -> None:
    a = _login(broker, "s1/gw-a")
    b = _login(broker, "s1/gw-b")
    ingest = _login(broker, "vigil-ingest")
    monitor = _login(broker, "monitor")
    try:
        # Mosquitto 2.0's ACL file checks reads when a message is delivered, not at SUBSCRIBE:
        # the SUBACK may grant these, but nothing the agent may not read ever reaches it.
        for t in ("#", "$SYS/#", "vigil/v1/s1/gw-b/cmd/#", "vigil/v1/+/+/ack", "vigil/v1/+/_alarm/+"):
            a.subscribe(t)
        monitor.subscribe("$SYS/#")
        b.publish("vigil/v1/s1/gw-b/ahu-1/telemetry", b"b's data")
        b.publish("vigil/v1/s1/gw-b/cmd/reboot", b"b's own command topic")
        ingest.publish("vigil/v1/s1/gw-b/ack", b"b's ack")
        ingest.publish("vigil/v1/s1/_alarm/ahu-1", b"an alarm")
        ingest.publish("vigil/v1/s1/gw-a/ack", b"a's ack")
        _wait_for(a, "vigil/v1/s1/gw-a/ack")
        time.sleep(max(WAIT_S, 1.5))  # > sys_interval: $SYS was published meanwhile
        assert any(t.startswith("$SYS/") for t, _ in monitor.received), "no $SYS traffic to compare with"
        # its own ack arrives (once per matching subscription: "#" and its own filter)
        assert {t for t, _ in a.received} == {"vigil/v1/s1/gw-a/ack"}, a.received
    finally:
        for c in (a, b, ingest, monitor):
            c.stop()


def _tls(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def test_tls_with_password_and_mutual_tls_with_a_ca_signed_certificate(broker: Broker) -> None:
    ingest = _login(broker, "vigil-ingest")
    over_tls = Client(broker.tls_port, "s1/gw-a", broker.passwords["s1/gw-a"], tls=_tls(broker.pki)).start()
    mtls = Client(broker.mtls_port, None, None, tls=_tls(broker.pki, broker.pki.agent_a)).start()
    try:
        assert over_tls.accepted and mtls.accepted, (over_tls.connack, mtls.connack)
        ingest.subscribe("vigil/v1/+/+/+/telemetry")
        # The certificate's common name is the user: the same ACL as the password account.
        mtls.publish("vigil/v1/s1/gw-b/ahu-1/telemetry", b"forged over mtls")
        over_tls.publish("vigil/v1/s1/gw-a/ahu-1/telemetry", b"tls")
        mtls.publish("vigil/v1/s1/gw-a/ahu-2/telemetry", b"mtls")
        _wait_for(ingest, "vigil/v1/s1/gw-a/ahu-2/telemetry")
        time.sleep(WAIT_S)
        assert sorted(p for _, p in ingest.received) == [b"mtls", b"tls"], ingest.received
    finally:
        for c in (ingest, over_tls, mtls):
            c.stop()
    # Without a certificate, or with one the deployment's CA did not sign: no connection.
    for cert in (None, broker.pki.stranger):
        assert not _accepted(Client(broker.mtls_port, None, None, tls=_tls(broker.pki, cert))), cert


def _accepted(client: Client, timeout_s: float = 3.0) -> bool:
    """Whether the broker accepts the connection (a TLS refusal may come as an error at once,
    or, with TLS 1.3, as a closed connection and no CONNACK)."""
    try:
        client.c.connect("127.0.0.1", client.port)
    except (ssl.SSLError, OSError):
        return False
    client.c.loop_start()
    try:
        return (client.connected.wait(timeout_s) and client.connack is not None
                and not client.connack.is_failure)
    finally:
        client.c.loop_stop()


def test_revoked_agent_is_refused_after_reload(broker: Broker) -> None:
    user = provision.agent_user(SITE, "gw-gone")
    broker.passwords[user] = provision.provision(broker.files, user, provision.agent_acl(SITE, "gw-gone"))
    broker.reload()
    before = _login(broker, user)
    before.stop()
    assert before.connack is not None and not before.connack.is_failure, before.connack
    assert provision.revoke(broker.files, user)
    assert user not in broker.files.password_file.read_text()
    assert f"vigil:{user}" not in broker.files.acl_file.read_text()
    broker.reload()
    after = _login(broker, user)
    after.stop()
    assert after.connack is not None and after.connack.is_failure, after.connack
    # the others are untouched
    other = _login(broker, "s1/gw-a")
    other.stop()
    assert other.connack is not None and not other.connack.is_failure
