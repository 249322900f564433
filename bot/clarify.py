"""Clarifying questions: messages with nothing to act on, and the topics to offer back.

:func:`vagueness` tells three kinds of message the bot cannot act on apart from real requests:

- ``"empty"``: no letter or digit at all ("?", "...", an emoji);
- ``"gibberish"``: no word of three or more letters is an English word ("asdfgh", "jjjj kkk");
- ``"vague"``: every word is a function word or a generic support word ("I have a question about
  something", "help please", "hello? anyone?").

Such a message gets a clarifying question with the likeliest topics as quick replies
(:func:`suggestions`) instead of a handoff; choosing one (its number or its label) is read back by
:func:`chosen_option`. Linear in the message length; no model. Must not: decide when to clarify
(the router does) or hold any customer-facing text (``config/replies.yaml`` does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from bot.language import english_words
from bot.tfidf import english_stop_words

MAX_OPTIONS = 3
"""Topics offered by one clarifying question."""
DEFAULT_TOPICS = ("track_order", "check_refund_policy", "delivery_options")
"""Offered, in this order, when the intent model's alternatives give fewer than MAX_OPTIONS."""
PERSON = "contact_human_agent"
"""Offered last in every clarifying question (when it has a label): the customer can always ask."""
NOT_OFFERED = frozenset({"greeting", "thanks", "goodbye", "out_of_scope"})

GENERIC_WORDS = frozenset(
    """
    question questions query queries something anything stuff thing things issue issues problem problems
    help helping helped need needed want wanted ask asking asked know wondering wonder quick info
    information support hi hello hey hiya yo morning afternoon evening there anyone anybody someone
    somebody please pls plz thanks thank ok okay yes yeah yep no nope hmm um uh erm well sure got
    just really actually like can could would might may kind sort bit little about regarding re
    matter concern concerned request assistance assist one
    """.split()
)
"""Words that say *that* the customer wants something, not *what* (with English stop words)."""

SMALL_TALK_WORDS = frozenset(
    "hi hello hey hiya yo morning afternoon evening thanks thank thx ty cheers bye goodbye later ok okay "
    "cool great perfect nice awesome".split()
)
"""Words that make a message small talk ("hi", "thanks", "ok bye"), not a vague request ("um")."""

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def says_small_talk(text: str) -> bool:
    """Whether ``text`` holds a greeting, thanks, goodbye or acknowledgement word."""
    return any(t.casefold() in SMALL_TALK_WORDS for t in _TOKEN.findall(text))


def vagueness(text: str) -> str | None:
    """``"empty"``, ``"gibberish"``, ``"vague"`` or None (the message says what it is about)."""
    if not any(ch.isalnum() for ch in text):
        return "empty"
    tokens = [t.casefold() for t in _TOKEN.findall(text)]
    if any(ch.isdigit() for ch in text) or "@" in text:
        return None  # an order number, an amount, an email, an option number: something to act on
    words = [t for t in tokens if t.isalpha()]
    if not words:
        return None
    known = english_words()
    long_words = [w for w in words if len(w) >= 3]
    if long_words and not any(w in known for w in long_words) and not any(w in GENERIC_WORDS for w in words):
        return "gibberish"
    if all(w in GENERIC_WORDS or w in english_stop_words() for w in words):
        return "vague"
    return None


def suggestions(
    alternatives: Iterable[tuple[str, float]],
    label: Callable[[str], str | None],
    known: Mapping[str, object] | None = None,
    limit: int = MAX_OPTIONS,
) -> list[tuple[str, str]]:
    """The topics to offer: ``(intent, label)`` pairs, the intent model's likeliest first, then
    :data:`DEFAULT_TOPICS`, then :data:`PERSON`; only intents with a label (``label(intent)``, from the replies file) that
    are configured (``known``, when given), none of :data:`NOT_OFFERED`, each label once."""
    chosen: list[tuple[str, str]] = []
    person = label(PERSON) if known is None or PERSON in known else None
    if person is not None:
        limit -= 1  # a person is always the last option
    for intent in [name for name, _ in alternatives] + list(DEFAULT_TOPICS):
        if intent == PERSON:
            continue
        text = label(intent)
        if (
            text is None or intent in NOT_OFFERED or (known is not None and intent not in known)
            or any(intent == i or text == t for i, t in chosen)
        ):
            continue
        chosen.append((intent, text))
        if len(chosen) >= limit:
            break
    if person is not None:
        chosen.append((PERSON, person))
    return chosen


_NUMBER = re.compile(r"(?:#|no\.?\s?|number\s?|option\s?)?(\d{1,2})[.)!]?", re.IGNORECASE)
MAX_OPTION_CHARS = 16
"""Longer answers are never read as an option number (and the pattern only runs on short text)."""


def option_number(text: str) -> int | None:
    """The number ``text`` is ("2", "2.", "option 2", "#2"), or None. Bounded work: the text is
    stripped and only read when at most :data:`MAX_OPTION_CHARS` long."""
    text = text.strip()
    if len(text) > MAX_OPTION_CHARS:
        return None
    match = _NUMBER.fullmatch(text)
    return int(match.group(1)) if match else None


def chosen_option(text: str, options: Sequence[str]) -> int | None:
    """The index of the option ``text`` picks: its number ("2", "2.", "option 2") or its label
    (case and surrounding punctuation ignored); None when it picks none."""
    number = option_number(text)
    if number is not None:
        return number - 1 if 1 <= number <= len(options) else None
    wanted = " ".join(_TOKEN.findall(text.casefold()))
    for index, option in enumerate(options):
        if wanted and wanted == " ".join(_TOKEN.findall(option.casefold())):
            return index
    return None
