"""The contract every Vigil process shares: topics, payloads, strict decoding, settings."""

from wire.config import ConfigError, MqttSettings, RoleSettings
from wire.errors import WireError
from wire.payloads import (
    Event,
    Message,
    Reading,
    Status,
    Telemetry,
    decode,
    decode_event,
    decode_status,
    decode_telemetry,
    encode,
)
from wire.topics import (
    AlarmTopic,
    CommandTopic,
    EventTopic,
    StatusTopic,
    TelemetryTopic,
    Topic,
    check_id,
    parse_topic,
)

__all__ = [
    "AlarmTopic",
    "CommandTopic",
    "ConfigError",
    "Event",
    "EventTopic",
    "Message",
    "MqttSettings",
    "Reading",
    "RoleSettings",
    "Status",
    "StatusTopic",
    "Telemetry",
    "TelemetryTopic",
    "Topic",
    "WireError",
    "check_id",
    "decode",
    "decode_event",
    "decode_status",
    "decode_telemetry",
    "encode",
    "parse_topic",
]
