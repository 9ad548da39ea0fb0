"""Settings of the API role, read once at start with ``ApiSettings.load()`` and passed down.

Environment variables start with ``VIGIL_API_`` (nested values with ``__``, e.g.
``VIGIL_API_STORE__INFLUX_URL``); the config file's table is ``[api]`` (``[api.store]``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from ingest.store import StoreSettings
from wire import MqttSettings, RoleSettings

# Values people leave in from examples (the alerting settings refuse the same ones).
PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "change_me", "secret", "password", "demo",
                                 "vigil", "test", "example", "xxx", "todo", "admin", "admin123",
                                 "password123", "changeit"})


class ApiSettings(RoleSettings):
    """Where the API listens, which store it reads, and the limits that keep one request cheap."""

    section: ClassVar[str] = "api"
    model_config = SettingsConfigDict(env_prefix="VIGIL_API_")

    host: str = "127.0.0.1"
    # 0 asks the OS for a free port; the port actually bound is logged at start.
    port: int = Field(8000, ge=0, le=65535)
    store: StoreSettings = Field(default_factory=StoreSettings)
    # The relational database (assets, work orders, anomalies, alerts): SQLite by default,
    # PostgreSQL in production, e.g. postgresql+psycopg://vigil@127.0.0.1/vigil.
    database_url: str = "sqlite:///var/vigil.db"
    # A device whose newest reading is older than this is shown "stale" even when its
    # agent says it is online: the agent is up but the device (or its driver) is silent.
    offline_after_s: float = Field(120.0, gt=0, le=30 * 86400)
    # A series request may ask for at most this many buckets; past it the reply is a 422
    # that suggests a step, not a slow query and a huge response.
    max_series_buckets: int = Field(10_000, ge=1, le=1_000_000)
    # With no step given, the step is chosen so the range gives at most about this many.
    target_series_buckets: int = Field(500, ge=1, le=100_000)
    max_readings: int = Field(100_000, ge=1, le=10_000_000)
    max_dead_letters: int = Field(1_000, ge=1, le=100_000)
    # Dead-letter payloads are shown up to this many bytes; the rest is cut and flagged.
    dead_letter_payload_bytes: int = Field(4_096, ge=16, le=1 << 20)
    access_log: bool = False

    # -- security (README, "Security") ---------------------------------------------------------
    # "production": /docs and /openapi.json need a login and placeholder secrets are refused.
    # "demo": docs are open and the demo's known passwords are accepted; only `vigil demo` sets it.
    mode: Literal["production", "demo"] = "production"
    # On a database with no user yet, an admin of this name is created at start with this
    # password (then change it with `vigil user passwd`). Empty: no bootstrap, use `vigil user add`.
    bootstrap_admin: str = Field("admin", pattern=r"^[A-Za-z0-9_.@\-]{1,64}$")
    bootstrap_admin_password: SecretStr = SecretStr("")
    session_ttl_s: float = Field(12 * 3600, gt=0, le=30 * 86400)
    # The session cookie is sent over HTTPS only; false only for plain-HTTP local use (demo, tests).
    cookie_secure: bool = True
    # Browsers on these origins may call the API with credentials; empty (the default): none.
    cors_origins: tuple[str, ...] = ()
    # Larger request bodies are refused with 413 before they are read (the CSV import is the
    # largest legitimate body: 10 MiB is ~100,000 equipment rows).
    max_body_bytes: int = Field(10 << 20, ge=1024, le=1 << 30)
    # Per API token (and per session): a bucket of `token_burst` requests refilled at
    # `token_rate_per_s`; past it, 429 with Retry-After.
    token_rate_per_s: float = Field(50.0, gt=0, le=100_000)
    token_burst: int = Field(200, ge=1, le=1_000_000)
    # Login: at most `login_attempts_per_min` attempts per client address a minute; after
    # `lockout_after` failures in a row an account is locked for `lockout_s`.
    login_attempts_per_min: int = Field(20, ge=1, le=10_000)
    lockout_after: int = Field(5, ge=1, le=100)
    lockout_s: float = Field(300.0, ge=1, le=86400)

    @field_validator("bootstrap_admin_password")
    @classmethod
    def _no_placeholder(cls, v: SecretStr, info: ValidationInfo) -> SecretStr:
        secret = v.get_secret_value()
        if secret and info.data.get("mode") != "demo" and (
                secret.strip().lower() in PLACEHOLDER_SECRETS or len(secret) < 12):
            raise ValueError(
                "bootstrap_admin_password is a placeholder or shorter than 12 characters; outside "
                "demo mode use a strong one, e.g. the output of "
                "`python -c \"import secrets; print(secrets.token_urlsafe(18))\"`")
        return v

    # The broker the dashboard's live stream (/api/v1/stream) listens to ([api.mqtt]); unset,
    # pages still work but only show changes made through this API until they reload.
    mqtt: MqttSettings | None = None
