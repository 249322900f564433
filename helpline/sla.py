"""The SLA clock of the running server: finds overdue SLA timers and records each breach once.

Timers are rows (:mod:`state.sla_timers`), written in the transactions that start, pause, meet or
cancel them, so they are as durable as the tickets. The periodic ``sla_tick`` job of the job queue
(:mod:`helpline.jobs`, every ``sla_tick_s``; procrastinate defers a periodic task once per tick across
all processes) calls :meth:`SlaClock.tick`, which breaches every running timer whose due time has
passed: a conditional UPDATE per timer, so a timer is breached exactly once even when two processes
tick at once or a process restarts mid-way (what it did not commit, the next tick does). Lateness is at
most one tick plus the time to work through the overdue timers.

After each breach's commit: its ``ticket.sla_breached`` webhook event goes to the job queue and the
inbox's live sockets are woken (the ticket's priority rose and it shows as breached).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from config.sla import SlaConfig
from helpline.webhooks import Webhooks
from state import sla_timers
from state.db import Database

log = logging.getLogger(__name__)

BATCH = 100
MAX_PER_TICK = 20_000
"""Overdue timers one tick works through at most (the next tick takes the rest)."""


class SlaClock:
    """Breaches overdue timers; ``notify`` wakes the inbox's live sockets (set by the inbox when it
    starts; None: nothing to wake)."""

    def __init__(self, db: Database, config: SlaConfig, webhooks: Webhooks) -> None:
        self.db = db
        self.config = config
        self.webhooks = webhooks
        self.notify: Callable[[], Awaitable[None]] | None = None

    async def tick(self, now: datetime | None = None) -> list[sla_timers.Breach]:
        """Breach every overdue running timer (up to :data:`MAX_PER_TICK`), :data:`BATCH` per
        transaction; returns the breaches this process recorded. Raises database errors (the job
        runs again at the next tick)."""
        breaches: list[sla_timers.Breach] = []
        while len(breaches) < MAX_PER_TICK:
            batch = await sla_timers.breach_due(
                self.db, self.config, webhooks_enabled=self.webhooks.enabled, now=now, limit=BATCH
            )
            for found in batch:
                log.warning("SLA breached: ticket=%s target=%s due_at=%s priority %s -> %s", found.ticket_id,
                            found.target, found.due_at.isoformat(), found.priority_from, found.priority_to)
                if found.webhook_event is not None:
                    await self.webhooks.queue(found.webhook_event)
            breaches.extend(batch)
            if len(batch) < BATCH:
                break
        if breaches and self.notify is not None:
            await self.notify()
        return breaches
