"""Analytics: streaming anomaly detection over the fleet's telemetry.

Telemetry → detectors (an explicit registry, scored in batches over numpy arrays, score
before learn) → fusion per device into anomaly onsets, updates and clears → the
relational database and the ``_alarm`` topic (``wire.anomaly.Anomaly``).

Invariants:
- the engine (``analytics.engine``) is sans-IO: it takes readings and ``now`` and returns
  anomaly events; the MQTT worker (``analytics.service``) and the offline replay
  (``analytics.replay``) drive the very same engine, so offline figures describe online
  behaviour;
- this package imports no sibling but ``wire``; every error it raises is an
  ``AnalyticsError``.
"""

from __future__ import annotations


class AnalyticsError(Exception):
    """Analytics could not do what it was asked; the message says what is wrong and what to do."""


__all__ = ["AnalyticsError"]
