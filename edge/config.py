"""The agent's YAML config: which site and agent it is, and which devices it polls how.

Example::

    site: tower-a
    agent: b1-gw1
    devices:
      - id: pump-01
        kind: pump
        driver: simulated
        poll_interval_s: 5
        options:              # validated by the driver's own options model
          seed: 7
          points:
            - {metric: flow_lps, unit: L/s, base: 12, amplitude: 3, noise: 0.2}
            - {metric: running, type: bool, p_true: 0.98}

Invariants:
- a config that loads is complete: ids are valid wire ids, device ids are unique, every
  driver is in the registry given and every device's options passed that driver's model;
- every problem is reported at once in one ``EdgeConfigError`` naming the file, the key
  path (``devices[2].options.points[0].period_s``) and what is wrong, so a mistake stops
  the agent at start and not at the first poll; no other exception escapes ``load_config``;
- duplicate keys in a YAML mapping are an error: PyYAML would silently keep the last one,
  which hides exactly the copy-paste slips a config review misses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.drivers import DRIVERS, DriverSpec
from edge.errors import EdgeConfigError
from wire import check_id
from wire.payloads import METRIC_PATTERN
from wire.topics import CMD_SEGMENT


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One device as the agent runs it; ``options`` is the driver's validated options model."""

    id: str
    kind: str
    driver: str
    poll_interval_s: float
    options: BaseModel


@dataclass(frozen=True, slots=True)
class AgentConfig:
    site: str
    agent: str
    devices: tuple[DeviceConfig, ...]
    source: str  # the file it came from, for messages


class _DeviceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: str = Field(pattern=METRIC_PATTERN)
    driver: str
    poll_interval_s: float = Field(10.0, gt=0, le=86_400)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        check_id("device", v)
        if v == CMD_SEGMENT:
            raise ValueError(f"device id {CMD_SEGMENT!r} is reserved for agent commands")
        return v


class _AgentFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    agent: str
    devices: list[Any] = Field(min_length=1)  # each entry is checked on its own

    @field_validator("site", "agent")
    @classmethod
    def _wire_id(cls, v: str, info: Any) -> str:
        return check_id(str(info.field_name), v)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"found key {key!r} a second time (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: Path, drivers: Mapping[str, DriverSpec[Any]] = DRIVERS) -> AgentConfig:
    """Read and validate the agent config at ``path``; raise EdgeConfigError on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeConfigError(f"cannot read edge config {path}: {e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = ": ".join(x for x in (e.context, e.problem) if x)
        raise EdgeConfigError(f"edge config {path} is not valid YAML{where}: {what}") from None
    except yaml.YAMLError as e:
        raise EdgeConfigError(f"edge config {path} is not valid YAML: {e}") from None
    return parse_config(data, source=str(path), drivers=drivers)


def parse_config(
    data: Any, *, source: str = "<config>", drivers: Mapping[str, DriverSpec[Any]] = DRIVERS
) -> AgentConfig:
    """Validate an already-parsed config (a mapping as YAML gives it)."""
    if not isinstance(data, dict):
        raise EdgeConfigError(
            f"edge config {source}: the top level must be a mapping with site, agent and devices, "
            f"got {type(data).__name__}"
        )
    problems: list[str] = []
    try:
        head: _AgentFile | None = _AgentFile.model_validate(data)
    except ValidationError as e:
        head = None
        problems.extend(_problems(e, (), data))
    # Entries are checked one by one even when the head is wrong, so one run of the agent
    # reports every mistake in the file, not the first of them.
    entries = data.get("devices")
    devices: list[DeviceConfig] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(entries if isinstance(entries, list) else []):
        try:
            entry = _DeviceEntry.model_validate(item)
        except ValidationError as e:
            problems.extend(_problems(e, ("devices", i), data))
            continue
        where = f"devices[{i}] ({entry.id})"
        if entry.id in first_index:
            first = first_index[entry.id]
            problems.append(f"{where}.id: device id {entry.id!r} is already used by devices[{first}]")
        first_index.setdefault(entry.id, i)
        spec = drivers.get(entry.driver)
        if spec is None:
            known = ", ".join(sorted(drivers)) or "none"
            problems.append(f"{where}.driver: unknown driver {entry.driver!r} (known: {known})")
            continue
        try:
            options = spec.options.model_validate(entry.options)
        except ValidationError as e:
            problems.extend(_problems(e, ("devices", i, "options"), data))
            continue
        devices.append(DeviceConfig(entry.id, entry.kind, entry.driver, entry.poll_interval_s, options))
    if problems or head is None:
        raise EdgeConfigError(_explain(source, problems))
    return AgentConfig(site=head.site, agent=head.agent, devices=tuple(devices), source=source)


def _explain(source: str, problems: list[str]) -> str:
    return "\n".join([f"invalid edge config {source}:", *(f"  {p}" for p in problems)])


def _problems(error: ValidationError, prefix: tuple[str | int, ...], data: Any) -> list[str]:
    out = []
    for item in error.errors():
        loc = (*prefix, *item["loc"])
        value = item.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {_shown(value)})"
        out.append(f"{_key_path(loc, data)}: {item['msg']}{shown}")
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _key_path(loc: tuple[str | int, ...], data: Any) -> str:
    """``('devices', 2, 'options')`` -> ``devices[2] (pump-03).options``: the index a parser
    reports is hard to find by eye in a long file, the device id is easy."""
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
            if i == 1 and loc[0] == "devices":
                device = _device_id(data, part)
                if device:
                    text += f" ({device})"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _device_id(data: Any, index: int) -> str | None:
    try:
        value = data["devices"][index]["id"]
    except (KeyError, IndexError, TypeError):
        return None
    return value if isinstance(value, str) else None


__all__ = ["AgentConfig", "DeviceConfig", "EdgeConfigError", "load_config", "parse_config"]
