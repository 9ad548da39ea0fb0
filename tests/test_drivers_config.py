"""Point maps in the agent's YAML: the example config loads, and mistakes stop the agent at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import load_config
from edge.drivers.bacnet import BacnetOptions
from edge.drivers.modbus import ModbusOptions
from edge.drivers.snmp import SnmpOptions
from edge.errors import EdgeConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "edge-example.yaml"


def test_the_deploy_example_loads() -> None:
    config = load_config(EXAMPLE)
    kinds = {d.id: type(d.options) for d in config.devices}
    assert kinds["meter-main"] is ModbusOptions
    assert kinds["nvr-01"] is SnmpOptions and kinds["switch-b1"] is SnmpOptions
    assert kinds["ahu-01"] is BacnetOptions
    nvr = next(d for d in config.devices if d.id == "nvr-01").options
    assert isinstance(nvr, SnmpOptions) and nvr.version == "3"
    assert "change-me-auth-key" not in repr(nvr)  # secrets stay out of logs


def test_every_mistake_in_the_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(
        "site: tower-a\n"
        "agent: b1-gw1\n"
        "devices:\n"
        "  - id: meter-1\n"
        "    kind: meter\n"
        "    driver: modbus\n"
        "    options:\n"
        "      host: 10.0.4.10\n"
        "      points:\n"
        "        - {metric: voltage, address: 0, type: float23}\n"
        "  - id: nvr-1\n"
        "    kind: nvr\n"
        "    driver: snmp\n"
        "    options:\n"
        "      host: 10.0.6.20\n"
        "      version: 2c\n"
        "      community: secret-community\n"
        "      points:\n"
        "        - {metric: rec, oid: 1.3.6.1.4.1.1, states: {1: on, 2: standby}}\n"
        "  - id: ahu-1\n"
        "    kind: ahu\n"
        "    driver: bacnet\n"
        "    options:\n"
        "      address: 10.0.4.21\n"
        "      points:\n"
        "        - {metric: sat, object: analog-input 1}\n"
    )
    with pytest.raises(EdgeConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert str(path) in text
    assert "devices[0] (meter-1).options.points[0].type: Input should be 'int16'" in text
    assert ("devices[1] (nvr-1).options.points[0].states: "
            "Value error, all states must map to the same type") in text
    assert "quote them" in text
    assert "devices[2] (ahu-1).options.points[0].object: Value error, object must look like" in text
    assert "secret-community" not in text
