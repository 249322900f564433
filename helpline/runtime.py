"""Open and close everything a running Helpline holds, in one place.

``open_runtime(settings)`` assembles database -> hot state -> models -> knowledge base -> order store ->
router -> outbox -> conversation service -> channels -> job queue, and closes them in reverse. The server
(:mod:`helpline.server`) and the eval harness (``helpline eval``) both use it, so evaluated turns take
exactly the code path live traffic takes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import procrastinate

from bot.embeddings import Embedder
from bot.intent_model import IntentModel, IntentSpec, load_intents, load_or_train, routing_intents
from bot.knowledge import KnowledgeBase
from bot.order_policy import default_policy
from bot.ownership import AttemptLimits
from bot.playbook import Playbook
from bot.router import Router
from bot.sentiment import Sentiment
from bot.understanding import Understander
from channels.sessions import SessionIssuer
from channels.webchat import CHANNELS as WEBCHAT_CHANNELS
from channels.webchat import WebChatChannel
from config.replies import load_replies
from config.settings import Settings
from config.sla import load_sla_config
from helpline.clients import parse_networks
from helpline.conversation import Conversations
from helpline.jobs import build_job_app, defer_delivery, defer_webhook
from helpline.outbox import Outbox
from helpline.inbox_live import InboxFeed
from helpline.sla import SlaClock
from helpline.webhooks import Webhooks
from state.db import Database, open_database
from state.db import OUTAGE_ERRORS as DATABASE_OUTAGE_ERRORS
from state.delivery import Delivery
from state.flags import KillSwitch, session_secret
from state.hot import HotState, close_hot_state, open_hot_state
from state.locks import Locks
from state.migrate import ensure_schema
from state.orders import JsonOrderStore

log = logging.getLogger(__name__)


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
    outbox: Outbox
    sla: SlaClock  # SLA policies (sla.config) and the breach check
    inbox_feed: InboxFeed  # the agent inbox's live queue: notify() after a change to the queue
    webhooks: Webhooks  # the handoff webhook: send_now(row_id) after committing state.webhooks.add
    jobs: procrastinate.App
    schema_revision: str
    started_at: float


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Yield a started :class:`Runtime` for ``settings``: schema checked or migrated (per
    ``HELPLINE_MIGRATE``), models loaded (trained on first use), knowledge base ingested when empty.

    Raises ``PendingMigrationsError`` (migrate=refuse), ``IntentConfigError`` (bad intents file),
    ``OSError``/``ValueError`` for unreadable configuration, and the hot-state backend's connection
    errors when Redis is configured but down. Background work (workers, sweeps) is not started here.
    """
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
        # A model trained elsewhere (helpline train) needs only the intents' names and tiers.
        intents = load_intents(settings.intents_file, min_examples=0 if settings.intent_model_dir else 15)
        if settings.intent_model_dir is not None:
            log.info("loading the intent model from %s", settings.intent_model_dir)
        else:
            log.info("loading the intent model from %s (trained there first if it has none: under a minute)",
                     settings.models_dir)
        intent_model = await asyncio.to_thread(
            functools.partial(
                load_or_train, settings.intents_file, settings.models_dir, embedder, settings.intent_model_dir,
                train_elsewhere=True,
            )
        )
        knowledge = KnowledgeBase(db, embedder)
        await knowledge.load()
        if knowledge.version is None:
            log.info("knowledge base empty: ingesting %s", settings.kb_dir)
            await knowledge.ingest(settings.kb_dir)
        orders = await JsonOrderStore.load(settings.orders_file)
        understander = Understander(embedder, intent_model, Sentiment())
        attempts = AttemptLimits(
            hot.limiter, per_customer=settings.verify_failures_per_customer,
            per_order=settings.verify_failures_per_order, window_s=settings.verify_window_s,
        )
        sla_config = load_sla_config(settings.sla_file)
        replies = load_replies(settings.replies_file)
        default_policy()  # a bad config/order_policy.yaml stops the start, not the first answer
        router = Router(
            settings, routing_intents(intents, intent_model), understander, knowledge, orders, attempts,
            replies=replies, sla=sla_config, playbook=Playbook.load(settings.playbook_file),
        )
        # Shared state or the database unreachable: refuse work with "try again", never lose it.
        outage_errors = (*hot.outage_errors, *DATABASE_OUTAGE_ERRORS)
        # The kill switch's state of record is the database (a Redis restart must not turn the bot
        # back on); read at most once a second, and off whenever it cannot be read.
        kill_switch = KillSwitch(db, settings.agent_mode)

        outbox = Outbox(
            db, {}, lease_s=settings.outbox_lease_s, max_attempts=settings.outbox_max_attempts
        )
        webhooks = Webhooks(db, settings)
        sla = SlaClock(db, sla_config, webhooks)
        inbox_feed = InboxFeed(db, hot)  # cheap: reads nothing until an agent's page connects
        sla.notify = inbox_feed.notify
        conversations = Conversations(
            settings, db, router, hot.locks, hot.delivery, outbox, agent_mode=kill_switch.mode,
            outage_errors=outage_errors, limiter=hot.limiter, idempotency=hot.idempotency,
            webhooks=webhooks, sla=sla.config, on_queue_change=inbox_feed.notify,
        )
        secret = (
            settings.secret_key.get_secret_value() if settings.secret_key is not None
            else await session_secret(db)
        )
        webchat = WebChatChannel(
            conversations, hot.delivery, SessionIssuer(secret), settings, hot.limiter,
            proxies=parse_networks(settings.trusted_proxies), replies=replies,
        )
        for channel in WEBCHAT_CHANNELS:  # web chat and replayed traffic share the socket sender
            outbox.register(channel, webchat)
        jobs = build_job_app(settings)
        async with jobs.open_async():
            outbox.retry = lambda entry_id: defer_delivery(jobs, entry_id, delay_s=1)
            webhooks.retry = lambda row_id, delay_s: defer_webhook(jobs, row_id, delay_s=delay_s)
            yield Runtime(
                settings=settings, db=db, embedder=embedder, intents=intents,
                intent_model=intent_model, knowledge=knowledge, orders=orders, router=router,
                understander=understander, conversations=conversations, delivery=hot.delivery,
                locks=hot.locks, hot=hot, webchat=webchat, outbox=outbox, webhooks=webhooks, sla=sla, inbox_feed=inbox_feed, jobs=jobs,
                schema_revision=revision, started_at=time.time(),
            )
    finally:
        if hot is not None:
            await close_hot_state(hot)
        await db.dispose()
