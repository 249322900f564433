"""What the bot says in its own words around a policy answer: the order-state lead and the yes/no words.

``config/order_policy.yaml`` holds both halves:

- ``orders``: when a customer who proved an order is theirs asks whether they can cancel, change,
  return or get a refund for it, the answer opens with a sentence from the order's real state
  (:func:`order_lead`: "Order #W5976205 has already shipped, so it can no longer be cancelled; you can
  return it once it arrives."). The topic comes from phrases in the question
  (:meth:`OrderPolicy.topic`); the text from the topic and the order store's status. The lead says
  no more than the order-status reply already tells a verified owner: the order number and what its
  status means.
- ``answers``: the "Yes," / "No," words and the word lists :mod:`bot.answers` reads a sentence's
  polarity with (negations, exceptions, conditions) and recognises a yes/no question by.

:func:`load_order_policy` reads and validates the file; a problem is one :class:`OrderPolicyError`
line naming the file and the key. :func:`default_policy` is the shipped file, read once per process.

Must not: look orders up or decide whether the customer owns one (the router passes the facts of an
order the customer proved theirs), touch the database, or run a model.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bot.phrases import PhraseMatcher
from config.settings import CONFIG_DIR
from config.yaml_models import load_yaml_model

if TYPE_CHECKING:
    from state.orders import Order

DEFAULT_ORDER_POLICY_FILE = CONFIG_DIR / "order_policy.yaml"
TOPICS = ("cancel", "change", "return", "refund")
"""Order topics a lead can be about (the keys of ``orders.topics`` and ``orders.leads``)."""
MAX_LEAD_CHARS = 300

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'"})


class OrderPolicyError(ValueError):
    """The order-policy file cannot be used; the one-line message names the file and the key."""


def words(text: str) -> list[str]:
    """Lower-case words of ``text``, contractions kept whole (``"Can’t"`` -> ``"can't"``); what the
    word lists of the policy file are matched against. Linear in the length of ``text``."""
    return _WORD.findall(text.translate(_APOSTROPHES).casefold())


@dataclass(frozen=True)
class OrderFacts:
    """The order in focus, as far as a lead sentence may use it.

    ``order_id``: the normalised order number (``"#W5976205"``); ``status``: the order store's word
    (:class:`state.orders.Order`: ``pending``, ``processed``, ``delivered``, ``cancelled``,
    ``return requested``, ``exchange requested``, or another word of your order system, which then
    gets no lead). Build it with :meth:`from_order` from an order the customer proved is theirs.

    Raises:
        ValueError: an empty order id or status.
    """

    order_id: str
    status: str

    def __post_init__(self) -> None:
        if not self.order_id.strip() or not self.status.strip():
            raise ValueError(f"order facts need an order id and a status, got {self!r}")

    @classmethod
    def from_order(cls, order: Order) -> OrderFacts:
        """The facts of a :class:`state.orders.Order` (its id and status; nothing else is used)."""
        return cls(order_id=order.order_id, status=order.status)


def _check_word_list(value: list[str]) -> list[str]:
    for word in value:
        if words(word) != [word.casefold()]:
            raise ValueError(f"{word!r} must be one word (letters, digits, an apostrophe)")
    return [w.casefold() for w in value]


class AnswerWords(BaseModel):
    """``answers``: the yes/no words and the word lists :mod:`bot.answers` reads polarity with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    yes: str = Field(min_length=1, max_length=40)
    no: str = Field(min_length=1, max_length=40)
    yes_no_openers: frozenset[str]
    fillers: frozenset[str] = frozenset()
    negations: frozenset[str]
    exceptions: frozenset[str] = frozenset()
    qualifiers: frozenset[str] = frozenset()
    conditions: frozenset[str] = frozenset()

    @field_validator(
        "yes_no_openers", "fillers", "negations", "exceptions", "qualifiers", "conditions", mode="before"
    )
    @classmethod
    def _one_word_each(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("must be a list of words")
        for word in value:
            if not isinstance(word, str):  # YAML reads a bare no/yes/on/off as a boolean
                raise ValueError(f"{word!r} is not a word (quote it: \"no\")")
        return frozenset(_check_word_list(value))

    @field_validator("yes_no_openers", "negations")
    @classmethod
    def _not_empty(cls, value: frozenset[str]) -> frozenset[str]:
        if not value:
            raise ValueError("must list at least one word")
        return value


def _phrase(text: str) -> tuple[str, ...]:
    tokens = tuple(text.casefold().split())
    if not tokens or any(not t.rstrip("*") or words(t.rstrip("*")) != [t.rstrip("*")] for t in tokens):
        raise ValueError(f"{text!r} is not a phrase of words (a trailing * allowed per word)")
    return tokens


class OrderTexts(BaseModel):
    """``orders``: topic phrases, subjects that are not the order, and lead texts by topic and status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: dict[str, list[str]]
    other_subjects: list[str] = Field(default_factory=list)
    leads: dict[str, dict[str, str]]

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[tuple[str, ...], str] = {}
        for topic, phrases in value.items():
            if topic not in TOPICS:
                raise ValueError(f"unknown topic {topic!r} (known: {', '.join(TOPICS)})")
            if not phrases:
                raise ValueError(f"{topic}: needs at least one phrase")
            for text in phrases:
                phrase = _phrase(text)
                if phrase in seen:
                    raise ValueError(f"{topic}: phrase {text!r} is also listed under {seen[phrase]}")
                seen[phrase] = topic
        return value

    @field_validator("other_subjects")
    @classmethod
    def _subjects(cls, value: list[str]) -> list[str]:
        for text in value:
            _phrase(text)
        return value

    @field_validator("leads")
    @classmethod
    def _leads(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for topic, by_status in value.items():
            if topic not in TOPICS:
                raise ValueError(f"unknown topic {topic!r} (known: {', '.join(TOPICS)})")
            for status, text in by_status.items():
                where = f"{topic}.{status}"
                if not text.strip() or len(text) > MAX_LEAD_CHARS:
                    raise ValueError(f"{where}: must be 1-{MAX_LEAD_CHARS} characters")
                try:
                    names = {n for _, n, _, _ in string.Formatter().parse(text) if n is not None}
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc} (write {{{{ and }}}} for a literal brace)") from None
                if names - {"order_id"}:
                    raise ValueError(f"{where}: unknown placeholder {{{sorted(names)[0]}}} (allowed: order_id)")
        return value

    @model_validator(mode="after")
    def _every_lead_has_a_topic(self) -> OrderTexts:
        missing = sorted(set(self.leads) - set(self.topics))
        if missing:
            raise ValueError(f"leads.{missing[0]}: no phrases under topics.{missing[0]}")
        return self


class OrderPolicy(BaseModel):
    """The validated order-policy file (format: ``config/order_policy.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answers: AnswerWords
    orders: OrderTexts

    @cached_property
    def _topic_matcher(self) -> tuple[PhraseMatcher, tuple[str, ...]]:
        phrases, topics = [], []
        for topic, texts in self.orders.topics.items():
            for text in texts:
                phrases.append(_phrase(text))
                topics.append(topic)
        return PhraseMatcher(phrases), tuple(topics)

    @cached_property
    def _other_subjects(self) -> PhraseMatcher:
        return PhraseMatcher([_phrase(t) for t in self.orders.other_subjects])

    def topic(self, question: str) -> str | None:
        """The order topic of ``question`` (``"cancel"``, ``"change"``, ``"return"``, ``"refund"``),
        or None when it names none or names another subject (a membership, an account...)."""
        tokens = words(question)
        if self._other_subjects.first(tokens) is not None:
            return None
        matcher, topics = self._topic_matcher
        rank = matcher.first_rank(tokens)
        return None if rank is None else topics[rank]

    def lead(self, topic: str, order: OrderFacts) -> str | None:
        """The lead sentence for ``topic`` and ``order``'s status, or None when the file has none."""
        text = self.orders.leads.get(topic, {}).get(order.status.strip().casefold())
        return None if text is None else text.format(order_id=order.order_id)


def load_order_policy(path: Path = DEFAULT_ORDER_POLICY_FILE) -> OrderPolicy:
    """Read and validate an order-policy file.

    Raises:
        OrderPolicyError: not UTF-8, not YAML, not a mapping, or a bad value; one line,
            ``PATH: KEY: why``.
        OSError: the file cannot be read.
    """
    return load_yaml_model(path, OrderPolicy, OrderPolicyError, "'answers' and 'orders'")


@lru_cache(maxsize=1)
def default_policy() -> OrderPolicy:
    """The shipped ``config/order_policy.yaml``, read once per process."""
    return load_order_policy()


def order_lead(topic: str | None, order: OrderFacts | None, policy: OrderPolicy | None = None) -> str | None:
    """The sentence that opens a policy answer about ``order``: what its state means for ``topic``.

    Args:
        topic: ``"cancel"``, ``"change"``, ``"return"`` or ``"refund"`` (see :meth:`OrderPolicy.topic`);
            None gives None.
        order: the order in focus, proved to be the customer's; None gives None.
        policy: the texts (default: :func:`default_policy`).
    Returns:
        The filled text, e.g. ``"Order #W5976205 has already shipped, so it can no longer be
        cancelled; you can return it once it arrives."``, or None for a topic or status the file has
        no text for.
    Raises:
        ValueError: ``topic`` is not one of :data:`TOPICS`.
    """
    if topic is None or order is None:
        return None
    if topic not in TOPICS:
        raise ValueError(f"unknown order topic {topic!r} (known: {', '.join(TOPICS)})")
    return (policy or default_policy()).lead(topic, order)
