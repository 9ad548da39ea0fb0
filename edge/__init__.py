"""Vigil edge: the agent that polls devices through drivers and publishes on the bus.

Entry points: ``edge.runtime.run(settings, stop_event)`` for ``vigil edge`` (one agent
from its YAML config, ``edge.config``); ``edge.runtime.AgentRuntime`` and ``Scheduler``
to run many agents in one process (the simulated fleet). The core that decides what to
poll and publish is ``edge.agent.Agent`` (no I/O); ``edge.outbox.Outbox`` keeps telemetry
on disk until ingest acknowledges it; ``edge.health`` builds the agent's health report.
Imports only ``wire`` of Vigil.
"""
