"""The aiohttp application: every resource opened and closed in one ``cleanup_ctx`` each.

``build_app(settings)`` opens the runtime (:func:`helpline.runtime.open_runtime`), runs a job worker
in the event loop (:mod:`helpline.jobs`: outbox retries, sweeps) and a watcher that picks up a new
knowledge-base version. Start-up finishes (schema checked, models loaded, knowledge base ingested
when empty, unanswered messages rescheduled) before the server listens, so ``/healthz`` answering
200 means ready.

Every response carries security headers (no sniffing, no framing; the demo page a strict
Content-Security-Policy). ``/healthz`` and ``/readyz`` give anonymous callers only the status;
versions, backends and error texts go to callers on this machine or with the admin token
(:mod:`helpline.clients`). :func:`serve` puts a cap on connections in front of aiohttp
(:mod:`helpline.connections`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from config.settings import Settings
from helpline import __version__
from helpline.clients import has_admin_token, is_local, parse_networks
from helpline.connections import GuardedSite
from helpline.inbox import InboxRoutes
from helpline.inbox_api import ApiRoutes
from helpline.jobs import run_worker
from helpline.memory import release_free_memory, tune_malloc
from helpline.runtime import Runtime, open_runtime
from state.hot import ready

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("channels") / "static"))


SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
JOB_WORKER = web.AppKey("job_worker", asyncio.Task)
PROXIES = web.AppKey("proxies", tuple)

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The demo page: only its own script, styles and socket."""
FILE_CSP = "default-src 'none'; frame-ancestors 'none'"
"""Static files and JSON: nothing to run or embed if opened as a page."""
EMBEDDABLE = ("/static/widget.js", "/static/widget.css")
PAGES = ("/",)
"""Loaded by other sites' pages (the embed tag), so other origins may fetch them."""


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # 404, 405, a refused websocket handshake...: raised, and they get the headers too.
        _add_security_headers(request, exc)
        raise
    if isinstance(response, web.WebSocketResponse) or response.prepared:
        return response
    _add_security_headers(request, response)
    return response


def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    is_page = request.path in PAGES or response.content_type == "text/html"
    headers.setdefault("Content-Security-Policy", PAGE_CSP if is_page else FILE_CSP)
    if request.path in EMBEDDABLE:
        headers["Cross-Origin-Resource-Policy"] = "cross-origin"


def _privileged(request: web.Request) -> bool:
    """A caller on this machine, or one with the admin token: may see versions and error texts."""
    settings = request.app[SETTINGS]
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    return is_local(request, request.app[PROXIES]) or has_admin_token(request, token)


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with open_runtime(settings) as runtime:
        app[RUNTIME] = runtime
        conversations = runtime.conversations
        resumed = await conversations.resume_pending()
        if resumed:
            log.info("resumed %d ticket(s) with unanswered messages", resumed)
        context = {"conversations": conversations, "outbox": runtime.outbox, "sla": runtime.sla}
        async with run_worker(runtime.jobs, concurrency=settings.job_concurrency, context=context) as worker:
            app[JOB_WORKER] = worker
            watcher = asyncio.create_task(_watch_knowledge(runtime), name="kb-watcher")
            try:
                yield
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await conversations.drain()  # turns started while on_shutdown ran
    log.info("stopped")


async def _watch_knowledge(rt: Runtime) -> None:
    # A new knowledge-base version (helpline kb ingest/add/remove, from any machine) is served
    # within one interval, with no restart; a failed check is retried at the next one.
    while True:
        await asyncio.sleep(rt.settings.kb_refresh_interval_s)
        try:
            if await rt.knowledge.refresh():
                log.info("knowledge base %s loaded (%d documents)", rt.knowledge.version, rt.knowledge.documents)
        except Exception as exc:  # the database may be down for a moment; turns report that
            log.warning("knowledge-base check failed: %s", exc)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 ``{"status": "ok"}`` once the server is ready (503 while starting).
    Callers on this machine or with the admin token also get the versions and backends."""
    rt = request.app.get(RUNTIME)
    if rt is None:
        return web.json_response({"status": "starting"}, status=503)
    if not _privileged(request):
        return web.json_response({"status": "ok"})
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
            "data_dir": str(rt.settings.data_dir),
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
            "chat_sockets": rt.webchat.open_sockets,
            "python": platform.python_version(),
        }
    )


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: 200 when this process can take turns (started, database answers, hot state
    answers: Redis PING within 1 s), else 503 naming the part that failed (``database``,
    ``hot_state``). Callers on this machine or with the admin token also get the error text."""
    rt = request.app.get(RUNTIME)
    if rt is None:
        return web.json_response({"ready": False, "reason": "starting"}, status=503)
    detail = _privileged(request)
    try:
        async with asyncio.timeout(2.0):
            await rt.db.server_version()
    except Exception as exc:  # any failure to answer means: send traffic elsewhere
        body: dict[str, Any] = {"ready": False, "reason": "database"}
        if detail:
            body["detail"] = f"database: {exc}"
        return web.json_response(body, status=503)
    ok, reason = await ready(rt.hot)
    body = {"ready": ok}
    if not ok:
        body["reason"] = "hot_state"
    if detail:
        body.update(hot_state=rt.hot.backend, detail=reason)
    return web.json_response(body, status=200 if ok else 503)


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
    app = web.Application(client_max_size=1024 * 1024, middlewares=[security_headers])
    app[SETTINGS] = settings
    app[PROXIES] = parse_networks(settings.trusted_proxies)
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
    InboxRoutes(settings, lambda: app[RUNTIME], app[PROXIES]).add_to(app)
    ApiRoutes(settings, lambda: app[RUNTIME], app[PROXIES]).add_to(app)  # /agent/api: JSON, API tokens
    return app


def serve(settings: Settings) -> None:
    """Run the server until SIGINT/SIGTERM (graceful: see the shutdown steps in :func:`build_app`).

    Like aiohttp's ``run_app``, with a :class:`~helpline.connections.GuardedSite`: at most
    ``max_connections`` open connections (``max_connections_per_address`` per peer, trusted
    proxies exempt), and ``http_idle_timeout_s`` to send a complete request.
    """
    log.info("data folder %s; database %s", settings.data_dir, settings.database_display)
    tune_malloc()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(settings))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass  # a signal: the main task is cancelled below, and its cleanup runs the shutdown steps
    finally:
        # As aiohttp's run_app: first the main task (runner.cleanup: finish turns, stop jobs, close
        # chats), and only then whatever is left.
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(settings: Settings) -> None:
    runner = web.AppRunner(
        build_app(settings), handle_signals=True, access_log=None, shutdown_timeout=30.0,
        keepalive_timeout=settings.http_idle_timeout_s,
    )
    await runner.setup()
    try:
        site = GuardedSite(
            runner, settings.host, settings.port,
            guard_options={
                "max_total": settings.max_connections,
                "max_per_address": settings.max_connections_per_address,
                "exempt": parse_networks(settings.trusted_proxies),
            },
        )
        await site.start()
        release_free_memory()
        log.info("serving on http://%s:%d (Ctrl-C or SIGTERM to stop)", settings.host, settings.port)
        await asyncio.Event().wait()  # until a signal raises GracefulExit here
    finally:
        await runner.cleanup()
