"""Golden sets: the JSONL files of customer conversations with their expected outcome.

One case per line, a JSON object with these fields:

- ``id`` (string, required, unique in the file);
- ``text`` (string) **or** ``turns`` (list of strings: the customer's messages of a multi-turn case,
  in order); exactly one of the two, no empty message;
- ``intent`` (string): the expected intent of the *last* customer message (``out_of_scope``, or a
  spelling :func:`bot.intent_model.canonical_label` reads as it, for anything the shop's support does
  not cover). Any label ``helpline train`` accepts (uppercase, a leading digit, punctuation); a label
  map (``label_map`` of :func:`load_golden`) translates file labels to intents first. Required
  unless ``expect`` is given;
- ``expect`` (optional): what the bot must do on the last message, one of :data:`EXPECT_KINDS`
  (``answer``, ``ask``, ``clarify``, ``decline``, ``escalate``; :mod:`bot.eval.outcome` says how each
  is read from the turn event). An ``answer`` case needs ``intent`` or ``relevant_docs``;
- ``must_include`` / ``must_not_include`` (lists of strings, optional): each must / none may appear
  in the bot's reply to the last message (case-insensitive); ``lead`` (a string, or a non-empty list
  of strings: the acceptable openings, optional): the reply must start with one of them
  (case-insensitive, leading whitespace and punctuation ignored, whole words: ``"No"`` does not
  match ``"Northwind"``). List every opening a correct reply may have, e.g. ``["Yes", "Order
  #W1571486 is still being prepared, so you can still cancel it"]`` for an order question that the
  order-state lead answers;
- ``escalate`` (bool, optional): whether a person should take the ticket over; with ``expect`` it
  defaults to ``expect == "escalate"`` and must agree with it;
- ``relevant_docs`` (list of knowledge-base document ids, optional): the articles that answer it;
- ``reference_answer`` (string, optional): a good answer, for people reading the report;
- ``brief`` (object, optional): the fields the handoff brief of an escalated case must show
  (:mod:`bot.eval.brief_fields` lists them and how each is checked);
- ``note`` (string, optional): free text for the person maintaining the set; ignored.

Blank lines are skipped. Any other field is an error (a misspelt ``relevent_docs`` must not be
silently ignored). Every line is checked before the file is refused, so one run lists all bad lines.

Must not: run models or know about the router.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.eval.brief_fields import validate_expectations
from bot.intent_model import OUT_OF_SCOPE, canonical_label
from config.files import scan_objects

EXPECT_KINDS = ("answer", "ask", "clarify", "decline", "escalate")
"""What a case may ``expect`` the bot to do on its last message."""

_FIELDS = (
    "id", "text", "turns", "intent", "expect", "must_include", "must_not_include", "lead", "escalate",
    "relevant_docs", "reference_answer", "brief", "note",
)


class GoldenError(ValueError):
    """A golden file is invalid. The message names the file, the line and the field; ``problems``
    lists every bad line found (``"file:line: field 'name': why"``), or just the message."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


@dataclass(frozen=True)
class GoldenCase:
    """One golden case. ``turns`` holds the customer's messages (one for a ``text`` case); ``line``
    is its 1-based line in the file; ``intent`` is canonical (None: not given, only with ``expect``)."""

    id: str
    turns: tuple[str, ...]
    intent: str | None
    escalate: bool | None = None
    relevant_docs: tuple[str, ...] = ()
    reference_answer: str | None = None
    brief: Mapping[str, Any] | None = None
    line: int = 0
    expect: str | None = None
    must_include: tuple[str, ...] = ()
    must_not_include: tuple[str, ...] = ()
    lead: tuple[str, ...] = ()
    """Acceptable openings of the last reply (any one matches); empty: no lead check."""

    @property
    def text(self) -> str:
        """The last customer message: the one ``intent`` and ``relevant_docs`` are about."""
        return self.turns[-1]

    @property
    def out_of_scope(self) -> bool:
        """Expected ``out_of_scope``, or (no intent given) expected to be declined."""
        return self.intent == OUT_OF_SCOPE or (self.intent is None and self.expect == "decline")

    @property
    def expected_escalation(self) -> bool | None:
        """``escalate`` when given, else ``expect == "escalate"`` for a case with ``expect``, else
        None (left out of escalation precision and recall)."""
        if self.escalate is not None:
            return self.escalate
        return None if self.expect is None else self.expect == "escalate"


@dataclass(frozen=True)
class GoldenSet:
    """The cases of one file, in file order, and the intents the configuration does not know
    (intent -> ids of the cases that expect it; empty when no intent list was given)."""

    path: Path
    cases: tuple[GoldenCase, ...]
    unknown_intents: dict[str, list[str]] = field(default_factory=dict)

    def warning(self) -> str | None:
        """One line naming each unknown intent and its case ids, or None when all are known."""
        if not self.unknown_intents:
            return None
        parts = [f"{intent} ({', '.join(ids)})" for intent, ids in sorted(self.unknown_intents.items())]
        return (
            f"{self.path}: intents not in the configured intents (these cases can only count as "
            f"wrong): {'; '.join(parts)}"
        )


def _string_list(value: Any, fail: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise fail(name, "must be a non-empty list of strings")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise fail(name, f"item {i} must be a string, got {type(item).__name__}")
        if not item.strip():
            raise fail(name, f"item {i} is empty")
        out.append(item)
    return tuple(out)


def parse_case(obj: Any, where: str, label_map: Mapping[str, str] | None = None) -> GoldenCase:
    """Validate one decoded JSON line. ``where`` prefixes errors (``"file:line"``); ``label_map``
    (file label -> intent) is applied to ``intent`` before it is made canonical.

    Raises:
        GoldenError: not an object, unknown field, missing or empty field, wrong type, both or
            neither of ``text``/``turns``, a ``lead`` that is neither a non-empty string nor a list
            of them, an ``expect`` kind not in :data:`EXPECT_KINDS`, an
            ``escalate`` that contradicts ``expect``, an ``answer`` case with neither ``intent`` nor
            ``relevant_docs``. The message names the field.
    """

    def fail(name: str, why: str) -> GoldenError:
        return GoldenError(f"{where}: field '{name}': {why}")

    if not isinstance(obj, dict):
        raise GoldenError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown field (allowed: {', '.join(_FIELDS)})")

    case_id = obj.get("id")
    if case_id is None:
        raise fail("id", "missing")
    if not isinstance(case_id, str) or not case_id.strip():
        raise fail("id", "must be a non-empty string")

    has_text, has_turns = obj.get("text") is not None, obj.get("turns") is not None
    if has_text == has_turns:
        raise fail("text", "give exactly one of 'text' (one message) or 'turns' (a list of messages)")
    if has_text:
        text = obj["text"]
        if not isinstance(text, str):
            raise fail("text", f"must be a string, got {type(text).__name__}")
        if not text.strip():
            raise fail("text", "empty text")
        turns: tuple[str, ...] = (text,)
    else:
        turns = _string_list(obj["turns"], fail, "turns")

    expect = obj.get("expect")
    if expect is not None and expect not in EXPECT_KINDS:
        raise fail("expect", f"must be one of {', '.join(EXPECT_KINDS)}, got {expect!r}")

    intent = obj.get("intent")
    if intent is None:
        if expect is None:
            raise fail("intent", "missing (required unless 'expect' is given)")
    elif not isinstance(intent, str) or not intent.strip():
        raise fail("intent", f"must be a non-empty string, got {intent!r}")
    else:
        intent = canonical_label((label_map or {}).get(intent.strip(), intent))

    escalate = obj.get("escalate")
    if escalate is not None and not isinstance(escalate, bool):
        raise fail("escalate", f"must be true or false, got {escalate!r}")

    if expect is not None and escalate is not None and escalate != (expect == "escalate"):
        raise fail("escalate", f"{escalate} contradicts expect {expect!r}")

    docs: tuple[str, ...] = ()
    if obj.get("relevant_docs") is not None:
        docs = _string_list(obj["relevant_docs"], fail, "relevant_docs")
    if expect == "answer" and intent is None and not docs:
        raise fail("expect", "an 'answer' case needs 'intent' or 'relevant_docs' to be judged by")

    include = _string_list(obj["must_include"], fail, "must_include") if obj.get("must_include") is not None else ()
    exclude = (_string_list(obj["must_not_include"], fail, "must_not_include")
               if obj.get("must_not_include") is not None else ())
    lead: tuple[str, ...] = ()
    if obj.get("lead") is not None:
        raw = obj["lead"]
        if isinstance(raw, str):
            if not raw.strip():
                raise fail("lead", f"must be a non-empty string or list of strings, got {raw!r}")
            lead = (raw,)
        elif isinstance(raw, list):
            lead = _string_list(raw, fail, "lead")
        else:
            raise fail("lead", f"must be a non-empty string or list of strings, got {raw!r}")

    reference = obj.get("reference_answer")
    if reference is not None and not isinstance(reference, str):
        raise fail("reference_answer", f"must be a string, got {type(reference).__name__}")
    note = obj.get("note")
    if note is not None and not isinstance(note, str):
        raise fail("note", f"must be a string, got {type(note).__name__}")

    brief = obj.get("brief")
    if brief is not None and (why := validate_expectations(brief)) is not None:
        raise fail("brief", why)

    return GoldenCase(
        id=case_id, turns=turns, intent=intent, escalate=escalate, relevant_docs=docs,
        reference_answer=reference, brief=brief, expect=expect, must_include=include,
        must_not_include=exclude, lead=lead,
    )


MAX_SHOWN_PROBLEMS = 20
"""Bad lines listed in a :class:`GoldenError`; the rest are counted."""


def load_golden(
    path: Path,
    known_intents: Collection[str] | None = None,
    label_map: Mapping[str, str] | None = None,
) -> GoldenSet:
    """Read and validate a golden JSONL file, checking every line before giving up.

    Args:
        path: the file (UTF-8, one JSON object per line).
        known_intents: the configured intent names; expected intents outside it are collected in
            ``GoldenSet.unknown_intents`` (a warning, not an error). None: not checked.
        label_map: file label -> intent name (``helpline eval --label-map``); labels not in it are
            kept. Applied before :func:`bot.intent_model.canonical_label`.
    Raises:
        GoldenError: bad JSON, a bad field (see :func:`parse_case`), a duplicate id, or no cases.
            ``problems`` holds every bad line as ``"file:line: field 'name': why"`` in file order;
            the message is that line alone when there is one, else a count followed by the first
            :data:`MAX_SHOWN_PROBLEMS` lines and how many more there are. A file that is not UTF-8
            stops at the first bad byte.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    cases: list[GoldenCase] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, where, obj, why in scan_objects(path, GoldenError):
        case = _case_or_problem(obj, where, why, seen, label_map)
        if isinstance(case, str):
            problems.append(case)
            continue
        seen[case.id] = number
        cases.append(replace(case, line=number))
    if problems:
        raise GoldenError(_problem_message(path, problems), problems)
    if not cases:
        raise GoldenError(f"{path}: no cases (expected one JSON object per line)")
    unknown: dict[str, list[str]] = {}
    if known_intents is not None:
        known = set(known_intents)
        for case in cases:
            if case.intent is not None and case.intent not in known:
                unknown.setdefault(case.intent, []).append(case.id)
    return GoldenSet(path=path, cases=tuple(cases), unknown_intents=unknown)


def _case_or_problem(
    obj: dict[str, Any] | None, where: str, why: str, seen: dict[str, int],
    label_map: Mapping[str, str] | None,
) -> GoldenCase | str:
    """The case of one scanned line, or what is wrong with it (``seen``: id -> line of the cases
    accepted so far)."""
    if obj is None:
        return f"{where}: {why}"
    try:
        case = parse_case(obj, where, label_map)
    except GoldenError as exc:
        return str(exc)
    if case.id in seen:
        return f"{where}: field 'id': duplicate id {case.id!r} (first on line {seen[case.id]})"
    return case


def _problem_message(path: Path, problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    shown = problems[:MAX_SHOWN_PROBLEMS]
    more = len(problems) - len(shown)
    lines = [f"{path}: {len(problems)} bad lines:", *(f"  {p}" for p in shown)]
    if more:
        lines.append(f"  ... and {more} more")
    return "\n".join(lines)
