"""Background work on a job queue: outbox retries and the periodic sweeps.

Library: procrastinate (pinned in pyproject.toml). Why it: jobs live in PostgreSQL, the system of
record, next to the rows they act on, so they are as durable as the data and need no second store to
back up; deferring is one INSERT and workers wake on LISTEN/NOTIFY; it has retry strategies with
backoff, queueing locks (one queued job per key), periodic tasks deferred once per tick across all
processes, and heartbeats that expose jobs of a dead worker. Redis-backed queues (arq, saq) would make
Redis, our cache-grade hot state, the keeper of work that must not be lost. On the embedded default
(SQLite, one process) the same tasks run on procrastinate's in-memory connector; the durable record is
still the database (outbox rows, unanswered messages), which the sweeps read at start and every tick.

Every process runs a worker in its event loop (no separate worker process to deploy), restarted
with backoff when procrastinate stops it (a side task failed: Postgres restarted, LISTEN connection
lost). Effects happen once because each task re-checks the database under a claim: an outbox entry is sent only by the
worker that claimed it (:func:`state.outbox.claim`), and a ticket's turns only by its lock holder.

Tasks (names as stored in ``procrastinate_jobs.task_name``):

- ``deliver_outbound(entry_id)``: one send attempt; retried every ``2**n`` s (n = attempt) until
  ``outbox_max_attempts``.
- ``deliver_webhook(row_id)``: one handoff-webhook send attempt (:mod:`helpline.webhooks`); retried
  after the jittered backoff the attempt asks for, until ``webhook_max_attempts``.
- ``sweep`` (every ``sweep_interval_s``): schedules tickets whose messages wait unanswered for over
  ``stale_after_s`` (a crashed worker's), and re-queues outbox entries and webhook events nobody is
  sending.
- ``sla_tick`` (every ``sla_tick_s``): breaches overdue SLA timers, each once (:mod:`helpline.sla`).
- ``retry_stalled_jobs`` (every minute): jobs whose worker stopped sending heartbeats are retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import procrastinate
import tenacity
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.testing import InMemoryConnector
from sqlalchemy.engine import make_url

from config.settings import Settings
from helpline.conversation import Conversations
from helpline.outbox import Outbox
from helpline.sla import SlaClock
from helpline.webhooks import BackoffRetry, RetryLater, Webhooks
from state import outbox as outbox_store

log = logging.getLogger(__name__)

DELIVER = "deliver_outbound"
DELIVER_WEBHOOK = "deliver_webhook"
SWEEP = "sweep"
RETRY_STALLED = "retry_stalled_jobs"
SLA_TICK = "sla_tick"
QUEUE = "helpline"


class SendFailed(RuntimeError):
    """An outbox attempt failed and another is due (the job queue retries it)."""


WORKER_CONNECTIONS = 4
"""Connections a worker holds besides its jobs: LISTEN, job fetching, the periodic deferrer, heartbeats."""


def connector_for(database_url: str, job_concurrency: int) -> procrastinate.BaseConnector:
    """Postgres URL -> jobs in that database (psycopg 3 pool); anything else -> in memory.

    The pool has room for ``job_concurrency`` running jobs plus the worker's own connections: a pool
    smaller than that makes the worker's tasks wait (30 s each) for a connection. The SQLAlchemy URL
    (``postgresql+asyncpg://...``) is rewritten for libpq; its query options must be libpq ones
    (``sslmode=...``).
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return procrastinate.PsycopgConnector(
            conninfo=conninfo, min_size=1, max_size=job_concurrency + WORKER_CONNECTIONS
        )
    return InMemoryConnector()


def _cron_every(seconds: int) -> str:
    if not 1 <= seconds <= 60:
        raise ValueError(f"a periodic interval must be 1-60 s, got {seconds}")
    return f"* * * * * */{seconds}"


def build_job_app(settings: Settings) -> procrastinate.App:
    """The job app for ``settings``, with Helpline's tasks registered. Open it with ``open_async``.

    Tasks read what they act on from the worker's ``additional_context`` (``conversations``,
    ``outbox``), which :func:`run_worker` passes.
    """
    app = procrastinate.App(connector=connector_for(settings.effective_database_url, settings.job_concurrency))
    retry = procrastinate.RetryStrategy(
        max_attempts=settings.outbox_max_attempts, exponential_wait=2, retry_exceptions={SendFailed}
    )

    @app.task(name=DELIVER, queue=QUEUE, retry=retry, pass_context=True)
    async def deliver_outbound(context: procrastinate.JobContext, entry_id: int) -> None:
        outbox: Outbox = context.additional_context["outbox"]
        if await outbox.attempt(entry_id) is False:
            raise SendFailed(f"outbox entry {entry_id}: send failed, will retry")

    @app.task(
        name=DELIVER_WEBHOOK, queue=QUEUE, retry=BackoffRetry(settings.webhook_max_attempts), pass_context=True
    )
    async def deliver_webhook(context: procrastinate.JobContext, row_id: int) -> None:
        # Webhooks holds no connection, so each job makes its own from the worker's database.
        outbox: Outbox = context.additional_context["outbox"]
        outcome = await Webhooks(outbox.db, settings).attempt(row_id)
        if outcome.retry_in_s is not None:
            raise RetryLater(f"webhook event {row_id}: send failed, will retry", outcome.retry_in_s)

    @app.periodic(cron=_cron_every(settings.sweep_interval_s))
    @app.task(name=SWEEP, queue=QUEUE, pass_context=True)
    async def sweep(context: procrastinate.JobContext, timestamp: int) -> None:
        conversations: Conversations = context.additional_context["conversations"]
        outbox: Outbox = context.additional_context["outbox"]
        found = await conversations.sweep(settings.stale_after_s)
        if found:
            log.warning("sweep picked up %d ticket(s) with stale unanswered messages", found)
        for entry_id in await outbox_store.due(outbox.db, older_than_s=settings.stale_after_s):
            await defer_delivery(context.app, entry_id)
        for row_id in await Webhooks(outbox.db, settings).due(settings.stale_after_s):
            await defer_webhook(context.app, row_id)

    @app.periodic(cron=_cron_every(settings.sla_tick_s))
    @app.task(name=SLA_TICK, queue=QUEUE, pass_context=True)
    async def sla_tick(context: procrastinate.JobContext, timestamp: int) -> None:
        clock: SlaClock = context.additional_context["sla"]
        await clock.tick()

    @app.periodic(cron="0 * * * * *")
    @app.task(name=RETRY_STALLED, queue=QUEUE, pass_context=True)
    async def retry_stalled_jobs(context: procrastinate.JobContext, timestamp: int) -> None:
        manager = context.app.job_manager
        for job in await manager.get_stalled_jobs():
            log.warning("retrying job %s (%s): its worker stopped", job.id, job.task_name)
            await manager.retry_job(job)

    return app


async def defer_delivery(app: procrastinate.App, entry_id: int, delay_s: int = 0) -> None:
    """Queue a send attempt for outbox entry ``entry_id`` (at most one queued per entry)."""
    try:
        await app.configure_task(
            DELIVER, queueing_lock=f"outbox-{entry_id}", schedule_in={"seconds": delay_s}
        ).defer_async(entry_id=entry_id)
    except AlreadyEnqueued:
        pass


async def defer_webhook(app: procrastinate.App, row_id: int, delay_s: float = 0) -> None:
    """Queue a send attempt for webhook event row ``row_id`` (at most one queued per event)."""
    try:
        await app.configure_task(
            DELIVER_WEBHOOK, queueing_lock=f"webhook-{row_id}", schedule_in={"seconds": delay_s}
        ).defer_async(row_id=row_id)
    except AlreadyEnqueued:
        pass


def _restart_worker(state: tenacity.RetryCallState) -> bool:
    """Restart unless we are shutting down (this task is being cancelled) or the worker was."""
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        return False
    outcome = state.outcome  # set: tenacity asks after every run
    return not outcome.failed or isinstance(outcome.exception(), Exception)


def _log_restart(state: tenacity.RetryCallState) -> None:
    outcome = state.outcome
    why = f"failed: {outcome.exception()!r}" if outcome is not None and outcome.failed else "stopped"
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("job worker %s; restarting in %.0f s (restart %d)", why, wait, state.attempt_number)


async def _supervised(run: Callable[..., Awaitable[None]], **options: Any) -> None:
    """``run(**options)`` for ever: procrastinate stops a worker when one of its side tasks fails,
    which a Postgres restart or a dropped LISTEN connection does, and nothing else would start it
    again (no sweeps, no outbox retries until the process restarts). Waits 1, 2, 4 ... 30 s
    between restarts."""
    retrying = tenacity.AsyncRetrying(
        retry=_restart_worker,
        wait=tenacity.wait_exponential(multiplier=1, min=1, max=30),
        before_sleep=_log_restart,
        reraise=True,
    )
    await retrying(run, **options)


@asynccontextmanager
async def run_worker(
    app: procrastinate.App, *, concurrency: int, context: dict[str, Any]
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a worker for Helpline's queue in this event loop until the block exits; on exit it
    stops taking jobs and gives running ones up to 10 s to finish (unfinished: retried later)."""
    task = asyncio.create_task(
        _supervised(
            app.run_worker_async,
            queues=[QUEUE],
            name=f"{socket.gethostname()}-{os.getpid()}",
            concurrency=concurrency,
            additional_context=context,
            install_signal_handlers=False,
            shutdown_graceful_timeout=10.0,
            delete_jobs="successful",
        ),
        name="job-worker",
    )
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
