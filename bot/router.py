"""The tiered intent router: one :class:`Decision` per customer turn.

Order of checks, every turn:

1. guard: empty input (or, for a caller that did not cut it, oversized input) gets a clear reply
   (tier ``guard``), no model runs; the conversation service routes at most ``max_message_chars``;
2. understand: intent + calibrated confidence, entities (order id, email), sentiment;
3. escalation triggers (:mod:`bot.escalation`): an unsupported language, an explicit request for a
   person, a sensitive topic or intent, negative sentiment in this message or over the conversation,
   a repeated message, repeated failure -> ``human``; then a fixed reply instead of the tiers for
   "are you a bot?" (``asked_if_bot``) and "that didn't help" with no new request
   (``customer_said_not_helped``);
4. slot filling: a value the bot asked for (an order number) completes the pending intent;
5. out of scope by the density score (far from every training example; ``data["out_of_scope"]``), or
   confidence below the threshold -> ``reasoning`` when a provider is configured, else ``human``;
6. the intent's tier from ``config/intents.yaml``:
   ``deterministic`` (a handler function or a canned reply, no model), ``retrieval`` (an answer
   composed from knowledge-base passages, never below the similarity threshold), ``reasoning``
   (an LLM with tools; without one the turn goes to ``human``), ``human``;
7. a turn the tiers failed (an order not found, a slot asked twice, ...) that makes
   ``repeated_failure_limit`` failures since the last handoff goes to ``human`` instead.

The router only decides; it does not touch tickets, messages or channels (see
``helpline.conversation``), and knows nothing of any provider's wire format.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bot.actions import ActionContext, run_handler
from bot.clarify import chosen_option, option_number, says_small_talk, suggestions, vagueness
from bot.context import Focus, InContext, follow_up_cue, in_context, next_focus, resolve_pronoun
from bot.entities import bare_postcode
from bot.ownership import AttemptLimits, Proof
from bot.answers import compose_answer
from bot.embeddings import CachedEmbedder
from bot.escalation import Escalation, PriorTurn, Reply, Trigger
from bot.guard import check_input
from bot.intent_model import OUT_OF_SCOPE, IntentSpec
from bot.knowledge import KnowledgeBase
from bot.order_policy import OrderFacts
from bot.playbook import Playbook
from bot.understanding import MODEL_TOKENS, Understander, Understanding, model_view
from config.replies import Replies, load_replies
from config.settings import Settings
from config.sla import SlaConfig
from state.orders import OrderStore

TIERS = ("guard", "deterministic", "retrieval", "reasoning", "human")
RANKED_DEPTH = 5
"""Knowledge-base candidates ranked and recorded per retrieval turn (``data["retrieved"]``)."""

HANDOFF_REPLY = (
    "I'm passing this to a member of our support team now. They'll reply right here, and they "
    "can see our conversation, so you won't need to repeat anything."
)
"""The handoff text when the router has no replies file (tests that build a bare router)."""
SMALL_TALK = frozenset({"greeting", "thanks", "goodbye"})
FOCUS_BONUS = 0.06
"""Added to the search score of the article in focus when a follow-up is read combined with the
request before it (see docs/conversations.md)."""
ORDER_LOOKUP = "track_order"
"""The intent a message with an order number but no clear request is handled as (an order lookup)."""
"""Intents answered even when the message has no request in it ("hi", "thanks")."""
APOLOGY_REASONS = ("negative_sentiment", "conversation_sentiment", "repeated_failure")
"""Handoff reasons whose reply starts with an apology that fits the topic (``config/replies.yaml``)."""


@dataclass(frozen=True)
class TurnContext:
    """What the router may know about the ticket: no database handles, no channel details.

    ``prior``: the ticket's earlier customer turns, oldest first (the conversation-level escalation
    triggers read them), at most ``history_turns`` messages back. ``focus``: what the conversation
    was about after the last turn (:class:`bot.context.Focus`, from that turn's event), or None.
    """

    ticket_id: int
    ticket_state: str
    pending: Mapping[str, Any] | None = None
    customer_email: str | None = None
    prior: tuple[PriorTurn, ...] = ()
    verified_owner: str | None = None
    customer_id: int | None = None
    focus: Focus | None = None


@dataclass
class Decision:
    """The router's answer for one turn, recorded in full as the turn event.

    ``reply`` None means send nothing. ``escalate`` hands the ticket to a human; ``resolve`` marks
    it resolved (the customer said goodbye); ``pending`` is the slot the bot now waits for;
    ``verified_owner`` the order owner the customer proved to be on this turn (the ticket keeps it);
    ``complaint`` the words with which the customer said the last answer did not help, if any (kept
    so later turns count the failure without reading the message again). ``quick_replies``: short
    labels the customer can pick instead of typing (buttons in the widget, numbered options on text
    channels; stored in the reply message's ``meta["quick_replies"]``).
    ``confidence`` is the score the confidence threshold was compared with: the intent's calibrated
    probability, or for a knowledge-base answer the combined intent-and-article score
    (``data["intent_confidence"]`` then keeps the intent's own). ``cost_usd`` is 0 on local tiers.
    """

    tier: str
    reason: str
    reply: str | None
    intent: str | None = None
    confidence: float | None = None
    escalate: bool = False
    resolve: bool = False
    pending: dict[str, Any] | None = None
    alternatives: tuple[tuple[str, float], ...] = ()
    sentiment: float | None = None
    entities: dict[str, list[str]] = field(default_factory=dict)
    citations: tuple[str, ...] = ()
    retrieval_score: float | None = None
    kb_version: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    cost_usd: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    verified_owner: str | None = None
    complaint: str | None = None
    quick_replies: tuple[str, ...] = ()

    def event_payload(self) -> dict[str, Any]:
        """JSON-able record of the decision for the append-only event log."""
        return {
            "tier": self.tier,
            "reason": self.reason,
            "intent": self.intent,
            "confidence": self.confidence,
            "alternatives": [[name, round(p, 4)] for name, p in self.alternatives],
            "escalated": self.escalate,
            "resolved": self.resolve,
            "sentiment": self.sentiment,
            "entities": self.entities,
            "citations": list(self.citations),
            "retrieval_score": self.retrieval_score,
            "kb_version": self.kb_version,
            "models": self.models,
            "cost_usd": self.cost_usd,
            "complaint": self.complaint,
            "quick_replies": list(self.quick_replies),
            "data": self.data,
        }


@dataclass(frozen=True)
class Reading:
    """How the router read one message: ``u`` the understanding the tiers act on (of the message,
    or of the message in context), ``text`` what the models read, ``context`` the follow-up reading
    used (None: the message alone), ``choice`` the intent of a quick reply the customer picked."""

    u: Understanding
    text: str
    context: InContext | None = None
    choice: str | None = None


def kb_probability(score: float, midpoint: float, scale: float) -> float:
    """The chance that the best article answers the question, from its hybrid search score: a
    logistic curve through 0.5 at ``midpoint`` (settings ``article_score_midpoint`` and
    ``article_score_scale``)."""
    return 1.0 / (1.0 + math.exp(-(score - midpoint) / max(scale, 1e-6)))


def combined_confidence(intent_confidence: float, kb: float) -> float:
    """One score for "this knowledge-base answer is right": the intent model's confidence and the
    article's probability (:func:`kb_probability`) combined as independent evidence (noisy-or), so a
    confident intent or a near-verbatim article each suffice and two middling signals add up."""
    return 1.0 - (1.0 - intent_confidence) * (1.0 - kb)


class Router:
    """Decides each turn. Dependencies are injected so tests and later tiers can swap them."""

    def __init__(
        self,
        settings: Settings,
        intents: Mapping[str, IntentSpec],
        understander: Understander,
        knowledge: KnowledgeBase,
        orders: OrderStore,
        attempts: AttemptLimits | None = None,
        replies: Replies | None = None,
        sla: SlaConfig | None = None,
        playbook: Playbook | None = None,
    ) -> None:
        self.settings = settings
        self.intents = intents
        self.understander = understander
        self.knowledge = knowledge
        self.orders = orders
        self.attempts = attempts
        self.replies = replies if replies is not None else load_replies(settings.replies_file)
        self.sla = sla
        self.playbook = playbook
        # Answers are quoted from knowledge-base sentences, which recur across questions.
        self.sentence_embedder = CachedEmbedder(understander.embedder)
        # Earlier customer messages, as the turn embedded them (their model view), for the
        # repeated-message check: each embedded once.
        self.message_embedder = CachedEmbedder(understander.embedder, 5_000, max_tokens=MODEL_TOKENS)
        self.escalation = Escalation.from_settings(
            settings, self.message_embedder.embed_recent, understander.sentiment.compound
        )

    @property
    def reasoning_available(self) -> bool:
        """A reasoning tier needs an LLM provider; a later issue adds them."""
        return False

    def handoff_reply(self) -> str:
        """What the customer hears when a person takes over now: the team's hours or expected first
        response (``config/replies.yaml``'s handoff texts, with the SLA file's calendar)."""
        return self.replies.handoff_text(self.sla)

    async def route(self, text: str, ctx: TurnContext) -> Decision:
        """Decide the turn for customer ``text`` on the ticket described by ``ctx``."""
        guarded = check_input(text, self.settings.max_message_chars)
        if guarded is not None:
            return Decision(tier="guard", reason=guarded.code, reply=guarded.reply)

        # Every CPU step runs in a worker thread: the event loop only waits (sockets, webhooks and
        # other customers' turns go on meanwhile).
        reading, trigger, instead, complaint = await asyncio.to_thread(self._assess, text, ctx)
        u = reading.u
        base = dict(
            intent=u.intent,
            confidence=round(u.confidence, 4),
            alternatives=u.alternatives,
            sentiment=round(u.sentiment, 4),
            entities={"order_ids": list(u.entities.order_ids), "emails": list(u.entities.emails),
                      "postcodes": list(u.entities.postcodes)},
            models=self.understander.model_ids,
            kb_version=self.knowledge.version,
            complaint=complaint,
        )
        if trigger is not None:
            decision = Decision(
                tier="human", reason=trigger.reason, reply=self._handoff_text(trigger, u, ctx), escalate=True,
                data=dict(trigger.data), **base,
            )
        else:
            decision = await self._tiers(text, reading, ctx, base) if instead is None else Decision(
                tier="deterministic", reason=instead.reason, reply=self.replies.fill(instead.text),
                data=dict(instead.data), **base,
            )
            outcome = PriorTurn.from_event(text, decision.event_payload())
            failed = await asyncio.to_thread(self.escalation.after_tiers, text, outcome, ctx.prior)
            if failed is not None:
                decision = self._hand_over(decision, failed, u, ctx)
        if (
            not decision.escalate and decision.reply and u.sentiment <= self.settings.apology_sentiment
            and decision.reason not in ("off_topic",)
        ):
            apology = self._apology(u, ctx)
            decision.reply = f"{apology} {decision.reply}"
            decision.data = {**decision.data, "apology": apology}
        return self._remember(decision, text, reading, ctx)

    def _assess(
        self, text: str, ctx: TurnContext
    ) -> tuple[Reading, Trigger | None, Reply | None, str | None]:
        """Blocking: understand the message (in context when it is a follow-up), check the
        escalation triggers and, when none fires, whether a fixed reply ("are you a bot?", "that
        didn't help") replaces the tiers."""
        u = self.understander.understand(text)
        # The next turns compare their message with this one (repeated message): embedded once.
        self.message_embedder.remember(model_view(text), u.embedding)
        choice = self._choice(ctx.pending, text)
        answering = choice is not None or (bool(ctx.pending) and self._fills_pending(ctx.pending or {}, u, text))
        trigger = self.escalation.check(
            text, u, ctx.prior, reasoning_available=self.reasoning_available, answers_question=answering
        )
        instead = None if trigger is not None else self.escalation.reply_instead(text, u)
        reading = Reading(u=u, text=model_view(text), choice=choice)
        if trigger is None and instead is None and not answering and vagueness(text) is None:
            # A vague message ("I have a question", "?") has nothing to read in context: it gets a
            # clarifying question, not the last answer again.
            reading = self._in_context(text, u, ctx) or reading
        return reading, trigger, instead, self.escalation.complaint(text)

    def _in_context(self, text: str, u: Understanding, ctx: TurnContext) -> Reading | None:
        """The follow-up reading of ``text`` (see :mod:`bot.context`), or None to read it alone.

        - a confident small-talk or out-of-scope message is read alone ("thanks", "will it rain?");
        - "it" with an order in focus: the message about "my order" ("can I return my order?");
        - an opener, anaphora or a short fragment: the message in context (slot replaced, or
          combined with the earlier request), unless that reading is unsure and the message alone
          is not;
        - a short clear message on the same intent as the focus ("can I use a gift card?" after
          "what ways can I pay"): in context too, so the search keeps to the topic;
        - anything else ("what did I pay?", "who are you?", a vague "I have a question") is read
          alone: an unclear question gets a clarifying question, not the last answer again.
        """
        focus = ctx.focus
        if focus is None or not focus.request or (
            self._confident(u) and (u.intent in SMALL_TALK or u.intent == OUT_OF_SCOPE)
        ):
            return None
        clear = self._confident(u) and not u.out_of_scope
        cue = follow_up_cue(text, has_request_words=clear)
        short = len(text.split()) <= 8
        if cue in ("anaphora", "opener") and (focus.order_id or focus.country):
            resolved = resolve_pronoun(text, focus)
            if resolved is not None:
                understood = self.understander.understand(model_view(resolved.text))
                if self._confident(understood):
                    return self._reading(understood, u, resolved)
                if clear:
                    return None  # "it" is the order: the message alone says what is wanted of it
        if cue is None and clear and short and u.intent == focus.intent:
            cue = "same_topic"
        if cue is None:
            # No sign it leans on the last turn ("what did I pay?", "who are you?"): read alone, so
            # an unclear question gets a clarifying question, not the last topic's answer again.
            return None
        contextual = in_context(text, focus, cue)
        if contextual is None:
            return None
        understood = self.understander.understand(model_view(contextual.text))
        if clear and cue == "same_topic" and not self._confident(understood):
            return None  # clear alone, muddled with the earlier request
        return self._reading(understood, u, contextual)

    @staticmethod
    def _reading(understood: Understanding, own: Understanding, contextual: InContext) -> Reading:
        # Entities and sentiment are the message's own; intent and embedding come from the context.
        merged = replace(understood, entities=own.entities, sentiment=own.sentiment)
        return Reading(u=merged, text=model_view(contextual.text), context=contextual)

    def _confident(self, u: Understanding) -> bool:
        return u.confidence >= self.settings.confidence_threshold

    def _choice(self, pending: Mapping[str, Any] | None, text: str) -> str | None:
        """The intent of the quick reply ``text`` picks after a clarifying question, or None."""
        if not pending or pending.get("slot") != "choice":
            return None
        options, intents = pending.get("options"), pending.get("intents")
        if not isinstance(options, list) or not isinstance(intents, list) or len(options) != len(intents):
            return None
        index = chosen_option(text, [str(o) for o in options])
        return str(intents[index]) if index is not None and str(intents[index]) in self.intents else None

    async def _tiers(self, text: str, reading: Reading, ctx: TurnContext, base: dict[str, Any]) -> Decision:
        u = reading.u
        if reading.context is not None:
            base.update(intent=u.intent, confidence=round(u.confidence, 4), alternatives=u.alternatives)
        if ctx.pending and self._fills_pending(ctx.pending, u, text):
            spec = self.intents.get(str(ctx.pending.get("intent")))
            if spec is not None and spec.handler:
                base["intent"] = spec.name
                return await self._deterministic(spec, u, ctx, base, reason="slot_filled", text=text)
        if reading.choice is None and ctx.pending and ctx.pending.get("slot") == "choice" and option_number(text) is not None:
            # A number that is none of the options ("99" to a question with three): the same
            # options again, not an off-topic reply that throws them away.
            return self._clarify(u, ctx, base, why="no_such_option", again=ctx.pending)
        if reading.choice is not None:
            # The customer picked a topic the bot offered: act on it as if they had asked for it.
            spec = self.intents[reading.choice]
            base.update(intent=spec.name, confidence=1.0)
            base["data"] = {"choice": spec.name}
            label = self.replies.topic_label(spec.name) or spec.name
            embedding = (await asyncio.to_thread(self.understander.embedder.embed, [label]))[0]
            return await self._by_tier(spec, Reading(u=replace(u, embedding=embedding), text=label), ctx, base)

        vague = vagueness(text) if reading.context is None else None
        if (
            u.intent in SMALL_TALK and self._confident(u) and not u.out_of_scope and u.intent in self.intents
            and (vague is None or says_small_talk(text))  # "hi" is small talk, "um" is not
        ):
            return await self._by_tier(self.intents[u.intent], reading, ctx, base)
        if vague is not None:
            return self._clarify(u, ctx, base, why=vague)

        spec = self.intents.get(u.intent)
        confident = (
            spec is not None and self._confident(u) and not u.out_of_scope and u.intent != OUT_OF_SCOPE
        )
        lookup = self.intents.get(ORDER_LOOKUP)
        if not confident and u.entities.order_ids and lookup is not None and lookup.handler:
            # An order number with an unclear request ("what's going on with #W3958749?"): a lookup
            # is safe (it still needs proof of ownership) and is what such messages want.
            base.update(intent=lookup.name, data={**base.get("data", {}), "order_lookup": "order_id_given"})
            return await self._by_tier(lookup, reading, ctx, base)
        if confident and spec.tier != "retrieval":
            return await self._by_tier(spec, reading, ctx, base)
        # A retrieval intent, or no intent the bot can act on: the knowledge base may still answer.
        return await self._retrieval(reading, ctx, base, spec if confident else None)

    async def _by_tier(self, spec: IntentSpec, reading: Reading, ctx: TurnContext, base: dict[str, Any]) -> Decision:
        if spec.tier == "deterministic":
            return await self._deterministic(spec, reading.u, ctx, base, reason="answered", text=reading.text)
        if spec.tier == "retrieval":
            return await self._retrieval(reading, ctx, base, spec)
        if spec.tier == "reasoning":
            return self._beyond_local(base, reason="needs_reasoning")
        return Decision(
            tier="human", reason=f"intent_{spec.name}", reply=self.handoff_reply(), escalate=True, **base
        )

    # --- steps ------------------------------------------------------------------------------------

    def _apology(self, u: Understanding, ctx: TurnContext) -> str:
        """The apology that fits what the customer is upset about: the playbook topic of the intent
        (this message's when it is clear, else the one in focus)."""
        own = u.intent if u.intent not in SMALL_TALK and u.intent != OUT_OF_SCOPE else None
        focus = ctx.focus.intent if ctx.focus is not None else None
        # A clear intent of this message, else the topic in focus, else this message's best guess.
        intent = (own if self._confident(u) else None) or focus or own
        topic = self.playbook.next_step(intent, None).rule if self.playbook is not None and intent else None
        return self.replies.apology(topic)

    def _handoff_text(self, trigger: Trigger, u: Understanding, ctx: TurnContext) -> str:
        text = self.handoff_reply()
        if trigger.reason.startswith(APOLOGY_REASONS):
            text = f"{self._apology(u, ctx)} {text}"
        return trigger.reply(text)

    def _hand_over(self, decision: Decision, trigger: Trigger, u: Understanding, ctx: TurnContext) -> Decision:
        # The tiers' facts (intent, lookups, retrieval ranking) stay on record; the reply is the handoff.
        return replace(
            decision, tier="human", reason=trigger.reason, reply=self._handoff_text(trigger, u, ctx),
            escalate=True, resolve=False, pending=None, quick_replies=(), data={**decision.data, **trigger.data},
        )

    def _clarify(
        self, u: Understanding, ctx: TurnContext, base: dict[str, Any], *, why: str,
        again: Mapping[str, Any] | None = None,
    ) -> Decision:
        """A clarifying question with the likeliest topics as quick replies (``again``: the
        pending choice to offer again instead); after ``clarify_limit`` clarifications (or
        off-topic replies) in a row, a person instead."""
        if self._unhelped_in_a_row(ctx) >= self.settings.clarify_limit:
            return self._beyond_local(base, reason=f"not_understood_{why}")
        offered = (
            list(zip([str(i) for i in again["intents"]], [str(o) for o in again["options"]]))
            if again is not None else suggestions(u.alternatives, self.replies.topic_label, self.intents)
        )
        labels = [label for _, label in offered]
        data = {**base.pop("data", {}), "clarify": why}
        return Decision(
            tier="deterministic", reason="clarify", reply=self.replies.clarify_text(),
            quick_replies=tuple(labels),
            pending={"slot": "choice", "options": labels, "intents": [i for i, _ in offered]} if labels else None,
            data=data, **base,
        )

    def _off_topic(self, u: Understanding, ctx: TurnContext, base: dict[str, Any]) -> Decision:
        if self._unhelped_in_a_row(ctx) >= self.settings.clarify_limit:
            return self._beyond_local(base, reason="out_of_scope")
        return Decision(
            tier="deterministic", reason="off_topic", reply=self.replies.off_topic_text(), **base,
        )

    @staticmethod
    def _unhelped_in_a_row(ctx: TurnContext) -> int:
        """Clarifying questions and off-topic replies since the last turn the bot acted on."""
        count = 0
        for turn in reversed(ctx.prior):
            if turn.escalated or turn.reason not in ("clarify", "off_topic"):
                break
            count += 1
        return count

    @staticmethod
    def _fills_pending(pending: Mapping[str, Any], u: Understanding, text: str) -> bool:
        slot = pending.get("slot")
        if slot == "order_id":
            return bool(u.entities.order_ids)
        if slot == "proof":
            e = u.entities
            return bool(e.order_ids or e.emails or e.postcodes or bare_postcode(text))
        return False

    @staticmethod
    def _asked(result: Any) -> str | None:
        # asked_slot: the order number; asked_proof: the email or postcode on the order. A proof
        # that did not match keeps the turn's own reason (the lookup failed; see not_found).
        if result.missing_slot == "order_id":
            return "asked_slot"
        if result.missing_slot == "proof" and not result.data.get("not_found"):
            return "asked_proof"
        return None

    @staticmethod
    def _proof(pending: Mapping[str, Any] | None, u: Understanding, text: str) -> Proof:
        postcodes = u.entities.postcodes
        if not postcodes and pending and pending.get("slot") == "proof":
            bare = bare_postcode(text)  # the answer to "what is the postcode on the order?"
            postcodes = (bare,) if bare else ()
        return Proof(emails=u.entities.emails, postcodes=postcodes)

    def _beyond_local(self, base: dict[str, Any], *, reason: str) -> Decision:
        # The reasoning tier arrives with LLM providers; until one is configured a person takes over.
        return Decision(
            tier="human",
            reason=f"{reason}_no_reasoning_tier" if not self.reasoning_available else reason,
            reply=self.handoff_reply(),
            escalate=True,
            **base,
        )

    async def _deterministic(
        self, spec: IntentSpec, u: Understanding, ctx: TurnContext, base: dict[str, Any], *, reason: str,
        text: str = "",
    ) -> Decision:
        if spec.handler:
            waiting = ctx.pending.get("order_ids") if ctx.pending else None
            result = await run_handler(
                spec.handler,
                ActionContext(
                    entities=u.entities, orders=self.orders, customer_email=ctx.customer_email,
                    proof=self._proof(ctx.pending, u, text), verified_owner=ctx.verified_owner,
                    pending_order_ids=tuple(str(i) for i in waiting) if isinstance(waiting, list) else (),
                    customer_id=ctx.customer_id, attempts=self.attempts,
                ),
            )
            data = {**base.pop("data", {}), **result.data}
            if result.escalate:
                return Decision(
                    tier="human", reason="verification_locked", reply=result.reply, escalate=True,
                    data=data, **base,
                )
            pending: dict[str, Any] | None = None
            if result.missing_slot:
                pending = {"intent": spec.name, "slot": result.missing_slot}
                if result.pending_order_ids:
                    pending["order_ids"] = list(result.pending_order_ids)
            return Decision(
                tier="deterministic",
                reason=self._asked(result) or reason,
                reply=result.reply,
                pending=pending,
                data=data,
                verified_owner=result.verified_owner,
                **base,
            )
        return Decision(
            tier="deterministic",
            reason=reason,
            reply=self.replies.fill(spec.reply or ""),
            resolve=spec.name == "goodbye",
            **base,
        )

    async def _retrieval(
        self, reading: Reading, ctx: TurnContext, base: dict[str, Any], spec: IntentSpec | None
    ) -> Decision:
        """A knowledge-base answer, decided on one combined score (:func:`combined_confidence`) of
        the intent (``spec``: a confident retrieval intent, or None: no intent the bot can act on)
        and the best article. Below the threshold: a clarifying question, an off-topic reply, or a
        person (a confident intent whose articles do not answer)."""
        u = reading.u
        # The eval harness scores retrieval at depth 5 (hit@5), so at least 5 candidates are ranked
        # and recorded; the answer is composed from the top ``retrieval_top_k`` only.
        ranked = await self.knowledge.search(
            u.embedding, max(self.settings.retrieval_top_k, RANKED_DEPTH), query_text=reading.text
        )
        if reading.context is not None and reading.context.kind == "combined" and ctx.focus and ctx.focus.doc_id:
            # A follow-up ("how long does that take?") is about the article the last answer quoted
            # unless another clearly answers it better.
            ranked = sorted(
                (replace(p, score=p.score + FOCUS_BONUS) if p.doc_id == ctx.focus.doc_id else p for p in ranked),
                key=lambda p: p.score, reverse=True,
            )
        if spec is not None and (not ranked or ranked[0].score < self.settings.retrieval_threshold):
            # A clear intent in words the articles do not use ("seebill from Diego", "help
            # ascquiring a few of your article"): search again with what the intent is about.
            query = f"{spec.description} {reading.text}"
            embedding = (await asyncio.to_thread(self.understander.embedder.embed, [query]))[0]
            ranked = await self.knowledge.search(
                embedding, max(self.settings.retrieval_top_k, RANKED_DEPTH), query_text=query
            )
            base["data"] = {**base.get("data", {}), "search": "intent_description"}
        data = {**base.pop("data", {}), "retrieved": [[p.doc_id, round(p.score, 4)] for p in ranked]}
        best = round(ranked[0].score, 4) if ranked else None
        kb = kb_probability(best or 0.0, self.settings.article_score_midpoint, self.settings.article_score_scale)
        # The intent counts as evidence when it is a retrieval intent, confident or not; a message
        # out of scope, or with an intent of another tier, leaves the article alone to decide.
        guess = self.intents.get(u.intent)
        evidence = spec is not None or (
            guess is not None and guess.tier == "retrieval" and not u.out_of_scope and u.intent != OUT_OF_SCOPE
        )
        intent_confidence = u.confidence if evidence else 0.0
        score = combined_confidence(intent_confidence, kb)
        data.update(intent_confidence=round(u.confidence, 4), kb_probability=round(kb, 4))
        base.update(confidence=round(score, 4), data=data)
        answer = None
        if score >= self.settings.confidence_threshold:
            passages = ranked[: self.settings.retrieval_top_k]
            answer = await asyncio.to_thread(
                compose_answer, reading.text, u.embedding, passages, self.knowledge.version or "",
                self.settings.retrieval_threshold, self.sentence_embedder,
                question=reading.text,
                context=ctx.focus.request if ctx.focus is not None and reading.context is None else None,
                order=await self._order_in_focus(u, ctx),
            )
        if answer is None:
            base["data"] = data
            if spec is not None:  # the intent is clear but no article answers it
                decision = self._beyond_local(base, reason="no_kb_match")
            elif u.out_of_scope and vagueness(reading.text) is None:
                decision = self._off_topic(u, ctx, base)
            else:
                decision = self._clarify(u, ctx, base, why="low_confidence")
            decision.retrieval_score = best
            return decision
        if spec is None:
            data["answered_by"] = "article"
        if answer.yes_no or answer.order_lead:
            data["answer"] = {"yes_no": answer.yes_no, "order_lead": answer.order_lead, "order_topic": answer.order_topic}
        return Decision(
            tier="retrieval",
            reason="answered",
            reply=answer.text,
            citations=answer.citations,
            retrieval_score=round(answer.score, 4),
            **base,
        )

    async def _order_in_focus(self, u: Understanding, ctx: TurnContext) -> OrderFacts | None:
        """The order this conversation is about, when the customer proved it is theirs: what a
        policy answer ("can I still cancel it?") must check. None when the message names another
        order (that one is looked up, with its own proof) or nothing is proved."""
        focus = ctx.focus
        if focus is None or not focus.order_id or not ctx.verified_owner:
            return None
        if u.entities.order_ids and focus.order_id not in u.entities.order_ids:
            return None
        order = await self.orders.get(focus.order_id)
        if order is None or order.user_id != ctx.verified_owner:
            return None
        return OrderFacts.from_order(order)

    def _remember(self, decision: Decision, text: str, reading: Reading, ctx: TurnContext) -> Decision:
        """Record the context the turn used and the focus it leaves (``data["context"]``,
        ``data["focus"]``) for the next turn."""
        orders = decision.data.get("orders")
        described = [o.get("order_id") for o in orders if isinstance(o, dict)] if isinstance(orders, list) else []
        acted = not decision.escalate and decision.tier in ("deterministic", "retrieval") and decision.reason not in (
            "clarify", "off_topic", "asked_if_bot", "customer_said_not_helped"
        ) and decision.intent not in SMALL_TALK
        # A picked quick reply ("2") is understood as its label ("Returns and refunds").
        understood = (self.replies.topic_label(reading.choice) or reading.text) if reading.choice else reading.text
        focus = next_focus(
            ctx.focus, text=text, understood=understood, intent=decision.intent,
            doc_id=decision.citations[0] if decision.citations else None,
            order_id=str(described[-1]) if described and described[-1] else None, acted=acted,
        )
        data = dict(decision.data)
        if reading.context is not None:
            data["context"] = reading.context.record(ctx.focus or Focus())
        if not focus.empty:
            data["focus"] = focus.to_json()
        decision.data = data
        return decision
