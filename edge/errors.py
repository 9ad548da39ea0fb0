"""The edge package's one root error and its kinds.

Library errors (pydantic, PyYAML, paho, a driver's own protocol library) are translated
into these at the edge of the module that called the library, so callers of ``edge``
catch ``EdgeError`` and nothing else.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Something in the edge agent failed; the message says what and what to do."""


class EdgeConfigError(EdgeError):
    """The agent's YAML config is unreadable or invalid; raised at start, before any I/O."""


class DriverError(EdgeError):
    """A driver could not start or read its device; the agent logs it and polls again later."""
