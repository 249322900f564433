"""What happened to one golden case, as read back from the database, and how it is judged.

Definitions (docs/eval.md, "What the numbers mean", repeats them):

- a case's **turns** are its customer messages; each has the turn event the conversation service
  wrote (the router Decision's ``event_payload()`` plus ``latency_ms``) and the bot's reply, if any.
  A turn on a ticket a person already owns has an event with ``tier`` None: the bot stayed silent;
- **predicted intent**: the intent recorded on the last turn; ``out_of_scope`` when that turn's
  ``data["out_of_scope"]`` is true (the intent model's out-of-scope flag, which keeps the nearest
  trained intent in ``intent``); ``(none)`` when the last turn was not routed (an earlier turn had
  escalated, so the bot stayed silent);
- **escalated**: any turn of the case escalated (``escalated`` true in its event);
  **automated** (deflected): not escalated: the customer was answered without a human;
- **claim answers**: replies of automated turns whose tier is not ``deterministic``, ``guard`` or
  ``human`` (today: retrieval answers; later also reasoning-tier answers). Each is scored for
  groundedness against the text of the documents it cites. Deterministic replies (order lookups,
  canned greetings) are computed from the order store or written in ``intents.yaml``; they make no
  knowledge-base claim and are counted separately, not scored;
- **wrong answer**: an automated case whose predicted intent differs from the expected one, or one of
  whose claim answers is not fully supported (some sentence unsupported, or unscored);
- **out-of-scope recalled**: a case expected ``out_of_scope`` that was not automated with an in-scope
  intent: it escalated, or its predicted intent was ``out_of_scope``;
- **reference agreement**: for an automated case with a ``reference_answer`` that states numbers
  (days, amounts, percentages, order numbers), whether the bot's last reply states every one of them.
  It catches a grounded answer to the wrong question (the US shipping price quoted for a UK
  question), which groundedness cannot see. Reported on its own, not part of the wrong-answer rate;
- **threshold confidence** (for calibration): the lowest intent confidence among the case's turns
  that passed the router's confidence check: routed turns other than ``guard`` and ``slot_filled``
  ones (those two never consult the threshold). None when no turn did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.eval.golden import OUT_OF_SCOPE, GoldenCase
from bot.eval.groundedness import Groundedness, content_words

NO_INTENT = "(none)"
"""Predicted intent of a case whose last turn the bot did not route (it had already escalated)."""

NON_CLAIM_TIERS = frozenset({"deterministic", "guard", "human"})
"""Tiers whose replies make no knowledge claim (lookups, canned replies, the handoff message)."""

THRESHOLD_FREE_REASONS = frozenset({"slot_filled"})
"""Turn reasons decided before the router's confidence check (filling a slot the bot asked for)."""


def _numbers(text: str) -> set[str]:
    """Word tokens of ``text`` that contain a digit: ``$24.95`` -> {"24", "95"}, ``#W5976205``."""
    return {w for w in content_words(text) if any(ch.isdigit() for ch in w)}


@dataclass(frozen=True)
class TurnRecord:
    """One customer message, its turn event payload (empty when none was written) and the reply."""

    text: str
    payload: dict[str, Any]
    reply: str | None

    @property
    def routed(self) -> bool:
        """The router decided this turn (False: the bot stayed silent or no event was written)."""
        return self.payload.get("tier") is not None

    @property
    def tier(self) -> str | None:
        return self.payload.get("tier")

    @property
    def intent(self) -> str | None:
        return self.payload.get("intent")

    @property
    def confidence(self) -> float | None:
        return self._number("confidence")

    @property
    def flagged_out_of_scope(self) -> bool:
        """The turn recorded the intent model's out-of-scope flag (``data["out_of_scope"]``)."""
        data = self.payload.get("data")
        return isinstance(data, dict) and data.get("out_of_scope") is True

    @property
    def escalated(self) -> bool:
        return bool(self.payload.get("escalated"))

    @property
    def citations(self) -> tuple[str, ...]:
        return tuple(self.payload.get("citations") or ())

    @property
    def latency_ms(self) -> float | None:
        return self._number("latency_ms")

    def _number(self, key: str) -> float | None:
        value = self.payload.get(key)
        return None if value is None else float(value)

    @property
    def makes_claims(self) -> bool:
        """An automated reply from a tier that answers from knowledge (see the module docstring)."""
        return (
            self.routed and not self.escalated and self.reply is not None
            and self.tier not in NON_CLAIM_TIERS
        )

    @property
    def consults_threshold(self) -> bool:
        return (
            self.routed and self.tier != "guard" and self.confidence is not None
            and self.payload.get("reason") not in THRESHOLD_FREE_REASONS
        )


@dataclass(frozen=True)
class GradedAnswer:
    """Groundedness of the claim answer of turn ``turn`` (0-based) of a case."""

    turn: int
    groundedness: Groundedness


@dataclass
class CaseOutcome:
    """A golden case with what the bot did. ``ranking``: knowledge-base doc ids, best first
    (distinct), for the last message; ``ranking_source``: ``recorded`` (from the retrieval turn's
    ``data["retrieved"]``), ``searched`` (the same search run on the last message because the routed
    turn did not retrieve) or None (the case has no ``relevant_docs``)."""

    case: GoldenCase
    turns: list[TurnRecord]
    answers: list[GradedAnswer] = field(default_factory=list)
    ranking: list[str] | None = None
    ranking_source: str | None = None
    brief: dict[str, Any] | None = None
    brief_fields: dict[str, bool] | None = None

    @property
    def last(self) -> TurnRecord:
        return self.turns[-1]

    @property
    def predicted(self) -> str:
        if not self.last.routed:
            return NO_INTENT
        if self.last.flagged_out_of_scope:
            return OUT_OF_SCOPE
        return self.last.intent or NO_INTENT

    @property
    def confidence(self) -> float | None:
        """Intent confidence of the last turn (None when it was not routed)."""
        return self.last.confidence if self.last.routed else None

    @property
    def intent_correct(self) -> bool:
        return self.predicted == self.case.intent

    @property
    def escalated(self) -> bool:
        return any(t.escalated for t in self.turns)

    @property
    def automated(self) -> bool:
        return not self.escalated

    @property
    def grounded(self) -> bool:
        """Every claim answer of the case is fully supported (True when it has none)."""
        return all(a.groundedness.fully_supported for a in self.answers)

    @property
    def wrong(self) -> bool:
        return self.automated and (not self.intent_correct or not self.grounded)

    @property
    def oos_recalled(self) -> bool:
        return not self.automated or self.predicted == OUT_OF_SCOPE

    @property
    def reference_agrees(self) -> bool | None:
        """See the module docstring; None when not checkable (escalated case, no reference answer,
        or a reference without numbers)."""
        if not self.case.reference_answer or not self.automated:
            return None
        wanted = _numbers(self.case.reference_answer)
        if not wanted:
            return None
        return wanted <= _numbers(self.last.reply or "")

    @property
    def threshold_confidence(self) -> float | None:
        values = [t.confidence for t in self.turns if t.consults_threshold]
        return min(v for v in values if v is not None) if values else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record of the case for ``cases.jsonl`` in the report folder."""
        return {
            "id": self.case.id,
            "line": self.case.line,
            "turns": [
                {"text": t.text, "reply": t.reply, "tier": t.tier, "reason": t.payload.get("reason"),
                 "intent": t.intent, "confidence": t.confidence, "escalated": t.escalated,
                 "citations": list(t.citations), "latency_ms": t.latency_ms}
                for t in self.turns
            ],
            "expected_intent": self.case.intent,
            "predicted_intent": self.predicted,
            "expected_escalate": self.case.escalate,
            "escalated": self.escalated,
            "wrong": self.wrong,
            "reference_agrees": self.reference_agrees,
            "answers": [
                {"turn": a.turn, "score": a.groundedness.score, "supported": a.groundedness.supported,
                 "total": a.groundedness.total, "unscored_reason": a.groundedness.unscored_reason,
                 "unsupported": list(a.groundedness.unsupported)}
                for a in self.answers
            ],
            "relevant_docs": list(self.case.relevant_docs),
            "ranking": self.ranking,
            "ranking_source": self.ranking_source,
            "brief_expected": dict(self.case.brief) if self.case.brief else None,
            "brief_fields": self.brief_fields,
            "brief": self.brief,
        }
