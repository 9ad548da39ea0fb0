"""``vigil sim``: a configured fleet, its faults and its ground truth, run until stopped.

The composition of ``simulators.fleet`` (the fleet and its clock), ``simulators.scenario``
(faults from a file or at random, and the ground truth written about them) and the
settings of the role.

Invariants:
- everything that can be wrong with the settings, the plan or the scenario is raised as
  ``SimError`` before any agent connects;
- the ground truth is written before the fleet starts (a crash leaves the plan) and
  rewritten when it stops, truncated to what the run reached.
"""

from __future__ import annotations

import logging
import threading

from edge.runtime import OnAcked, wall_ms
from simulators.faults import Fault
from simulators.fleet import FleetPlan, OnProgress, Progress, SimClock, build_fleet, plan_fleet
from simulators.scenario import load_scenario, random_faults, truncate, write_ground_truth
from simulators.settings import SimSettings

log = logging.getLogger(__name__)


def plan_faults(settings: SimSettings, plan: FleetPlan, start_ms: int) -> list[Fault]:
    """The faults of a ``vigil sim`` run: its scenario file's, and random ones."""
    placements = plan.placements()
    faults: list[Fault] = []
    rate, seed = settings.fault_rate_per_day, settings.fault_seed
    if settings.scenario is not None:
        scenario = load_scenario(settings.scenario, placements, start_ms)
        faults.extend(scenario.faults)
        if scenario.random is not None:
            rate = scenario.random.rate_per_day
            seed = scenario.random.seed if scenario.random.seed is not None else seed
    horizon_s = settings.fault_horizon_h * 3600.0
    if settings.duration_s > 0:
        horizon_s = min(horizon_s, settings.duration_s * settings.speed)
    faults.extend(random_faults(placements, seed=settings.seed if seed is None else seed,
                                rate_per_day=rate, start_ms=start_ms, horizon_s=horizon_s))
    faults.sort(key=lambda f: (f.start_ms, f.device))
    return faults


def run(
    settings: SimSettings,
    stop_event: threading.Event,
    *,
    on_acked: OnAcked | None = None,
    on_progress: OnProgress | None = None,
) -> None:
    """Entry point of ``vigil sim``: run the configured fleet until ``stop_event`` is set or
    ``duration_s`` (wall seconds) has passed (0: until stopped). Raises SimError for an
    impossible plan or a bad scenario, before connecting."""
    plan = plan_fleet(
        seed=settings.seed,
        devices=settings.devices,
        sites=settings.sites,
        agents_per_site=settings.agents_per_site,
        kinds=settings.kinds,
        interval_s=settings.interval_s,
        site_ids=settings.site_ids,
    )
    start = None if settings.start is None else int(settings.start.timestamp() * 1000)
    if start is None and settings.speed > 1:
        if settings.duration_s > 0:
            # Replay the past so the run ends now: simulated time never runs ahead of the
            # wall clock, where ingest would refuse it (VIGIL_INGEST_TS_MAX_AHEAD_S).
            start = wall_ms() - round(settings.duration_s * (settings.speed - 1) * 1000)
        else:
            log.warning("speed %g from now: simulated time runs ahead of the wall clock, and ingest "
                        "refuses readings stamped more than VIGIL_INGEST_TS_MAX_AHEAD_S (1 h) ahead; "
                        "set VIGIL_SIM_START in the past or VIGIL_SIM_DURATION_S", settings.speed)
    clock = SimClock(start, settings.speed)
    faults = plan_faults(settings, plan, clock.start_ms)
    about = {"seed": settings.seed, "start_ms": clock.start_ms, "speed": settings.speed,
             "fault_rate_per_day": settings.fault_rate_per_day,
             "scenario": str(settings.scenario) if settings.scenario else None}
    if settings.ground_truth is not None:
        write_ground_truth(settings.ground_truth, faults, **about)
    fleet = build_fleet(
        plan,
        settings.mqtt,
        on_acked=on_acked,
        max_readings_per_message=settings.max_readings_per_message,
        max_queued_messages=settings.max_queued_messages,
        max_inflight=settings.max_inflight,
        stop_timeout_s=settings.stop_timeout_s,
        check_readings=settings.check_readings,
        faults=faults,
        clock=clock,
        tick_s=settings.tick_s,
    )
    log.info(
        "simulated fleet: %d devices on %d agents in sites %s, every %.3g s at speed %g, seed %d, "
        "%d fault(s) planned%s, broker %s:%d",
        len(plan.devices), len(plan.agents), ", ".join(plan.sites), plan.interval_s, settings.speed,
        plan.seed, len(faults),
        f" (ground truth in {settings.ground_truth})" if settings.ground_truth else "",
        settings.mqtt.host, settings.mqtt.port,
    )
    if on_progress is None and settings.progress_s > 0:
        on_progress = _log_progress
    done = stop_event
    if settings.duration_s > 0:
        done = threading.Event()

        def stop_after_duration() -> None:
            stop_event.wait(settings.duration_s)
            done.set()

        threading.Thread(target=stop_after_duration, name="vigil-sim-duration", daemon=True).start()
    try:
        fleet.run(done, on_progress=on_progress, progress_s=settings.progress_s or 10.0)
    finally:
        if settings.ground_truth is not None and fleet.ended_ms is not None:
            # Only what the run reached: a fault planned after the stop was never injected.
            write_ground_truth(settings.ground_truth, truncate(faults, fleet.ended_ms),
                               **about, end_ms=fleet.ended_ms)


def _log_progress(p: Progress) -> None:
    log.info("%s", p.line())
