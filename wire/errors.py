"""The contract's one error: everything in ``wire`` that rejects input raises ``WireError``."""


class WireError(ValueError):
    """Input that does not satisfy the wire contract; the message says what is wrong."""
