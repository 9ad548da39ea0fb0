"""Settings of the analytics role, read once at start with ``AnalyticsSettings.load()``.

Environment variables start with ``VIGIL_ANALYTICS_`` (nested with ``__``, e.g.
``VIGIL_ANALYTICS_MQTT__PORT``, ``VIGIL_ANALYTICS_DETECT__Z_FIRE``); the config file's
table is ``[analytics]``. ``DetectSettings`` is also what the offline replay uses, so one
configuration serves the fleet and the benchmarks alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from wire import MqttSettings, RoleSettings
from wire.payloads import Severity


class Rule(BaseModel):
    """A threshold rule for one metric of one equipment kind (``*`` for any kind).

    It fires when the value stays above ``high`` (or below ``low``) for ``min_duration_s``
    and clears only once back inside by ``hysteresis``; ``max_rate_per_min`` fires on a
    change faster than that between two readings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "*"
    metric: str
    high: float | None = None
    low: float | None = None
    hysteresis: float = Field(0.0, ge=0)
    min_duration_s: float = Field(0.0, ge=0)
    max_rate_per_min: float | None = Field(None, gt=0)
    severity: Severity = "major"

    @model_validator(mode="after")
    def _something(self) -> Rule:
        if self.high is None and self.low is None and self.max_rate_per_min is None:
            raise ValueError(f"rule for {self.kind}/{self.metric} sets none of high, low, max_rate_per_min")
        if self.high is not None and self.low is not None and self.low >= self.high:
            raise ValueError(f"rule for {self.kind}/{self.metric}: low {self.low} is not below "
                             f"high {self.high}")
        return self


# Limits a building's equipment should not cross (ISO 10816 zone C starts at 4.5 mm/s for
# pumps of this size; bearing grease degrades above ~90 degC). Sites add their own.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(kind="pump", metric="vibration_mm_s", high=4.5, hysteresis=0.5, min_duration_s=60),
    Rule(kind="pump", metric="bearing_temp_c", high=90.0, hysteresis=3.0, min_duration_s=120),
    Rule(kind="chiller", metric="chw_supply_c", high=12.0, hysteresis=0.5, min_duration_s=300,
         severity="minor"),
    Rule(kind="ahu", metric="filter_dp_pa", high=400.0, hysteresis=20.0, min_duration_s=600,
         severity="minor"),
    Rule(kind="space_sensor", metric="co2_ppm", high=1500.0, hysteresis=100.0, min_duration_s=600,
         severity="warning"),
    Rule(kind="space_sensor", metric="temp_c", max_rate_per_min=3.0, severity="minor"),
)

# Physical ranges by metric-name pattern: a reading outside is a lying sensor.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "*_pct": (0.0, 100.0),
    "*_c": (-60.0, 200.0),
    "*_ppm": (0.0, 20_000.0),
    "*_lps": (0.0, 1e6),
    "*_mm_s": (0.0, 1e3),
    "*_a": (0.0, 1e5),
    "*_kw": (0.0, 1e6),
    "*_v": (0.0, 1e5),
    "power_factor": (-1.0, 1.0),
}


class EventRule(BaseModel):
    """What a device event (``vigil/v1/{site}/{agent}/{device}/event``) becomes.

    The first rule whose ``kind`` (equipment kind) and ``event`` (event kind) patterns
    (fnmatch) match decides. ``anomaly``: it opens one at once, with the event's own
    severity unless ``severity`` is set; repeats while it is open join it. It clears when a
    restoring event arrives (``<event>_restored``, ``_cleared``, ``_normal``, ``_ended``,
    ``_ok``), when ``clear_metric`` reads one of ``clear_values`` at least ``min_hold_s``
    after the event, or when the event has been quiet for ``clear_after_s`` (None: never by
    time: a fire alarm stays open until the panel says normal). ``ignore``: counted and
    dropped (the state rules judge it instead). Events less severe than ``min_severity`` (by the event's own
    severity) are ignored too: an access panel's ``info`` events are its normal traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "*"
    event: str = "*"
    action: Literal["anomaly", "ignore"] = "anomaly"
    min_severity: Severity = "warning"
    severity: Severity | None = None
    fault: str | None = None  # the anomaly's fault name; default the event kind
    clear_metric: str | None = None
    clear_values: tuple[str, ...] = ()
    # A panel's normal state releases the event only this long after its last occurrence: a
    # forced door that is secured again a second later must still reach a person on the
    # console (access-control systems latch such alarms); a restoring event releases it at once.
    min_hold_s: float = Field(300.0, ge=0)
    clear_after_s: float | None = Field(900.0, ge=0)

    @model_validator(mode="after")
    def _clear_pair(self) -> EventRule:
        if (self.clear_metric is None) != (not self.clear_values):
            raise ValueError(f"event rule {self.kind}/{self.event}: clear_metric and clear_values go "
                             "together (the metric, and the values that mean normal)")
        return self


class StateRule(BaseModel):
    """A boolean or state metric that must not hold one of ``values`` (compared as text:
    ``true``/``false`` for booleans, the state name otherwise) for ``min_duration_s``: a
    door held open, a fire panel in trouble, a pump that should run but does not. It opens
    an anomaly named ``fault`` (joining an event's anomaly of the same name) and clears
    once the metric reads any other value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = "*"
    metric: str
    values: tuple[str, ...] = Field(min_length=1)
    min_duration_s: float = Field(0.0, ge=0)
    severity: Severity = "major"
    fault: str
    text: str  # what it means, for the sentence: "is held open"


# Security and life-safety events: what clears each, by the state metric the same panel
# reports (the simulators' and most access/fire panels' vocabulary). A door held open by a
# visitor raises an event at 30 s; the state rule below only calls it a problem at 2 min.
DEFAULT_EVENT_RULES: tuple[EventRule, ...] = (
    EventRule(event="door_held_open", action="ignore"),
    EventRule(event="door_forced", clear_metric="state", clear_values=("secure", "unlocked", "open"),
              clear_after_s=600.0),
    EventRule(event="fire_alarm", severity="critical", clear_metric="alarm", clear_values=("false",),
              clear_after_s=None),
    EventRule(event="fire_trouble", clear_metric="trouble", clear_values=("false",), clear_after_s=None),
    EventRule(event="fire_supervisory", clear_metric="supervisory", clear_values=("false",),
              clear_after_s=None),
    EventRule(event="water_leak", clear_metric="leak", clear_values=("false",), clear_after_s=None),
    EventRule(event="camera_offline", clear_metric="online", clear_values=("true",)),
    EventRule(event="lift_out_of_service", clear_metric="in_service", clear_values=("true",)),
    EventRule(event="tamper", clear_after_s=1800.0),
    EventRule(),  # any other event: an anomaly with the event's severity, cleared after 15 quiet min
)

DEFAULT_STATE_RULES: tuple[StateRule, ...] = (
    StateRule(kind="door", metric="state", values=("held_open",), min_duration_s=120, severity="minor",
              fault="door_held_open", text="is held open"),
    StateRule(kind="door", metric="state", values=("forced",), fault="door_forced",
              text="was forced open"),
    StateRule(kind="fire_panel", metric="alarm", values=("true",), severity="critical",
              fault="fire_alarm", text="is in fire alarm"),
    StateRule(kind="fire_panel", metric="trouble", values=("true",), fault="fire_trouble",
              text="reports trouble"),
    StateRule(kind="fire_panel", metric="supervisory", values=("true",), severity="minor",
              fault="fire_supervisory", text="reports a supervisory condition"),
    StateRule(kind="leak_sensor", metric="leak", values=("true",), fault="water_leak",
              text="detects water"),
    StateRule(kind="camera", metric="online", values=("false",), min_duration_s=60,
              fault="camera_offline", text="is offline"),
    StateRule(kind="camera", metric="recording", values=("false",), min_duration_s=120,
              fault="recording_stopped", text="is not recording"),
    StateRule(kind="lift", metric="in_service", values=("false",), min_duration_s=60,
              fault="lift_out_of_service", text="is out of service"),
    # chilled-water pumps run around the clock in these buildings; a site with scheduled
    # pumps replaces this rule
    StateRule(kind="pump", metric="running", values=("false",), min_duration_s=300, severity="minor",
              fault="pump_stopped", text="is not running"),
)


class DetectSettings(BaseModel):
    """How the streaming detectors and the fusion behave; the same for the fleet and replays."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # statistics: robust baselines
    warmup_readings: int = Field(30, ge=2, le=1_000_000)
    baseline_readings: int = Field(600, ge=10, le=10_000_000)  # EW memory of the baseline
    z_fire: float = Field(6.0, gt=0)  # deviations (robust sd) at which a reading fires
    huber_k: float = Field(4.0, gt=0)  # an update moves the baseline at most this many sd
    rel_sd_floor: float = Field(0.001, ge=0)  # sd is at least this share of |baseline|
    seasonal_min_days: float = Field(2.0, ge=0)  # a season bucket is used after this much history
    seasonal_min_count: int = Field(8, ge=1)
    utc_offset_h: float = Field(0.0, ge=-14, le=14)  # local time of the sites, for time of day
    # a lasting shift of a series' average (analytics.shift: an EWMA control chart)
    shift_lambda: float = Field(0.1, gt=0, le=1)  # weight of the newest reading in the chart
    shift_limit: float = Field(4.0, gt=0)  # the chart's own healthy sd at which it fires
    # it arms after this many readings and this much time: a day, so its own spread has seen
    # the daily rhythm before the baseline knows it (the 8 a.m. start is no shift)
    shift_warmup_readings: int = Field(400, ge=2)
    shift_warmup_s: float = Field(86_400.0, ge=0)
    shift_z_clip: float = Field(3.0, gt=0)  # one reading moves the chart by at most λ x this
    shift_min_sd: float = Field(0.0, ge=0)  # ...and the shift is at least this many sd of a reading
    # a change of behaviour (analytics.likelihood): the long-run sd of surprise at which it
    # fires; on white noise about once in 15,000 readings at 3.5, on heavy-tailed (Student t3)
    # noise once in 2,000 (tests measure both)
    surprise_limit: float = Field(3.5, gt=0)
    surprise_min_sd: float = Field(0.05, gt=0)  # floor of that sd (log units of the error scale)
    surprise_refractory_readings: int = Field(100, ge=0, le=30_000)  # silence after firing
    # its usual must cover a day (the daily cycle, the 8 a.m. start) and enough readings
    # before it may fire; HTM holds its likelihood back for a probation period likewise
    surprise_warmup_readings: int = Field(300, ge=2)
    surprise_warmup_s: float = Field(86_400.0, ge=0)
    # sensor health
    stuck_readings: int = Field(12, ge=2)
    stuck_min_s: float = Field(300.0, ge=0)
    spike_k: float = Field(12.0, gt=0)
    noisy_ratio: float = Field(5.0, gt=1)
    late_factor: float = Field(5.0, gt=1)  # late: silent for this many usual intervals...
    late_min_s: float = Field(120.0, ge=0)  # ...and at least this long
    ranges: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(DEFAULT_RANGES))
    rules: tuple[Rule, ...] = DEFAULT_RULES
    # fusion
    open_evidence: float = Field(1.0, gt=0)  # summed scores of consecutive firing readings
    # an anomaly clears after clear_readings quiet readings and clear_after_s, or sooner, after
    # clear_after_intervals of the device's usual interval: 2 min is 120 readings of a 1-s stream
    clear_after_s: float = Field(120.0, ge=0)
    clear_after_intervals: float = Field(10.0, ge=0)
    clear_readings: int = Field(3, ge=1)
    update_min_s: float = Field(60.0, ge=0)
    # multivariate models
    models: bool = True
    model_warmup_rows: int = Field(500, ge=20)
    model_min_span_s: float = Field(86_400.0, ge=0)  # the first fit's rows span at least this
    model_retrain_rows: int = Field(20_000, ge=0)  # 0: never retrain
    model_variance: float = Field(0.9, gt=0, lt=1)
    model_fire_quantile: float = Field(0.995, gt=0.5, lt=1)
    model_fire_margin: float = Field(1.5, gt=0)
    # events, booleans and states (analytics.events)
    event_rules: tuple[EventRule, ...] = DEFAULT_EVENT_RULES
    state_rules: tuple[StateRule, ...] = DEFAULT_STATE_RULES


class AnalyticsSettings(RoleSettings):
    """Where telemetry comes from, where anomalies go, and how detection behaves."""

    section: ClassVar[str] = "analytics"
    model_config = SettingsConfigDict(env_prefix="VIGIL_ANALYTICS_")

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    client_id: str = "vigil-analytics"
    # Analytics keeps per-device state, so a device must stay on one worker. With EMQX, its
    # ``hash_topic`` shared-subscription strategy does that for the group ``share_group``.
    # With Mosquitto (round-robin groups), run N workers with worker_count=N and
    # worker_index=0..N-1: each hears all telemetry, unshared, and keeps the devices whose
    # stable hash is its index. None: no group (one worker, tests, the demo).
    share_group: str | None = "analytics"
    worker_count: int = Field(1, ge=1, le=1024)
    worker_index: int = Field(0, ge=0, le=1023)
    sites: tuple[str, ...] = ()  # empty: every site
    database_url: str = "sqlite:///var/vigil.db"
    model_dir: Path | None = None  # also export each trained model here as a pickle (optional)
    # learned state (baselines, open anomalies) is snapshotted here every snapshot_interval_s
    # and at stop, and taken back at start; None: every start learns afresh. Off by default
    # so that tests and one-off runs never pick up another run's state; set it in production
    # (e.g. var/analytics), the demo does.
    state_dir: Path | None = None
    snapshot_interval_s: float = Field(600.0, gt=0)
    # multivariate models, trained on healthy history from the store (when the role has one)
    model_history_days: float = Field(14.0, gt=0, le=366)
    model_step_s: float = Field(300.0, gt=0)  # one training row per device per step
    model_first_train_s: float = Field(60.0, ge=0)  # after start, once devices are known
    model_retrain_s: float = Field(86_400.0, gt=0)  # then this often
    model_retry_s: float = Field(3_600.0, gt=0)  # ...or this soon while a kind has no model yet
    tick_s: float = Field(5.0, gt=0, le=3600)  # how often late data and clears are checked
    publish_qos: int = Field(1, ge=0, le=2)
    stats_interval_s: float = Field(60.0, ge=0)
    detect: DetectSettings = Field(default_factory=DetectSettings)

    @model_validator(mode="after")
    def _index_in_range(self) -> AnalyticsSettings:
        if self.worker_index >= self.worker_count:
            raise ValueError(f"worker_index {self.worker_index} must be below worker_count "
                             f"{self.worker_count} (workers are numbered from 0)")
        return self
