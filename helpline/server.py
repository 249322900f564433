"""The aiohttp application: every resource opened and closed in one ``cleanup_ctx`` each.

``build_app(settings)`` opens the runtime (:func:`helpline.runtime.open_runtime`) and runs a job
worker in the event loop (:mod:`helpline.jobs`: outbox retries, sweeps). Start-up finishes (schema checked, models loaded, knowledge base
ingested when empty, unanswered messages rescheduled) before the server listens, so ``/healthz``
answering 200 means ready.
"""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

from aiohttp import web

from config.settings import Settings
from helpline import __version__
from helpline.jobs import run_worker
from helpline.runtime import Runtime, open_runtime
from state.hot import ready

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("channels") / "static"))


SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
JOB_WORKER = web.AppKey("job_worker", asyncio.Task)


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_runtime(settings) as runtime:
        app[RUNTIME] = runtime
        conversations = runtime.conversations
        resumed = await conversations.resume_pending()
        if resumed:
            log.info("resumed %d ticket(s) with unanswered messages", resumed)
        context = {"conversations": conversations, "outbox": runtime.outbox}
        async with run_worker(runtime.jobs, concurrency=settings.job_concurrency, context=context) as worker:
            app[JOB_WORKER] = worker
            yield
            await conversations.drain()  # turns started while on_shutdown ran
    log.info("stopped")


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 with backend names and versions once the server is ready."""
    rt = request.app.get(RUNTIME)
    if rt is None:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "agent_mode": (await rt.conversations.agent_mode()).value,
            "hot_state": rt.hot.backend,
            "database": {
                "backend": rt.db.backend,
                "version": await rt.db.server_version(),
                "schema_revision": rt.schema_revision,
            },
            "model": {
                "embedding": rt.embedder.model_id,
                "intent": rt.intent_model.version,
                "intents": len(rt.intent_model.labels),
            },
            "knowledge_base": {
                "version": rt.knowledge.version,
                "documents": rt.knowledge.documents,
                "chunks": rt.knowledge.chunks,
            },
            "orders": await rt.orders.count(),
            "python": platform.python_version(),
        }
    )


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when this process can take turns (started, database answers, hot state
    answers: Redis PING within 1 s), else 503 with the reason. For load balancers."""
    rt = request.app.get(RUNTIME)
    if rt is None:
        return web.json_response({"ready": False, "reason": "starting"}, status=503)
    try:
        await asyncio.wait_for(rt.db.server_version(), 2.0)
    except Exception as exc:  # any failure to answer means: send traffic elsewhere
        return web.json_response({"ready": False, "reason": f"database: {exc}"}, status=503)
    ok, reason = await ready(rt.hot)
    return web.json_response(
        {"ready": ok, "hot_state": rt.hot.backend, "reason": reason}, status=200 if ok else 503
    )


async def index(request: web.Request) -> web.FileResponse:
    """The demo page with the chat widget."""
    return web.FileResponse(STATIC_DIR / "index.html")


async def chat_socket(request: web.Request) -> web.StreamResponse:
    return await request.app[RUNTIME].webchat.handle(request)


async def _finish_turns(app: web.Application) -> None:
    # First, while the job queue is still open: a turn whose reply cannot be sent queues its retry
    # there, and open chats still receive the replies live.
    rt = app.get(RUNTIME)
    if rt is None:
        return
    if rt.conversations.in_flight:
        log.info("shutting down: finishing %d turn(s) in flight", rt.conversations.in_flight)
    await rt.conversations.drain()


async def _stop_job_worker(app: web.Application) -> None:
    # After _finish_turns. aiohttp waits (up to its shutdown timeout) for every task started after
    # start-up before it runs the cleanup that would stop the worker; the worker's and the
    # connection pool's tasks never end by themselves, so stop both here. Running jobs get the
    # worker's graceful timeout.
    log.info("shutting down: stopping the job worker, then closing open chats")
    worker = app.get(JOB_WORKER)
    if worker is not None:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    rt = app.get(RUNTIME)
    if rt is not None:  # the job queue's connection pool runs tasks of its own (closing twice is safe)
        await rt.jobs.connector.close_async()


async def _close_sockets(app: web.Application) -> None:
    rt = app.get(RUNTIME)
    if rt is not None:
        await rt.webchat.close_all()


def build_app(settings: Settings) -> web.Application:
    """The aiohttp application for ``settings``; resources open when the app starts."""
    app = web.Application(client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_runtime)
    # SIGTERM: finish turns in flight, stop the job worker, then close chats (clients reconnect
    # to another process). Then cleanup closes everything the runtime opened.
    app.on_shutdown.append(_finish_turns)
    app.on_shutdown.append(_stop_job_worker)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/ws/chat", chat_socket)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    return app


def serve(settings: Settings) -> None:
    """Run the server until SIGINT/SIGTERM (aiohttp's ``run_app`` handles both gracefully)."""
    web.run_app(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        shutdown_timeout=30.0,
        print=lambda msg: log.info(msg.strip()),
    )
