"""Messages ingest could not store, newest first, so a person can see why."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import SettingsDep, StoreDep
from api.schemas import BAD_PARAM, DeadLetterList, DeadLetterOut
from api.timerange import QueryError, iso

router = APIRouter(prefix="/api/v1", tags=["dead letters"])


def show_payload(payload: bytes, max_bytes: int) -> tuple[str, bool]:
    """The payload as text: UTF-8 where it is, ``\\xNN`` for other bytes, cut at ``max_bytes``."""
    cut = len(payload) > max_bytes
    # Cutting may split a multi-byte character; its bytes then show as escapes, which is
    # honest about where the cut fell.
    return payload[:max_bytes].decode("utf-8", "backslashreplace"), cut


@router.get(
    "/dead-letters",
    summary="Newest dead letters: messages that could not be stored, with the reason",
    response_model=DeadLetterList,
    responses=BAD_PARAM,
)
def list_dead_letters(
    store: StoreDep,
    settings: SettingsDep,
    limit: Annotated[
        int, Query(ge=1, description="How many, newest first (at most `max_dead_letters`).")
    ] = 100,
) -> DeadLetterList:
    if limit > settings.max_dead_letters:
        raise QueryError(f"limit={limit} is over the maximum of {settings.max_dead_letters}")
    out: list[DeadLetterOut] = []
    for letter in store.dead_letters(limit):
        text, cut = show_payload(letter.payload, settings.dead_letter_payload_bytes)
        out.append(
            DeadLetterOut(
                received_ms=letter.received_ms,
                received=iso(letter.received_ms),
                topic=letter.topic,
                reason=letter.reason,
                payload=text,
                payload_bytes=len(letter.payload),
                payload_truncated=cut,
            )
        )
    return DeadLetterList(dead_letters=out)
