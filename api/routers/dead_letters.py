"""Messages ingest could not store, newest first, so a person can see why.

Filters: ``code`` (ingest's reason code, e.g. ``wrong_type``) and ``topic_prefix``. A letter
written with a reason code also shows ``code``, its ``id`` (what ``vigil ingest deadletters
replay --id`` takes) and ``replayed_ms``; letters from before reason codes keep their shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from api.auth import PrincipalDep
from api.deps import SettingsDep, StoreDep
from api.schemas import BAD_PARAM, DeadLetterList, DeadLetterOut
from api.timerange import QueryError, iso

router = APIRouter(prefix="/api/v1", tags=["dead letters"])


class DeadLetterItem(DeadLetterOut):
    code: str | None = Field(None, description="Ingest's reason code, e.g. wrong_type.")
    id: str | None = Field(None, description="The letter's id in the store, for replay.")
    replayed_ms: int | None = Field(None, description="When it was last replayed, if ever.")


class DeadLetterPage(DeadLetterList):
    dead_letters: list[DeadLetterItem] = Field(description="Newest first.")  # type: ignore[assignment]


def _visible(sites: frozenset[str] | None, topic: str) -> bool:
    """Site scope: a letter is of the site in its topic (vigil/v1/{site}/...); a letter whose
    topic names no site is only for callers who see every site."""
    if sites is None:
        return True
    parts = topic.split("/")
    return len(parts) > 2 and parts[:2] == ["vigil", "v1"] and parts[2] in sites


def show_payload(payload: bytes, max_bytes: int) -> tuple[str, bool]:
    """The payload as text: UTF-8 where it is, ``\\xNN`` for other bytes, cut at ``max_bytes``."""
    cut = len(payload) > max_bytes
    # Cutting may split a multi-byte character; its bytes then show as escapes, which is
    # honest about where the cut fell.
    return payload[:max_bytes].decode("utf-8", "backslashreplace"), cut


@router.get(
    "/dead-letters",
    summary="Newest dead letters: messages that could not be stored, with the reason",
    response_model=DeadLetterPage,
    response_model_exclude_unset=True,
    responses=BAD_PARAM,
)
def list_dead_letters(
    store: StoreDep,
    settings: SettingsDep,
    caller: PrincipalDep,
    limit: Annotated[
        int, Query(ge=1, description="How many, newest first (at most `max_dead_letters`).")
    ] = 100,
    code: Annotated[str | None, Query(max_length=64, description="Only this reason code.")] = None,
    topic_prefix: Annotated[
        str | None, Query(max_length=256, description="Only topics starting with this.")
    ] = None,
) -> DeadLetterPage:
    if limit > settings.max_dead_letters:
        raise QueryError(f"limit={limit} is over the maximum of {settings.max_dead_letters}")
    out: list[DeadLetterItem] = []
    for letter in store.dead_letters(limit, code=code, topic_prefix=topic_prefix):
        if not _visible(caller.sites, letter.topic):
            continue
        text, cut = show_payload(letter.payload, settings.dead_letter_payload_bytes)
        extra: dict[str, object] = {}
        if letter.code:
            extra = {"code": letter.code, "id": letter.id, "replayed_ms": letter.replayed_ms}
        out.append(
            DeadLetterItem(
                received_ms=letter.received_ms,
                received=iso(letter.received_ms),
                topic=letter.topic,
                reason=letter.reason,
                payload=text,
                payload_bytes=len(letter.payload),
                payload_truncated=cut,
                **extra,
            )
        )
    return DeadLetterPage(dead_letters=out)
