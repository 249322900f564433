"""Run-time flags shared by every process, kept in the system of record (table ``runtime_flags``).

Two flags today:

- ``agent_mode``: the kill switch set at run time (``helpline agent-mode``). ``enabled`` or
  ``disabled``; absent means "follow each process's ``AGENT_MODE``". It lives in the database, not in
  Redis, because Redis may run without persistence: a Redis restart must never turn the bot back on.
- ``session_secret``: the key that signs web-chat session ids when ``HELPLINE_SECRET_KEY`` is not
  set, created once by whichever process starts first, so every process verifies every other's ids.

:class:`KillSwitch` is what a turn asks: it reads the flag at most once per ``refresh_s`` (1 s), so a
change reaches every process within that time without a query per turn, and it fails closed: a
process that cannot read the flag treats the bot as switched off.

Must not: import Redis, the router or any channel.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from config.settings import AgentMode
from state.db import Database
from state.models import Event, RuntimeFlag, utcnow

log = logging.getLogger(__name__)

AGENT_MODE = "agent_mode"
SESSION_SECRET = "session_secret"
AGENT_MODES = tuple(mode.value for mode in AgentMode)


def check_agent_mode(mode: str) -> str:
    """``mode`` if it is a valid agent mode (``enabled``/``disabled``); else ``ValueError`` (a typo
    must not silently leave the kill switch off)."""
    if mode not in AGENT_MODES:
        raise ValueError(f"agent mode must be one of {', '.join(AGENT_MODES)}, got {mode!r}")
    return mode


async def get_flag(db: Database, key: str) -> str | None:
    """The flag's value, or None when it is not set. Raises the database's errors."""
    async with db.sessions() as session:
        return await session.scalar(select(RuntimeFlag.value).where(RuntimeFlag.key == key))


async def set_agent_mode(db: Database, mode: str | None, *, actor: str, reason: str | None = None) -> None:
    """Set the run-time kill switch for every process (``enabled``/``disabled``), or clear it
    (None: follow each process's ``AGENT_MODE``). Appends an ``agent_mode`` event (payload
    ``{"mode", "actor", "reason"}``) naming ``actor`` (who changed it: ``cli:USER@HOST`` or
    ``agent:ID EMAIL``) and the ``reason`` given, if any, in the same transaction. Raises
    ``ValueError`` for an unknown mode."""
    if mode is not None:
        check_agent_mode(mode)
    now = utcnow()
    async with db.write() as session:
        if mode is None:
            await session.execute(delete(RuntimeFlag).where(RuntimeFlag.key == AGENT_MODE))
        else:
            row = await session.get(RuntimeFlag, AGENT_MODE)
            if row is None:
                session.add(RuntimeFlag(key=AGENT_MODE, value=mode, updated_at=now, updated_by=actor))
            else:
                row.value, row.updated_at, row.updated_by = mode, now, actor
        session.add(
            Event(ticket_id=None, kind="agent_mode", payload={"mode": mode, "actor": actor, "reason": reason},
                  created_at=now)
        )


async def session_secret(db: Database) -> str:
    """The deployment's web-chat signing key: read it, or create it once (64 random hex
    characters). Safe when several processes start together: the primary key decides and the loser
    reads the winner's key."""
    existing = await get_flag(db, SESSION_SECRET)
    if existing:
        return existing
    try:
        async with db.write() as session:
            session.add(
                RuntimeFlag(key=SESSION_SECRET, value=secrets.token_hex(32), updated_at=utcnow(),
                            updated_by="helpline")
            )
    except IntegrityError:
        pass  # another process created it first
    value = await get_flag(db, SESSION_SECRET)
    if not value:  # pragma: no cover - the row was just written or found
        raise RuntimeError("could not create the session signing key")
    return value


class KillSwitch:
    """The agent mode a turn must obey: the database flag when set, else ``configured``
    (``AGENT_MODE``).

    :meth:`mode` reads the flag at most once per ``refresh_s`` seconds (0: on every call). When the
    read fails for any reason the answer is ``disabled`` (fail closed, logged once per failure run)
    and the next call reads again.
    """

    def __init__(
        self, db: Database, configured: AgentMode, *, refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._configured = configured
        self._refresh_s = refresh_s
        self._clock = clock
        self._mode = configured
        self._read_at: float | None = None
        self._failing = False

    async def mode(self) -> AgentMode:
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self._refresh_s:
            return self._mode
        try:
            value = await get_flag(self._db, AGENT_MODE)
        except Exception as exc:  # any failure to read the switch: the bot stays off
            if not self._failing:
                log.error("kill switch unreadable (%s); treating the bot as switched off", exc)
            self._failing = True
            self._read_at = None
            return AgentMode.disabled
        if self._failing:
            log.warning("kill switch readable again")
        self._failing = False
        if value is None:
            self._mode = self._configured
        elif value in AGENT_MODES:
            self._mode = AgentMode(value)
        else:  # edited by hand into something unknown: off, as for an unreadable switch
            log.error("kill switch holds %r, not enabled/disabled; treating the bot as switched off", value)
            self._mode = AgentMode.disabled
        self._read_at = now
        return self._mode
