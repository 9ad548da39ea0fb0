"""Generated requests and generated identifiers, against real servers.

- Schemathesis reads the app's OpenAPI schema and sends generated requests (valid and
  invalid) to every operation of a running API, as an administrator: no reply is a 5xx.
  Bounded: a few examples per operation (SCHEMATHESIS_EXAMPLES), so it stays well under a
  minute; raise it for a deeper run.
- InfluxQL: whatever a caller sends as site, device, metric or range, the query the store
  sends to InfluxDB keeps its shape — the same keywords and operators in the same order,
  each value a single quoted token that reads back as exactly what was sent. The API's
  allow-lists refuse bad ids and metric names before any query; the store's quoting holds
  even for values the allow-lists would have refused (defence in depth).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerting import store as alerting_store
from alerting.config import load_config
from alerting.demo import DEMO_ONCALL
from api.main import create_app
from api.server import run
from api.settings import ApiSettings
from ingest.store import StoreError, StoreSettings, open_store
from ingest.store.influx import InfluxStore, ident, literal
from tests.services import api_token
from wire import database

SCHEMATHESIS_EXAMPLES = 4

# -- Schemathesis against the running API ---------------------------------------------------------

schema = schemathesis.openapi.from_dict(create_app(ApiSettings.load(None)).openapi())


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{folder / 'vigil.db'}"
    api_settings = ApiSettings.load(None, database_url=url, store=StoreSettings(path=folder / "ts.db"),
                                    port=0, token_rate_per_s=100_000, token_burst=100_000,
                                    login_attempts_per_min=10_000)
    stop, ready = threading.Event(), threading.Event()
    urls: list[str] = []

    def on_ready(u: str) -> None:
        urls.append(u)
        ready.set()

    thread = threading.Thread(target=run, args=(api_settings, stop), kwargs={"ready": on_ready}, daemon=True)
    thread.start()
    assert ready.wait(30), "the API did not start"
    headers = {"Authorization": f"Bearer {api_token(url, user='fuzz-admin')}"}
    # The on-call routes answer 503 until an alerting service has published its on-call
    # file: publish the demo's, as `vigil alerting` would.
    engine = database.create(url)
    oncall = folder / "oncall.yaml"
    oncall.write_text(DEMO_ONCALL.format(pages=folder / "pages.txt"), encoding="utf-8")
    with engine.begin() as conn:
        alerting_store.publish_config(conn, load_config(oncall), 0)
    engine.dispose()
    try:
        yield urls[0], headers
    finally:
        stop.set()
        thread.join(15)


@schema.parametrize()
@settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx(case: Any, live_api: tuple[str, dict[str, str]]) -> None:
    base_url, headers = live_api
    if case.path == "/api/v1/stream":
        return  # server-sent events never end; its refusals are in the route matrix
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text)


# -- InfluxQL: a small scanner, as InfluxDB's reads a statement ------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<ident>"(?:[^"\\\n]|\\.)*")
  | (?P<string>'(?:[^'\\\n]|\\.)*')
  | (?P<regex>(?<==~\ )/(?:[^/\\\n]|\\.)*/)
  | (?P<duration>-?\d+(?:ms|u|s|m|h|d|w)\b)
  | (?P<number>-?\d+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>>=|<=|=~|!=|<>|[=<>(),;*])
""", re.VERBOSE | re.DOTALL)

_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def scan(query: str) -> list[tuple[str, str]]:
    """(kind, value) tokens; quoted values unescaped. Fails on anything InfluxQL would not lex."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        assert m is not None, f"unlexable at {pos}: {query[pos:pos + 40]!r} in {query!r}"
        kind = m.lastgroup or ""
        text = m.group()
        pos = m.end()
        if kind == "ws":
            continue
        if kind in ("ident", "string"):
            text = _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), text[1:-1])
        out.append((kind, text))
    return out


def shape(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keywords and operators as they are; every value replaced by its kind."""
    return [(k, v.upper()) if k in ("word", "op") else (k, "_") for k, v in tokens]


values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
nasty = st.sampled_from(['x" OR 1=1 --', "x' OR '1'='1", "a\\", "\\'", '\\"', "a\nDROP MEASUREMENT x",
                         "x; DROP DATABASE vigil", "/.*/", "$SYS", "'; SHOW DATABASES; '"])


@given(st.one_of(values, nasty))
@settings(max_examples=400, deadline=None)
def test_quoting_reads_back_exactly_and_never_breaks_out(text: str) -> None:
    for quoted, kind in ((ident(text), "ident"), (literal(text), "string")):
        assert "\n" not in quoted  # a raw newline would end the statement
        tokens = scan(f"SELECT {quoted} FROM x")
        assert tokens == [("word", "SELECT"), (kind, text), ("word", "FROM"), ("word", "x")], (text, tokens)


@pytest.fixture
def recorded_influx(influx_settings: StoreSettings) -> Iterator[tuple[InfluxStore, list[str]]]:
    """The InfluxDB store on a real InfluxDB, with every query it sends kept for inspection."""
    store = open_store(influx_settings)
    assert isinstance(store, InfluxStore)
    queries: list[str] = []
    send: Callable[..., Any] = store._query

    def recording(q: str, epoch: str = "ms") -> Any:
        queries.append(q)
        return send(q, epoch)

    store._query = recording  # type: ignore[method-assign]
    try:
        yield store, queries
    finally:
        store.close()


def _queries(store: InfluxStore, site: str, device: str, metric: str, start: int, end: int,
             queries: list[str]) -> list[str]:
    queries.clear()
    for call in (lambda: store.metrics(site, device),
                 lambda: store.series(site, device, metric, start, end, 60_000),
                 lambda: store.readings(site, device, metric, start, end, 10),
                 lambda: store.dead_letters(5, code=metric, topic_prefix=site)):
        # InfluxDB may refuse an odd name; the query's shape is what is checked
        with contextlib.suppress(StoreError):
            call()
    return list(queries)


@given(site=st.one_of(values, nasty), device=st.one_of(values, nasty), metric=st.one_of(values, nasty),
       start=st.integers(-(2**62), 2**62), span=st.integers(1, 2**40))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_influx_queries_keep_their_shape(recorded_influx: tuple[InfluxStore, list[str]], site: str,
                                         device: str, metric: str, start: int, span: int) -> None:
    store, queries = recorded_influx
    baseline = _queries(store, "hq", "ahu-1", "temp", 0, 3_600_000, queries)
    got = _queries(store, site, device, metric, start, start + span, queries)
    assert len(got) == len(baseline)
    for q, b in zip(got, baseline, strict=True):
        tokens = scan(q)
        assert shape(tokens) == shape(scan(b)), (q, b)
        # every quoted value is one the caller sent, or one of the query's own names
        own = {v for k, v in scan(b) if k in ("ident", "string")} - {"hq", "ahu-1", "temp"}
        quoted = {v for k, v in tokens if k in ("ident", "string")}
        assert quoted <= own | {site, device, metric}, (q, quoted - own)


@given(device=st.one_of(values, nasty), metric=st.one_of(values, nasty))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_allow_lists_refuse_bad_ids_and_metrics_before_any_query(
        api_on_embedded: tuple[TestClient, dict[str, str]], device: str, metric: str) -> None:
    client, headers = api_on_embedded
    for path in ("readings", "series"):
        r = client.get(f"/api/v1/devices/hq/{quote(device, safe='')}/{path}", params={"metric": metric},
                       headers=headers)
        # an unknown device (404) or a refused id or metric (422); never a query error (5xx)
        assert r.status_code in (404, 422), (device, metric, r.status_code, r.text)


@pytest.fixture(scope="module")
def api_on_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    folder: Path = tmp_path_factory.mktemp("allow-lists")
    url = f"sqlite:///{folder / 'vigil.db'}"
    settings_ = ApiSettings.load(None, database_url=url, store=StoreSettings(path=folder / "ts.db"),
                                 token_rate_per_s=100_000, token_burst=100_000)
    with TestClient(create_app(settings_), raise_server_exceptions=False) as c:
        yield c, {"Authorization": f"Bearer {api_token(url, user='allow-admin')}"}


def test_injection_attempts_through_the_api_on_influxdb_are_refused(influx_settings: StoreSettings,
                                                                    tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vigil.db'}"
    with TestClient(create_app(ApiSettings.load(None, database_url=url, store=influx_settings))) as c:
        headers = {"Authorization": f"Bearer {api_token(url)}"}
        for device, metric in (("ahu-1", 'temp" OR 1=1'), ('ahu"1', "temp"), ("ahu-1", "temp;DROP"),
                               ("x'; DROP DATABASE y; '", "temp")):
            r = c.get(f"/api/v1/devices/hq/{device}/readings", params={"metric": metric}, headers=headers)
            assert r.status_code == 422, (device, metric, r.text)
        r = c.get("/api/v1/devices/hq/ahu-1/readings", params={"metric": "temp", "start": "0 OR 1=1"},
                  headers=headers)
        assert r.status_code == 422
