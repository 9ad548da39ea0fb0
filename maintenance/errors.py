"""The errors of the maintenance package; ``MaintenanceError`` is the root of them all."""

from __future__ import annotations

from collections.abc import Sequence


class MaintenanceError(Exception):
    """Something in maintenance went wrong; the message says what and what to do."""


class NotFoundError(MaintenanceError):
    """The asset, work order or schedule named does not exist."""


class InvalidError(MaintenanceError):
    """A value was refused; ``field`` names it (e.g. ``priority``, ``rows[3].install_date``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ConflictError(MaintenanceError):
    """The request conflicts with what is stored (a duplicate code, say)."""


class TransitionError(ConflictError):
    """The state machine refused a transition; ``allowed`` lists what the state allows."""

    def __init__(self, current: str, target: str, allowed: Sequence[str]) -> None:
        options = ", ".join(allowed) if allowed else "none (it is final)"
        super().__init__(f"a work order in state {current!r} cannot go to {target!r}; "
                         f"allowed from {current!r}: {options}")
        self.current = current
        self.target = target
        self.allowed = tuple(allowed)
