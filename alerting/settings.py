"""Settings of the alerting role (``vigil alerting``), read once at start.

Environment variables start with ``VIGIL_ALERTING_`` (nested with ``__``, e.g.
``VIGIL_ALERTING_MQTT__PORT``); the config file's table is ``[alerting]``. Who is paged and
how (people, rotations, policies, routes) lives in the on-call file ``oncall_file``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from wire import MqttSettings, RoleSettings, check_id

# Values people leave in from examples; a link signed with one of them can be forged.
PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "change_me", "secret", "password", "demo",
                                 "vigil", "test", "example", "xxx", "todo"})


class AlertingSettings(RoleSettings):
    section: ClassVar[str] = "alerting"
    model_config = SettingsConfigDict(env_prefix="VIGIL_ALERTING_")

    mqtt: MqttSettings = MqttSettings()
    # The relational database (shared with the API, which shows incidents and takes acks).
    database_url: str = "sqlite:///var/vigil.db"
    # The on-call file: people, channels, rotations, policies, routes (README, "Alerting").
    oncall_file: Path | None = None
    client_id: str = Field("vigil-alerting-1", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    sites: tuple[str, ...] = ()  # only these sites; empty: every site
    demo: bool = False  # accepts a placeholder signing secret (declared first: checked before it)
    # Keys the HMAC of ack/resolve links. At least 16 characters, never a placeholder
    # (unless demo is true): generate one with `python -c "import secrets; print(secrets.token_urlsafe(32))"`.
    signing_secret: SecretStr = SecretStr("change-me")
    # Where phones reach the API, for the links in messages, e.g. https://vigil.example.com.
    public_base_url: str = "http://127.0.0.1:8000"
    link_ttl_s: float = Field(4 * 3600, gt=0, le=30 * 86400)
    # The broker unreachable this long is itself an incident (and folds what is beneath it).
    broker_down_after_s: float = Field(15.0, gt=0, le=3600)
    # After a down agent or broker recovers, device-offline alarms are still folded into
    # its incident for this long, while the devices report back.
    inhibit_hold_s: float = Field(300.0, ge=0, le=86400)
    # How often acks/resolves from the API, silences and overrides are picked up.
    sync_interval_s: float = Field(1.0, gt=0, le=60)
    retry_s: float = Field(2.0, gt=0, le=600)
    cycle_s: float = Field(30.0, gt=0, le=3600)
    cycle_max_s: float = Field(300.0, gt=0, le=86400)
    give_up_s: float = Field(86400.0, gt=0, le=30 * 86400)
    send_workers: int = Field(4, ge=1, le=64)
    # Learn which devices sit under which agent from telemetry topics (QoS 0, topic only).
    learn_hierarchy: bool = True

    @field_validator("sites")
    @classmethod
    def _valid_sites(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for site in v:
            check_id("site", site)
        return v

    @field_validator("public_base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. https://vigil.example.com")
        return v.rstrip("/")

    @field_validator("signing_secret")
    @classmethod
    def _secret(cls, v: SecretStr, info: ValidationInfo) -> SecretStr:
        secret = v.get_secret_value()
        if not info.data.get("demo") and (secret.strip().lower() in PLACEHOLDER_SECRETS or len(secret) < 16):
            raise ValueError(
                "a placeholder or shorter than 16 characters; set it to a random value, e.g. the "
                "output of `python -c \"import secrets; print(secrets.token_urlsafe(32))\"` "
                "(a link signed with a known secret can be forged)")
        return v
