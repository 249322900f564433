"""Field accuracy of the handoff brief against a golden case's ``brief`` expectations.

A case's ``brief`` object names the fields an agent must see, each checked on its own against the
brief the ticket ended with (``tickets.brief``, see bot.handoff):

=====================  ===========================================================================
``reason``             the escalation reason starts with this (``low_confidence`` matches
                       ``low_confidence_no_reasoning_tier``)
``intent``             ``want.intent`` equals it
``order_ids``          ``want.order_ids`` as a set equals it (``#W1234567`` form)
``emails``             ``want.emails`` as a set equals it
``amounts``            ``want.amounts`` as a set equals it (as written: ``$45.90``)
``key_sentence``       some ``want.key_sentences`` entry contains it (case-insensitive)
``evidence``           some ``escalation.evidence`` entry contains it (case-insensitive)
``language``           ``escalation.language`` equals it
``sentiment_trend``    ``escalation.sentiment_trend`` equals it
``lookups``            the order ids in ``bot_did.lookups``, as a set, equal it
``unanswered_slots``   the slots in ``bot_did.unanswered_slots``, as a set, equal it
``next_step``          ``next_step.rule`` (the playbook rule id) equals it
=====================  ===========================================================================

A case whose ticket has no brief (it never escalated) scores every field wrong. Must not: run the
bot or read the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

_LISTS = ("order_ids", "emails", "amounts", "lookups", "unanswered_slots")
_TEXTS = ("reason", "intent", "key_sentence", "evidence", "language", "sentiment_trend", "next_step")
BRIEF_FIELDS = _LISTS + _TEXTS
"""The fields a golden case's ``brief`` object may name."""


def _contains(values: Any, wanted: str) -> bool:
    return any(wanted.lower() in str(v).lower() for v in values or ())


_CHECKS: dict[str, Callable[[Mapping[str, Any], Any], bool]] = {
    "reason": lambda b, v: str(b["escalation"].get("reason") or "").startswith(v),
    "intent": lambda b, v: b["want"].get("intent") == v,
    "order_ids": lambda b, v: set(b["want"].get("order_ids") or ()) == set(v),
    "emails": lambda b, v: set(b["want"].get("emails") or ()) == set(v),
    "amounts": lambda b, v: set(b["want"].get("amounts") or ()) == set(v),
    "key_sentence": lambda b, v: _contains(b["want"].get("key_sentences"), v),
    "evidence": lambda b, v: _contains(b["escalation"].get("evidence"), v),
    "language": lambda b, v: b["escalation"].get("language") == v,
    "sentiment_trend": lambda b, v: b["escalation"].get("sentiment_trend") == v,
    "lookups": lambda b, v: {x.get("order_id") for x in b["bot_did"].get("lookups") or ()} == set(v),
    "unanswered_slots": lambda b, v: {x.get("slot") for x in b["bot_did"].get("unanswered_slots") or ()} == set(v),
    "next_step": lambda b, v: b["next_step"].get("rule") == v,
}


def validate_expectations(value: Any) -> str | None:
    """Why ``value`` is not a valid ``brief`` object, or None when it is: an object of
    :data:`BRIEF_FIELDS`, list fields lists of strings (may be empty), the others non-empty strings."""
    if not isinstance(value, dict) or not value:
        return "must be a non-empty object"
    for key, item in value.items():
        if key not in BRIEF_FIELDS:
            return f"unknown brief field {key!r} (allowed: {', '.join(BRIEF_FIELDS)})"
        if key in _LISTS:
            if not isinstance(item, list) or not all(isinstance(x, str) and x for x in item):
                return f"brief field {key!r} must be a list of non-empty strings"
        elif not isinstance(item, str) or not item.strip():
            return f"brief field {key!r} must be a non-empty string"
    return None


def score_brief(expected: Mapping[str, Any], brief: Mapping[str, Any] | None) -> dict[str, bool]:
    """Field -> whether ``brief`` shows what ``expected`` says; all False when there is no brief."""
    if not brief:
        return {key: False for key in expected}
    return {key: bool(_CHECKS[key](brief, value)) for key, value in expected.items()}
