"""A fleet of simulated devices, published by real edge agents through the edge runtime.

``plan_fleet`` decides, from a seed and a few counts, which sites, agents and devices
exist (pure: same arguments, same plan); ``build_fleet`` turns a plan into edge agent
runtimes whose devices are ``simulators.models`` behind the edge's simulated driver; and
``Fleet.run`` drives them all from one scheduler thread until a stop event is set.

Naming: sites ``tower-a``, ``mall-b``, ``estate-c``, ``tower-d``...; agents ``b<site
number>-gw<n>`` (``b1-gw1``); devices ``<kind>-<nn>`` numbered per kind across the fleet
(``pump-03``), so a device id alone names one device in the whole fleet.

Invariants:
- a device's model seed depends only on the fleet seed and the device id, so the same
  device reads the same whatever the site ids (tests give each run its own);
- devices are split over sites, then over each site's agents, in contiguous runs of the
  kind cycle, so every site and every agent gets a mix of kinds;
- what was published is observable exactly: pass ``on_acked`` (e.g. a ``Recorder``) and
  it receives every message the broker acknowledged, with the typed message sent.
"""

from __future__ import annotations

import hashlib
import logging
import string
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from edge.agent import Agent, PollPlan, Publication
from edge.drivers import Driver, SimulatedDriver
from edge.runtime import AgentRuntime, AgentStats, OnAcked, Scheduler, wall_ms
from simulators.errors import SimError
from simulators.models import MODELS
from simulators.settings import SimSettings
from wire import MqttSettings, Status, Telemetry, WireError, check_id

log = logging.getLogger(__name__)

DEFAULT_KINDS: tuple[str, ...] = tuple(MODELS)
_SITE_KINDS = ("tower", "mall", "estate")


def site_id(index: int) -> str:
    """The default name of the ``index``-th site: tower-a, mall-b, estate-c, tower-d, ..."""
    letters = string.ascii_lowercase
    suffix = ""
    n = index
    while True:  # a..z, then aa, ab, ...
        suffix = letters[n % 26] + suffix
        n = n // 26 - 1
        if n < 0:
            break
    return f"{_SITE_KINDS[index % len(_SITE_KINDS)]}-{suffix}"


def device_seed(fleet_seed: int, device: str) -> int:
    """A model seed from the fleet seed and the device id; stable across processes
    (Python's own ``hash`` of a string is salted per process)."""
    digest = hashlib.blake2b(f"{fleet_seed}/{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device: str
    kind: str
    seed: int


@dataclass(frozen=True, slots=True)
class AgentPlan:
    site: str
    agent: str
    devices: tuple[DevicePlan, ...]


@dataclass(frozen=True, slots=True)
class FleetPlan:
    seed: int
    interval_s: float
    agents: tuple[AgentPlan, ...]

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.site for a in self.agents))

    @property
    def devices(self) -> tuple[DevicePlan, ...]:
        return tuple(d for a in self.agents for d in a.devices)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    return [(k * n // parts, (k + 1) * n // parts) for k in range(parts)]


def plan_fleet(
    *,
    seed: int = 1,
    devices: int = 60,
    sites: int = 2,
    agents_per_site: int = 5,
    kinds: Sequence[str] = DEFAULT_KINDS,
    interval_s: float = 1.0,
    site_ids: Sequence[str] | None = None,
) -> FleetPlan:
    """Which sites, agents and devices a fleet has; raise SimError if it cannot be built."""
    if devices < 1 or sites < 1 or agents_per_site < 1:
        raise SimError(f"devices, sites and agents per site must be at least 1, "
                       f"got {devices}, {sites}, {agents_per_site}")
    if interval_s <= 0:
        raise SimError(f"interval_s must be positive, got {interval_s}")
    unknown = [k for k in kinds if k not in MODELS]
    if not kinds or unknown:
        raise SimError(f"unknown device kinds {unknown or '(none given)'}; known: {', '.join(MODELS)}")
    names = list(site_ids) if site_ids is not None else [site_id(i) for i in range(sites)]
    if len(names) != sites or len(set(names)) != sites:
        raise SimError(f"site_ids must be {sites} distinct ids, got {names}")
    try:
        for name in names:
            check_id("site", name)
    except WireError as e:
        raise SimError(str(e)) from None

    counts = {k: sum(1 for i in range(devices) if kinds[i % len(kinds)] == k) for k in kinds}
    width = max(2, len(str(max(counts.values()))))
    numbered: dict[str, int] = {}
    all_devices: list[DevicePlan] = []
    for i in range(devices):
        kind = kinds[i % len(kinds)]
        numbered[kind] = numbered.get(kind, 0) + 1
        device = f"{kind.replace('_', '-')}-{numbered[kind]:0{width}d}"
        all_devices.append(DevicePlan(device, kind, device_seed(seed, device)))

    agents: list[AgentPlan] = []
    for s, (s_lo, s_hi) in enumerate(_split(devices, sites)):
        site_devices = all_devices[s_lo:s_hi]
        for a, (a_lo, a_hi) in enumerate(_split(len(site_devices), agents_per_site)):
            if a_hi > a_lo:  # an agent with no devices would only publish its status
                agents.append(AgentPlan(names[s], f"b{s + 1}-gw{a + 1}", tuple(site_devices[a_lo:a_hi])))
    return FleetPlan(seed=seed, interval_s=interval_s, agents=tuple(agents))


class Recorder:
    """Keeps every publication the broker acknowledged; pass it as ``on_acked``.

    Thread-safe: agents report acknowledgements from their own network threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Publication] = []

    def __call__(self, publication: Publication) -> None:
        with self._lock:
            self._items.append(publication)

    def publications(self) -> list[Publication]:
        with self._lock:
            return list(self._items)

    def telemetry(self) -> list[tuple[str, Telemetry]]:
        """(topic, message) of every acknowledged telemetry message, in ack order."""
        return [(p.topic, p.message) for p in self.publications() if isinstance(p.message, Telemetry)]

    def statuses(self) -> list[tuple[str, Status]]:
        return [(p.topic, p.message) for p in self.publications() if isinstance(p.message, Status)]

    def readings(self) -> int:
        return sum(p.readings for p in self.publications())


class Fleet:
    """Agent runtimes of a planned fleet, run together by one scheduler. Runs once."""

    def __init__(
        self, plan: FleetPlan, runtimes: Sequence[AgentRuntime], *, stop_timeout_s: float = 5.0
    ) -> None:
        self.plan = plan
        self.runtimes = tuple(runtimes)
        self.stop_timeout_s = stop_timeout_s

    def run(self, stop_event: threading.Event) -> None:
        """Connect every agent and publish until ``stop_event`` is set; then stop gracefully."""
        Scheduler(self.runtimes, stop_timeout_s=self.stop_timeout_s).run(stop_event)

    def wait_online(self, timeout_s: float) -> bool:
        """True once every agent is connected (its online status is published)."""
        deadline = time.monotonic() + timeout_s
        return all(rt.online.wait(max(0.0, deadline - time.monotonic())) for rt in self.runtimes)

    def stats(self) -> list[AgentStats]:
        return [rt.stats() for rt in self.runtimes]


def build_fleet(
    plan: FleetPlan,
    mqtt: MqttSettings,
    *,
    on_acked: OnAcked | None = None,
    max_readings_per_message: int = 500,
    max_queued_messages: int = 10_000,
    stop_timeout_s: float = 5.0,
    boot: int | None = None,
    check_readings: bool = True,
) -> Fleet:
    """Edge agent runtimes for ``plan``: each device a model behind a simulated driver.

    ``check_readings=False`` skips the agent's contract check of every payload (see
    ``edge.agent``), for benchmarks that use the fleet as a load generator."""
    boot = wall_ms() if boot is None else boot
    interval_ms = max(1, round(plan.interval_s * 1000))
    runtimes = []
    for a in plan.agents:
        core = Agent(
            site=a.site,
            agent=a.agent,
            devices=[PollPlan(d.device, interval_ms) for d in a.devices],
            boot=boot,
            max_readings_per_message=max_readings_per_message,
            check_readings=check_readings,
        )
        drivers: dict[str, Driver] = {
            d.device: SimulatedDriver(MODELS[d.kind](d.device, d.seed)) for d in a.devices
        }
        runtimes.append(
            AgentRuntime(core, drivers, mqtt, on_acked=on_acked, max_queued_messages=max_queued_messages)
        )
    return Fleet(plan, runtimes, stop_timeout_s=stop_timeout_s)


def run(settings: SimSettings, stop_event: threading.Event, *, on_acked: OnAcked | None = None) -> None:
    """Entry point of ``vigil sim``: run the configured fleet until ``stop_event`` is set or
    ``duration_s`` has passed (0: until stopped). Raises SimError for an impossible plan."""
    plan = plan_fleet(
        seed=settings.seed,
        devices=settings.devices,
        sites=settings.sites,
        agents_per_site=settings.agents_per_site,
        kinds=settings.kinds,
        interval_s=settings.interval_s,
        site_ids=settings.site_ids,
    )
    fleet = build_fleet(
        plan,
        settings.mqtt,
        on_acked=on_acked,
        max_readings_per_message=settings.max_readings_per_message,
        stop_timeout_s=settings.stop_timeout_s,
    )
    log.info(
        "simulated fleet: %d devices on %d agents in sites %s, every %.3g s, seed %d, broker %s:%d",
        len(plan.devices), len(plan.agents), ", ".join(plan.sites), plan.interval_s, plan.seed,
        settings.mqtt.host, settings.mqtt.port,
    )
    if settings.duration_s <= 0:
        fleet.run(stop_event)
        return
    done = threading.Event()

    def stop_after_duration() -> None:
        stop_event.wait(settings.duration_s)
        done.set()

    threading.Thread(target=stop_after_duration, name="vigil-sim-duration", daemon=True).start()
    fleet.run(done)
