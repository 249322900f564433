"""What happened to one golden case, as read back from the database, and how it is judged.

Definitions (docs/eval.md, "What the numbers mean", repeats them):

- a case's **turns** are its customer messages; each has the turn event the conversation service
  wrote (the router Decision's ``event_payload()`` plus ``latency_ms``) and the bot's reply, if any.
  A turn on a ticket a person already owns has an event with ``tier`` None: the bot stayed silent;
- **predicted intent**: the intent recorded on the last turn; ``out_of_scope`` when that turn's
  ``data["out_of_scope"]`` is true (the intent model's out-of-scope flag, which keeps the nearest
  trained intent in ``intent``) or its reason is ``off_topic`` (the bot declined politely);
  ``(none)`` when the last turn was not routed (an earlier turn had escalated, so the bot stayed
  silent). Intent accuracy reads the **judged intent**: ``out_of_scope`` for an out-of-scope case
  that a person took over (a correct escalation is not a wrong intent), else the predicted one;
- **escalated**: any turn of the case escalated (``escalated`` true in its event);
  **automated** (deflected): not escalated: the customer was answered without a human;
- **claim answers**: replies of automated turns whose tier is not ``deterministic``, ``guard`` or
  ``human`` (today: retrieval answers; later also reasoning-tier answers). Each is scored for
  groundedness against the text of the documents it cites. Deterministic replies (order lookups,
  canned greetings) are computed from the order store or written in ``intents.yaml``; they make no
  knowledge-base claim and are counted separately, not scored;
- **wrong answer**: an automated case whose judged intent differs from the expected one, or one of
  whose claim answers is not fully supported (some sentence unsupported, or unscored); a last
  message that got a clarifying question or a polite decline (kinds ``clarify``, ``decline``,
  below) answered nothing, so it is never wrong;
- **out-of-scope recalled**: a case expected ``out_of_scope`` that was not automated with an in-scope
  intent: it escalated, or its predicted intent was ``out_of_scope``;
- **reference agreement**: for an automated case with a ``reference_answer`` that states numbers
  (days, amounts, percentages, order numbers), whether the bot's last reply states every one of them.
  It catches a grounded answer to the wrong question (the US shipping price quoted for a UK
  question), which groundedness cannot see. Reported on its own, not part of the wrong-answer rate;
- **kind** (what the bot did on the last message, for cases with ``expect``): ``escalate`` when the
  last turn escalated, or was not routed because an earlier turn had; ``clarify`` for reason
  ``clarify``; ``decline`` for reason ``off_topic``; ``ask`` for ``asked_slot``/``asked_proof``, and
  for a turn whose proof of ownership did not match (``data["not_found"]`` non-empty: the bot asks
  the customer to check the details); ``answer`` for any other routed turn; ``none`` when no turn
  event was written;
- **wrong-making problems** of a case with ``expect``: an ``answer`` with ``relevant_docs`` citing
  none of them; otherwise a judged intent other than the expected ``intent`` (when given); a
  ``must_not_include`` present in the last reply (case-insensitive); an ``answer`` that opens with
  "Yes" or "No" where no acceptable ``lead`` matches and one opens with the opposite word (it
  contradicts the expected answer); an ``answer`` whose claim answer is not fully supported;
- **missing content** of a case with ``expect``: a ``must_include`` absent from the last reply
  (case-insensitive), or the reply opening with none of the ``lead`` alternatives
  (case-insensitive, leading whitespace and punctuation ignored, whole words) unless it contradicts
  them (above);
- a case with ``expect`` is **correct** when its kind is the expected one with no wrong-making
  problem and no missing content. It is **wrong** when the bot answered (kind ``answer``) while the
  case expected ``clarify``, ``decline`` or ``escalate``, or with a wrong-making problem; or when
  the bot asked (kind ``ask``) with a ``must_not_include`` in the question (it disclosed what it
  must not). It is **incomplete** when it is not wrong, the kind is the expected ``answer`` or
  ``ask``, but content is missing: the right article or intent without the fact or the opening a
  careful agent would give. A clarification, a decline or a question where an answer was expected
  is neither wrong nor incomplete, just not correct. Cases without ``expect`` keep the rule above;
- **threshold confidence** (for calibration): the lowest intent confidence among the case's turns
  that passed the router's confidence check: routed turns other than ``guard`` turns and those with a
  reason in :data:`THRESHOLD_FREE_REASONS` (they never consult the threshold). None when no turn did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bot.eval.golden import OUT_OF_SCOPE, GoldenCase
from bot.eval.groundedness import Groundedness, content_words

NO_INTENT = "(none)"
"""Predicted intent of a case whose last turn the bot did not route (it had already escalated)."""

NON_CLAIM_TIERS = frozenset({"deterministic", "guard", "human"})
"""Tiers whose replies make no knowledge claim (lookups, canned replies, the handoff message)."""

THRESHOLD_FREE_REASONS = frozenset({"slot_filled", "clarify", "off_topic"})
"""Turn reasons the confidence threshold does not decide: filling a slot the bot asked for, and the
clarifying question or polite decline that a vague or off-topic message gets instead of an answer
(neither answers, so raising the threshold cannot make it a wrong answer or a handoff)."""

NOT_ANSWERS = frozenset({"clarify", "decline"})
"""Kinds of reply that answer nothing, so can never be a wrong answer."""

ASK_REASONS = frozenset({"asked_slot", "asked_proof"})
"""Turn reasons of a question the bot asks to fill a slot or prove ownership (kind ``ask``)."""

ANSWER_KINDS = frozenset({"answer", "ask"})
"""Kinds that answer the customer (an answer, or a question of the bot's): the ``answered`` cases."""

_LEADING = re.compile(r"^[\W_]+")
_SPACES = re.compile(r"\s+")


def _lead_form(text: str) -> str:
    """``text`` for the ``lead`` check: leading whitespace and punctuation dropped, spaces collapsed,
    case folded."""
    return _SPACES.sub(" ", _LEADING.sub("", text)).casefold()


def lead_matches(reply: str | None, openings: tuple[str, ...]) -> bool:
    """The reply opens with one of ``openings`` (both compared as :func:`_lead_form` makes them; an
    opening that ends in a letter or digit must end a word there: ``"No"`` matches ``"No, ..."``
    but not ``"Northwind ..."``). True when ``openings`` is empty (nothing to check); False for no
    reply otherwise."""
    if not openings:
        return True
    form = _lead_form(reply or "")
    for opening in openings:
        want = _lead_form(opening)
        if not form.startswith(want):
            continue
        after = form[len(want):len(want) + 1]
        if not (want[-1:].isalnum() and (after.isalnum() or after == "_")):
            return True
    return False


_OPPOSITE = {"yes": "no", "no": "yes"}
_FIRST_WORD = re.compile(r"\w+")


def _first_word(text: str) -> str:
    found = _FIRST_WORD.match(_lead_form(text))
    return found.group(0) if found else ""


def contradicted_lead(reply: str | None, openings: tuple[str, ...]) -> str | None:
    """``"yes"`` or ``"no"`` when the reply opens with that word while no opening in ``openings``
    matches and one of them opens with the opposite word (a "No" where "Yes" was expected); else
    None."""
    if not openings or lead_matches(reply, openings):
        return None
    said = _first_word(reply or "")
    if said in _OPPOSITE and any(_first_word(o) == _OPPOSITE[said] for o in openings):
        return said
    return None


def _numbers(text: str) -> set[str]:
    """Word tokens of ``text`` that contain a digit: ``$24.95`` -> {"24", "95"}, ``#W5976205``."""
    return {w for w in content_words(text) if any(ch.isdigit() for ch in w)}


def _alternatives(openings: tuple[str, ...]) -> str:
    return " or ".join(repr(x) for x in openings)


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
    def proof_not_matched(self) -> bool:
        """An order lookup whose proof did not match (``data["not_found"]`` non-empty): the reply
        asks the customer to check the order number and the email or postcode."""
        data = self.payload.get("data")
        return isinstance(data, dict) and bool(data.get("not_found"))

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
        if self.last.flagged_out_of_scope or self.last.payload.get("reason") == "off_topic":
            return OUT_OF_SCOPE
        return self.last.intent or NO_INTENT

    @property
    def judged_intent(self) -> str:
        """The predicted intent as intent accuracy reads it (see the module docstring)."""
        if self.case.out_of_scope and self.escalated:
            return OUT_OF_SCOPE
        return self.predicted

    @property
    def confidence(self) -> float | None:
        """Intent confidence of the last turn (None when it was not routed)."""
        return self.last.confidence if self.last.routed else None

    @property
    def intent_correct(self) -> bool:
        """The judged intent is the expected one (True when the case names no intent)."""
        return self.case.intent is None or self.judged_intent == self.case.intent

    @property
    def kind(self) -> str:
        """What the bot did on the last message (see the module docstring)."""
        last = self.last
        if last.escalated or (not last.routed and self.escalated):
            return "escalate"
        if not last.routed:
            return "none"
        reason = last.payload.get("reason")
        if reason == "clarify":
            return "clarify"
        if reason == "off_topic":
            return "decline"
        if reason in ASK_REASONS or last.proof_not_matched:
            return "ask"
        return "answer"

    def wrong_problems(self) -> list[str]:
        """The last reply's wrong-making problems (module docstring); empty when none."""
        case, last = self.case, self.last
        problems = []
        if self.kind == "answer" and case.relevant_docs:
            if not set(last.citations) & set(case.relevant_docs):
                problems.append(f"cites {', '.join(last.citations) or 'nothing'} "
                                f"(expected one of {', '.join(case.relevant_docs)})")
        elif not self.intent_correct:
            problems.append(f"intent {self.judged_intent} (expected {case.intent})")
        problems += self._disclosed()
        if self.kind == "answer" and (said := contradicted_lead(last.reply, case.lead)) is not None:
            problems.append(f"reply leads with {said!r} (expected {_alternatives(case.lead)})")
        if self.kind == "answer":
            last_index = len(self.turns) - 1
            if any(a.turn == last_index and not a.groundedness.fully_supported for a in self.answers):
                problems.append("answer not fully grounded")
        return problems

    def _disclosed(self) -> list[str]:
        folded = (self.last.reply or "").casefold()
        return [f"reply contains {s!r}" for s in self.case.must_not_include if s.casefold() in folded]

    def missing_content(self) -> list[str]:
        """What the last reply lacks: a ``must_include`` string, or an opening among ``lead``
        (module docstring); empty when nothing."""
        case, reply = self.case, self.last.reply or ""
        folded = reply.casefold()
        problems = [f"reply lacks {s!r}" for s in case.must_include if s.casefold() not in folded]
        contradicted = self.kind == "answer" and contradicted_lead(reply, case.lead) is not None
        if not contradicted and not lead_matches(reply, case.lead):
            problems.append(f"reply does not lead with {_alternatives(case.lead)}")
        return problems

    def content_problems(self) -> list[str]:
        """Every content problem of the last reply: :meth:`wrong_problems`, then
        :meth:`missing_content`; empty when none."""
        return self.wrong_problems() + self.missing_content()

    @property
    def correct(self) -> bool | None:
        """For a case with ``expect``: the expected kind with no content problem; None without."""
        if self.case.expect is None:
            return None
        return self.kind == self.case.expect and not self.content_problems()

    def why(self) -> list[str]:
        """Why a case with ``expect`` is not correct (empty when it is, or has no ``expect``)."""
        if self.case.expect is None or self.correct:
            return []
        problems = [] if self.kind == self.case.expect else [f"expected {self.case.expect}, got {self.kind}"]
        return problems + self.content_problems()

    @property
    def escalated(self) -> bool:
        return any(t.escalated for t in self.turns)

    @property
    def automated(self) -> bool:
        return not self.escalated

    @property
    def answered(self) -> bool:
        """Automated, and the last message got an answer or a question of the bot's (kind
        ``answer`` or ``ask``): the cases a wrong-answer share is taken over."""
        return self.automated and self.kind in ANSWER_KINDS

    @property
    def grounded(self) -> bool:
        """Every claim answer of the case is fully supported (True when it has none)."""
        return all(a.groundedness.fully_supported for a in self.answers)

    @property
    def wrong(self) -> bool:
        if self.case.expect is not None:
            if self.kind == "ask":
                return bool(self._disclosed())
            return self.kind == "answer" and (
                self.case.expect not in ANSWER_KINDS or bool(self.wrong_problems())
            )
        return self.automated and self.kind not in NOT_ANSWERS and (
            not self.intent_correct or not self.grounded
        )

    @property
    def incomplete(self) -> bool:
        """A case with ``expect`` answered with the expected kind (``answer`` or ``ask``), not wrong,
        but with missing content (module docstring). False for cases without ``expect``."""
        return (
            self.case.expect is not None and self.kind == self.case.expect and self.kind in ANSWER_KINDS
            and not self.wrong and bool(self.missing_content())
        )

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
            "judged_intent": self.judged_intent,
            "expect": self.case.expect,
            "kind": self.kind,
            "correct": self.correct,
            "why": self.why(),
            "expected_escalate": self.case.expected_escalation,
            "escalated": self.escalated,
            "wrong": self.wrong,
            "incomplete": self.incomplete,
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
