"""Reading sentences for an answer: content words, and whether a sentence says yes or no to a question.

:mod:`bot.answers` quotes knowledge-base sentences; this module reads them, without a model:

- :func:`read_sentence` gives a sentence's content-word stems and whether it negates, names an
  exception or is conditional (word lists from ``config/order_policy.yaml``, ``answers``);
- :func:`yes_no_answer` decides whether a yes/no question ("do you ship to Canada?") gets a "Yes," or
  "No," lead, and which sentence follows it. The sentences naming every content word of the question
  that occurs in any candidate ("ship", "canada") decide; the lead is a sentence naming the rarest
  of them ("canada") that says the answer directly. A clause's negations cancel in pairs, and an
  exception word before the asked thing flips the clause ("we do not ship outside the United States, Canada ..." affirms
  Canada). Any doubt (no sentence names every asked word, a conditional or hedged sentence,
  sentences that disagree, a question with a negation, a condition or a number) gives no yes/no: the
  answer is then quoted without one.

Stems are a small suffix rule (``cancelled``/``cancelling``/``cancellation`` -> ``cancel``,
``shipping`` -> ``ship``, ``returns`` -> ``return``), enough to match a question's words to a
sentence's; there is no stemmer among the dependencies. Everything is linear in the text's length.

Must not: embed, search or touch the database.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from bot.order_policy import AnswerWords, words
from bot.tfidf import english_stop_words

STEM_CHARS = 6
"""Stems are cut to this many characters, so that ``delivers`` and ``delivery`` match."""
_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ed", "es", "s")
_CLAUSE = re.compile(r"[;:]")
_QUESTION_END = re.compile(r"[?!.]+(?:\s+|$)")


@lru_cache(maxsize=16_384)
def stem(word: str) -> str:
    """A word's match key: one common suffix removed (a doubled final consonant undoubled), then cut
    to :data:`STEM_CHARS` characters. ``"shipping"`` -> ``"ship"``, ``"fees"`` -> ``"fee"``."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not (
            suffix == "s" and word.endswith("ss")
        ):
            word = word[: -len(suffix)]
            if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "aeiousl":
                word = word[:-1]
            break
    return word[:STEM_CHARS]


@dataclass(frozen=True)
class SentenceReading:
    """What :func:`read_sentence` found: ``stems`` of its content words; ``negated``: a negation
    word; ``exception``: an exception word (``except``, ``outside``...); ``conditional``: a
    condition or hedge (``unless``, ``if``, ``most``...)."""

    stems: frozenset[str]
    negated: bool
    exception: bool
    conditional: bool
    qualifies: bool
    """A negation, an exception or a qualifier word: the sentence qualifies a rule and is quoted
    after it (and, for a question, asks about the exceptions)."""


@lru_cache(maxsize=8)
def _not_content(vocab: AnswerWords) -> frozenset[str]:
    return english_stop_words() | (
        vocab.negations | vocab.exceptions | vocab.qualifiers | vocab.conditions | vocab.yes_no_openers
        | vocab.fillers
    )


def content_words(tokens: Sequence[str], vocab: AnswerWords) -> list[str]:
    """Tokens that carry content: no stop words, no words of the answer word lists."""
    skip = _not_content(vocab)
    return [t for t in tokens if len(t) > 1 and t not in skip]


def read_sentence(text: str, vocab: AnswerWords) -> SentenceReading:
    """Read ``text`` (a sentence or a question) with the word lists of ``vocab``."""
    tokens = words(text)
    present = set(tokens)
    negated, exception = bool(present & vocab.negations), bool(present & vocab.exceptions)
    return SentenceReading(
        stems=frozenset(stem(t) for t in content_words(tokens, vocab)),
        negated=negated,
        exception=exception,
        conditional=bool(present & vocab.conditions),
        qualifies=negated or exception or bool(present & vocab.qualifiers),
    )


def overlap(question: frozenset[str], readings: Sequence[SentenceReading]) -> list[float]:
    """Share of the question's content stems each sentence contains, weighted by rarity among the
    sentences (idf, ``log(1 + n / df)``), in [0, 1]; stems no sentence has are left out."""
    df = Counter(s for r in readings for s in r.stems & question)
    if not df:
        return [0.0] * len(readings)
    weight = {s: math.log1p(len(readings) / n) for s, n in df.items()}
    total = sum(weight.values())
    return [sum(weight[s] for s in r.stems & question if s in weight) / total for r in readings]


GENERIC_PREDICATES = frozenset(stem(w) for w in (
    "pay", "use", "get", "buy", "have", "do", "make", "take", "send", "ship", "deliver", "accept", "offer",
    "need", "want", "able", "possible", "allowed", "still", "also", "there", "here", "you", "your"))
"""Question words that may be missing from the sentence that answers ("can I pay with PayPal?" is
answered by "we accept ... PayPal")."""
_ANTONYM_PAIRS = (("open", "closed"), ("free", "paid"), ("available", "unavailable"),
                  ("possible", "impossible"), ("included", "excluded"), ("allowed", "forbidden"))
ANTONYMS = {stem(a): stem(b) for a, b in _ANTONYM_PAIRS} | {stem(b): stem(a) for a, b in _ANTONYM_PAIRS}
"""Word stems whose presence in a sentence answers the opposite of the asked word."""


def slot_stems(text: str, vocab: AnswerWords) -> frozenset[str]:
    """Content stems of the country and payment method ``text`` names (their knowledge-base names)."""
    from bot.context import find_slots

    slots = find_slots(text)
    return frozenset().union(*(read_sentence(v, vocab).stems for v in (slots.country, slots.payment) if v))


def asked_part(question: str) -> str:
    """The last sentence of ``question``: what the customer asks now when the router combined the
    previous message with this one (``"do you ship to Canada? and how much is it"``)."""
    parts = [p for p in _QUESTION_END.split(question.strip()) if p.strip()]
    return parts[-1] if parts else ""


def is_yes_no_question(question: str, vocab: AnswerWords) -> bool:
    """Whether the asked part starts with a yes/no opener (after fillers) and carries no negation,
    exception, condition or number, which would make a bare yes or no ambiguous."""
    tokens = words(asked_part(question))
    start = next((i for i, t in enumerate(tokens) if t not in vocab.fillers), len(tokens))
    if start == len(tokens) or tokens[start] not in vocab.yes_no_openers:
        return False
    present = set(tokens)
    doubtful = vocab.negations | vocab.exceptions | vocab.qualifiers | vocab.conditions
    return not (present & doubtful) and not any(ch.isdigit() for ch in asked_part(question))


def polarity(sentence: str, names: frozenset[str], focus: frozenset[str], vocab: AnswerWords) -> str | None:
    """``"yes"`` when ``sentence`` affirms the asked thing, ``"no"`` when it negates it, None when
    unclear (it does not name every stem of ``names``, or it is conditional).

    The clause naming every stem of ``names`` counts (the whole sentence when no clause does alone):
    an odd number of negations negates, and an exception word before the words of ``focus`` (the
    asked thing itself, a subset of ``names``; before the last of them to appear) flips the result.
    """
    tokens = words(sentence)
    if set(tokens) & vocab.conditions:
        return None
    clauses = [words(c) for c in _CLAUSE.split(sentence)]
    clause = next((c for c in clauses if names <= {stem(t) for t in c}), tokens)
    stems = [stem(t) for t in clause]
    if not focus or not names <= set(stems) or not focus <= set(stems):
        return None
    pivot = max(stems.index(s) for s in focus)  # where the last of the asked words first appears
    negations = sum(t in vocab.negations for t in clause)
    flipped = any(t in vocab.exceptions for t in clause[:pivot])
    return "no" if (negations % 2 == 1) != flipped else "yes"


def yes_no_answer(
    question: str,
    sentences: Sequence[str],
    readings: Sequence[SentenceReading],
    preference: Sequence[tuple[float, ...]],
    vocab: AnswerWords,
) -> tuple[str, int] | None:
    """``("yes" | "no", index of the sentence to lead with)`` for a yes/no ``question``, or None.

    Args:
        question: the customer's question (the asked part is its last sentence).
        sentences: the candidate sentences; ``readings`` their :func:`read_sentence`; ``preference``
            a sort key per sentence, higher is better (e.g. ``(-passage rank, score)``); all the same
            length.
        vocab: the word lists.
    The asked words are the question's content words; when a sentence names none of one of them
    there is no verdict. The sentences naming all of them vote; every vote must be clear and the same. The lead is the preferred
    sentence naming the rarest asked words with that answer and saying it directly (no negation for
    a yes, a negation for a no, no exception word), else the preferred one saying it at all.
    """
    if not is_yes_no_question(question, vocab):
        return None
    asked_terms = read_sentence(asked_part(question), vocab).stems
    df = Counter(s for r in readings for s in r.stems & asked_terms)
    named = set(df)
    everywhere = frozenset().union(*(r.stems for r in readings))
    missing = {t for t in asked_terms - named if t not in GENERIC_PREDICATES and ANTONYMS.get(t) not in everywhere}
    if not df or missing or (slot_stems(asked_part(question), vocab) - named):
        # A word of the question no sentence names ("can I pay with bitcoin?" when only the accepted
        # methods are listed, "can I add a phone case?" against "you can order by phone"): silence
        # about it is not a yes or a no. Generic verbs ("pay" for "accepts") may be missing.
        return None
    present = frozenset(df)
    rarest = min(df.values())
    asked = frozenset(s for s, n in df.items() if n == rarest)
    votes = {
        polarity(sentences[i], present, asked, vocab) for i, r in enumerate(readings) if present <= r.stems
    }
    if len(votes) != 1 or None in votes:
        return None
    answer = votes.pop()
    # "are you open on Sundays?" against "We are closed on Sunday": the opposite of an asked word
    # turns the answer; a sentence naming both ("a paid membership that adds free shipping" for "is
    # it free?") leaves it open.
    opposites = {ANTONYMS[t] for t in asked_terms if t in ANTONYMS}
    voters = [r for r in readings if present <= r.stems]
    if any(r.stems & opposites and r.stems & asked_terms & set(ANTONYMS) for r in voters):
        return None
    if opposites and all(r.stems & opposites for r in voters):
        voting = [i for i, r in enumerate(readings) if present <= r.stems]
        return ("no" if answer == "yes" else "yes"), max(voting, key=lambda i: preference[i])
    saying = [
        i for i, r in enumerate(readings)
        if asked <= r.stems and polarity(sentences[i], asked, asked, vocab) == answer
    ]
    direct = [i for i in saying if readings[i].negated == (answer == "no") and not readings[i].exception]
    lead = max(direct or saying, key=lambda i: preference[i])
    return answer, lead
