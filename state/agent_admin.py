"""What an admin changes from the inbox's admin pages: agents' roles and access, with the guards
that keep a deployment from locking itself out, and the kill switch's history.

Creating agents and setting passwords stay in :mod:`state.agents` (one place hashes passwords);
the kill switch itself stays in :mod:`state.flags` (one place writes it, for the page and the
command alike). Every change made here appends an ``agent_admin`` event (``ticket_id`` None,
payload ``{"action", "agent_id", "email", "by", ...}``) in the same transaction.

Guards (:class:`GuardError`, a :class:`state.agents.AgentError`): an admin never disables
themselves, and the last active admin is never demoted or disabled. On Postgres the active admins'
rows are locked (``FOR UPDATE``) before the check, so two admins demoting each other at once
cannot leave none; SQLite runs one writer at a time. Must not import aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from state.agents import ROLES, AgentError, AgentView
from state.db import Database
from state.flags import AGENT_MODE
from state.models import Agent, AgentSession, Event, RuntimeFlag, utcnow

AGENT_ADMIN_EVENT = "agent_admin"
MODE_EVENT = "agent_mode"  # written by state.flags.set_agent_mode


class GuardError(AgentError):
    """A change refused because it would lock admins out (yourself, or the last active admin)."""


class UnknownAgent(AgentError):
    """No agent has the id given."""


@dataclass(frozen=True)
class AgentRow:
    """One line of the agents page. ``last_seen``: the latest use of any of the agent's live login
    sessions (None when none is live: logged out, expired or never logged in)."""

    agent: AgentView
    created_at: datetime
    last_seen: datetime | None


@dataclass(frozen=True)
class SwitchState:
    """The kill switch as the database holds it: ``mode`` None when no switch is set (each
    process follows its own ``AGENT_MODE``)."""

    mode: str | None
    updated_by: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class SwitchChange:
    """One ``agent_mode`` event: ``mode`` None = cleared (``helpline agent-mode default``)."""

    at: datetime
    mode: str | None
    actor: str
    reason: str | None


def actor_of(agent: AgentView) -> str:
    """How an agent is named in events and ``runtime_flags.updated_by``: ``agent:ID EMAIL``, cut to
    the column's 200 characters."""
    return f"agent:{agent.id} {agent.email}"[:200]


async def agents_with_activity(db: Database) -> list[AgentRow]:
    """Every agent, oldest first, with the last use of a live login session."""
    seen = (
        select(AgentSession.agent_id, func.max(AgentSession.seen_at).label("seen"))
        .group_by(AgentSession.agent_id).subquery()
    )
    async with db.sessions() as session:
        rows = (await session.execute(
            select(Agent, seen.c.seen).outerjoin(seen, seen.c.agent_id == Agent.id).order_by(Agent.id)
        )).all()
    return [AgentRow(_view(a), a.created_at, last) for a, last in rows]


async def find(db: Database, agent_id: int) -> AgentView | None:
    """The agent with ``agent_id``, or None."""
    async with db.sessions() as session:
        agent = await session.get(Agent, agent_id)
        return None if agent is None else _view(agent)


async def set_role(db: Database, agent_id: int, role: str, *, by: AgentView) -> AgentView:
    """Make agent ``agent_id`` an ``agent`` or an ``admin``. Raises :class:`AgentError` for an
    unknown role, :class:`UnknownAgent`, :class:`GuardError` when it would demote the last active admin."""
    if role not in ROLES:
        raise AgentError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    async with db.write() as session:
        admins = await _lock_active_admins(session)
        agent = await _get(session, agent_id)
        if agent.role == "admin" and role != "admin" and agent.disabled_at is None and admins == {agent.id}:
            raise GuardError(f"{agent.email} is the last active admin: make another agent admin first")
        before, agent.role = agent.role, role
        _record(session, "role", agent, by, {"from": before, "to": role})
        return _view(agent)


async def set_active(db: Database, agent_id: int, active: bool, *, by: AgentView) -> AgentView:
    """Enable (``active``) or disable agent ``agent_id``; disabling ends its login sessions at
    once. Raises :class:`UnknownAgent`, or :class:`GuardError` for disabling
    yourself or the last active admin."""
    async with db.write() as session:
        admins = await _lock_active_admins(session)
        agent = await _get(session, agent_id)
        if not active:
            if agent.id == by.id:
                raise GuardError("you cannot disable your own account: ask another admin")
            if agent.role == "admin" and admins == {agent.id}:
                raise GuardError(f"{agent.email} is the last active admin: make another agent admin first")
            if agent.disabled_at is None:
                agent.disabled_at = utcnow()
            await session.execute(delete(AgentSession).where(AgentSession.agent_id == agent.id))
        else:
            agent.disabled_at = None
        _record(session, "enable" if active else "disable", agent, by, {})
        return _view(agent)


async def record(db: Database, action: str, agent: AgentView, *, by: AgentView) -> None:
    """Append an ``agent_admin`` event for a change made through :mod:`state.agents` (``add``,
    ``password``)."""
    async with db.write() as session:
        session.add(Event(ticket_id=None, kind=AGENT_ADMIN_EVENT, created_at=utcnow(),
                          payload={"action": action, "agent_id": agent.id, "email": agent.email, "by": actor_of(by)}))


async def switch_state(db: Database) -> SwitchState:
    """The kill switch's row in ``runtime_flags``, as :class:`SwitchState`."""
    async with db.sessions() as session:
        row = await session.get(RuntimeFlag, AGENT_MODE)
    if row is None:
        return SwitchState(None, None, None)
    return SwitchState(row.value, row.updated_by, row.updated_at)


async def switch_history(db: Database, limit: int = 20) -> list[SwitchChange]:
    """The latest ``limit`` kill-switch changes, newest first (from the page and the command)."""
    async with db.sessions() as session:
        events = (await session.scalars(
            select(Event).where(Event.ticket_id.is_(None), Event.kind == MODE_EVENT)
            .order_by(Event.id.desc()).limit(limit)
        )).all()
    return [
        SwitchChange(e.created_at, e.payload.get("mode"), str(e.payload.get("actor", "?")), e.payload.get("reason"))
        for e in events
    ]


# --- helpers ---------------------------------------------------------------------------------------


def _view(agent: Agent) -> AgentView:
    return AgentView(agent.id, agent.email, agent.display_name, agent.role, agent.disabled_at is not None)


async def _lock_active_admins(session: Any) -> set[int]:
    # FOR UPDATE (Postgres; SQLite ignores it and runs one writer at a time): a concurrent demotion
    # waits here, then re-reads the rows as committed, so both cannot pass the "not the last" check.
    rows = await session.scalars(
        select(Agent.id).where(Agent.role == "admin", Agent.disabled_at.is_(None)).order_by(Agent.id).with_for_update()
    )
    return set(rows)


async def _get(session: Any, agent_id: int) -> Agent:
    agent = await session.get(Agent, agent_id, with_for_update=True)
    if agent is None:
        raise UnknownAgent(f"no agent with id {agent_id}")
    return agent


def _record(session: Any, action: str, agent: Agent, by: AgentView, extra: dict[str, Any]) -> None:
    session.add(Event(ticket_id=None, kind=AGENT_ADMIN_EVENT, created_at=utcnow(),
                      payload={"action": action, "agent_id": agent.id, "email": agent.email, "by": actor_of(by), **extra}))
