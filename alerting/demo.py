"""Alerting in ``vigil demo``: a demo rotation and a file channel, so nothing leaves the machine.

The on-call file is written to ``<data_dir>/oncall.yaml`` (a newcomer's example of the
format) and pages are appended to ``<data_dir>/pages.log``, with ack links pointing at the
demo's own API.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from alerting.config import load_config
from alerting.db import open_engine
from alerting.service import AlertingService
from alerting.settings import AlertingSettings
from wire import MqttSettings

DEMO_ONCALL = """\
# The demo's on-call file (README, "Alerting"). Pages go to {pages} (a file channel).
channels:
  log: {{kind: file, rate_per_min: 60}}
people:
  tech-ana:   {{name: Ana (technician),   contacts: [{{channel: log, to: "{pages}"}}]}}
  tech-ben:   {{name: Ben (technician),   contacts: [{{channel: log, to: "{pages}"}}]}}
  supervisor: {{name: Chloe (supervisor), contacts: [{{channel: log, to: "{pages}"}}]}}
rotations:
  facilities:
    members: [tech-ana, tech-ben]
    shift: daily
    handoff: "08:00"
    timezone: Europe/Paris
    start: 2026-01-05
policies:
  standard:
    repeat: 1
    steps:
      - {{notify: ["rotation:facilities"], delay_min: 5}}
      - {{notify: ["person:supervisor"], delay_min: 10}}
routes:
  - {{name: urgent, min_severity: major, policy: standard, group_wait_s: 10, group_window_s: 300}}
"""


def start_demo_alerting(mqtt: MqttSettings, database_url: str, data_dir: Path, public_base_url: str,
                        ) -> tuple[AlertingService, Path]:
    """Start the demo's alerting service; returns it and the pages file."""
    pages = (data_dir / "pages.log").resolve()
    oncall = data_dir / "oncall.yaml"
    oncall.write_text(DEMO_ONCALL.format(pages=pages), encoding="utf-8")
    # A fresh secret each run: links are also checked against the database, where only their
    # hashes are kept, so links of earlier runs still work.
    settings = AlertingSettings.load(None, mqtt=mqtt, database_url=database_url, oncall_file=oncall,
                                     demo=True, signing_secret=secrets.token_urlsafe(32),
                                     client_id="vigil-demo-alerting", public_base_url=public_base_url)
    service = AlertingService(settings, open_engine(database_url), load_config(oncall))
    service.start()
    return service, pages
