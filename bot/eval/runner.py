"""Run golden cases through the live code path and read each outcome back from the database.

No shortcut: :func:`evaluate` opens the real runtime (:func:`helpline.runtime.open_runtime`), the same
assembly ``helpline serve`` uses, on a throw-away database, and sends every customer message through
``Conversations.receive`` like a channel adapter would (channel ``eval``, one customer and ticket per
case). Each message's turn is awaited (``process_ticket``) before the next message of the case is
sent, as a customer waits for the reply. Cases run concurrently across customers, at most
``concurrency`` at a time. The outcome is then read from what the turn recorded: the turn events
(the router Decision's payload) and the bot's reply messages.

Must not: call the router directly, or change how turns are routed.
"""

from __future__ import annotations

import asyncio
import tempfile
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.embeddings import CachedEmbedder
from bot.eval.brief_fields import score_brief
from bot.eval.golden import GoldenCase
from bot.eval.groundedness import Groundedness, score_answer, unscored
from bot.eval.outcome import CaseOutcome, GradedAnswer, TurnRecord
from config.settings import AgentMode, Settings
from helpline.conversation import Inbound
from helpline.runtime import Runtime, open_runtime
from state.models import Event, KbChunk, Message, Ticket

EVAL_CHANNEL = "eval"
"""Channel name of the eval's customers, so eval traffic is never mistaken for a real channel's."""
RANKING_DEPTH = 5
"""Documents ranked per case for hit@k and MRR (the router records 5 candidates per retrieval turn)."""
DEFAULT_CONCURRENCY = 8


@dataclass(frozen=True)
class EvalRun:
    """Outcomes of one pass over a golden set, with what it ran on.

    ``threshold``: the confidence threshold in force; ``intent_model``/``kb_version``: versions used;
    ``wall_s``: seconds for all cases (runtime start-up excluded); ``intents``: configured intents.
    """

    outcomes: list[CaseOutcome]
    threshold: float
    intent_model: str
    kb_version: str | None
    wall_s: float
    intents: frozenset[str]

    @property
    def cases_per_s(self) -> float:
        return len(self.outcomes) / self.wall_s if self.wall_s > 0 else 0.0


def resolve_model_dir(settings: Settings) -> Path:
    """The saved intent model the eval loads: ``settings.intent_model_dir`` when set, else the
    model of ``settings.intents_file`` in the configured ``DATA_DIR/models`` (trained and cached
    there on first use, exactly as ``helpline serve`` would), so a throw-away eval data dir does not
    retrain it on every run. Blocking (loads the embedder, may train for a few seconds)."""
    if settings.intent_model_dir is not None:
        return Path(settings.intent_model_dir)
    from bot.embeddings import Embedder
    from bot.intent_model import load_or_train

    model = load_or_train(settings.intents_file, settings.models_dir, Embedder.load())
    return settings.models_dir / model.version


@contextmanager
def eval_settings(
    base: Settings,
    *,
    model_dir: Path | None = None,
    database_url: str | None = None,
    threshold: float | None = None,
) -> Iterator[Settings]:
    """Settings for one eval pass, with a throw-away data dir (removed on exit).

    Everything that decides answers comes from ``base`` (intents, thresholds, knowledge base,
    orders). What an eval must not share with a live deployment is replaced: the data dir (and so
    the SQLite database) is a temporary folder unless ``database_url`` names one, hot state is in
    process (no Redis: the eval neither reads the run-time kill switch nor publishes to live
    sockets), and ``AGENT_MODE`` is ``enabled``. ``model_dir`` pins the intent model (default:
    :func:`resolve_model_dir` of ``base``); ``threshold`` overrides the confidence threshold.
    """
    with tempfile.TemporaryDirectory(prefix="helpline-eval-") as tmp:
        update: dict[str, Any] = {
            "data_dir": Path(tmp),
            "database_url": database_url,
            "redis_url": None,
            "agent_mode": AgentMode.enabled,
            "intent_model_dir": Path(model_dir) if model_dir is not None else resolve_model_dir(base),
        }
        if threshold is not None:
            update["confidence_threshold"] = threshold
        yield base.model_copy(update=update)


class EvalSender:
    """The eval channel's sender for the outbox: a collecting output channel. Replies are read
    back from the database, so sending only records the message id it was asked to deliver."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def send(self, message: Message) -> str:
        self.sent.append(message.id)
        return f"eval-{message.id}"


class _Passages:
    """Text of every chunk of a cited document, per knowledge-base version (cached)."""

    def __init__(self, runtime: Runtime) -> None:
        self._db = runtime.db
        self._cache: dict[tuple[str, str], list[str]] = {}

    async def texts(self, kb_version: str, doc_id: str) -> list[str]:
        key = (kb_version, doc_id)
        if key not in self._cache:
            async with self._db.sessions() as session:
                rows = await session.scalars(
                    select(KbChunk.text)
                    .where(KbChunk.kb_version == kb_version, KbChunk.doc_id == doc_id)
                    .order_by(KbChunk.ordinal)
                )
                self._cache[key] = list(rows)
        return self._cache[key]


def _distinct(doc_ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for doc_id in doc_ids:
        if doc_id not in out:
            out.append(doc_id)
    return out


def own_words_removed(turn: TurnRecord) -> str:
    """The reply without what the bot said in its own words rather than quoting an article: the
    apology that opened it (``data["apology"]``) and the order-state lead (``data["answer"]
    ["order_lead"]``, from the order's facts). Groundedness scores the rest against the cited
    articles."""
    reply = (turn.reply or "").strip()
    data = turn.payload.get("data") or {}
    answer = data.get("answer") if isinstance(data.get("answer"), dict) else {}
    for own in (data.get("apology"), answer.get("order_lead")):
        if isinstance(own, str) and own and reply.startswith(own):
            reply = reply[len(own):].strip()
    return reply


class CaseRunner:
    """Sends cases through ``runtime.conversations`` and builds their :class:`CaseOutcome`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.embedder = CachedEmbedder(runtime.embedder)
        self.passages = _Passages(runtime)
        self.tag = uuid.uuid4().hex[:10]

    async def run(self, index: int, case: GoldenCase) -> CaseOutcome:
        conversations = self.runtime.conversations
        address = f"eval-{self.tag}-{index}"
        message_ids: list[int] = []
        for position, text in enumerate(case.turns):
            accepted = await conversations.receive(
                Inbound(channel=EVAL_CHANNEL, address=address, text=text,
                        provider_message_id=f"{index}-{position}")
            )
            message_ids.append(accepted.message.id)
            # The customer waits for the reply before writing again.
            await conversations.process_ticket(accepted.ticket.id)
        turns = await self._turns(case, message_ids)
        outcome = CaseOutcome(case=case, turns=turns)
        outcome.answers = [
            GradedAnswer(i, await self._grade(turn)) for i, turn in enumerate(turns) if turn.makes_claims
        ]
        if case.relevant_docs:
            await self._rank(outcome)
        if case.brief:
            async with self.runtime.db.sessions() as session:
                ticket = await session.get(Ticket, accepted.ticket.id)
                outcome.brief = ticket.brief if ticket is not None else None
            outcome.brief_fields = score_brief(case.brief, outcome.brief)
        return outcome

    async def _turns(self, case: GoldenCase, message_ids: list[int]) -> list[TurnRecord]:
        async with self.runtime.db.sessions() as session:
            inbound = {
                m.id: m for m in await session.scalars(select(Message).where(Message.id.in_(message_ids)))
            }
            ticket_ids = sorted({m.ticket_id for m in inbound.values()})
            payloads: dict[int, dict[str, Any]] = {}
            for event in await session.scalars(
                select(Event).where(Event.ticket_id.in_(ticket_ids), Event.kind == "turn").order_by(Event.id)
            ):
                message_id = event.payload.get("message_id")
                if message_id in inbound:
                    payloads[message_id] = dict(event.payload)
            reply_ids = [p["reply_message_id"] for p in payloads.values() if p.get("reply_message_id")]
            replies = {
                m.id: m.text
                for m in await session.scalars(select(Message).where(Message.id.in_(reply_ids)))
            } if reply_ids else {}
        records = []
        for message_id, text in zip(message_ids, case.turns, strict=True):
            payload = payloads.get(message_id, {})
            records.append(TurnRecord(text=text, payload=payload,
                                      reply=replies.get(payload.get("reply_message_id"))))
        return records

    async def _grade(self, turn: TurnRecord) -> Groundedness:
        if not turn.citations:
            return unscored("no citations")
        version = turn.payload.get("kb_version")
        if not version:
            return unscored("no knowledge-base version recorded")
        texts: list[str] = []
        missing = []
        for doc_id in turn.citations:
            found = await self.passages.texts(version, doc_id)
            if not found:
                missing.append(doc_id)
            texts.extend(found)
        if missing:
            return unscored(f"cited document(s) {', '.join(missing)} not in knowledge base {version}")
        quoted = own_words_removed(turn)
        if not quoted or quoted.startswith(("Source: ", "Sources: ")):
            # Only the order-state lead and the source line: one claim, supported by the order's
            # facts (the store's status word, read by the same handler that described the order).
            return Groundedness(supported=1, total=1, score=1.0)
        return await asyncio.to_thread(score_answer, quoted, texts, self.embedder)

    async def _rank(self, outcome: CaseOutcome) -> None:
        retrieved = outcome.last.payload.get("data", {}).get("retrieved") if outcome.last.routed else None
        if isinstance(retrieved, list) and retrieved:
            outcome.ranking = _distinct([str(row[0]) for row in retrieved])
            outcome.ranking_source = "recorded"
            return
        embedding = (await asyncio.to_thread(self.embedder.embed, [outcome.case.text]))[0]
        passages = await self.runtime.knowledge.search(
            embedding, RANKING_DEPTH, query_text=outcome.case.text
        )
        outcome.ranking = _distinct([p.doc_id for p in passages])
        outcome.ranking_source = "searched"


async def run_cases(
    runtime: Runtime,
    cases: Sequence[GoldenCase],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Callable[[], None] | None = None,
) -> list[CaseOutcome]:
    """Run ``cases`` on ``runtime``, at most ``concurrency`` at a time; outcomes in case order.

    ``progress`` is called once per finished case (e.g. a progress bar's ``update``).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    runner = CaseRunner(runtime)
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, case: GoldenCase) -> CaseOutcome:
        async with gate:
            outcome = await runner.run(index, case)
        if progress is not None:
            progress()
        return outcome

    try:
        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(cases))))
    finally:
        await runtime.conversations.drain()


def _warn_unknown_docs(cases: Sequence[GoldenCase], known: frozenset[str], version: str | None) -> None:
    """List ``relevant_docs`` the knowledge base does not have (a typo or another knowledge base):
    those cases can never score a retrieval hit, which would look like a retrieval failure."""
    unknown: dict[str, list[str]] = {}
    for case in cases:
        for doc in case.relevant_docs:
            if doc not in known:
                unknown.setdefault(doc, []).append(case.id)
    if unknown:
        listed = "; ".join(f"{doc} (cases {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''})"
                           for doc, ids in sorted(unknown.items()))
        print(f"warning: relevant_docs not in knowledge base {version}: {listed}", file=sys.stderr)


async def evaluate(
    cases: Sequence[GoldenCase],
    settings: Settings,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Callable[[], None] | None = None,
) -> EvalRun:
    """Open the runtime for ``settings`` (use :func:`eval_settings`), run every case, close it.

    Raises what :func:`helpline.runtime.open_runtime` raises (bad intents file, unreadable model
    dir, knowledge-base errors).
    """
    async with open_runtime(settings) as runtime:
        # Replies go through the outbox like every channel's; the eval channel collects them.
        runtime.outbox.register(EVAL_CHANNEL, EvalSender())
        _warn_unknown_docs(cases, runtime.knowledge.doc_ids, runtime.knowledge.version)
        started = time.perf_counter()
        outcomes = await run_cases(runtime, cases, concurrency=concurrency, progress=progress)
        wall = time.perf_counter() - started
        return EvalRun(
            outcomes=outcomes,
            threshold=settings.confidence_threshold,
            intent_model=runtime.intent_model.version,
            kb_version=runtime.knowledge.version,
            wall_s=wall,
            intents=frozenset(runtime.intents),
        )
