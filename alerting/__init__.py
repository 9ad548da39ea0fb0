"""Alerting: on-call pages to phones — routing, rotations, escalation, acknowledgement.

Sans-IO cores that take data and ``now`` and return decisions:
- ``engine``: alerts -> incidents (dedup, grouping per building, inhibition from the asset
  hierarchy, silences, life safety) and the escalation timeline;
- ``rotation``: who is on call (shifts in local time, handoffs, overrides);
- ``outbox``: which contact method to try when (retries, fail-over, rate limits);
- ``workorders``: which devices maintenance's work orders in progress silence.
Thin adapters around them: ``dispatch`` (sending through the ``channels`` registry, Apprise
first), ``service`` (the paho consumer, QoS 1, acked after commit), ``store``/``db``/``tables``
(SQLAlchemy 2 and Alembic, version table ``alembic_version_alerting``), ``links`` (signed,
expiring, single-use ack links), ``settings`` (``AlertingSettings``, section ``alerting``).

Invariants: this package imports no sibling but ``wire``; every error it raises is an
``AlertingError``.
"""

from alerting.errors import AlertingError, ChannelError

__all__ = ["AlertingError", "ChannelError"]
