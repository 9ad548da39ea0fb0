"""The simulators package's one root error."""

from __future__ import annotations


class SimError(Exception):
    """The simulated fleet cannot be built or run as asked; the message says why."""
