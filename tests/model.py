"""The rule, as a reference model: apply every heartbeat and disconnect one at a
time in timestamp order. Ties: a disconnect comes after a heartbeat at the same
time; among heartbeats at the same time the greater replica comes last, NULL lowest."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Beat:
    agent_id: uuid.UUID
    at: datetime
    replica_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Disconnect:
    agent_id: uuid.UUID
    at: datetime


@dataclass
class AgentState:
    first_connected_at: datetime | None = None
    last_connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    last_connected_replica_id: uuid.UUID | None = None


def _order(event: Beat | Disconnect) -> tuple[datetime, int, int, int]:
    if isinstance(event, Disconnect):
        return (event.at, 1, 0, 0)
    replica = event.replica_id
    return (event.at, 0, 0 if replica is None else 1, replica.int if replica else 0)


def expected_states(events: Iterable[Beat | Disconnect]) -> dict[uuid.UUID, AgentState]:
    states: dict[uuid.UUID, AgentState] = {}
    for event in sorted(events, key=_order):
        state = states.setdefault(event.agent_id, AgentState())
        if isinstance(event, Beat):
            if state.first_connected_at is None:
                state.first_connected_at = event.at
            state.last_connected_at = event.at
            state.last_connected_replica_id = event.replica_id
            state.disconnected_at = None
        else:
            state.disconnected_at = event.at
    return states


def actual_states(conn, agent_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, AgentState]:  # type: ignore[no-untyped-def]
    rows = conn.execute(
        "SELECT id, first_connected_at, last_connected_at, disconnected_at, last_connected_replica_id "
        "FROM public.workspace_agents WHERE id = ANY(%s)",
        (list(agent_ids),),
    ).fetchall()
    return {row[0]: AgentState(*row[1:]) for row in rows}
