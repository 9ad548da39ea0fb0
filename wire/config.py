"""How every Vigil process reads its one settings object, and the broker connection settings.

Each role defines one ``RoleSettings`` subclass with its own ``section`` and env prefix
(``VIGIL_<SECTION>_``; nested values with ``__``, e.g. ``VIGIL_INGEST_MQTT__PORT``) and
builds it once at start with ``load()``. Precedence: environment, then the optional TOML
config file's ``[section]`` table, then defaults. A bad value stops the process at start
with ``ConfigError`` naming the setting (as the environment variable and as the file key)
and the problem.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from wire.errors import WireError

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("vigil_config_file", default=None)


class ConfigError(WireError):
    """A setting is missing or invalid; the message names it and says what is wrong."""


class MqttSettings(BaseModel):
    """Where the broker is and how to log in to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    tls: bool = False
    ca_file: Path | None = None
    # A client certificate and its key, for a broker that authenticates clients by TLS.
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not: set both, or neither")
        if (self.ca_file or self.cert_file or self.key_file) and not self.tls:
            raise ValueError("ca_file, cert_file or key_file is set but tls is off: set tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both, or neither")
        return self


class RoleSettings(BaseSettings):
    """Base of each role's settings; subclasses set ``section`` and ``env_prefix``."""

    section: ClassVar[str] = ""
    model_config = SettingsConfigDict(extra="forbid", env_nested_delimiter="__", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_FILE.get()
        if path is not None:
            sources.append(
                TomlConfigSettingsSource(settings_cls, toml_file=path, toml_table_header=(cls.section,))
            )
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Self:
        """Build the settings once, at start; raise ConfigError with every problem found."""
        if config_file is not None and not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist or is not a file")
        token = _CONFIG_FILE.set(config_file)
        try:
            return cls(**overrides)
        except ValidationError as e:
            raise ConfigError(cls._explain(e, config_file)) from None
        except (OSError, ValueError) as e:  # unreadable or malformed TOML
            raise ConfigError(f"config file {config_file}: {e}") from None
        finally:
            _CONFIG_FILE.reset(token)

    @classmethod
    def _explain(cls, error: ValidationError, config_file: Path | None) -> str:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [f"invalid {cls.section} settings:"]
        for item in error.errors():
            path = [str(p) for p in item["loc"]]
            env = prefix + "__".join(path).upper()
            key = ".".join([cls.section, *path])
            where = f"{env} (or {key} in {config_file})" if config_file else env
            value = item.get("input")
            shown = "" if isinstance(value, dict) or value is None else f" (got {str(value)[:80]!r})"
            lines.append(f"  {where}: {item['msg']}{shown}")
        return "\n".join(lines)
