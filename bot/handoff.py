"""The handoff summary an agent reads when a ticket reaches the inbox, so no one starts from scratch.

Built from facts the bot already holds (the escalation reason, intents, order ids and emails seen,
sentiment, the last customer messages and what the bot already said), with no model call: it must
work with the kill switch on and cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
}


@dataclass(frozen=True)
class HistoryLine:
    """One message of the ticket as the summary sees it: ``author`` is customer, bot, agent, system."""

    author: str
    text: str


def _describe_reason(reason: str) -> str:
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


def _clip(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_summary(
    *,
    reason: str,
    intent: str | None,
    confidence: float | None,
    sentiment: float | None,
    order_ids: Sequence[str],
    emails: Sequence[str],
    history: Sequence[HistoryLine],
    evidence: Mapping[str, Any] | None = None,
    verified_owner: str | None = None,
    max_customer_lines: int = 3,
) -> str:
    """Plain-text summary, one fact per line, most useful first. ``history`` is oldest first;
    ``evidence`` is the escalation trigger's data (``language``, ``topic``), printed for the agent
    queue's routing. ``verified_owner``: the order-store account the customer proved to be in this
    conversation (order number + email or postcode, see bot.ownership), or None; when orders are
    mentioned the summary says whether ownership was proved, so that an agent does not give a
    guesser what the bot refused."""
    lines = [f"Escalated because {_describe_reason(reason)}."]
    evidence = evidence or {}
    if evidence.get("language"):
        lines.append(f"Language: {evidence['language']} (ISO 639-1).")
    if evidence.get("topic"):
        lines.append(f"Sensitive topic: {evidence['topic']}.")
    if intent:
        conf = f" (confidence {confidence:.2f})" if confidence is not None else ""
        lines.append(f"Likely intent: {intent}{conf}.")
    if order_ids:
        lines.append("Order ids mentioned: " + ", ".join(dict.fromkeys(order_ids)) + ".")
    if order_ids and verified_owner is None:
        lines.append(
            "Ownership NOT verified: the customer has not proved they own any order (order number "
            "+ email or postcode on it). Share no order details until they do."
        )
    elif verified_owner is not None:
        lines.append(
            f"Verified owner of order-store account {verified_owner} (proved in this conversation); "
            "an order of another account is not verified."
        )
    if emails:
        lines.append("Emails mentioned: " + ", ".join(dict.fromkeys(emails)) + ".")
    if sentiment is not None and sentiment <= -0.3:
        lines.append(f"Customer sentiment is negative (VADER {sentiment:.2f}).")
    customer = [h.text for h in history if h.author == "customer"][-max_customer_lines:]
    if customer:
        lines.append("Customer said:")
        lines.extend(f"  - {_clip(t)}" for t in customer)
    bot = [h.text for h in history if h.author == "bot"]
    if bot:
        lines.append(f"Bot already replied {len(bot)} time(s); last: {_clip(bot[-1], 160)}")
    return "\n".join(lines)
