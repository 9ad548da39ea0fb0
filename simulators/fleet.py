"""A fleet of simulated devices, published by real edge agents through the edge runtime.

``plan_fleet`` decides, from a seed and a few counts, which sites, agents and devices
exist (pure: same arguments, same plan); ``build_fleet`` turns a plan (and the faults to
inject) into edge agent runtimes whose drivers are ``simulators.models``, every device of
a site in one ``Building``; and ``Fleet.run`` drives them all from one thread on a
simulated clock until a stop event is set, reporting its progress. ``vigil sim`` itself
(settings, faults, ground truth) is ``simulators.runner``.

Naming: sites ``tower-a``, ``mall-b``, ``estate-c``, ``tower-d``...; agents ``b<site
number>-gw<n>`` (``b1-gw1``); devices ``<kind>-<nn>`` numbered per kind across the fleet
(``pump-03``), so a device id alone names one device in the whole fleet.

Invariants:
- a device's model seed depends only on the fleet seed and the device id, and a site's
  building only on the fleet seed and the site's position, so the same device reads the
  same whatever the site ids (tests give each run its own);
- devices are split over sites, then over each site's agents, in contiguous runs of the
  kind cycle, so every site and every agent gets a mix of kinds;
- time: the fleet's clock starts at ``start_ms`` (default: now) and runs ``speed`` times
  faster than the wall clock; every reading and event is stamped with it, and polls are
  scheduled in it (a 1 s interval at speed 60 is 60 polls of each device per wall second);
- polls run in ticks at most every ``tick_s`` of wall time: every device due by then is
  read in the same tick (stamped with the tick's time), so a large fleet costs one pass
  over its agents per tick, not one per device;
- what was published is observable exactly: pass ``on_acked`` (e.g. a ``Recorder``) and
  it receives every message the broker acknowledged, with the typed message sent.
"""

from __future__ import annotations

import hashlib
import logging
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.agent import Agent, PollPlan, Publication
from edge.drivers import Driver
from edge.runtime import AgentRuntime, AgentStats, OnAcked, stop_all, wall_ms
from simulators.base import Building, DeviceModel, stable_seed
from simulators.errors import SimError
from simulators.faults import Fault
from simulators.models import MODELS
from simulators.scenario import Placement
from wire import Event, MqttSettings, Status, Telemetry, WireError, check_id

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
    building_seed: int = 0


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

    def placements(self) -> list[Placement]:
        return [Placement(a.site, a.agent, d.device, d.kind) for a in self.agents for d in a.devices]


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
        building = stable_seed("site", seed, s)
        for a, (a_lo, a_hi) in enumerate(_split(len(site_devices), agents_per_site)):
            if a_hi > a_lo:  # an agent with no devices would only publish its status
                agents.append(AgentPlan(names[s], f"b{s + 1}-gw{a + 1}", tuple(site_devices[a_lo:a_hi]),
                                        building))
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

    def events(self) -> list[tuple[str, Event]]:
        return [(p.topic, p.message) for p in self.publications() if isinstance(p.message, Event)]

    def statuses(self) -> list[tuple[str, Status]]:
        return [(p.topic, p.message) for p in self.publications() if isinstance(p.message, Status)]

    def readings(self) -> int:
        return sum(p.readings for p in self.publications())


class SimClock:
    """Simulated epoch ms: ``start_ms`` (default: the wall clock then) at the first call to
    ``now``, then ``speed`` times the wall clock's pace."""

    def __init__(self, start_ms: int | None = None, speed: float = 1.0) -> None:
        if speed <= 0:
            raise SimError(f"speed must be positive, got {speed}")
        self.speed = speed
        self._start_ms = start_ms
        self._wall0: int | None = None

    def now(self) -> int:
        wall = wall_ms()
        if self._wall0 is None:
            self._wall0 = wall
            if self._start_ms is None:
                self._start_ms = wall
        assert self._start_ms is not None
        return self._start_ms + round((wall - self._wall0) * self.speed)

    @property
    def start_ms(self) -> int:
        """When the simulation starts (fixed by the first ``now`` if not given)."""
        if self._start_ms is None:
            self.now()
        assert self._start_ms is not None
        return self._start_ms


@dataclass(frozen=True, slots=True)
class Progress:
    """How the fleet is doing over the last reporting window."""

    sim_ms: int
    wall_s: float  # since the fleet started
    devices: int
    polls_per_s: float
    readings_per_s: float  # acknowledged by the broker
    events: int  # raised by the models, since the start
    lag_p99_s: float  # of polls, wall seconds behind their schedule
    lag_max_s: float
    unacked: int
    poll_failures: int  # since the start (offline and comm_loss faults show here)
    publish_failures: int
    skipped_polls: int

    def line(self) -> str:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.sim_ms / 1000))
        return (f"sim {t}Z | {self.devices} devices | {self.polls_per_s:,.0f} polls/s | "
                f"{self.readings_per_s:,.0f} readings/s acked | lag p99 {self.lag_p99_s:.3f} s "
                f"(max {self.lag_max_s:.3f}) | unacked {self.unacked} | events {self.events} | "
                f"failed polls {self.poll_failures} | dropped {self.publish_failures} | "
                f"skipped {self.skipped_polls}")


OnProgress = Callable[[Progress], None]


class Fleet:
    """Agent runtimes of a planned fleet, driven together by one thread. Runs once."""

    def __init__(
        self,
        plan: FleetPlan,
        runtimes: Sequence[AgentRuntime],
        *,
        stop_timeout_s: float = 5.0,
        clock: SimClock | None = None,
        tick_s: float = 0.02,
        faults: Sequence[Fault] = (),
    ) -> None:
        self.plan = plan
        self.runtimes = tuple(runtimes)
        self.stop_timeout_s = stop_timeout_s
        self.clock = clock or SimClock()
        self.tick_s = tick_s
        self.faults = tuple(faults)
        self.models: tuple[DeviceModel, ...] = tuple(
            d for rt in self.runtimes for d in rt.drivers.values() if isinstance(d, DeviceModel)
        )
        # Wall seconds behind schedule, per tick that polled: for take_lags, and for progress.
        self._lags: deque[float] = deque(maxlen=200_000)
        self._window_lags: deque[float] = deque(maxlen=200_000)
        self._lag_lock = threading.Lock()
        self.started = threading.Event()
        self.ended_ms: int | None = None

    def run(
        self,
        stop_event: threading.Event,
        *,
        on_progress: OnProgress | None = None,
        progress_s: float = 10.0,
    ) -> None:
        """Connect every agent and publish until ``stop_event`` is set; then stop gracefully."""
        started: list[AgentRuntime] = []
        clock, speed = self.clock, self.clock.speed
        try:
            now = clock.now()
            for rt in self.runtimes:
                rt.start(now)
                started.append(rt)
            self.started.set()
            wall0 = last_report = time.monotonic()
            last = self._totals()
            while not stop_event.is_set():
                tick_wall = time.monotonic()
                now = clock.now()
                worst = -1
                next_due: int | None = None
                for rt in self.runtimes:
                    due = rt.next_due_ms()
                    if due is not None and due <= now:
                        worst = max(worst, now - due)
                        rt.poll(now)
                        due = rt.next_due_ms()
                    if due is not None and (next_due is None or due < next_due):
                        next_due = due
                if worst >= 0:
                    lag_s = worst / speed / 1000.0
                    with self._lag_lock:
                        self._lags.append(lag_s)
                        self._window_lags.append(lag_s)
                if on_progress is not None and tick_wall - last_report >= progress_s:
                    last = self._report(on_progress, last, tick_wall - last_report, tick_wall - wall0)
                    last_report = tick_wall
                wait_s = 1.0 if next_due is None else (next_due - clock.now()) / speed / 1000.0
                # At least a tick, so the devices due soon are read together; at most a second,
                # so a stop or a stepped wall clock is noticed.
                wait_s = min(max(wait_s, self.tick_s - (time.monotonic() - tick_wall)), 1.0)
                if wait_s > 0:
                    stop_event.wait(wait_s)
        finally:
            self.ended_ms = clock.now()
            stop_all(started, clock.now(), self.stop_timeout_s)

    def _totals(self) -> tuple[int, int]:
        polls = readings = 0
        for s in self.stats():
            polls += s.polls
            readings += s.readings_acked
        return polls, readings

    def _report(self, on_progress: OnProgress, last: tuple[int, int], window_s: float,
                wall_s: float) -> tuple[int, int]:
        stats = self.stats()
        polls = sum(s.polls for s in stats)
        readings = sum(s.readings_acked for s in stats)
        with self._lag_lock:
            lags = list(self._window_lags)
            self._window_lags.clear()
        on_progress(Progress(
            sim_ms=self.clock.now(), wall_s=wall_s, devices=len(self.plan.devices),
            polls_per_s=(polls - last[0]) / window_s, readings_per_s=(readings - last[1]) / window_s,
            events=sum(m.events_raised for m in self.models),
            lag_p99_s=percentile(lags, 0.99), lag_max_s=max(lags, default=0.0),
            unacked=sum(s.unacked for s in stats), poll_failures=sum(s.poll_failures for s in stats),
            publish_failures=sum(s.publish_failures for s in stats),
            skipped_polls=sum(s.skipped_polls for s in stats),
        ))
        return polls, readings

    def take_lags(self) -> list[float]:
        """Lags recorded since the last call: per tick that polled, how far (wall seconds)
        the most overdue device was behind its schedule."""
        with self._lag_lock:
            lags = list(self._lags)
            self._lags.clear()
        return lags

    def wait_online(self, timeout_s: float) -> bool:
        """True once every agent is connected (its online status is published)."""
        deadline = time.monotonic() + timeout_s
        return all(rt.online.wait(max(0.0, deadline - time.monotonic())) for rt in self.runtimes)

    def stats(self) -> list[AgentStats]:
        return [rt.stats() for rt in self.runtimes]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_fleet(
    plan: FleetPlan,
    mqtt: MqttSettings,
    *,
    on_acked: OnAcked | None = None,
    max_readings_per_message: int = 500,
    max_queued_messages: int = 10_000,
    max_inflight: int = 100,
    stop_timeout_s: float = 5.0,
    boot: int | None = None,
    check_readings: bool = True,
    faults: Sequence[Fault] = (),
    clock: SimClock | None = None,
    tick_s: float = 0.02,
) -> Fleet:
    """Edge agent runtimes for ``plan``: each device a model, given its faults.

    ``check_readings=False`` skips the agent's contract check of every payload (see
    ``edge.agent``), for benchmarks that use the fleet as a load generator."""
    boot = wall_ms() if boot is None else boot
    interval_ms = max(1, round(plan.interval_s * 1000))
    by_device: dict[str, list[Fault]] = {}
    for f in faults:
        by_device.setdefault(f.device, []).append(f)
    known = {d.device for d in plan.devices}
    stray = sorted(set(by_device) - known)
    if stray:
        raise SimError(f"faults name devices that are not in the fleet: {', '.join(stray[:10])}")
    buildings: dict[str, Building] = {}
    runtimes = []
    for a in plan.agents:
        building = buildings.setdefault(a.site, Building(a.building_seed))
        core = Agent(
            site=a.site,
            agent=a.agent,
            devices=[PollPlan(d.device, interval_ms, kind=d.kind) for d in a.devices],
            boot=boot,
            max_readings_per_message=max_readings_per_message,
            check_readings=check_readings,
        )
        drivers: dict[str, Driver] = {
            d.device: MODELS[d.kind](d.device, d.seed, building=building, faults=by_device.get(d.device, ()))
            for d in a.devices
        }
        runtimes.append(AgentRuntime(core, drivers, mqtt, on_acked=on_acked,
                                     max_queued_messages=max_queued_messages, max_inflight=max_inflight))
    return Fleet(plan, runtimes, stop_timeout_s=stop_timeout_s, clock=clock, tick_s=tick_s, faults=faults)

