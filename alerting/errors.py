"""The one root error of the alerting package."""

from __future__ import annotations


class AlertingError(Exception):
    """Alerting could not do what it was asked; the message says what is wrong and what to do."""


class ChannelError(AlertingError):
    """A notification channel could not deliver; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
