"""Password hashing: argon2id through argon2-cffi (RFC 9106's memory-hard KDF).

argon2-cffi's ``PasswordHasher`` stores its parameters in the hash, verifies in constant
time and says when a stored hash was made with weaker parameters (``needs_rehash``), so
raising the cost later upgrades hashes at the next login.
"""

from __future__ import annotations

from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's defaults (RFC 9106 "low memory": t=3, m=64 MiB, p=4) cost ~50-100 ms here.
_HASHER: Final = PasswordHasher()
# Verified when the user does not exist, so an unknown name takes as long as a wrong password
# (no user enumeration by timing).
_DUMMY: Final = _HASHER.hash("not a password of anyone: burns the same time")
MIN_LENGTH: Final = 12


class WeakPasswordError(ValueError):
    """The password is refused; the message says why."""


def check_strength(password: str, user: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPasswordError(f"the password must be at least {MIN_LENGTH} characters long")
    if len(password) > 1024:
        raise WeakPasswordError("the password must be at most 1024 characters long")
    if password.lower() == user.lower() or len(set(password)) < 4:
        raise WeakPasswordError("the password is too easy to guess (the user name, or repeated characters)")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``; a missing or malformed hash is False."""
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _HASHER.check_needs_rehash(stored)
