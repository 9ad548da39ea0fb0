"""Ingest's per-agent accounting: received, stored, duplicates, sequence gaps, dead letters.

Each ingest worker writes its own account of every agent to the store every
``accounting_interval_s`` (ingest.store.AgentTally); this sums them per agent. Counters count
since each worker started (a restarted worker starts again from 0, as with its Prometheus
counters): ``workers`` shows each worker's figures and when it wrote them. Open gaps are gaps
in what the whole group received (workers tell each other their sequence numbers), so they
are taken from the most recent report rather than added up.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import PrincipalDep
from api.deps import StoreDep
from api.schemas import BAD_PARAM
from api.timerange import iso
from ingest.store import AgentTally
from wire import check_id

router = APIRouter(prefix="/api/v1", tags=["ingest"])


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Counts(_Out):
    received_messages: int
    received_readings: int
    stored_messages: int
    stored_readings: int
    duplicates: int = Field(description="Messages received again (redeliveries; stored on the same points).")
    dead_letters: dict[str, int] = Field(description="Messages dead-lettered, by reason code.")
    gaps_opened: int = Field(description="Sequence gaps seen (including those filled since).")


class WorkerCounts(Counts):
    worker: str
    ts_ms: int = Field(description="When the worker wrote these figures.")
    time: str


class Gap(_Out):
    first_seq: int
    last_seq: int
    missing: int


class AgentAccounting(Counts):
    site: str
    agent: str
    missing_messages: int = Field(description="Messages missing in the open gaps.")
    open_gaps: list[Gap] = Field(description="Open sequence gaps, oldest first (at most 100 listed).")
    workers: list[WorkerCounts]


class AccountingList(_Out):
    agents: list[AgentAccounting]


def _counts(t: AgentTally) -> dict[str, object]:
    return {"received_messages": t.received_messages, "received_readings": t.received_readings,
            "stored_messages": t.stored_messages, "stored_readings": t.stored_readings,
            "duplicates": t.duplicates, "dead_letters": dict(t.dead_letters), "gaps_opened": t.gaps_opened}


def summarize(site: str, agent: str, tallies: list[AgentTally]) -> AgentAccounting:
    letters: dict[str, int] = defaultdict(int)
    for t in tallies:
        for code, n in t.dead_letters.items():
            letters[code] += n
    latest = max(tallies, key=lambda t: t.ts_ms)
    return AgentAccounting(
        site=site, agent=agent,
        received_messages=sum(t.received_messages for t in tallies),
        received_readings=sum(t.received_readings for t in tallies),
        stored_messages=sum(t.stored_messages for t in tallies),
        stored_readings=sum(t.stored_readings for t in tallies),
        duplicates=sum(t.duplicates for t in tallies),
        dead_letters=dict(sorted(letters.items())),
        gaps_opened=max(t.gaps_opened for t in tallies),  # every worker sees the group's gaps
        missing_messages=latest.missing_messages,
        open_gaps=[Gap(first_seq=lo, last_seq=hi, missing=hi - lo + 1) for lo, hi in latest.open_gaps],
        workers=[WorkerCounts(worker=t.worker, ts_ms=t.ts_ms, time=iso(t.ts_ms), **_counts(t))
                 for t in tallies],
    )


@router.get(
    "/ingest/accounting", summary="Per-agent ingest accounting", response_model=AccountingList,
    responses=BAD_PARAM,
)
def accounting(
    store: StoreDep,
    caller: PrincipalDep,
    site: Annotated[str | None, Query(description="Only agents of this site.")] = None,
    agent: Annotated[str | None, Query(description="Only this agent.")] = None,
) -> AccountingList:
    if site is not None:
        check_id("site", site)
    if agent is not None:
        check_id("agent", agent)
    by_agent: dict[tuple[str, str], list[AgentTally]] = defaultdict(list)
    for t in store.accounting():
        if (site is None or t.site == site) and (agent is None or t.agent == agent) and caller.sees(t.site):
            by_agent[(t.site, t.agent)].append(t)
    return AccountingList(agents=[summarize(s, a, ts) for (s, a), ts in sorted(by_agent.items())])
