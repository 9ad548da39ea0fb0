"""Delivery through real local receivers: an SMTP server (aiosmtpd) and an HTTP receiver for
push/webhook-style channels, both on loopback. The receivers are reused by the other
alerting tests and the benchmark."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message as Email
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from alerting.channels import AppriseChannel, build_channels
from alerting.config import ChannelConfig, OnCallConfig, parse_config
from alerting.dispatch import AttemptRecord, Dispatcher
from alerting.engine import Alert, Engine, Notify
from alerting.errors import ChannelError
from alerting.outbox import Message, Outbox
from tests.services import free_port


@dataclass
class HttpReceiver:
    """Receives POSTs; answers ``status`` (500 while ``failing``) and keeps what it got."""

    port: int
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    failing: bool = False
    arrivals: list[float] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.failing:
                    receiver.refused += 1
                    self.send_response(500)
                    self.end_headers()
                    return
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {"raw": body.decode("utf-8", "replace")}
                doc["_path"] = self.path
                receiver.arrivals.append(time.time())
                receiver.received.append(doc)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Email] = []
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:  # noqa: N802
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.envelopes.append(envelope)
        self.messages.append(message_from_bytes(content))
        return "250 OK"


@dataclass
class SmtpReceiver:
    port: int
    mailbox: _Mailbox
    controller: Controller

    def url(self, to: str = "tech@example.com") -> str:
        return f"mailto://127.0.0.1:{self.port}?from=vigil@example.com&to={to}&mode=insecure"

    @property
    def messages(self) -> list[Email]:
        return self.mailbox.messages

    def stop(self) -> None:
        self.controller.stop()


def start_smtp() -> SmtpReceiver:
    box = _Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    return SmtpReceiver(port, box, controller)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    r = HttpReceiver(free_port()).start()
    yield r
    r.stop()


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    r = start_smtp()
    yield r
    r.stop()


def body_text(msg: Email) -> str:
    parts = msg.walk() if msg.is_multipart() else [msg]
    for part in parts:
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode("utf-8", "replace")
    return ""


# -- the tests ----------------------------------------------------------------------------
T0 = 1_795_000_000_000


def _config(http: HttpReceiver, smtp: SmtpReceiver, **extra: Any) -> OnCallConfig:
    raw: dict[str, Any] = {
        "channels": {"push": {"kind": "apprise", "timeout_s": 2},
                     "mail": {"kind": "apprise", "timeout_s": 2}},
        "people": {"tech1": {"contacts": [{"channel": "push", "to": http.url("tech1"), "attempts": 2},
                                          {"channel": "mail", "to": smtp.url("tech1@example.com"),
                                           "attempts": 1}]},
                   "super": {"contacts": [{"channel": "push", "to": http.url("super")}]}},
        "policies": {"p": {"steps": [{"notify": ["person:tech1"], "delay_min": 5},
                                     {"notify": ["person:super"], "delay_min": 5}]}},
        "routes": [{"name": "all", "policy": "p", "group_wait_s": 0}],
    }
    raw.update(extra)
    return parse_config(raw)


def test_apprise_delivers_to_the_http_receiver_and_the_smtp_server(
        http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver) -> None:
    channel = AppriseChannel(ChannelConfig(timeout_s=2))
    channel.send(http_receiver.url("x"), "[CRITICAL] tower-a/pump-1", "vibration high\nAcknowledge: http://a/b")
    assert http_receiver.received[0]["title"] == "[CRITICAL] tower-a/pump-1"
    assert "Acknowledge: http://a/b" in http_receiver.received[0]["message"]
    channel.send(smtp_receiver.url("bob@example.com"), "fire alarm zone 3", "evacuate")
    msg = smtp_receiver.messages[0]
    assert msg["Subject"] == "fire alarm zone 3" and msg["To"] == "bob@example.com"
    assert "evacuate" in body_text(msg)


def test_apprise_failures_say_why(http_receiver: HttpReceiver) -> None:
    channel = AppriseChannel(ChannelConfig(timeout_s=2))
    http_receiver.failing = True
    with pytest.raises(ChannelError) as e:
        channel.send(http_receiver.url(), "t", "b")
    assert e.value.retryable and "500" in str(e.value)
    with pytest.raises(ChannelError, match="not an Apprise URL") as bad:
        channel.send("nosuchscheme://x", "t", "b")
    assert not bad.value.retryable
    assert channel.describe("json://user:hunter2@127.0.0.1:1/p").count("hunter2") == 0


def test_failover_to_the_next_contact_method_records_every_attempt(
        http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver) -> None:
    cfg = _config(http_receiver, smtp_receiver)
    records: list[AttemptRecord] = []
    now = [T0 / 1000]
    d = Dispatcher(Outbox(cfg.channels, retry_s=2), build_channels(cfg.channels), on_attempt=records.append,
                   clock=lambda: now[0])
    http_receiver.failing = True
    d.submit(Message("inc-1", "tech1", "title", "body"), cfg.people["tech1"].contacts)
    for t in range(0, 10):
        d.run_due(T0 + t * 1000)
    assert [(r.channel, r.ok, r.result) for r in records] == [
        ("push", False, "retry"), ("push", False, "failover"), ("mail", True, "delivered")]
    assert smtp_receiver.messages[0]["Subject"] == "title"
    assert "500" in records[0].error and d.pending == 0


def test_receiver_down_for_two_minutes_still_gets_the_page_as_one_incident(
        http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver) -> None:
    cfg = _config(http_receiver, smtp_receiver, people={
        "tech1": {"contacts": [{"channel": "push", "to": http_receiver.url("tech1"), "attempts": 2}]},
        "super": {"contacts": [{"channel": "push", "to": http_receiver.url("super")}]}},
        policies={"p": {"steps": [{"notify": ["person:tech1"], "delay_min": 30}]}})
    engine = Engine(cfg)
    records: list[AttemptRecord] = []
    clock = [T0 / 1000]
    d = Dispatcher(Outbox(cfg.channels, retry_s=2, cycle_s=15, cycle_max_s=60), build_channels(cfg.channels),
                   on_attempt=records.append, clock=lambda: clock[0])
    http_receiver.failing = True
    alert = Alert(key="s1/chiller-1/trip", event_id="e1", site="s1", building="s1", event_type="trip",
                  severity="critical", summary="chiller tripped", ts_ms=T0, device="chiller-1")
    for t_s in range(0, 300):
        now = T0 + t_s * 1000
        clock[0] = now / 1000
        if t_s == 120:
            http_receiver.failing = False
        if t_s % 10 == 0:
            engine.handle(alert.__class__(**{**_fields(alert), "event_id": f"e{t_s}"}), now)  # repeats
        for action in engine.tick(now):
            if isinstance(action, Notify):
                d.submit(Message(action.incident_id, action.person, "chiller tripped", "b"),
                         cfg.people[action.person].contacts)
        d.run_due(now)
    assert len(engine.incidents) == 1 and engine.pages == 1
    assert len(http_receiver.received) == 1 and http_receiver.refused >= 4
    assert records[-1].ok and all(not r.ok for r in records[:-1])
    assert {r.incident_id for r in records} == set(engine.incidents)


def _fields(a: Alert) -> dict[str, Any]:
    return {f: getattr(a, f) for f in a.__slots__}
