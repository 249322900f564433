"""The support playbook: the next step the handoff brief suggests, keyed by intent and escalation reason.

A support lead edits ``config/playbook.yaml`` (setting ``playbook_file``) without touching code::

    default: "Read the transcript and answer the customer's last message."
    rules:
      - id: cancel-angry
        intents: [cancel_order]
        reasons: [negative_sentiment, conversation_sentiment]
        next_step: "Apologise, then cancel if the order has not shipped."

A rule matches when the ticket's intent is in ``intents`` (absent: any intent) and its escalation
reason starts with one of ``reasons`` (absent: any reason; ``low_confidence`` matches
``low_confidence_no_reasoning_tier``). The most specific match wins: intent and reason, then intent
only, then reason only; within one kind, the first in the file. No match: ``default``.
Must not: know about tickets or the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.files import read_utf8


class PlaybookError(ValueError):
    """The playbook file is invalid; the message names the file and the bad field."""


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    intents: list[str] | None = None
    reasons: list[str] | None = None
    next_step: str = Field(min_length=1, max_length=1000)

    @field_validator("intents", "reasons")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("leave it out to match any, or list at least one")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str = Field(min_length=1, max_length=1000)
    rules: list[_Rule] = Field(default_factory=list)


@dataclass(frozen=True)
class NextStep:
    """The suggestion: ``rule`` is the matching rule's id (``default`` when none matched)."""

    rule: str
    text: str


class Playbook:
    """Loaded playbook; :meth:`next_step` picks the suggestion for an intent and a reason."""

    def __init__(self, default: str, rules: list[_Rule] | None = None) -> None:
        self.default = default
        self.rules = list(rules or [])

    @classmethod
    def load(cls, path: Path) -> Playbook:
        """Read and validate ``path``. Raises :class:`PlaybookError` naming the file and field
        (unknown keys, empty lists, duplicate ids, a missing ``default``)."""
        try:
            raw: Any = yaml.safe_load(read_utf8(path, PlaybookError))
        except yaml.YAMLError as exc:
            raise PlaybookError(f"{path}: not valid YAML: {exc}") from None
        try:
            parsed = _File.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise PlaybookError(f"{path}: {where}: {first['msg']}") from None
        seen: set[str] = set()
        for rule in parsed.rules:
            if rule.id in seen:
                raise PlaybookError(f"{path}: rule id {rule.id!r} appears twice")
            seen.add(rule.id)
        return cls(parsed.default, parsed.rules)

    def intents(self) -> set[str]:
        """Every intent a rule names (checked against the configured intents by the tests)."""
        return {i for rule in self.rules for i in rule.intents or ()}

    def next_step(self, intent: str | None, reason: str | None) -> NextStep:
        reason = reason or ""

        def intent_ok(rule: _Rule) -> bool:
            return rule.intents is not None and intent in rule.intents

        def reason_ok(rule: _Rule) -> bool:
            return rule.reasons is not None and any(reason.startswith(r) for r in rule.reasons)

        for wanted in (
            lambda r: intent_ok(r) and reason_ok(r),
            lambda r: intent_ok(r) and r.reasons is None,
            lambda r: reason_ok(r) and r.intents is None,
        ):
            for rule in self.rules:
                if wanted(rule):
                    return NextStep(rule.id, rule.next_step)
        return NextStep("default", self.default)
