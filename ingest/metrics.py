"""Ingest's own HTTP endpoint: ``/metrics`` (Prometheus text format) and ``/healthz``.

Each worker serves its own (``metrics_port``): Prometheus scrapes every worker and sums
the per-agent counters across a shared-subscription group, the way it sums any counters.
Values are read from the service's snapshot at scrape time (a custom collector), so the
hot path updates plain integers and never a Prometheus object.

Invariants:
- ``/healthz`` answers 200 while the store accepts writes, 503 with the reason while it
  does not (outage, or credentials refused: the alert-worthy case, data kept unacked);
- the server binds ``metrics_host`` (loopback by default) and stops with the worker.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.accounting import AgentAccount


@dataclass(slots=True)
class Snapshot:
    """What the collector needs, copied under the service's lock."""

    worker: str
    agents: dict[tuple[str, str], AgentAccount]
    counters: dict[str, float]
    store_ok: bool
    store_problem: str
    unauthorized: bool


class IngestCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        labels = ["site", "agent"]
        per_agent: list[tuple[str, str, str, Callable[[AgentAccount], float]]] = [
            ("vigil_ingest_agent_received_messages", "counter", "Telemetry messages received",
             lambda a: a.received_messages),
            ("vigil_ingest_agent_received_readings", "counter", "Readings received",
             lambda a: a.received_readings),
            ("vigil_ingest_agent_stored_messages", "counter", "Telemetry messages durably stored",
             lambda a: a.stored_messages),
            ("vigil_ingest_agent_stored_readings", "counter", "Readings durably stored",
             lambda a: a.stored_readings),
            ("vigil_ingest_agent_duplicates", "counter",
             "Messages received again (redeliveries; stored on the same points)", lambda a: a.duplicates),
            ("vigil_ingest_agent_gaps_opened", "counter", "Sequence gaps seen", lambda a: a.gaps_opened),
            ("vigil_ingest_agent_open_gaps", "gauge", "Sequence gaps still open", lambda a: len(a.open_gaps)),
            ("vigil_ingest_agent_missing_messages", "gauge",
             "Messages missing in open sequence gaps", lambda a: a.missing),
        ]
        for name, kind, doc, get in per_agent:
            family: CounterMetricFamily | GaugeMetricFamily
            family = (CounterMetricFamily(name, doc, labels=labels) if kind == "counter"
                      else GaugeMetricFamily(name, doc, labels=labels))
            for (site, agent), acct in snap.agents.items():
                family.add_metric([site, agent], get(acct))
            yield family
        letters = CounterMetricFamily("vigil_ingest_agent_dead_letters",
                                      "Messages dead-lettered, by reason code", labels=[*labels, "code"])
        for (site, agent), acct in snap.agents.items():
            for code, n in acct.dead_letters.items():
                letters.add_metric([site, agent, code], n)
        yield letters
        for key, value in snap.counters.items():
            if key.startswith("latency_"):
                yield GaugeMetricFamily(f"vigil_ingest_{key.removesuffix('_s')}_seconds",
                                        f"Edge timestamp to durable write, {key}", value=value)
            else:
                yield CounterMetricFamily(f"vigil_ingest_{key}", f"Worker total: {key}", value=value)
        yield GaugeMetricFamily("vigil_ingest_store_up", "1 while the store accepts writes",
                                value=1.0 if snap.store_ok else 0.0)
        yield GaugeMetricFamily("vigil_ingest_store_unauthorized",
                                "1 while the store refuses the credentials (data kept, acks stopped)",
                                value=1.0 if snap.unauthorized else 0.0)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's parameter name
        pass  # a scrape every few seconds is not news


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a thread of their own."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Snapshot]) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(IngestCollector(snapshot))
        self._snapshot = snapshot
        self._server: WSGIServer = make_server(host, port, self._app, handler_class=_QuietHandler)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingest-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body = generate_latest(self._registry)
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
            return [body]
        if path == "/healthz":
            snap = self._snapshot()
            ok = snap.store_ok
            doc = {"status": "ok" if ok else "unavailable", "worker": snap.worker}
            if not ok:
                doc["reason"] = snap.store_problem
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(doc).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]
