"""Acknowledge and resolve links for phones: signed, expiring, single use.

A token is ``<nonce>.<signature>``: 18 random bytes and an HMAC-SHA256, keyed by the
service's signing secret, over the nonce, incident, action, person and expiry. The
database keeps only the SHA-256 of the token with those fields; using a link marks its
row used in the same statement that checks it is unused and unexpired, so a link works
once even when two taps race.

Invariants:
- a token is never stored or logged; only its SHA-256 is;
- ``verify`` is pure: it checks the signature against the row's fields, so a row edited
  in the database (another incident, a later expiry) no longer verifies;
- the GET of a link changes nothing (mail scanners and chat previews fetch links); only
  the confirming POST uses it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

LinkAction = Literal["ack", "resolve"]


@dataclass(frozen=True, slots=True)
class Link:
    token: str
    token_sha256: str
    incident_id: str
    action: LinkAction
    person: str
    expires_ms: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signature(secret: bytes, nonce: str, incident_id: str, action: str, person: str, expires_ms: int) -> str:
    msg = f"{nonce}|{incident_id}|{action}|{person}|{expires_ms}".encode()
    return _b64(hmac.new(secret, msg, hashlib.sha256).digest()[:18])


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def make_link(secret: bytes, incident_id: str, action: LinkAction, person: str, expires_ms: int) -> Link:
    nonce = _b64(secrets.token_bytes(18))
    token = f"{nonce}.{_signature(secret, nonce, incident_id, action, person, expires_ms)}"
    return Link(token, token_hash(token), incident_id, action, person, expires_ms)


def verify(secret: bytes, token: str, incident_id: str, action: str, person: str, expires_ms: int) -> bool:
    nonce, _, sig = token.partition(".")
    expected = _signature(secret, nonce, incident_id, action, person, expires_ms)
    return hmac.compare_digest(sig.encode(), expected.encode())
