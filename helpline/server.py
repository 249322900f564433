"""The aiohttp application: every resource opened and closed in one ``cleanup_ctx`` each.

``build_app(settings)`` assembles database -> models -> knowledge base -> order store -> router ->
conversation service -> channels. Start-up finishes (schema checked, models loaded, knowledge base
ingested when empty, unanswered messages rescheduled) before the server listens, so ``/healthz``
answering 200 means ready.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aiohttp import web

from bot.embeddings import Embedder
from bot.intent_model import IntentModel, IntentSpec, load_intents, load_or_train
from bot.knowledge import KnowledgeBase
from bot.router import Router
from bot.sentiment import Sentiment
from bot.understanding import Understander
from channels.webchat import WebChatChannel
from config.settings import AgentMode, Settings
from helpline import __version__
from helpline.conversation import Conversations
from state.db import Database, open_database
from state.delivery import Delivery
from state.hot import HotState, close_hot_state, open_hot_state, ready
from state.locks import Locks
from state.migrate import ensure_schema
from state.orders import JsonOrderStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("channels") / "static"))


@dataclass
class Runtime:
    """Everything the running server holds; tests reach in through ``app[RUNTIME]``."""

    settings: Settings
    db: Database
    embedder: Embedder
    intents: dict[str, IntentSpec]
    intent_model: IntentModel
    knowledge: KnowledgeBase
    orders: JsonOrderStore
    router: Router
    understander: Understander
    conversations: Conversations
    webchat: WebChatChannel
    delivery: Delivery
    locks: Locks
    hot: HotState
    schema_revision: str
    started_at: float


SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)


async def _runtime(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.effective_database_url
    revision = await ensure_schema(url, settings.migrate.value)
    db = open_database(url)
    hot: HotState | None = None
    try:
        hot = await open_hot_state(
            settings.redis_url, lock_ttl_s=settings.lock_ttl_s, namespace=settings.redis_namespace
        )
        embedder = await asyncio.to_thread(Embedder.load)
        intents = load_intents(settings.intents_file)
        log.info("loading the intent model (trained on first start, a few seconds)")
        intent_model = await asyncio.to_thread(
            load_or_train, settings.intents_file, settings.models_dir, embedder, settings.intent_model_dir
        )
        knowledge = KnowledgeBase(db, embedder)
        await knowledge.load()
        if knowledge.version is None:
            log.info("knowledge base empty: ingesting %s", settings.kb_dir)
            await knowledge.ingest(settings.kb_dir)
        orders = await JsonOrderStore.load(settings.orders_file)
        understander = Understander(embedder, intent_model, Sentiment())
        router = Router(settings, intents, understander, knowledge, orders)
        locks, delivery = hot.locks, hot.delivery
        flags = hot.flags
        outage_errors = hot.outage_errors

        async def agent_mode() -> AgentMode:
            # The run-time switch shared by all processes wins; an unreadable flag falls back to
            # the configured AGENT_MODE rather than failing the customer's turn.
            try:
                shared = await flags.get_agent_mode()
            except outage_errors:
                log.warning("kill-switch flag unreadable; using AGENT_MODE=%s", settings.agent_mode.value)
                shared = None
            return AgentMode(shared) if shared else settings.agent_mode

        conversations = Conversations(
            settings, db, router, locks, delivery, agent_mode=agent_mode, outage_errors=outage_errors,
            limiter=hot.limiter,
        )
        runtime = Runtime(
            settings=settings, db=db, embedder=embedder, intents=intents, intent_model=intent_model,
            knowledge=knowledge, orders=orders, router=router, understander=understander,
            conversations=conversations, delivery=delivery, locks=locks, hot=hot,
            webchat=WebChatChannel(conversations, delivery),
            schema_revision=revision, started_at=time.time(),
        )
        app[RUNTIME] = runtime
        resumed = await conversations.resume_pending()
        if resumed:
            log.info("resumed %d ticket(s) with unanswered messages", resumed)
        sweeper = asyncio.create_task(_sweep_forever(conversations, settings), name="sweeper")
        yield
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await conversations.drain()
    finally:
        if hot is not None:
            await close_hot_state(hot)
        await db.dispose()


async def _sweep_forever(conversations: Conversations, settings: Settings) -> None:
    """Every ``sweep_interval_s``: pick up unanswered messages that no worker is on."""
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            found = await conversations.sweep(settings.stale_after_s)
            if found:
                log.warning("sweep picked up %d ticket(s) with stale unanswered messages", found)
        except Exception:  # a database blip must not end the sweeper
            log.exception("sweep failed; retrying in %.0f s", settings.sweep_interval_s)


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


async def _close_sockets(app: web.Application) -> None:
    rt = app.get(RUNTIME)
    if rt is not None:
        await rt.webchat.close_all()


def build_app(settings: Settings) -> web.Application:
    """The aiohttp application for ``settings``; resources open when the app starts."""
    app = web.Application(client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_runtime)
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
