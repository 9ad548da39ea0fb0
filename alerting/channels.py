"""Notification channels: an explicit registry of kinds, each a small class with ``send``.

- ``apprise``: the main one. ``to`` is an Apprise URL, so one configuration reaches ntfy
  (``ntfys://ntfy.sh/topic``), Pushover (``pover://user@token``), Telegram
  (``tgram://bot/chat``), SMS gateways (``twilio://sid:token@from/to``), e-mail
  (``mailtos://user:pass@smtp.example.com?to=...``) and webhooks (``json://host/path``).
- ``file``: appends one JSON line per message to the file ``to``; what the demo uses, so a
  newcomer sees pages without anything leaving the machine.

Invariants:
- ``send`` returns only when the message was handed over; otherwise it raises
  ``ChannelError`` with the reason and whether a retry may help;
- addresses are shown and recorded through ``describe`` with credentials masked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import apprise

from alerting.config import ChannelConfig
from alerting.errors import ChannelError


class Channel(Protocol):
    def send(self, to: str, title: str, body: str) -> None: ...

    def describe(self, to: str) -> str: ...


class _ThreadLog(logging.Handler):
    """Collects apprise's log records of the current thread only: Apprise reports why a
    delivery failed through its logger, and sends run in parallel threads."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


class AppriseChannel:
    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self._logger = logging.getLogger("apprise")

    def _server(self, to: str) -> apprise.Apprise:
        a = apprise.Apprise()
        if not a.add(to):
            raise ChannelError(f"{self.describe(to)} is not an Apprise URL this installation understands "
                               "(see https://github.com/caronc/apprise/wiki)", retryable=False)
        for server in a:
            server.socket_connect_timeout = self.config.timeout_s
            server.socket_read_timeout = self.config.timeout_s
        return a

    def send(self, to: str, title: str, body: str) -> None:
        a = self._server(to)
        capture = _ThreadLog()
        self._logger.addHandler(capture)
        try:
            # Each plugin in this thread: Apprise.notify may fan out to a pool, and the
            # reason for a failure is only in the log records of the thread that sent.
            ok = all(server.notify(body=body, title=title) for server in a)
        finally:
            self._logger.removeHandler(capture)
        if not ok:
            why = "; ".join(capture.lines[-3:]) or "the service did not accept the message"
            raise ChannelError(why[:500])

    def describe(self, to: str) -> str:
        try:
            a = apprise.Apprise()
            if a.add(to):
                url: Callable[..., str] = a[0].url
                return url(privacy=True).split("?", maxsplit=1)[0]
        except Exception:  # describing must never fail a delivery record
            pass
        return to.split("://", maxsplit=1)[0] + "://…"


class FileChannel:
    """One JSON line per message appended to the file ``to`` (created with its folder)."""

    def __init__(self, config: ChannelConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()

    def send(self, to: str, title: str, body: str) -> None:
        line = json.dumps({"ts_ms": int(self._clock() * 1000), "title": title, "body": body})
        try:
            path = Path(to)
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            raise ChannelError(f"cannot append to {to}: {e}") from None

    def describe(self, to: str) -> str:
        return f"file://{to}"


# The registry: channel kind -> factory. Register new kinds here, explicitly.
CHANNEL_KINDS: dict[str, Callable[[ChannelConfig], Channel]] = {
    "apprise": AppriseChannel,
    "file": FileChannel,
}


def build_channels(configs: dict[str, ChannelConfig]) -> dict[str, Channel]:
    """One channel instance per configured name; an unknown kind is a clear error at start."""
    out: dict[str, Channel] = {}
    for name, cfg in configs.items():
        factory = CHANNEL_KINDS.get(cfg.kind)
        if factory is None:
            raise ChannelError(f"channels.{name}.kind: unknown channel kind {cfg.kind!r}; "
                               f"known: {', '.join(sorted(CHANNEL_KINDS))}", retryable=False)
        out[name] = factory(cfg)
    return out
