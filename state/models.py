"""SQLAlchemy 2 ORM tables: the system of record.

The same tables run on SQLite (embedded default) and on Postgres; the only backend-specific column is
the knowledge-base embedding, stored as pgvector ``vector(384)`` on Postgres and as float32 bytes on
SQLite (:class:`EmbeddingType`). The schema itself is created by Alembic migrations
(``state/migrations``), never by ``create_all`` at run time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import (
    CheckConstraint,
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

EMBEDDING_DIM = 384
"""Width of the all-MiniLM-L6-v2 sentence embedding."""

OPEN_TICKET_SQL = "state <> 'closed'"
"""A ticket counts as open until it is closed (a resolved ticket can still reopen)."""


def utcnow() -> datetime:
    """Timezone-aware UTC now; every timestamp in the database is UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC (state.models.utcnow)")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class EmbeddingType(TypeDecorator[np.ndarray]):
    """A 384-float embedding: pgvector ``vector(384)`` on Postgres, float32 bytes elsewhere."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from pgvector.sqlalchemy import Vector

            return dialect.type_descriptor(Vector(EMBEDDING_DIM))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        array = np.asarray(value, dtype=np.float32)
        if array.shape != (EMBEDDING_DIM,):
            raise ValueError(f"embedding must have shape ({EMBEDDING_DIM},), got {array.shape}")
        if dialect.name == "postgresql":
            return array
        return array.tobytes()

    def process_result_value(self, value: Any, dialect: Dialect) -> np.ndarray | None:
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            return np.frombuffer(bytes(value), dtype=np.float32)
        return np.asarray(value, dtype=np.float32)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Customer(Base):
    """A person who writes to support, whatever the channel."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    # Highest message seq handed out for this customer. Taking the next one is an UPDATE of this row,
    # so message transactions of one customer commit in seq order (the row lock is held to commit),
    # on every backend and across processes; clients resume from the last seq they saw.
    last_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    identities: Mapped[list[CustomerIdentity]] = relationship(back_populates="customer")


class CustomerIdentity(Base):
    """How a customer is known on one channel: a web-chat session id, a phone number, an address."""

    __tablename__ = "customer_identities"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_identity_channel_address"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="identities")


class Ticket(Base):
    """One customer conversation. ``state`` changes only through :mod:`state.tickets`."""

    __tablename__ = "tickets"
    __table_args__ = (
        # At most one open (not closed) ticket per customer, enforced by the database.
        Index(
            "uq_ticket_one_open_per_customer",
            "customer_id",
            unique=True,
            sqlite_where=text(OPEN_TICKET_SQL),
            postgresql_where=text(OPEN_TICKET_SQL),
        ),
        Index("ix_tickets_state_priority", "state", "priority"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32), default="bot")
    intent: Mapped[str | None] = mapped_column(String(64))
    # Slot filling: an intent waiting for a value from the customer, e.g. {"intent": "track_order",
    # "slot": "order_id"}.
    pending: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    escalation_reason: Mapped[str | None] = mapped_column(String(64))
    # Epoch of the worker allowed to commit this ticket's turns (see state.conversations.claim_ticket).
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    handoff_summary: Mapped[str | None] = mapped_column(Text)
    # The structured handoff brief (bot.brief.Brief as JSON; its "version" names the schema).
    brief: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # ISO 639-1 language of the customer, as the brief found it (the inbox's language filter).
    language: Mapped[str | None] = mapped_column(String(8))
    # Order-store user id the customer proved to be in this conversation (order number plus the
    # email or postcode on the order); order details go only to orders this owner owns.
    verified_owner: Mapped[str | None] = mapped_column(String(128))
    # The agent who owns the ticket (an atomic claim sets it; see state.inbox.claim).
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    priority: Mapped[str] = mapped_column(String(16), default="normal", server_default="normal")
    # When the customer was asked for a CSAT rating (at most once per ticket; see state.csat).
    csat_requested_at: Mapped[datetime | None] = mapped_column()
    # SLA (state.sla_timers): the earliest due time of the running timers (the queue's order), the
    # first breach, and the first agent reply after the handoff.
    sla_due_at: Mapped[datetime | None] = mapped_column(index=True)
    sla_breached_at: Mapped[datetime | None] = mapped_column()
    first_response_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()


class Agent(Base):
    """A person who works the inbox. ``role``: ``agent`` (works tickets) or ``admin`` (also manages
    agents and the kill switch). ``password_hash``: argon2id (PHC string). A disabled agent cannot
    log in and its sessions stop working."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column()


class AgentSession(Base):
    """One agent login. The browser's cookie holds a random token; only its SHA-256 is stored, so a
    copy of the database logs nobody in. ``seen_at`` drives the idle expiry, ``expires_at`` is the
    absolute one."""

    __tablename__ = "agent_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class AgentApiToken(Base):
    """A token for the inbox's JSON API (``helpline agents token EMAIL``). The caller holds a random
    secret sent as ``Authorization: Bearer ...``; only its SHA-256 is stored. A token acts as its
    agent with that agent's role, and stops working when revoked or when the agent is disabled."""

    __tablename__ = "agent_api_tokens"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class WebhookEvent(Base):
    """One event for the handoff webhook, written in the transaction that caused it (an outbox for
    ``HELPLINE_HANDOFF_WEBHOOK_URL``). ``event_id``: a UUID receivers de-duplicate on; ``status``:
    ``pending``, ``sending`` (claimed until ``lease_until``), ``sent``, ``failed``."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_until: Mapped[datetime | None] = mapped_column()
    attempted_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    response_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class CsatRating(Base):
    """A customer's satisfaction rating of a resolved ticket (1-5, optional comment); one per
    ticket. ``resolved_by``: ``bot`` or ``agent`` (then ``agent_id``)."""

    __tablename__ = "csat_ratings"
    __table_args__ = (CheckConstraint("rating BETWEEN 1 AND 5", name="ck_csat_rating_range"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    resolved_by: Mapped[str] = mapped_column(String(16))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    channel: Mapped[str] = mapped_column(String(32))
    intent: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlaTimer(Base):
    """One service-level target a handed-off ticket is measured against (state.sla_timers).
    ``target``: ``first_response``, ``next_response`` or ``resolution``; ``budget_s``: business
    seconds from ``started_at``; ``due_at``: None while the clock is paused; ``status``:
    ``running``, ``met``, ``breached`` or ``cancelled`` (set once, by a conditional UPDATE)."""

    __tablename__ = "sla_timers"
    __table_args__ = (Index("ix_sla_timers_status_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    target: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str] = mapped_column(String(16))
    budget_s: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column()
    due_at: Mapped[datetime | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(16))
    stopped_at: Mapped[datetime | None] = mapped_column()


class Message(Base):
    """One message on a ticket, inbound (from the customer) or outbound (bot, agent, system)."""

    __tablename__ = "messages"
    __table_args__ = (
        # Provider message ids are idempotency keys per customer: web-chat client ids come from the
        # browser, so one customer must never collide with (or learn about) another's ids.
        UniqueConstraint(
            "customer_id", "channel", "direction", "provider_message_id", name="uq_message_provider_id"
        ),
        UniqueConstraint("customer_id", "seq", name="uq_message_customer_seq"),
        Index("ix_messages_ticket_id_id", "ticket_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Per-customer position, strictly increasing in commit order (see Customer.last_seq); what web
    # chat calls ``seq``. ``id`` is not usable for that: sequences are not commit-ordered.
    seq: Mapped[int] = mapped_column(Integer)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    direction: Mapped[str] = mapped_column(String(8))  # "inbound" | "outbound"
    author: Mapped[str] = mapped_column(String(16))  # "customer" | "bot" | "agent" | "system"
    channel: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    # Per-turn facts shown to clients (tier, intent, confidence) on outbound bot messages.
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Inbound only: set when the turn for this message has finished. NULL = still to route.
    processed_at: Mapped[datetime | None] = mapped_column()


class OutboxEntry(Base):
    """An outbound message waiting to be sent (or sent) through its channel: the transactional outbox.

    Written in the same transaction as the message it sends, so a committed reply is never lost:
    the sender tries once right after commit, then the job queue (:mod:`helpline.jobs`) retries.
    ``status``: ``pending`` (due), ``sending`` (claimed by a worker until ``lease_until``),
    ``sent`` or ``failed`` (gave up after the configured attempts; visible to agents).
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column()
    attempted_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class Event(Base):
    """Append-only log of everything that happened on a ticket (transitions, turn decisions).

    The migration installs triggers that reject UPDATE and DELETE on this table.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_ticket_id_id", "ticket_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    kind: Mapped[str] = mapped_column(String(32))  # "transition" | "turn" | ...
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KbDocument(Base):
    """A knowledge-base article of one knowledge-base version."""

    __tablename__ = "kb_documents"
    __table_args__ = (UniqueConstraint("kb_version", "doc_id", name="uq_kb_document_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kb_version: Mapped[str] = mapped_column(String(64), index=True)
    doc_id: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(500))
    content_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KbChunk(Base):
    """A retrievable passage of a knowledge-base article with its embedding."""

    __tablename__ = "kb_chunks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kb_version: Mapped[str] = mapped_column(String(64), index=True)
    doc_id: Mapped[str] = mapped_column(String(200))
    ordinal: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(String(300))
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[np.ndarray] = mapped_column(EmbeddingType())


class RuntimeFlag(Base):
    """A run-time switch shared by every process (``agent_mode``: the kill switch;
    ``session_secret``: the web-chat session signing key when none is configured). The database is
    the state of record, so a Redis restart can never turn the bot back on."""

    __tablename__ = "runtime_flags"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(200))


class Meta(Base):
    """Small key/value facts about the deployment, e.g. the active knowledge-base version."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
