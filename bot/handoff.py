"""The handoff brief: what an agent reads when a ticket reaches the inbox, so no one starts from scratch.

:func:`build_brief` turns a ticket's record (the customer, each customer message with the decision
its turn event recorded, the bot's replies) into a structured, versioned brief: who the customer is,
what they want (one line from the intent and entities, plus their own key sentences, quoted, never
invented), why it escalated (the trigger, its evidence, confidence, sentiment trend, language), what
the bot already did (answers with the articles cited, order lookups and their results, questions it
asked that were not answered), open questions and a suggested next step from the playbook
(:mod:`bot.playbook`). :func:`render_text` gives the short plain-text form used for notifications and
``tickets.handoff_summary``.

Deterministic, no model call: it must work with the kill switch on and cost nothing; a later issue
adds an LLM-written brief with this one as the fallback. Must not: read the database (the app
gathers :class:`BriefInput`) or know about channels.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.entities import extract_entities
from bot.knowledge import split_sentences
from bot.playbook import Playbook

BRIEF_VERSION = 1
"""Schema version of the brief's JSON; bump it when a field changes meaning or shape."""

REASONS = {
    "explicit_request": "the customer asked for a person",
    "sensitive_intent": "the request is of a sensitive kind",
    "sensitive_topic": "the message touches a sensitive topic",
    "negative_sentiment": "the customer is upset",
    "conversation_sentiment": "the customer has been upset over several messages",
    "repeated_message": "the customer repeated a question the assistant had not answered",
    "repeated_failure": "the assistant could not help twice",
    "unsupported_language": "the customer wrote in a language the assistant does not answer in",
    "kill_switch": "the assistant is switched off (AGENT_MODE=disabled)",
    "internal_error": "the assistant failed on this message",
    "verification_locked": "too many wrong order-ownership proofs",
}

SLOT_WORDS = {"order_id": "the order number", "proof": "the email or postcode on the order"}
"""How the brief names a slot the bot asked for."""

ANSWER_TIERS = frozenset({"retrieval", "deterministic", "reasoning"})
MAX_KEY_SENTENCES = 3
MAX_SENTENCE_CHARS = 240
MAX_ANSWERS = 5
MAX_TURNS = 50
"""Only the last this many customer messages are read: the brief's cost is bounded per ticket."""

# Money as customers write it: "$45.90", "€ 30", "45.90 USD", "20 dollars". Linear: no nested repeats.
_AMOUNT = re.compile(
    r"(?<![\w.])(?:[$€£]\s?\d{1,7}(?:[.,]\d{1,2})?"
    r"|\d{1,7}(?:[.,]\d{1,2})?\s?(?:usd|eur|gbp|dollars?|euros?|pounds?|bucks)\b)",
    re.IGNORECASE,
)
_SMALL_TALK = frozenset({"greeting", "thanks", "goodbye"})
META_INTENTS = _SMALL_TALK | {"contact_human_agent", "contact_customer_service", "complaint", "out_of_scope"}
"""Intents that say how the customer talks (hello, get me a person, I'm unhappy), not what they want:
the brief's topic is the request behind them when the conversation has one."""


def describe_reason(reason: str | None) -> str:
    """A sentence fragment saying why the ticket escalated, for a reason code (or its prefix:
    ``low_confidence_no_reasoning_tier`` is described as ``low_confidence``)."""
    if not reason:
        return "the reason was not recorded"
    if reason in REASONS:
        return REASONS[reason]
    if reason.startswith("low_confidence"):
        return "the assistant was not confident what the customer wants"
    if reason.startswith("out_of_scope"):
        return "the request is unlike anything the assistant was trained on"
    if reason.startswith("no_kb_match"):
        return "no knowledge-base article answers the question"
    if reason.startswith("needs_reasoning"):
        return "the request needs an action the assistant cannot take"
    if reason.startswith("intent_"):
        return f"topic '{reason[len('intent_'):]}' always goes to a person"
    return reason


@dataclass(frozen=True)
class EarlierTicket:
    """Another ticket of the same customer: id, state, intent and when it opened."""

    id: int
    state: str
    intent: str | None
    created_at: datetime


@dataclass(frozen=True)
class BriefCustomer:
    """The customer as the brief shows them. ``identities``: (channel, address) pairs."""

    id: int
    name: str | None = None
    email: str | None = None
    identities: tuple[tuple[str, str], ...] = ()
    earlier_tickets: tuple[EarlierTicket, ...] = ()


@dataclass(frozen=True)
class BriefTurn:
    """One customer message and what the bot did with it. ``decision``: the turn event's payload
    (:meth:`bot.router.Decision.event_payload`), None while the turn has not run; ``reply``: the
    text the bot sent for it, if any."""

    text: str
    channel: str
    decision: Mapping[str, Any] | None = None
    reply: str | None = None


@dataclass(frozen=True)
class BriefInput:
    """Everything the brief is built from, oldest turn first. ``reason``/``evidence``: the
    escalation (the ticket's ``escalation_reason`` and its trigger's data); ``verified_owner``:
    the order-store account the customer proved to be (see bot.ownership)."""

    ticket_id: int
    customer: BriefCustomer
    turns: Sequence[BriefTurn]
    reason: str | None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    verified_owner: str | None = None
    default_language: str = "en"
    max_message_chars: int = 4000
    confidence_threshold: float = 0.7


def _clip(text: str, limit: int = MAX_SENTENCE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _amounts(text: str) -> list[str]:
    return [" ".join(m.group(0).split()) for m in _AMOUNT.finditer(text)]


def _trend(scores: Sequence[float]) -> str:
    """``worsening``/``improving`` when the last score moved 0.3 or more from the first, ``negative``
    when it stayed at or below -0.3, else ``steady``; ``unknown`` with no scores."""
    if not scores:
        return "unknown"
    first, last = scores[0], scores[-1]
    if last <= first - 0.3:
        return "worsening"
    if last >= first + 0.3:
        return "improving"
    return "negative" if last <= -0.3 else "steady"


@dataclass(frozen=True)
class MessageFacts:
    """What the brief takes from one customer message, computed once per text (cached: a brief is
    rebuilt at every message while a person owns the ticket, and only the new message costs work).
    ``candidates``: up to :data:`CANDIDATES_PER_MESSAGE` ``(score, index, sentence)`` for key
    sentences, best first (index: the sentence's position in the message)."""

    order_ids: tuple[str, ...]
    emails: tuple[str, ...]
    amounts: tuple[str, ...]
    candidates: tuple[tuple[float, int, str], ...]


CANDIDATES_PER_MESSAGE = 5
MAX_SENTENCES_READ = 40
"""Sentences of one message considered for key sentences (the rest of a pasted document is not)."""


@functools.lru_cache(maxsize=4096)
def message_facts(text: str) -> MessageFacts:
    """Entities, amounts and key-sentence candidates of one (already length-limited) message.
    Linear in its length: the entity extractor runs once on the whole text; each sentence is only
    checked for the digits of those ids, an ``@`` or an amount."""
    found = extract_entities(text)
    amounts = tuple(_unique(_amounts(text)))
    digit_keys = [d for d in (re.sub(r"\D", "", o) for o in found.order_ids) if d]
    candidates: list[tuple[float, int, str]] = []
    for index, sentence in enumerate(split_sentences(text)[:MAX_SENTENCES_READ]):
        words = sentence.split()
        names_fact = (any(d in sentence for d in digit_keys) or "@" in sentence
                      or _AMOUNT.search(sentence) is not None)
        if len(words) < 3 and not names_fact:
            continue
        candidates.append((min(len(words), 25) / 25 + (2 if names_fact else 0), index, _clip(sentence)))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    return MessageFacts(found.order_ids, found.emails, amounts, tuple(candidates[:CANDIDATES_PER_MESSAGE]))


def _key_sentences(turns: Sequence[BriefTurn], facts: Sequence[MessageFacts], evidence_words: Sequence[str]) -> list[str]:
    """The customer's own sentences that carry the request, in the order they were written: those
    naming an order, amount or email, those holding the trigger's words, then the longest of the
    rest; greetings, thanks and one-word messages are left out."""
    scored: list[tuple[float, tuple[int, int], str]] = []
    lowered_evidence = [w.lower() for w in evidence_words if w]
    for number, (turn, fact) in enumerate(zip(turns, facts, strict=True)):
        small_talk = (turn.decision or {}).get("intent") in _SMALL_TALK
        for base, index, sentence in fact.candidates:
            score = base
            lowered = sentence.lower()
            if any(w in lowered or lowered in w for w in lowered_evidence):
                score += 3
            if small_talk:
                score -= 2
            if score > 0:
                scored.append((score, (number, index), sentence))
    best = sorted(scored, key=lambda s: (-s[0], s[1]))[:MAX_KEY_SENTENCES]
    return [text for _, _, text in sorted(best, key=lambda s: s[1])]


def _evidence_words(reason: str | None, evidence: Mapping[str, Any], turns: Sequence[BriefTurn]) -> list[str]:
    words: list[str] = []
    for key in ("matched", "topic", "complaint"):
        value = evidence.get(key)
        if isinstance(value, str) and value:
            words.append(value)
    for turn in turns:
        complaint = (turn.decision or {}).get("complaint")
        if reason and reason.startswith("repeated_failure") and isinstance(complaint, str) and complaint:
            words.append(complaint)
    if reason in ("negative_sentiment", "conversation_sentiment", "sensitive_intent") and turns:
        # The words are the message itself (the model read all of it, no phrase matched).
        words.append(_clip(turns[-1].text, 160))
    return _unique(words)


def _lookups(turns: Sequence[BriefTurn]) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for turn in turns:
        data = (turn.decision or {}).get("data") or {}
        if not isinstance(data, Mapping):
            continue
        for order in data.get("orders") or ():
            if isinstance(order, Mapping) and order.get("order_id"):
                entry = {"order_id": str(order["order_id"]), "result": str(order.get("status") or "found")}
                refunds = order.get("refunds")
                if isinstance(refunds, list):
                    entry["refunds"] = [r.get("amount") for r in refunds if isinstance(r, Mapping)]
                found[entry["order_id"]] = entry
        for order_id in data.get("not_found") or ():
            found.setdefault(str(order_id), {"order_id": str(order_id), "result": "not found"})
        for order_id in data.get("awaiting_proof") or ():
            found.setdefault(str(order_id), {"order_id": str(order_id), "result": "ownership not proved"})
        verification = data.get("verification")
        if isinstance(verification, Mapping):
            for order_id, verdict in verification.items():
                if verdict == "locked":
                    found[str(order_id)] = {"order_id": str(order_id), "result": "locked: too many wrong proofs"}
    return list(found.values())


def _unanswered_slots(turns: Sequence[BriefTurn]) -> list[dict[str, str]]:
    """Slots the bot asked for that no later customer message supplied."""
    open_slots: dict[str, dict[str, str]] = {}
    for turn in turns:
        decision = turn.decision or {}
        entities = decision.get("entities") or {}
        if decision.get("reason") == "slot_filled" or entities.get("order_ids"):
            open_slots.pop("order_id", None)
        if decision.get("reason") == "slot_filled" or entities.get("emails") or entities.get("postcodes"):
            open_slots.pop("proof", None)
        slot = {"asked_slot": "order_id", "asked_proof": "proof"}.get(str(decision.get("reason")))
        if slot is not None:
            open_slots[slot] = {"intent": str(decision.get("intent") or ""), "slot": slot,
                                "asked_for": SLOT_WORDS[slot]}
    return list(open_slots.values())


def _answers(turns: Sequence[BriefTurn]) -> list[dict[str, Any]]:
    answers = []
    for turn in turns:
        decision = turn.decision or {}
        asked = decision.get("reason") in ("asked_slot", "asked_proof")  # a question, listed as a slot
        if turn.reply and decision.get("tier") in ANSWER_TIERS and not decision.get("escalated") and not asked:
            answers.append({
                "tier": decision.get("tier"), "intent": decision.get("intent"),
                "text": _clip(turn.reply, 200), "articles": list(decision.get("citations") or ()),
            })
    return answers[-MAX_ANSWERS:]


def _want_line(intent: str | None, order_ids: Sequence[str], amounts: Sequence[str], emails: Sequence[str]) -> str:
    topic = intent.replace("_", " ") if intent and intent != "out_of_scope" else "unclear request"
    parts = [topic[0].upper() + topic[1:]]
    if order_ids:
        parts.append("order " + ", ".join(order_ids))
    if amounts:
        parts.append("amount " + ", ".join(amounts))
    if emails:
        parts.append("email " + ", ".join(emails))
    return "; ".join(parts)


def _main_intent(turns: Sequence[BriefTurn], threshold: float) -> tuple[str | None, float | None]:
    """What the conversation is about: the last request intent (not in :data:`META_INTENTS`) the
    model was confident of (at or above ``threshold``), else the last request intent, else the last
    intent of any kind; with its confidence. (None, None) when no turn recorded one."""
    confident = request = anything = (None, None)
    for turn in turns:
        decision = turn.decision or {}
        intent = decision.get("intent")
        if not intent:
            continue
        found = (str(intent), decision.get("confidence"))
        anything = found
        if intent not in META_INTENTS:
            request = found
            if isinstance(found[1], (int, float)) and found[1] >= threshold:
                confident = found
    for choice in (confident, request, anything):
        if choice[0] is not None:
            return choice
    return None, None


def _open_questions(brief: dict[str, Any], order_ids: Sequence[str], verified_owner: str | None) -> list[str]:
    questions = []
    want, why, did = brief["want"], brief["escalation"], brief["bot_did"]
    if order_ids and verified_owner is None:
        questions.append(
            "Ownership not verified: ask for the email or postcode on the order before sharing any "
            "order detail."
        )
    for slot in did["unanswered_slots"]:
        questions.append(f"The assistant asked for {slot['asked_for']} and got no answer.")
    for lookup in did["lookups"]:
        if lookup["result"] == "not found":
            questions.append(f"Order {lookup['order_id']} was not found: check the number with the customer.")
    reason = why["reason"] or ""
    if reason.startswith(("low_confidence", "out_of_scope", "no_kb_match")) or not want["intent"]:
        guess = f" (best guess: {want['intent']})" if want["intent"] else ""
        questions.append(f"What does the customer want{guess}?")
    if reason == "unsupported_language":
        questions.append(f"The customer writes in '{why['language']}': answer in it or use a translator.")
    return questions


def build_brief(data: BriefInput, playbook: Playbook) -> dict[str, Any]:
    """The structured brief as a JSON-ready dict (schema :data:`BRIEF_VERSION`, documented in
    docs/agent-inbox.md): ``customer``, ``want``, ``escalation``, ``bot_did``, ``ownership``,
    ``open_questions``, ``next_step``. Linear in the text of the last :data:`MAX_TURNS` messages,
    each read up to ``data.max_message_chars``."""
    turns = list(data.turns)[-MAX_TURNS:]
    limit = data.max_message_chars
    facts = [message_facts(turn.text[:limit]) for turn in turns]
    order_ids = [o for f in facts for o in f.order_ids]
    emails = [e for f in facts for e in f.emails]
    amounts = [a for f in facts for a in f.amounts]
    order_ids, emails, amounts = _unique(order_ids), _unique(emails), _unique(amounts)
    intent, confidence = _main_intent(turns, data.confidence_threshold)
    evidence = dict(data.evidence)
    words = _evidence_words(data.reason, evidence, turns)
    scores = [float(s) for t in turns if isinstance(s := (t.decision or {}).get("sentiment"), (int, float))]
    customer = data.customer
    channels = _unique([c for c, _ in customer.identities] + [t.channel for t in turns])
    brief: dict[str, Any] = {
        "version": BRIEF_VERSION,
        "ticket_id": data.ticket_id,
        "customer": {
            "id": customer.id,
            "name": customer.name,
            "email": customer.email or (emails[0] if emails else None),
            "identities": [{"channel": c, "address": a} for c, a in customer.identities],
            "channels": channels,
            "earlier_tickets": [
                {"id": t.id, "state": t.state, "intent": t.intent, "created_at": t.created_at.isoformat()}
                for t in customer.earlier_tickets
            ],
        },
        "want": {
            "summary": _want_line(intent, order_ids, amounts, emails),
            "intent": intent,
            "order_ids": order_ids,
            "amounts": amounts,
            "emails": emails,
            "key_sentences": _key_sentences(turns, facts, words),
        },
        "escalation": {
            "reason": data.reason,
            "description": describe_reason(data.reason),
            "evidence": words,
            "confidence": confidence,
            "sentiment": [round(s, 2) for s in scores],
            "sentiment_trend": _trend(scores),
            "language": str(evidence.get("language") or data.default_language),
            "topic": evidence.get("topic"),
        },
        "bot_did": {
            "answers": _answers(turns),
            "lookups": _lookups(turns),
            "unanswered_slots": _unanswered_slots(turns),
        },
        "ownership": {
            "verified_owner": data.verified_owner,
            "orders_mentioned": bool(order_ids),
        },
    }
    brief["open_questions"] = _open_questions(brief, order_ids, data.verified_owner)
    # A guess the model was not sure of does not choose the playbook's step; the reason does.
    sure = isinstance(confidence, (int, float)) and confidence >= data.confidence_threshold
    step = playbook.next_step(intent if sure else None, data.reason)
    brief["next_step"] = {"rule": step.rule, "text": step.text}
    return brief


def render_text(brief: Mapping[str, Any]) -> str:
    """The brief as short plain text, one fact per line, most useful first: for notifications and
    ``tickets.handoff_summary``."""
    want, why, did, owner = brief["want"], brief["escalation"], brief["bot_did"], brief["ownership"]
    lines = [f"Escalated because {why['description']}."]
    if why.get("language") and why["reason"] == "unsupported_language":
        lines.append(f"Language: {why['language']} (ISO 639-1).")
    if why.get("topic"):
        lines.append(f"Sensitive topic: {why['topic']}.")
    lines.append(f"Wants: {want['summary']}.")
    if why.get("evidence"):
        lines.append("Trigger: " + "; ".join(f'"{w}"' for w in why["evidence"]) + ".")
    if want["intent"]:
        conf = f" (confidence {why['confidence']:.2f})" if why.get("confidence") is not None else ""
        lines.append(f"Likely intent: {want['intent']}{conf}.")
    if want["order_ids"]:
        lines.append("Order ids mentioned: " + ", ".join(want["order_ids"]) + ".")
    if owner["orders_mentioned"] and owner["verified_owner"] is None:
        lines.append(
            "Ownership NOT verified: the customer has not proved they own any order (order number "
            "+ email or postcode on it). Share no order details until they do."
        )
    elif owner["verified_owner"] is not None:
        lines.append(
            f"Verified owner of order-store account {owner['verified_owner']} (proved in this "
            "conversation); an order of another account is not verified."
        )
    if want["emails"]:
        lines.append("Emails mentioned: " + ", ".join(want["emails"]) + ".")
    if why["sentiment_trend"] in ("worsening", "negative"):
        lines.append(f"Customer sentiment is {why['sentiment_trend']} ({', '.join(map(str, why['sentiment']))}).")
    if want["key_sentences"]:
        lines.append("Customer said:")
        lines.extend(f"  - {s}" for s in want["key_sentences"])
    for lookup in did["lookups"]:
        lines.append(f"Looked up {lookup['order_id']}: {lookup['result']}.")
    if did["answers"]:
        last = did["answers"][-1]
        cited = f" [{', '.join(last['articles'])}]" if last["articles"] else ""
        lines.append(f"Bot already answered {len(did['answers'])} time(s); last: {last['text']}{cited}")
    for question in brief["open_questions"]:
        lines.append(f"Open: {question}")
    lines.append(f"Next step: {brief['next_step']['text']}")
    return "\n".join(lines)
