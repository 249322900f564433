"""Conversation context: what a turn is about, carried to the next turn, and follow-ups read with it.

Each turn leaves a :class:`Focus` in its event (``data["focus"]``): the intent answered, the article
cited, the order described, the country and the payment method named, and the request as the bot
understood it. The next turn starts from it (``TurnContext.focus``). A short or anaphoric message
("how much does that cost?", "can I return it?", "and to the UK?", "what about PayPal?") is a
*follow-up* (:func:`follow_up_cue`) and is understood in context (:func:`in_context`):

- it names a new value of a slot the earlier request named ("and to the UK?" after "do you ship to
  Canada?"): the earlier request with the value replaced by its canonical name ("do you ship to the
  United Kingdom?");
- otherwise: the earlier request and the message together ("do you ship to Canada? how much does
  that cost?"), so the topic and its entities reach the intent model and the knowledge-base search.

Slots: countries (names, official names and ISO codes from ``pycountry``, plus common short forms
such as "UK", "USA", "the States", "EU") and payment methods (:data:`PAYMENT_METHODS`). Order ids come
from :mod:`bot.entities`.

Everything here is linear in the message length and runs in the router's worker thread. Must not:
decide what to answer, touch the database, or trust anything but the server's own turn records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

import ahocorasick
import pycountry

MAX_REQUEST_CHARS = 300
"""The carried request is cut to this many characters (the models read 512 of the combined text)."""
SHORT_WORDS = 6
"""A message of at most this many words with a follow-up word ("it", "that", ...) leans on the last
turn; longer ones say what they are about themselves."""

PAYMENT_METHODS: Mapping[str, str] = {
    "paypal": "PayPal", "pay pal": "PayPal", "visa": "Visa", "mastercard": "Mastercard",
    "master card": "Mastercard", "amex": "American Express", "american express": "American Express",
    "discover": "Discover", "apple pay": "Apple Pay", "google pay": "Google Pay", "gpay": "Google Pay",
    "klarna": "Klarna", "gift card": "gift card", "giftcard": "gift card", "store credit": "store credit",
    "credit card": "credit card", "debit card": "debit card", "bank transfer": "bank transfer",
    "wire transfer": "bank transfer", "cash on delivery": "cash on delivery", "cash": "cash",
    "cheque": "check", "bitcoin": "cryptocurrency", "crypto": "cryptocurrency",
    "cryptocurrency": "cryptocurrency",
}
"""Payment-method phrases (lower case) -> the name the knowledge base uses."""

COUNTRY_ALIASES: Mapping[str, str] = {
    "uk": "United Kingdom", "u.k.": "United Kingdom", "britain": "United Kingdom",
    "great britain": "United Kingdom", "england": "United Kingdom", "scotland": "United Kingdom",
    "wales": "United Kingdom", "northern ireland": "United Kingdom",
    "us": "United States", "u.s.": "United States", "usa": "United States", "u.s.a.": "United States",
    "america": "United States", "the states": "United States", "united states of america": "United States",
    "eu": "European Union", "europe": "European Union", "european union": "European Union",
    "holland": "Netherlands", "the netherlands": "Netherlands", "south korea": "Korea, Republic of",
    "russia": "Russian Federation", "vietnam": "Viet Nam", "iran": "Iran, Islamic Republic of",
    "czech republic": "Czechia", "turkey": "Türkiye",
}
"""Short forms customers write -> the name used in answers (pycountry's for countries)."""

# Words that make a short message lean on the turn before ("can I return it?", "how much is that?").
_ANAPHORA = frozenset(
    "it its it's that that's this these those them they there one ones same".split()
)
# Openers of a follow-up ("and to the UK?", "what about PayPal?", "how about express?").
_OPENERS = re.compile(
    r"^\s*(?:and|also|plus|but|so|ok(?:ay)?,?\s+(?:and|so|but)|what\s+about|how\s+about|what\s+if|"
    r"and\s+if|same\s+for|what\s+abt|wbu|then)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z0-9][a-z0-9'.]*", re.IGNORECASE)
_FILLERS = frozenset("ok okay and so well then the a to for me my until till usually normally".split())


@dataclass(frozen=True)
class Focus:
    """What the conversation is about after a turn (all None when nothing is known yet).

    ``intent``: the intent the bot acted on; ``doc_id``: the article it quoted first; ``order_id``:
    the order it last described to the verified owner (``#W1234567``); ``country``/``payment``: the
    last country and payment method the customer named; ``request``: the customer's request as the
    bot understood it (the message, or the message in context), at most :data:`MAX_REQUEST_CHARS`.
    """

    intent: str | None = None
    doc_id: str | None = None
    order_id: str | None = None
    country: str | None = None
    payment: str | None = None
    request: str | None = None

    def to_json(self) -> dict[str, str]:
        """The non-empty fields, for the turn event (``data["focus"]``)."""
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_json(cls, data: Any) -> Focus | None:
        """The focus recorded in a turn event, or None when there is none; unknown keys and
        non-string values are dropped (events from older versions, or hand-edited rows)."""
        if not isinstance(data, Mapping):
            return None
        fields = {k: data[k][:MAX_REQUEST_CHARS] for k in cls.__dataclass_fields__
                  if isinstance(data.get(k), str) and data[k]}
        return cls(**fields) if fields else None

    @property
    def empty(self) -> bool:
        return not any(asdict(self).values())


@dataclass(frozen=True)
class Slots:
    """Slot values named in one message: ``country`` and ``payment`` (the last named of each) and
    the phrases that named them (to replace them in a carried request)."""

    country: str | None = None
    payment: str | None = None
    country_phrase: str | None = None
    payment_phrase: str | None = None


@dataclass(frozen=True)
class InContext:
    """A message understood with the conversation: ``text`` is what the models read, ``kind`` how it
    was built (``"slot_replaced"``: the earlier request with the new value; ``"combined"``: the
    earlier request, then the message), ``cue`` why the message is a follow-up."""

    text: str
    kind: str
    cue: str

    def record(self, focus: Focus) -> dict[str, Any]:
        """What the turn event records of the context it used (``data["context"]``)."""
        return {"follow_up": self.cue, "kind": self.kind, "text": self.text, "focus": focus.to_json()}


@lru_cache(maxsize=1)
def _automaton() -> ahocorasick.Automaton:
    """Country and payment phrases (lower case) -> (kind, canonical name, phrase)."""
    automaton = ahocorasick.Automaton()
    phrases: dict[str, tuple[str, str]] = {}
    for country in pycountry.countries:
        name = getattr(country, "common_name", None) or country.name
        for spelling in {country.name, getattr(country, "common_name", None), getattr(country, "official_name", None)}:
            if spelling and "," not in spelling:
                phrases[spelling.casefold()] = ("country", name)
    for phrase, name in COUNTRY_ALIASES.items():
        phrases[phrase] = ("country", pycountry.countries.get(name=name).name
                           if pycountry.countries.get(name=name) else name)
    for phrase, name in PAYMENT_METHODS.items():
        phrases[phrase] = ("payment", name)
    # Words that are country names or codes but mostly mean something else in support chats.
    for word in ("chad", "georgia", "jersey", "guernsey", "jordan", "turkey"):
        if phrases.get(word, ("", ""))[0] == "country":
            del phrases[word]
    for phrase, (kind, name) in phrases.items():
        automaton.add_word(phrase, (kind, name, phrase))
    automaton.make_automaton()
    return automaton


def _boundary(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not before.isalnum() and not after.isalnum()


def find_slots(text: str) -> Slots:
    """The country and payment method ``text`` names (whole words, case ignored; the longest match
    wins where phrases overlap, the last named where several are). Linear in ``len(text)``."""
    low = text.casefold()
    found: dict[str, tuple[int, int, str, str]] = {}  # kind -> (start, length, name, phrase)
    taken = bytearray(len(low))  # characters already part of a longer match
    matches = []
    for end_index, (kind, name, phrase) in _automaton().iter(low):
        start = end_index - len(phrase) + 1
        # "us" is a pronoun unless written "US".
        if _boundary(low, start, end_index + 1) and (phrase != "us" or text[start:end_index + 1] == "US"):
            matches.append((start, end_index + 1, kind, name))
    # Longest first, so "american express" beats "america" and "gift card" beats nothing shorter.
    for start, end, kind, name in sorted(matches, key=lambda m: (-(m[1] - m[0]), m[0])):
        if any(taken[start:end]):  # phrases are short: linear in the text overall
            continue
        taken[start:end] = b"\x01" * (end - start)
        if kind not in found or start > found[kind][0]:
            found[kind] = (start, end - start, name, text[start:end])
    country, payment = found.get("country"), found.get("payment")
    return Slots(
        country=country[2] if country else None,
        payment=payment[2] if payment else None,
        country_phrase=country[3] if country else None,
        payment_phrase=payment[3] if payment else None,
    )


ELLIPTICAL_WORDS = frozenset(
    "how long much soon when what where take takes taking wait waiting cost costs show shows up come "
    "arrive get have has do does did i is it usually then now still so done".split()
)
"""A short question made only of these words ("how long do I have?", "how long until it shows up?",
"how much then?") names no topic: it is about the one in focus."""


def follow_up_cue(text: str, has_request_words: bool = True) -> str | None:
    """Why ``text`` leans on the turn before, or None: ``"opener"`` ("and ...", "what about ..."),
    ``"anaphora"`` (a short message with "it", "that", "them", ...), ``"fragment"`` (a short message
    that names a slot value and nothing the bot could act on alone, ``has_request_words`` False),
    ``"elliptical"`` (a short question that names no topic, :data:`ELLIPTICAL_WORDS`)."""
    if _OPENERS.match(text):
        return "opener"
    words = [w.strip("'.").casefold() for w in _WORD.findall(text)]
    if len(words) <= SHORT_WORDS and any(w in _ANAPHORA or w.endswith("'s") and w[:-2] in _ANAPHORA for w in words):
        return "anaphora"
    if len(words) <= 3 and not has_request_words:
        return "fragment"
    if len(words) <= SHORT_WORDS and all(w in ELLIPTICAL_WORDS or w in _FILLERS for w in words):
        return "elliptical"
    return None


def in_context(text: str, focus: Focus, cue: str) -> InContext | None:
    """``text`` read with ``focus`` (see the module docstring), or None when the focus holds no
    earlier request to read it with."""
    request = focus.request
    if not request:
        return None
    new = find_slots(text)
    old = find_slots(request)
    for value, phrase, old_value, old_phrase in (
        (new.country, new.country_phrase, old.country, old.country_phrase),
        (new.payment, new.payment_phrase, old.payment, old.payment_phrase),
    ):
        if value and old_phrase and value != old_value:
            start = request.casefold().rfind(old_phrase.casefold())
            # The name the knowledge base uses ("United Kingdom", not "UK"), so the answer's
            # sentences match it word for word.
            replaced = request[:start] + value + request[start + len(old_phrase):]
            return InContext(text=replaced[:MAX_REQUEST_CHARS], kind="slot_replaced", cue=cue)
    request = request.rstrip()
    if request[-1:].isalnum():
        request += "."  # the message stays a sentence of its own (a yes/no is read from the last one)
    combined = f"{request} {text.strip()}"
    return InContext(text=combined[-(MAX_REQUEST_CHARS + len(text)):], kind="combined", cue=cue)


def canonical_slots(text: str) -> str:
    """``text`` with the country and payment method it names written as the knowledge base names
    them ("can I pay with bitcoin?" -> "can I pay with cryptocurrency?", "UK" -> "United
    Kingdom"), so an answer's sentences can be matched word for word."""
    slots = find_slots(text)
    for phrase, value in ((slots.country_phrase, slots.country), (slots.payment_phrase, slots.payment)):
        if phrase and value and phrase != value:
            start = text.rfind(phrase)
            if start >= 0:
                text = text[:start] + value + text[start + len(phrase):]
    return text


_PRONOUN = re.compile(r"\b(it|this|that|them)\b", re.IGNORECASE)
_THERE = re.compile(r"\b(?:to |in )?there\b", re.IGNORECASE)


def resolve_pronoun(text: str, focus: Focus) -> InContext | None:
    """A short request about "there" with a country in focus, read with the country ("can I get
    express shipping there?" -> "... to Canada?"), or about "it" with an order in focus, read as
    about "my order" ("can I return it?" -> "can I return my order?"), so the search finds the
    policy for orders rather than whatever "it" matches; None when neither applies."""
    if len(_WORD.findall(text)) > SHORT_WORDS + 2:
        return None
    if focus.country and not find_slots(text).country:
        resolved, count = _THERE.subn(f"to {focus.country}", text, count=1)
        if count:
            return InContext(text=resolved, kind="pronoun_resolved", cue="anaphora")
    if not focus.order_id:
        return None
    resolved, count = _PRONOUN.subn("my order", text, count=1)
    return InContext(text=resolved, kind="pronoun_resolved", cue="anaphora") if count else None


def next_focus(
    previous: Focus | None,
    *,
    text: str,
    understood: str,
    intent: str | None,
    doc_id: str | None,
    order_id: str | None,
    acted: bool,
) -> Focus:
    """The focus after a turn: slot values the message named replace the old ones; when the bot
    acted on a request (an answer, an order lookup, a question for a slot), that request (as
    ``understood``, the message in context) and its intent, article and order become the focus;
    otherwise (a clarifying question, small talk) the earlier request stays in focus."""
    focus = previous or Focus()
    slots = find_slots(text)
    focus = replace(
        focus,
        country=slots.country or focus.country,
        payment=slots.payment or focus.payment,
        order_id=order_id or focus.order_id,
    )
    if acted:
        focus = replace(
            focus, intent=intent or focus.intent, doc_id=doc_id, request=understood[:MAX_REQUEST_CHARS]
        )
    return focus
