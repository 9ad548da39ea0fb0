"""SNMP v2c / v3 driver (CCTV NVRs, UPSes, switches), on pysnmp 7 (the lextudio line).

``pysnmp`` does the protocol: BER encoding, the SNMPv3 user-based security model (engine
discovery, authentication, privacy with ``cryptography``), retries and timeouts. This
module maps numeric OIDs to metrics and runs pysnmp's asyncio API on the driver's own
event loop (``LoopThread``), so the SNMP engine and its v3 discovery state persist
between polls.

OIDs are numeric (``1.3.6.1.2.1.2.2.1.8.1``), never MIB names: resolving names needs
MIB files on the gateway and turns a typo into a poll-time error instead of a start-time
one. A point's raw value is the number (Integer32, Gauge32, Counter32/64, TimeTicks in
hundredths of a second) or the text (OctetString, IpAddress, OID) the agent returned;
``states`` maps enumerations (ifOperStatus ``1: up, 2: down``, an NVR's recording state)
and ``scale`` converts units (TimeTicks to seconds: ``scale: 0.01``).

Invariants:
- a timeout, an authentication failure or an error-status of the whole request fails
  the poll (``DriverError``);
- an OID the agent does not have (noSuchObject / noSuchInstance) fails only its point,
  logged once when it starts failing and once when it recovers; if every due point
  failed, the poll fails;
- a GET carries at most ``max_oids_per_request`` OIDs, so a big point map never exceeds
  an agent's PDU size (many embedded agents answer tooBig above ~30 varbinds);
- community strings and keys are ``SecretStr``: they never appear in logs or errors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

from pyasn1.type import univ
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pysnmp.hlapi.v3arch import asyncio as hl
from pysnmp.proto import rfc1902, rfc1905

from edge.drivers.asyncloop import LoopThread
from edge.drivers.base import DeviceInfo, DriverSpec
from edge.drivers.points import PointBase, PointError, PointReporter, Raw, check_unique_metrics
from edge.errors import DriverError
from wire import Reading

log = logging.getLogger(__name__)

AuthProtocol = Literal["md5", "sha", "sha224", "sha256", "sha384", "sha512"]
PrivProtocol = Literal["des", "3des", "aes", "aes192", "aes256"]

_AUTH = {
    "md5": hl.USM_AUTH_HMAC96_MD5, "sha": hl.USM_AUTH_HMAC96_SHA,
    "sha224": hl.USM_AUTH_HMAC128_SHA224, "sha256": hl.USM_AUTH_HMAC192_SHA256,
    "sha384": hl.USM_AUTH_HMAC256_SHA384, "sha512": hl.USM_AUTH_HMAC384_SHA512,
}
_PRIV = {
    "des": hl.USM_PRIV_CBC56_DES, "3des": hl.USM_PRIV_CBC168_3DES, "aes": hl.USM_PRIV_CFB128_AES,
    "aes192": hl.USM_PRIV_CFB192_AES, "aes256": hl.USM_PRIV_CFB256_AES,
}
_OID_PATTERN = r"^\.?[0-2](\.(0|[1-9][0-9]{0,9})){1,127}$"


class SnmpPoint(PointBase):
    """One OID mapped to a metric."""

    oid: str = Field(pattern=_OID_PATTERN)

    @field_validator("oid")
    @classmethod
    def _no_leading_dot(cls, v: str) -> str:
        return v.removeprefix(".")


class SnmpOptions(BaseModel):
    """``options:`` of a ``driver: snmp`` device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(161, ge=1, le=65_535)
    version: Literal["2c", "3"]
    # v2c: required, no default: "public" on a plant network is a finding, not a default.
    community: SecretStr | None = None
    # v3 (RFC 3414 USM): authentication and privacy are optional, in that order.
    user: str | None = Field(None, min_length=1, max_length=32)
    auth_protocol: AuthProtocol | None = None
    auth_key: SecretStr | None = None
    priv_protocol: PrivProtocol | None = None
    priv_key: SecretStr | None = None
    context: str = ""
    timeout_s: float = Field(2.0, gt=0, le=60)
    retries: int = Field(1, ge=0, le=5)
    max_oids_per_request: int = Field(24, ge=1, le=128)
    points: list[SnmpPoint] = Field(min_length=1, max_length=10_000)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v  # YAML reads `version: 3` as a number

    @model_validator(mode="after")
    def _credentials(self) -> SnmpOptions:
        check_unique_metrics(self.points)
        v3_fields = [n for n in ("user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")
                     if getattr(self, n) is not None]
        if self.version == "2c":
            if self.community is None or not self.community.get_secret_value():
                raise ValueError("version 2c needs community (there is no default)")
            if v3_fields:
                raise ValueError(f"{', '.join(v3_fields)} are for version 3, not 2c")
            return self
        if self.community is not None:
            raise ValueError("community is for version 2c; version 3 uses user and keys")
        if self.user is None:
            raise ValueError("version 3 needs user")
        for proto, key, what in (("auth_protocol", "auth_key", "authentication"),
                                 ("priv_protocol", "priv_key", "privacy")):
            has_proto, secret = getattr(self, proto) is not None, getattr(self, key)
            if has_proto != (secret is not None):
                raise ValueError(f"{what} needs both {proto} and {key}")
            # RFC 3414 11.2: pass phrases shorter than 8 characters are refused by agents.
            if secret is not None and len(secret.get_secret_value()) < 8:
                raise ValueError(f"{key} must be at least 8 characters (RFC 3414)")
        if self.priv_protocol is not None and self.auth_protocol is None:
            raise ValueError("privacy needs authentication: set auth_protocol and auth_key too")
        return self


def _raw(value: Any) -> Raw:
    """A pysnmp value as a plain Python value; raises PointError for 'no such' markers."""
    if isinstance(value, rfc1905.NoSuchObject | rfc1905.NoSuchInstance | rfc1905.EndOfMibView):
        raise PointError(f"the agent has no such object ({type(value).__name__})")
    if isinstance(value, rfc1902.IpAddress):
        return str(value.prettyPrint())
    if isinstance(value, univ.Integer):  # Integer32, Gauge32, Counter32/64, TimeTicks...
        return int(value)
    if isinstance(value, univ.OctetString):
        return bytes(value.asOctets())
    if isinstance(value, univ.ObjectIdentifier):
        return str(value)
    raise PointError(f"unsupported SNMP type {type(value).__name__}")


class SnmpDriver:
    """Polls one SNMP agent with GET requests."""

    def __init__(self, device: DeviceInfo, options: SnmpOptions) -> None:
        self.device = device
        self.options = options
        self.reporter = PointReporter(options.points)
        self._loop = LoopThread(f"snmp-{device.device}")
        self._engine: Any = None
        self._target: Any = None
        self._auth_data: Any = None  # built once: v3 key localization hashes a megabyte

    @property
    def name(self) -> str:
        o = self.options
        return f"{self.device.device} (snmp v{o.version} {o.host}:{o.port})"

    def _auth(self) -> Any:
        o = self.options
        if o.version == "2c":
            assert o.community is not None  # checked by SnmpOptions
            return hl.CommunityData(o.community.get_secret_value(), mpModel=1)
        return hl.UsmUserData(
            o.user,
            authKey=o.auth_key.get_secret_value() if o.auth_key else None,
            privKey=o.priv_key.get_secret_value() if o.priv_key else None,
            authProtocol=_AUTH[o.auth_protocol] if o.auth_protocol else hl.USM_AUTH_NONE,
            privProtocol=_PRIV[o.priv_protocol] if o.priv_protocol else hl.USM_PRIV_NONE,
        )

    async def _open(self) -> None:
        # Built on the driver's loop: pysnmp binds its dispatcher to the running loop.
        o = self.options
        self._engine = hl.SnmpEngine()
        self._auth_data = self._auth()
        self._target = await hl.UdpTransportTarget.create((o.host, o.port), timeout=o.timeout_s,
                                                          retries=o.retries)

    def start(self) -> None:
        self._loop.start()
        if self._engine is None:
            try:
                self._loop.run(self._open(), self._budget_s())
            except OSError as e:  # e.g. the host name does not resolve
                raise DriverError(f"device {self.name}: {e}") from None

    def stop(self) -> None:
        engine, self._engine, self._target = self._engine, None, None
        if engine is not None and self._loop.running:
            with contextlib.suppress(DriverError):  # stopping anyway
                self._loop.run(self._close(engine), 2.0)
        self._loop.stop()

    @staticmethod
    async def _close(engine: Any) -> None:
        engine.close_dispatcher()

    def _budget_s(self) -> float:
        # pysnmp times out on its own after timeout x (retries + 1); a little over that is
        # the safety net for a stuck loop.
        o = self.options
        return o.timeout_s * (o.retries + 1) + 2.0

    def read(self, now_ms: int) -> Sequence[Reading]:
        if self._engine is None:
            self.start()
        due = self.reporter.due(now_ms)
        points = self.options.points
        out: list[Reading] = []
        failed = 0
        step = self.options.max_oids_per_request
        for first in range(0, len(due), step):
            chunk = due[first:first + step]
            values = self._loop.run(self._get([points[i].oid for i in chunk]),
                                    self._budget_s() * 2)
            for i, value in zip(chunk, values, strict=True):
                reading, ok = self._report(i, value, now_ms)
                failed += not ok
                if reading is not None:
                    out.append(reading)
        if due and failed == len(due):
            raise DriverError(f"device {self.name}: none of its {len(due)} due point(s) could be read")
        return out

    def _report(self, i: int, value: Any, now_ms: int) -> tuple[Reading | None, bool]:
        where = str(self.options.points[i].oid)
        return self.reporter.read_point(i, partial(_raw, value), now_ms, device=self.name, where=where)

    async def _get(self, oids: list[str]) -> list[Any]:
        error, status, index, var_binds = await hl.get_cmd(
            self._engine, self._auth_data, self._target,
            hl.ContextData(contextName=self.options.context.encode()),
            *(hl.ObjectType(hl.ObjectIdentity(oid)) for oid in oids),
            lookupMib=False,  # numeric OIDs only: no MIB files needed on the gateway
        )
        if error:
            raise DriverError(f"device {self.name}: {error}")
        if status:
            # An error-status fails the whole GET (RFC 3416 4.2.1); v2c agents answer a
            # missing OID with a noSuchObject value instead, handled per point.
            at = f" at {oids[int(index) - 1]}" if 0 < int(index) <= len(oids) else ""
            raise DriverError(f"device {self.name}: the agent answered {status.prettyPrint()}{at}")
        if len(var_binds) != len(oids):
            raise DriverError(f"device {self.name}: asked for {len(oids)} OID(s), got {len(var_binds)}")
        return [vb[1] for vb in var_binds]


SPEC: DriverSpec[SnmpOptions] = DriverSpec(
    options=SnmpOptions,
    create=SnmpDriver,
    summary="SNMP v2c/v3 GET of numeric OIDs (pysnmp)",
)

__all__ = ["SPEC", "SnmpDriver", "SnmpOptions", "SnmpPoint"]
