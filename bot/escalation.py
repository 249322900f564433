"""Escalation triggers: when a customer turn goes to a person instead of the bot.

One function per trigger; :meth:`Escalation.check` runs them in a fixed order before any tier and
returns the first that fires, :meth:`Escalation.after_tiers` runs the repeated-failure rule on the
tiers' decision. Each returns a :class:`Trigger` with a stable ``reason`` (the eval harness and the
handoff summary key on it) and JSON-ready ``data`` for the turn event:

=========================  ==================================================================================
``unsupported_language``   the message is long enough to tell and written in a language not in
                           ``supported_languages`` (only while no reasoning tier could answer it);
                           ``data={"language": "de", "confidence": 0.99}``
``explicit_request``       the customer asks for a person (rules over normalised, spell-corrected words, see
                           :func:`explicit_request`), or the intent model says ``contact_human_agent`` at or
                           above ``confidence_threshold``; ``data={"matched": "talk to someone"}``
``sensitive_intent``       an intent in ``sensitive_intents`` with confidence >= 0.5; ``data={"intent"}``
``sensitive_topic``        a phrase of a topic in ``sensitive_topics_file``; ``data={"topic", "matched"}``
``negative_sentiment``     this message's sentiment (:mod:`bot.sentiment`) <= ``anger_threshold``, or <=
                           :data:`AIMED_ANGER_THRESHOLD` with the anger aimed at us or in strong words,
                           see :func:`aimed_at_us`; ``data={"sentiment": -0.71}`` (+ ``"aimed": words``)
``conversation_sentiment`` the conversation's sentiment, see :func:`conversation_sentiment`
``repeated_message``       a near-duplicate of an earlier customer message, see :func:`repeated_message`
``repeated_failure``       the bot could not help ``repeated_failure_limit`` times, see :func:`repeated_failure`
=========================  ==================================================================================

The conversation-level triggers read the ticket's earlier customer turns (:class:`PriorTurn`, filled
from the stored messages and turn events by the conversation service) since the last time the ticket
escalated or resolved, or a human owned it (:func:`since_last_handoff`): after a person hands the
ticket back, old failures and old anger do not send it straight back.

Two kinds of message get a fixed reply from :meth:`Escalation.reply_instead` instead of the tiers, with
no escalation (reason in :data:`REPLY_REASONS`, ``data={"matched": words}``, the text a module constant):

============================  ===============================================================================
``asked_if_bot``              the whole message asks whether the customer is talking to a bot or a person
                              ("are you a real person?", "am I talking to a bot?", see :func:`asks_if_bot`):
                              :data:`ASKED_IF_BOT_REPLY` says honestly that it is an automated assistant and
                              how to reach a person. For such a question the intent model's
                              ``contact_human_agent`` is not a request (the rules have read the message); a
                              rule match ("are you a bot? let me talk to a human") still escalates.
``customer_said_not_helped``  the customer says the last answer did not help (:data:`NOT_HELPED`) and the
                              message holds no new request: the predicted intent is small talk
                              (:data:`SMALL_TALK_INTENTS`, whose canned replies would be "You're welcome!" or a
                              goodbye that resolves the ticket) or ``out_of_scope``, or the model is unsure
                              (below ``confidence_threshold``, or density-flagged out of scope), and no order
                              id or email is named. :data:`NOT_HELPED_REPLY` apologises and asks for the
                              request in other words. "that didn't help, where is my order #W2611340?" (a
                              confident ``track_order``) goes to the tiers as usual.
============================  ===============================================================================

A complaint still counts as a failure (when ``customer_said_not_helped`` is in ``failure_reasons``),
whatever answers it: the apology is the first failure, the next failure escalates with
``repeated_failure``, and at the limit :meth:`Escalation.check` escalates before a reply is considered.

Must not: touch tickets, messages or the database; it only decides whether and why (and holds the
texts of its two fixed replies).
"""

from __future__ import annotations

import difflib
import re
from collections import OrderedDict
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from bot.entities import extract_entities
from bot.intent_model import OUT_OF_SCOPE
from bot.language import LanguageGate, english_words, handoff_notice
from bot.phrases import PhraseMatcher
from bot.understanding import model_view

if TYPE_CHECKING:
    from bot.understanding import Understanding
    from config.settings import Settings

REASONS = (
    "unsupported_language",
    "explicit_request",
    "sensitive_intent",
    "sensitive_topic",
    "negative_sentiment",
    "conversation_sentiment",
    "repeated_message",
    "repeated_failure",
)
"""Every reason this module can give, in the order :meth:`Escalation.check` tries them."""

SENSITIVE_INTENT_MIN_CONFIDENCE = 0.5

REPLY_REASONS = ("asked_if_bot", "customer_said_not_helped")
"""Reasons of :meth:`Escalation.reply_instead`: a fixed reply from the bot, no escalation."""

ASKED_IF_BOT_REPLY = (
    "I'm {assistant}, {shop}'s automated assistant. If you'd like a person, just say so and I'll pass you to our team."
)
NOT_HELPED_REPLY = (
    "I'm sorry that didn't help. Could you tell me in other words what you need? If it's about an "
    "order, please include the order number."
)
SMALL_TALK_INTENTS = frozenset({"greeting", "thanks", "goodbye"})
"""Intents answered with a canned reply (``config/intents.yaml``): never the answer to a complaint."""


@dataclass(frozen=True)
class PriorTurn:
    """One earlier customer turn of the ticket, as the router may know it (no embeddings, no ids).

    ``text``: the customer's message. ``sentiment``: VADER compound recorded with the turn (None when
    the turn recorded none, e.g. a human owned the ticket). ``tier``/``reason``/``escalated``/
    ``resolved``: the bot's decision on that turn; ``tier`` None means no bot decision (a human owned
    the ticket, or the message is not answered yet). ``not_found``: order ids a lookup did not find.
    ``complaint``: the not-helped words the turn recorded (``complaint_known`` False: an event from
    before that was recorded; the text is read again).
    """

    text: str
    sentiment: float | None = None
    tier: str | None = None
    reason: str | None = None
    escalated: bool = False
    resolved: bool = False
    not_found: tuple[str, ...] = ()
    complaint: str | None = None
    complaint_known: bool = False

    @classmethod
    def from_event(cls, text: str, payload: Mapping[str, Any] | None) -> PriorTurn:
        """Build from a customer message and its ``turn`` event payload (None: no event yet)."""
        if not payload:
            return cls(text=text)
        data = payload.get("data") or {}
        not_found = data.get("not_found") if isinstance(data, Mapping) else None
        sentiment = payload.get("sentiment")
        return cls(
            text=text,
            sentiment=float(sentiment) if isinstance(sentiment, (int, float)) else None,
            tier=payload.get("tier"),
            reason=payload.get("reason"),
            escalated=bool(payload.get("escalated")),
            resolved=bool(payload.get("resolved")),
            not_found=tuple(str(x) for x in not_found) if isinstance(not_found, list) else (),
            complaint=payload.get("complaint") if isinstance(payload.get("complaint"), str) else None,
            complaint_known="complaint" in payload,
        )


@dataclass(frozen=True)
class Trigger:
    """A fired escalation trigger: ``reason`` (one of :data:`REASONS`), ``data`` for the turn event,
    ``notice`` an optional line in the customer's language placed before the handoff reply."""

    reason: str
    data: Mapping[str, Any] = field(default_factory=dict)
    notice: str | None = None

    def reply(self, handoff: str) -> str:
        """The customer-facing reply: ``handoff``, preceded by the notice when there is one."""
        return f"{self.notice}\n\n{handoff}" if self.notice else handoff


@dataclass(frozen=True)
class Reply:
    """A fixed reply the bot sends instead of running the tiers, without escalating: ``reason`` (one of
    :data:`REPLY_REASONS`) and ``data`` for the turn event (``{"matched": words}``), ``text`` to send."""

    reason: str
    text: str
    data: Mapping[str, Any] = field(default_factory=dict)


# --- words ---------------------------------------------------------------------------------------

BOUNDARY = "|"
"""Token standing for a sentence or clause break (. ! ? ; , : newline): phrases never span one."""

_APOSTROPHE = re.compile(r"(?<=\w)['’`´](?=\w)")
_TOKEN = re.compile(r"[^\W_]+|[.!?;,:\n]+")
_ELONGATED = re.compile(r"(\w)\1{2,}")

# Chat spellings read as the words they stand for (after lower-casing and dropping apostrophes).
_SLANG: dict[str, tuple[str, ...]] = {
    "u": ("you",), "ya": ("you",), "yu": ("you",), "ur": ("your",), "yr": ("your",), "r": ("are",),
    "2": ("to",), "pls": ("please",), "plz": ("please",), "plez": ("please",), "plse": ("please",),
    "ppl": ("people",), "sum1": ("someone",), "some1": ("someone",), "sumone": ("someone",),
    "any1": ("anyone",), "sb": ("somebody",), "wanna": ("want", "to"), "gonna": ("going", "to"),
    "gotta": ("got", "to"), "gimme": ("give", "me"), "lemme": ("let", "me"), "cannot": ("cant",),
    "wont": ("will", "not"), "thx": ("thanks",), "rn": ("now",), "im": ("i", "am"),
    "uhelp": ("you", "help"), "usend": ("you", "send"), "hooman": ("human",), "hoomans": ("humans",),
}


def _split(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHE.sub("", text)
    return [BOUNDARY if not t[0].isalnum() else t for t in _TOKEN.findall(text)]


def phrase_tokens(phrase: str) -> tuple[str, ...]:
    """A configured phrase as the tokens it matches: lower case, apostrophes dropped, chat spellings
    expanded, so phrases and messages are normalised alike (``"can't breathe"`` -> ``("cant",
    "breathe")``). A trailing ``*`` on a word is kept (prefix match)."""
    out: list[str] = []
    for raw in phrase.split():
        star = raw.endswith("*")
        for tok in _split(raw.rstrip("*")):
            if tok != BOUNDARY:
                out.extend(_SLANG.get(tok, (tok,)))
        if star and out:
            out[-1] += "*"
    return tuple(out)


MAX_CORRECTIONS = 40
"""Unknown words spell-checked per message; real messages have a handful of typos."""
MAX_WORD_CHARS = 24
"""Longer tokens are never spell-checked or split (no trigger word is that long; a 4,000-character
token, e.g. Chinese text without spaces, would cost the square of its length)."""
REPEAT_LOOKBACK = 3
"""Earlier customer messages a message is compared with for the repeated-message trigger (a
repeat is of something said lately; the cost of a turn stays bounded whatever the history)."""
TOKEN_CACHE = 64
"""Texts whose tokens are kept: one turn asks for its message's tokens several times."""


class Speller:
    """Maps a misspelt word to the closest word of a small lexicon (the words the triggers look for).

    A token is corrected only when it is alphabetic, at least ``min_len`` letters, not a known English
    word (:func:`english_words`), not two neighbouring letters swapped in a known word ("chceking" is
    checking), and either such a swap of a lexicon word ("agnet") or :func:`difflib.get_close_matches`
    finds a lexicon word with ratio >= ``cutoff``: "humen" -> human, "operater" -> operator,
    "representitive" -> representative; "manage", "prison" and "humane" stay as they are. A word in
    ``guarded`` (a sensitive-topic word: a wrong correction there is a needless handoff) is only
    chosen when no known word of the same first letter is closer; else that known word is. Thread-safe.
    """

    def __init__(
        self,
        lexicon: Iterable[str],
        known: frozenset[str],
        cutoff: float = 0.8,
        min_len: int = 4,
        guarded: Iterable[str] = (),
    ) -> None:
        self.lexicon = sorted({w for w in lexicon if w.isalpha() and len(w) >= min_len})
        self.known = known
        self.cutoff = cutoff
        self.min_len = min_len
        self.guarded = frozenset(guarded)
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._by_letters = _index_by_letters(self.lexicon)
        self._tokens: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def _swapped(self, token: str) -> str | None:
        return _swap_of(token, self._by_letters)

    def _closer_known(self, token: str, ratio: float) -> str | None:
        """The known word of the same first letter closest to ``token``, when closer than ``ratio``."""
        best, best_ratio = None, ratio
        for word in _known_by_initial(self.known).get(token[0], ()):
            if abs(len(word) - len(token)) <= 2:
                r = difflib.SequenceMatcher(None, token, word).ratio()
                if r > best_ratio:
                    best, best_ratio = word, r
        return best

    def _glued(self, token: str) -> tuple[str, ...] | None:
        # "humanagent", "contactsomebody", "canttalk": two words typed without the space, at least one
        # of them a trigger word.
        if not 5 <= len(token) <= MAX_WORD_CHARS or not token.isalpha() or token in self.known or token in self.lexicon:
            return None
        for k in range(2, len(token) - 1):
            left, right = token[:k], token[k:]
            if (left in self.lexicon or right in self.lexicon) and all(
                part in self.known or part in self.lexicon for part in (left, right)
            ):
                return left, right
        return None

    def correct(self, token: str) -> str:
        """``token`` or the lexicon word it misspells: a swap of two neighbouring letters ("agnet",
        "hcat") or the closest word by :func:`difflib.get_close_matches` at ``cutoff``."""
        if not self.min_len <= len(token) <= MAX_WORD_CHARS or not token.isalpha() or token in self.known:
            return token
        with self._lock:
            hit = self._cache.get(token)
        if hit is None:
            hit = self._swapped(token)
            if hit is None and _swap_of(token, _known_by_letters(self.known)) is None:
                close = difflib.get_close_matches(token, self.lexicon, n=1, cutoff=self.cutoff)
                hit = close[0] if close else token
                if hit in self.guarded:  # "harrassed" is harassed (a topic match), "chekcing" is not choking
                    hit = self._closer_known(token, difflib.SequenceMatcher(None, token, hit).ratio()) or hit
            hit = hit or token
            with self._lock:
                if len(self._cache) > 50_000:
                    self._cache.clear()
                self._cache[token] = hit
        return hit

    def _deelongate(self, token: str) -> str:
        # "humaaaan", "pleeease", "agennnt": runs of 3+ letters become 2, or 1 when that is a word.
        if not _ELONGATED.search(token):
            return token
        two = _ELONGATED.sub(r"\1\1", token)
        one = _ELONGATED.sub(r"\1", token)
        if two in self.known or two in self.lexicon:
            return two
        if one in self.known or one in self.lexicon:
            return one
        return two

    def tokens(self, text: str) -> list[str]:
        """``text`` as normalised, spell-corrected tokens with :data:`BOUNDARY` at clause breaks.

        Only the first :data:`MAX_CORRECTIONS` unknown words of a message are looked up (a few ms each
        at worst), so a message of 4,000 characters of near-misses cannot tie up a worker thread. The
        last :data:`TOKEN_CACHE` texts' tokens are kept (a turn asks several times). Linear in the
        length of ``text``.
        """
        with self._lock:
            cached = self._tokens.get(text)
            if cached is not None:
                self._tokens.move_to_end(text)
                return list(cached)
        out = self._tokens_of(text)
        with self._lock:
            self._tokens[text] = tuple(out)
            while len(self._tokens) > TOKEN_CACHE:
                self._tokens.popitem(last=False)
        return out

    def _tokens_of(self, text: str) -> list[str]:
        out: list[str] = []
        budget = MAX_CORRECTIONS
        for tok in _split(text):
            if tok == BOUNDARY:
                if out and out[-1] != BOUNDARY:
                    out.append(tok)
                continue
            for word in _SLANG.get(tok, (tok,)):
                word = self._deelongate(word) if len(word) <= MAX_WORD_CHARS else word
                if budget <= 0 or word in self.known or not self.min_len <= len(word) <= MAX_WORD_CHARS or not word.isalpha():
                    out.append(word)
                    continue
                budget -= 1
                fixed = self.correct(word)
                out.extend((fixed,) if fixed != word else self._glued(word) or (word,))
        return out


def _index_by_letters(words: Iterable[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for word in words:
        index.setdefault("".join(sorted(word)), []).append(word)
    return index


def _swap_of(token: str, index: Mapping[str, Sequence[str]]) -> str | None:
    """The indexed word ``token`` becomes when two neighbouring letters are swapped back, or None."""
    for word in index.get("".join(sorted(token)), ()):
        diff = [k for k in range(len(word)) if word[k] != token[k]]
        if len(diff) == 2 and diff[1] == diff[0] + 1:
            return word
    return None


@lru_cache(maxsize=2)
def _known_by_letters(known: frozenset[str]) -> dict[str, list[str]]:
    return _index_by_letters(known)


@lru_cache(maxsize=2)
def _known_by_initial(known: frozenset[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for word in known:
        index.setdefault(word[0], []).append(word)
    return index


def _clauses(tokens: Sequence[str]) -> list[list[str]]:
    clauses: list[list[str]] = [[]]
    for tok in tokens:
        if tok in (BOUNDARY, "but"):
            if clauses[-1]:
                clauses.append([])
        else:
            clauses[-1].append(tok)
    return [c for c in clauses if c]


# --- explicit request for a person -----------------------------------------------------------------

PERSON = frozenset({
    "human", "humans", "person", "people", "agent", "agents", "representative", "representatives",
    "rep", "reps", "operator", "operators", "manager", "supervisor", "advisor", "adviser", "associate",
    "employee", "employees", "staff", "staffer", "being",
})
"""Words for a person that make a request with any request verb ("get me a human")."""
SOMEONE = frozenset({"someone", "somebody", "anyone", "anybody", "assistant", "individual"})
"""Vaguer words for a person: only with a verb of talking or contact ("talk to someone")."""
TALK = frozenset({"talk", "speak", "chat", "converse", "talking", "speaking", "chatting"})
CONTACT = frozenset({
    "contact", "reach", "call", "connect", "transfer", "escalate", "direct", "forward", "redirect",
    "pass", "put", "ask", "contacting", "reaching", "connecting", "directing", "transferring",
})
WANT = frozenset({
    "want", "need", "get", "give", "request", "have", "see", "send", "bring", "demand", "require",
    "prefer", "like", "find", "needs", "wants", "requesting", "demanding",
})
HELP_VERBS = TALK | CONTACT | frozenset({
    "help", "assist", "look", "handle", "check", "review", "deal", "sort", "fix", "answer", "explain",
    "call", "email", "contact", "understand", "solve", "resolve",
})
NEGATORS = frozenset({"dont", "not", "never", "no", "nobody", "without", "doesnt", "neither", "nor"})
# Words that may stand between a request verb and the person ("talk to ONE OF YOUR REAL human agents").
FILLERS = frozenset({
    "to", "with", "a", "an", "the", "some", "one", "of", "your", "you", "me", "us", "i", "we", "can",
    "could", "please", "now", "just", "only", "another", "different", "other", "real", "live",
    "actual", "proper", "physical", "human", "damn", "goddamn", "fucking", "freaking", "bloody",
    "effing", "customer", "through", "over", "up", "right", "away", "immediately", "asap", "any",
    "immediate", "actually", "directly", "straight", "in", "touch", "contact", "back", "speak",
    "talk", "chat", "be", "able", "let", "my", "this", "it", "help", "assistance", "ticket", "case",
})
REAL = frozenset({"real", "live", "actual", "proper", "physical", "flesh"})
# "human" as a modifier of something else: not a request for a person.
HUMAN_COMPOUNDS = frozenset({
    "resources", "resource", "hr", "error", "errors", "rights", "nature", "race", "body", "life",
    "trafficking", "capital", "history", "behavior", "behaviour", "hair", "skin", "interest",
    "factor", "kind", "health", "brain", "eye", "eyes", "readable", "verification", "check",
    "centipede", "league", "genome", "anatomy",
})
# A person word after these is not our staff ("the delivery person", "a password manager").
NOT_STAFF_BEFORE = frozenset({
    "delivery", "courier", "shipping", "customs", "travel", "estate", "insurance", "postal", "mail",
    "password", "project", "download", "file", "task", "ad", "event", "window", "device", "package",
    "secret", "in", "per", "first", "third", "second", "property", "bank", "fedex", "ups", "dhl",
    "usps", "dpd", "my", "our", "their", "his", "her",
})
RELATIVE = frozenset({"who", "that", "which", "whose", "whom", "s", "was", "is", "were", "did", "does",
                      "had", "has", "said", "told", "delivered", "called"})
BOT_WORDS = frozenset({"bot", "bots", "robot", "robots", "machine", "ai", "computer", "chatbot", "automated",
                       "automatic", "program"})
BOT_REJECTION = NEGATORS | frozenset({"stop", "hate", "enough", "more", "instead", "than", "quit"})
# Words a very short request may contain next to the person word: "REAL PERSON NOW", "human pls".
SHORT_FILLERS = FILLERS | frozenset({
    "hey", "hi", "hello", "ok", "okay", "want", "need", "get", "give", "is", "there", "support",
    "service", "assistance", "help", "yes", "yeah", "yea", "yep", "sir", "maam", "operator",
})
SHORT_MAX_TOKENS = 6
QUESTION_ABOUT_BOT = (("are", "you"), ("is", "this"), ("am", "i"), ("is", "it"), ("are", "u"),
                      ("is", "that"), ("were", "you"))
NARRATIVE_BEFORE = frozenset({"was", "were", "been", "am", "is", "are", "while", "when", "after"})


def _is_staff(clause: Sequence[str], i: int) -> bool:
    """Is ``clause[i]`` a word for one of our people (not "human resources", "the delivery person")?"""
    tok = clause[i]
    prev = clause[i - 1] if i > 0 else ""
    nxt = clause[i + 1] if i + 1 < len(clause) else ""
    if tok not in PERSON and tok not in SOMEONE:
        return False
    if tok in ("human", "humans") and nxt in HUMAN_COMPOUNDS:
        return False
    if tok == "being" and prev not in ("human", "humans"):
        return False
    if tok in ("person", "people") and prev in ("in", "per"):
        return False
    return prev not in NOT_STAFF_BEFORE or (tok in SOMEONE and prev not in ("in", "per"))


def _negated(clause: Sequence[str], i: int, window: int = 3) -> bool:
    return any(t in NEGATORS for t in clause[max(0, i - window) : i])


def _object_after(clause: Sequence[str], i: int, max_fillers: int = 5) -> int | None:
    """Index of the first word after ``clause[i]`` that is not a filler, within ``max_fillers``.
    Words of 1-2 letters and unknown words of 3 ("t", "mw", "tyo") are read as misspelt fillers."""
    for j in range(i + 1, min(len(clause), i + 2 + max_fillers)):
        if clause[j] in ("human", "humans") and _is_staff(clause, j):
            nxt = clause[j + 1] if j + 1 < len(clause) else ""
            if nxt not in PERSON and nxt not in SOMEONE:
                return j  # "human" is the person itself, not an adjective
            continue
        word = clause[j]
        if word not in FILLERS and not (len(word) <= 2 or len(word) == 3 and word not in english_words()):
            return j
    return None


def _is_question_about_bot(clause: Sequence[str]) -> bool:
    return tuple(clause[:2]) in QUESTION_ABOUT_BOT or tuple(clause[1:3]) in QUESTION_ABOUT_BOT


def _request_in_clause(clause: Sequence[str]) -> str | None:
    for i, tok in enumerate(clause):
        if tok in TALK or tok in CONTACT:
            if _negated(clause, i):
                continue
            if tok.endswith("ing") and any(t in NARRATIVE_BEFORE for t in clause[max(0, i - 2) : i]):
                continue  # "the agent I was speaking to": a story, not a request
            j = _object_after(clause, i)
            if j is None:
                nxt = clause[i + 1] if i + 1 < len(clause) else ""
                if tok in ("transfer", "connect") and nxt == "me" or tok == "escalate" and nxt in (
                    "", "me", "this", "it", "please", "my", "now", "to"
                ):
                    return " ".join(clause[i : i + 2])  # "transfer me", "escalate this", "escalate"
                continue
            obj = clause[j]
            if _is_staff(clause, j) and (obj in PERSON or tok != "ask"):
                return " ".join(clause[i : j + 1])
        if tok in WANT and not _negated(clause, i):
            j = _object_after(clause, i, max_fillers=4)
            if j is None or clause[j] not in PERSON or not _is_staff(clause, j):
                continue
            after = clause[j + 1] if j + 1 < len(clause) else ""
            if after in RELATIVE:
                continue  # "I want the person who delivered it fired"
            if after == "to" and (j + 2 >= len(clause) or clause[j + 2] not in HELP_VERBS):
                continue  # "I need a person to sign for it"
            return " ".join(clause[i : j + 1])
        if tok in REAL and i + 1 < len(clause):
            j = i + 2 if clause[i + 1] in ("human", "humans") and i + 2 < len(clause) and (
                clause[i + 2] in PERSON or clause[i + 2] in SOMEONE) else i + 1
            if _is_staff(clause, j) and not _is_question_about_bot(clause):
                return " ".join(clause[i : j + 1])
        rejecting = any(t in BOT_REJECTION for t in clause[max(0, i - 3) : i])
        if tok in BOT_WORDS and rejecting and not _is_question_about_bot(clause):
            return " ".join(clause[max(0, i - 3) : i + 1])  # "not a bot", "no more bots"
        if tok in PERSON or tok in SOMEONE:
            # "is there a human I can talk to", "can someone call me back"
            rest = clause[i + 1 : i + 6]
            if (
                any(t in ("talk", "speak", "chat") for t in rest)
                and any(t in ("i", "we") for t in rest)
                and not any(t in NARRATIVE_BEFORE for t in rest)
                and _is_staff(clause, i)
            ):
                return " ".join(clause[i : i + 6])
            if i + 2 < len(clause) and clause[i + 1] in ("call", "email", "phone", "ring", "contact") and \
                    clause[i + 2] == "me" and _is_staff(clause, i):
                return " ".join(clause[i : i + 3])
    if tuple(clause[:3]) in (("call", "me", "back"), ("give", "me", "call")) or "callback" in clause:
        return " ".join(clause[:3])
    return None


def _short_request(tokens: Sequence[str]) -> str | None:
    words = [t for t in tokens if t != BOUNDARY]
    if not words or len(words) > SHORT_MAX_TOKENS:
        return None
    if _is_question_about_bot(words):
        return None  # "is this a human?", "are you an agent?": asking what answers, see asks_if_bot
    people = [i for i, t in enumerate(words) if t in PERSON and _is_staff(words, i)]
    if people and all(t in SHORT_FILLERS or t in PERSON for t in words):
        return " ".join(words)
    return None


def explicit_request(tokens: Sequence[str]) -> str | None:
    """The words of an explicit request for a person in ``tokens`` (from :meth:`Speller.tokens`), or
    None. Rules, per clause (split at punctuation and "but"), a request verb not negated within the
    3 words before it ("I don't want to talk to a person" is not a request):

    1. a verb of talking or contact, then (after filler words) a person: "can i talk 2 someone",
       "speak to ur manager", "put me through to an operator", "transfer me", "escalate this";
       "customer service/support" counts only after talk/speak/chat;
    2. a verb of wanting, then a person word (not someone/anyone) not followed by who/that/... or by
       "to" + a verb other than help/talk/...: "I want a representitive", "get me a humen", but not
       "I want the person who delivered it fired", "I need a person to sign for it";
    3. real/live/actual + person: "REAL PERSON NOW", unless the clause asks whether the bot is one
       ("are you a real person?");
    4. rejecting the bot: "not a bot", "no more bots", "I hate bots";
    5. a person, then "I/we ... talk" or "call/email me": "is there a human I can talk to", "can
       someone call me back"; "call me back", "callback";
    6. a message of at most 6 words that is a person word plus fillers: "operater", "human pls".

    "human resources", "in person", "the delivery person", "a password manager" are not people.
    """
    for clause in _clauses(tokens):
        found = _request_in_clause(clause)
        if found:
            return found
    return _short_request(tokens)


# --- a question whether the customer is talking to a bot -------------------------------------------

# Words that may open a message or a clause around the question: "hi, are you a bot? just curious".
ASIDE = frozenset({
    "hi", "hello", "hey", "hiya", "yo", "ok", "okay", "so", "wait", "and", "honestly", "seriously",
    "really", "lol", "um", "hmm", "just", "quick", "question", "actually", "also", "btw", "curious",
    "asking", "wondering", "out", "of", "curiosity", "sorry", "please", "thanks", "thank", "you",
})
# What may stand in the rest of the question besides the person or bot words: "am i TALKING TO A REAL
# human", "is this AN automated REPLY", "are you a bot OR NOT". Anything else ("is this product made
# by a machine", "is it a human who packs the orders") means the message is about something else.
BOT_QUESTION_WORDS = TALK | REAL | frozenset({
    "to", "with", "a", "an", "the", "actually", "really", "even", "just", "only", "still", "right",
    "or", "not", "kind", "sort", "of", "customer", "support", "service", "reply", "replies",
    "response", "responses", "answer", "answers", "message", "messages", "system", "too", "here",
    "now", "i", "am", "me",
})
WHAT_ANSWERS = BOT_WORDS | frozenset({"chatgpt", "gpt", "llm"})
"""Words for a bot in such a question, besides person words ("am I talking to chatgpt?")."""


def _bot_question(clause: Sequence[str]) -> bool:
    """Is ``clause`` (after up to two :data:`ASIDE` words) "are you / is this / am I ..." followed only
    by :data:`BOT_QUESTION_WORDS` and at least one person or bot word ("are you real" counts too)?"""
    for k in range(min(3, len(clause) - 1)):
        if k and clause[k - 1] not in ASIDE:
            return False
        if tuple(clause[k : k + 2]) not in QUESTION_ABOUT_BOT:
            continue
        rest = clause[k + 2 :]
        people = [i for i, t in enumerate(rest) if t in WHAT_ANSWERS or _is_staff(rest, i)]
        if not rest or any(t not in BOT_QUESTION_WORDS and i not in people for i, t in enumerate(rest)):
            return False
        return bool(people) or clause[k + 1] == "you" and all(t in REAL for t in rest)
    return False


def asks_if_bot(tokens: Sequence[str]) -> str | None:
    """The question, when the whole message asks whether the customer is talking to a bot or a person,
    else None. ``tokens``: from :meth:`Speller.tokens`.

    One clause must be such a question ("are you a real person?", "am I talking to a bot?", "is this a
    human?", "r u human", "is this an automated reply", "are you real?") and every other clause only
    asides ("hi", "just curious"). A question with a request next to it ("are you a bot? where is my
    order") or about something else ("is this product made by a machine?", "is this a human error?") is
    not one. Rules for requests come first: :func:`explicit_request` decides "is there a human I can
    talk to" before this is asked.
    """
    clauses = _clauses(tokens)
    questions = [c for c in clauses if _bot_question(c)]
    if not questions or any(c not in questions and not all(t in ASIDE for t in c) for c in clauses):
        return None
    return " ".join(questions[0])


# --- anger aimed at us -----------------------------------------------------------------------------

AIMED_ANGER_THRESHOLD = -0.4
"""Sentiment at or below which a message escalates when its anger is aimed at us (:func:`aimed_at_us`):
"your service is shit" (-0.56), "you people are a joke, worst company" (-0.44); "I hate the colour,
can I swap it?" (-0.57) and "I'm sick of waiting, any update?" (-0.51) aim at no one and are answered."""
AIMED_AT_US = tuple(
    phrase_tokens(p)
    for p in (
        "you are", "youre", "you people", "you guys", "you lot", "hate you", "you suck", "screw you",
        "your company", "your service", "your customer service", "your support", "your shop", "your store",
        "your website", "your site", "your app", "your staff", "your team", "your people", "your bot",
        "this company", "this service", "this shop", "this store", "this website", "this site", "this app",
        "this bot", "company", "customer service", "service", "support team", "staff",
        "fuck*", "shit", "shitty", "bullshit", "crap", "crappy", "wtf",
    )
)
"""Phrases that aim a message's negativity at us (you, your company, the service) or make it strong
words (swearing at someone, not "the goddamn penalty", whose swear word carries no sentiment)."""
_AIMED_AT_US = PhraseMatcher(AIMED_AT_US)


def aimed_at_us(tokens: Sequence[str]) -> str | None:
    """The words of :data:`AIMED_AT_US` found in ``tokens`` (from :meth:`Speller.tokens`), or None.
    Linear in the length of ``tokens``."""
    found = _AIMED_AT_US.first(tokens)
    return " ".join(found) if found else None


# --- sensitive topics ------------------------------------------------------------------------------

_TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class TopicConfigError(ValueError):
    """The sensitive-topics file is malformed; the message names the file, line and topic."""


@dataclass(frozen=True)
class Topics:
    """Sensitive topics: topic name -> phrases, each a tuple of tokens (see :func:`phrase_tokens`).
    Matching is one pass over the message (:class:`bot.phrases.PhraseMatcher`)."""

    phrases: Mapping[str, tuple[tuple[str, ...], ...]]
    source: str = ""

    def __post_init__(self) -> None:
        flat = [(topic, phrase) for topic, phrases in self.phrases.items() for phrase in phrases]
        object.__setattr__(self, "_flat", flat)
        object.__setattr__(self, "_matcher", PhraseMatcher([phrase for _, phrase in flat]))

    @classmethod
    def load(cls, path: Path | str) -> Topics:
        """Read a topics YAML file: a mapping of topic name -> list of phrases.

        Raises ``TopicConfigError`` naming the file, line and topic for: not a mapping, a topic name
        that is not lower-case letters/digits/_, a topic that is not a non-empty list, a phrase that
        is not a non-empty string, a ``*`` anywhere but at a word's end. ``OSError`` when unreadable.
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            raise TopicConfigError(f"{path}: not valid YAML: {exc}") from None
        if root is None:
            return cls({}, str(path))
        if not isinstance(root, yaml.MappingNode):
            raise TopicConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of topic -> phrases")
        phrases: dict[str, tuple[tuple[str, ...], ...]] = {}
        for key, value in root.value:
            line = key.start_mark.line + 1
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if not isinstance(name, str) or not _TOPIC_NAME.match(name):
                raise TopicConfigError(
                    f"{path}:{line}: topic name {name!r} must be lower-case letters, digits or _"
                )
            if name in phrases:
                raise TopicConfigError(f"{path}:{line}: topic {name!r} appears twice")
            if not isinstance(value, yaml.SequenceNode) or not value.value:
                raise TopicConfigError(f"{path}:{line}: topic {name!r} must be a non-empty list of phrases")
            items = []
            for item in value.value:
                iline = item.start_mark.line + 1
                raw = item.value if isinstance(item, yaml.ScalarNode) else None
                if not isinstance(raw, str) or not raw.strip():
                    raise TopicConfigError(f"{path}:{iline}: topic {name!r}: a phrase must be non-empty text")
                if re.search(r"\*(?=\S)", raw) or raw.strip().startswith("*"):
                    raise TopicConfigError(
                        f"{path}:{iline}: topic {name!r}: phrase {raw!r}: '*' may only end a word"
                    )
                toks = phrase_tokens(raw)
                if not toks:
                    raise TopicConfigError(f"{path}:{iline}: topic {name!r}: phrase {raw!r} has no words")
                items.append(toks)
            phrases[name] = tuple(items)
        return cls(phrases, str(path))

    def words(self) -> set[str]:
        """Whole (non-prefix) words of every phrase: the speller's lexicon for topics."""
        return {t for ps in self.phrases.values() for p in ps for t in p if not t.endswith("*")}

    def stems(self) -> set[str]:
        """Stems of the prefix words (``harass*`` -> harass), so "harrassed" is read as harass..."""
        return {t[:-1] for ps in self.phrases.values() for p in ps for t in p if t.endswith("*")}

    def find(self, tokens: Sequence[str]) -> tuple[str, str] | None:
        """The first (topic, phrase) whose phrase occurs in ``tokens`` as consecutive words, in file
        order; None when no phrase occurs. Linear in the length of ``tokens``."""
        rank = self._matcher.first_rank(tokens)  # type: ignore[attr-defined]
        if rank is None:
            return None
        topic, phrase = self._flat[rank]  # type: ignore[attr-defined]
        return topic, " ".join(phrase)


NOT_HELPED = tuple(
    phrase_tokens(p)
    for p in (
        "didn't help", "doesn't help", "did not help", "does not help", "not helpful", "not helping",
        "no help", "unhelpful", "didn't answer", "doesn't answer", "did not answer", "does not answer",
        "not what i asked", "not my question", "not what i meant", "not what i need", "not the answer",
        "wrong answer", "that's wrong", "that is wrong", "you don't understand", "you do not understand",
        "you're not understanding", "you are not understanding", "not understanding me",
        "you misunderstood", "i already told you", "i already said", "already asked", "as i said",
        "i just said", "i said", "read my message", "read my question", "makes no sense",
        "doesn't make sense", "does not make sense", "still doesn't work", "still not working",
        "still not resolved", "that's not it", "that is not it", "same answer", "you keep saying",
        "going in circles", "not solve", "didn't solve", "did not solve", "doesn't solve",
    )
)
"""What a customer says when the bot's previous answer did not help (matched like topic phrases)."""
_NOT_HELPED = PhraseMatcher(NOT_HELPED)


def says_not_helped(tokens: Sequence[str]) -> str | None:
    """The not-helped phrase (:data:`NOT_HELPED`) found in ``tokens``, or None (the earliest listed
    when several occur). Linear in the length of ``tokens``."""
    found = _NOT_HELPED.first(tokens)
    return " ".join(found) if found else None


# --- conversation-level rules ----------------------------------------------------------------------


def since_last_handoff(turns: Sequence[PriorTurn]) -> list[PriorTurn]:
    """The turns after the last one that escalated, resolved the ticket, or got no bot decision (a
    human owned the ticket): the current stretch of bot conversation, oldest first."""
    start = 0
    for i, turn in enumerate(turns):
        if turn.escalated or turn.resolved or turn.tier is None:
            start = i + 1
    return list(turns[start:])


def conversation_sentiment(
    scores: Sequence[float],
    *,
    threshold: float,
    alpha: float,
    negative_turns: int,
    negative_turn_threshold: float,
) -> dict[str, Any] | None:
    """Whether the customer's mood over the conversation calls for a person.

    ``scores``: VADER compound of each customer turn of the current stretch, oldest first, the current
    message last. Fires (returns the evidence) when either

    * there are at least 2 scores and their exponentially weighted mean ``m`` is at or below
      ``threshold``, where ``m_1 = s_1`` and ``m_k = alpha * s_k + (1 - alpha) * m_(k-1)``
      (``alpha`` 0.5: the current message weighs 1/2, the one before 1/4, ...), or
    * the last ``negative_turns`` scores (``negative_turns`` >= 2; 0 switches this rule off) are each at
      or below ``negative_turn_threshold``.

    Returns ``{"rule": "ewma"|"consecutive", "ewma": m, "turns": len(scores)}`` or None.
    """
    if not scores:
        return None
    mean = scores[0]
    for s in scores[1:]:
        mean = alpha * s + (1 - alpha) * mean
    evidence = {"ewma": round(mean, 4), "turns": len(scores)}
    if len(scores) >= 2 and mean <= threshold:
        return {"rule": "ewma", **evidence}
    if negative_turns >= 2 and len(scores) >= negative_turns and all(
        s <= negative_turn_threshold for s in scores[-negative_turns:]
    ):
        return {"rule": "consecutive", **evidence}
    return None


FAILURE_KINDS = ("customer_said_not_helped", "order_not_found", "asked_slot_again")
"""Failure kinds that are not turn reasons; ``failure_reasons`` may list them with reason prefixes."""


def turn_failed(
    turn: PriorTurn, before: PriorTurn | None, failure_reasons: Sequence[str], said_not_helped: bool
) -> str | None:
    """Why the bot failed the customer on ``turn`` (``before``: the turn before it in the stretch), or
    None. Each kind counts only when listed in ``failure_reasons``:

    * ``customer_said_not_helped``: the customer's message says the previous answer did not help
      (``said_not_helped``: :func:`says_not_helped` of its tokens, or what the turn recorded);
    * ``order_not_found``: the bot's decision (not escalated) named orders a lookup did not find;
    * ``asked_slot_again``: the bot asked again for the slot it had just asked for (the order number,
      reason ``asked_slot``, or the proof of ownership, reason ``asked_proof``);
    * any other entry is a reason prefix: a decision (not escalated) whose reason starts with it
      (``low_confidence`` -> ``low_confidence_...``) fails with that reason.
    """
    if "customer_said_not_helped" in failure_reasons and said_not_helped:
        return "customer_said_not_helped"
    if turn.escalated or turn.reason is None:
        return None
    if "order_not_found" in failure_reasons and turn.not_found:
        return "order_not_found"
    if "asked_slot_again" in failure_reasons and turn.reason in ("asked_slot", "asked_proof") and (
        before is not None and before.reason == turn.reason
    ):
        return "asked_slot_again"
    for prefix in failure_reasons:
        if prefix not in FAILURE_KINDS and turn.reason.startswith(prefix):
            return turn.reason
    return None


def repeated_failure(failures: Sequence[str], limit: int) -> dict[str, Any] | None:
    """``{"failures": n, "why": [...]}`` when the stretch holds at least ``limit`` failed turns (``limit``
    0 switches the rule off), else None. ``failures``: the reasons from :func:`turn_failed`."""
    if limit <= 0 or len(failures) < limit:
        return None
    return {"failures": len(failures), "why": list(failures)}


def repeated_message(
    current: np.ndarray,
    current_text: str,
    earlier: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
    *,
    similarity: float,
    min_words: int,
) -> dict[str, Any] | None:
    """Whether ``current_text`` repeats an earlier customer message of the stretch.

    ``current``: its (384,) L2-normalised embedding; ``earlier``: earlier customer texts of the stretch;
    ``embed``: texts -> (n, 384) L2-normalised rows (a row of zeros for a text the caller chose not to
    embed: it never counts as repeated). A repeat has at least ``min_words`` words (as does
    the earlier message), names the same order ids and emails (so "where is order #W1" then "... #W2"
    is not one), and has cosine similarity >= ``similarity`` with the earlier message.
    Returns ``{"similarity": cos, "earlier": index into earlier}`` for the closest repeat, or None.
    """
    if similarity > 1 or len(current_text.split()) < min_words:
        return None
    current_entities = _entity_key(current_text)
    candidates = [
        (i, t) for i, t in enumerate(earlier)
        if len(t.split()) >= min_words and _entity_key(t) == current_entities
    ]
    if not candidates:
        return None
    vectors = embed([model_view(t) for _, t in candidates])  # what the current message's embedding read
    sims = vectors @ current.astype(np.float32)
    best = int(np.argmax(sims))
    if float(sims[best]) < similarity:
        return None
    return {"similarity": round(float(sims[best]), 4), "earlier": candidates[best][0]}


def _entity_key(text: str) -> tuple[frozenset[str], frozenset[str]]:
    found = extract_entities(text)
    return frozenset(found.order_ids), frozenset(e.lower() for e in found.emails)


# --- the policy -----------------------------------------------------------------------------------


class Escalation:
    """All triggers, configured once from :class:`~config.settings.Settings`.

    ``embed``: texts -> (n, 384) L2-normalised embeddings of the same model as
    ``Understanding.embedding`` (the router passes its cached embedder, so each earlier message is
    embedded once). ``sentiment``: text -> VADER compound, for earlier turns that recorded none.
    ``language``: None switches the language trigger off.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Topics,
        language: LanguageGate | None,
        embed: Callable[[Sequence[str]], np.ndarray],
        sentiment: Callable[[str], float],
        known_words: frozenset[str] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.language = language
        self.embed = embed
        self.sentiment = sentiment
        lexicon = PERSON | SOMEONE | TALK | CONTACT | WANT | HELP_VERBS | REAL | BOT_WORDS | FILLERS | topics.words()
        lexicon |= {t for p in NOT_HELPED for t in p} | topics.stems()
        self.speller = Speller(
            lexicon, english_words() if known_words is None else known_words, settings.fuzzy_match_cutoff,
            guarded=topics.words() | topics.stems(),
        )
        self._memos: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._memo_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        embed: Callable[[Sequence[str]], np.ndarray],
        sentiment: Callable[[str], float],
    ) -> Escalation:
        """Load the topics file and build the language detector (once; see :mod:`bot.language`).

        Raises ``TopicConfigError``/``OSError`` for the topics file and ``ValueError`` naming the
        setting for unknown language codes.
        """
        topics = Topics.load(settings.sensitive_topics_file) if settings.sensitive_topics_file else Topics({})
        language = _language_gate(
            tuple(settings.supported_languages),
            tuple(settings.language_candidates),
            settings.language_low_accuracy,
            settings.language_min_words,
            settings.language_max_supported_confidence,
            settings.language_max_english_share,
        ) if settings.language_candidates else None
        return cls(settings, topics=topics, language=language, embed=embed, sentiment=sentiment)

    # -- one function per trigger ----------------------------------------------------------------

    def unsupported_language(self, text: str, *, reasoning_available: bool) -> Trigger | None:
        if self.language is None or reasoning_available:
            return None
        found = self.language.unsupported(text)
        if found is None:
            return None
        return Trigger(
            "unsupported_language",
            {"language": found.code, "confidence": round(found.confidence, 4)},
            notice=handoff_notice(found.code),
        )

    def explicit_request(
        self, tokens: Sequence[str], u: Understanding, text: str | None = None, *, use_intent: bool = True
    ) -> Trigger | None:
        matched = explicit_request(tokens)
        if matched:
            return Trigger("explicit_request", {"matched": matched})
        if (self._asks_if_bot(text) if text is not None else asks_if_bot(tokens)):
            return None  # "are you a real person?": a question the bot answers (reply_instead)
        if use_intent and u.intent == "contact_human_agent" and u.confidence >= self.settings.confidence_threshold:
            return Trigger("explicit_request", {"matched": None, "intent_confidence": round(u.confidence, 4)})
        return None

    def sensitive_topic(self, tokens: Sequence[str]) -> Trigger | None:
        found = self.topics.find(tokens)
        if found is None:
            return None
        return Trigger("sensitive_topic", {"topic": found[0], "matched": found[1]})

    def sensitive_intent(self, u: Understanding) -> Trigger | None:
        if u.intent in self.settings.sensitive_intents and u.confidence >= SENSITIVE_INTENT_MIN_CONFIDENCE:
            return Trigger("sensitive_intent", {"intent": u.intent})
        return None

    def negative_sentiment(self, u: Understanding, tokens: Sequence[str]) -> Trigger | None:
        """Fires when ``u.sentiment`` <= ``anger_threshold``, or <= :data:`AIMED_ANGER_THRESHOLD` and
        ``tokens`` (from :meth:`Speller.tokens`) aim the anger at us (:func:`aimed_at_us`)."""
        if u.sentiment <= self.settings.anger_threshold:
            return Trigger("negative_sentiment", {"sentiment": round(u.sentiment, 4)})
        if u.sentiment <= AIMED_ANGER_THRESHOLD:
            aimed = aimed_at_us(tokens)
            if aimed:
                return Trigger("negative_sentiment", {"sentiment": round(u.sentiment, 4), "aimed": aimed})
        return None

    def conversation_sentiment(self, u: Understanding, stretch: Sequence[PriorTurn]) -> Trigger | None:
        scores = [self._sentiment_of(t) for t in stretch if t.text.strip()]
        found = conversation_sentiment(
            [*scores, u.sentiment],
            threshold=self.settings.conversation_sentiment_threshold,
            alpha=self.settings.conversation_sentiment_alpha,
            negative_turns=self.settings.negative_turns_limit,
            negative_turn_threshold=self.settings.negative_turn_threshold,
        )
        return Trigger("conversation_sentiment", found) if found else None

    def repeated_message(self, text: str, u: Understanding, stretch: Sequence[PriorTurn]) -> Trigger | None:
        if u.intent in self.settings.repeat_ignore_intents or not stretch:
            return None
        found = repeated_message(
            u.embedding, text, [t.text for t in stretch[-REPEAT_LOOKBACK:]], self.embed,
            similarity=self.settings.repeat_similarity, min_words=self.settings.repeat_min_words,
        )
        return Trigger("repeated_message", found) if found else None

    def repeated_failure(self, stretch: Sequence[PriorTurn], current: str | None) -> Trigger | None:
        failures = self._failures(stretch)
        if current:
            failures.append(current)
        found = repeated_failure(failures, self.settings.repeated_failure_limit)
        return Trigger("repeated_failure", found) if found else None

    # -- entries --------------------------------------------------------------------------------

    def check(
        self, text: str, u: Understanding, prior: Sequence[PriorTurn], *, reasoning_available: bool,
        answers_question: bool = False,
    ) -> Trigger | None:
        """The first trigger that fires for customer ``text`` (understood as ``u``) given the ticket's
        earlier turns ``prior`` (oldest first), in :data:`REASONS` order; None when none fires.
        ``answers_question``: the message gives what the bot just asked for (an order number, an
        email or postcode); then the intent model's guess is not a trigger (a bare email reads as
        anything to it), only the words are. Blocking CPU work (may embed earlier messages): run
        it off the event loop."""
        tokens = self.speller.tokens(text)
        stretch = since_last_handoff(prior)
        return (
            self.unsupported_language(text, reasoning_available=reasoning_available)
            or self.explicit_request(tokens, u, text, use_intent=not answers_question)
            or (None if answers_question else self.sensitive_intent(u))
            or self.sensitive_topic(tokens)
            or self.negative_sentiment(u, tokens)
            or self.conversation_sentiment(u, stretch)
            or self.repeated_message(text, u, stretch)
            or self.repeated_failure(stretch, self._complaint(text))
        )

    def after_tiers(self, text: str, outcome: PriorTurn, prior: Sequence[PriorTurn]) -> Trigger | None:
        """The repeated-failure trigger for a turn the tiers answered without a person: ``outcome`` is
        the tiers' decision on ``text`` in :class:`PriorTurn` form. Fires when this turn failed
        (:func:`turn_failed`) and the stretch already holds ``repeated_failure_limit - 1`` failures."""
        if outcome.escalated:
            return None
        stretch = since_last_handoff(prior)
        why = turn_failed(
            outcome, stretch[-1] if stretch else None, self.settings.failure_reasons, bool(self.complaint(text)),
        )
        return self.repeated_failure(stretch, why) if why else None

    def complaint(self, text: str) -> str | None:
        """The words with which ``text`` says the last answer did not help, or None (recorded with
        the turn, so later turns need not read the text again)."""
        return self._memo("complaint", text, lambda: says_not_helped(self.speller.tokens(text)))

    def _asks_if_bot(self, text: str) -> str | None:
        return self._memo("asks_if_bot", text, lambda: asks_if_bot(self.speller.tokens(text)))

    def _memo(self, kind: str, text: str, compute: Callable[[], str | None]) -> str | None:
        # A turn asks these several times about its message (check, reply_instead, after_tiers);
        # the last few answers are kept, like the speller's tokens.
        key = (kind, text)
        with self._memo_lock:
            if key in self._memos:
                return self._memos[key]
        value = compute()
        with self._memo_lock:
            self._memos[key] = value
            while len(self._memos) > TOKEN_CACHE:
                self._memos.popitem(last=False)
        return value

    def reply_instead(self, text: str, u: Understanding) -> Reply | None:
        """The fixed reply for a turn no trigger sent to a person (ask after :meth:`check` returned None),
        or None to let the tiers answer: ``asked_if_bot`` when the whole message asks whether the
        customer is talking to a bot (:func:`asks_if_bot`); ``customer_said_not_helped`` when the
        customer says the last answer did not help and the message holds no new request (see the
        module docstring). Cheap: the speller's corrections are cached by :meth:`check`."""
        question = self._asks_if_bot(text)
        if question:
            return Reply("asked_if_bot", ASKED_IF_BOT_REPLY, {"matched": question})
        complaint = self.complaint(text)
        if complaint and not self._holds_request(u):
            return Reply("customer_said_not_helped", NOT_HELPED_REPLY, {"matched": complaint})
        return None

    def _holds_request(self, u: Understanding) -> bool:
        # A request the tiers can act on: an order id or email, or a confident intent that is not small
        # talk and not out of scope.
        if u.entities.order_ids or u.entities.emails:
            return True
        return not (
            u.intent in SMALL_TALK_INTENTS or u.intent == OUT_OF_SCOPE or u.out_of_scope
            or u.confidence < self.settings.confidence_threshold
        )

    def _failures(self, stretch: Sequence[PriorTurn]) -> list[str]:
        out = []
        for i, turn in enumerate(stretch):
            complained = (
                turn.complaint is not None if turn.complaint_known
                else bool(says_not_helped(self.speller.tokens(turn.text)))
            )
            why = turn_failed(turn, stretch[i - 1] if i else None, self.settings.failure_reasons, complained)
            if why:
                out.append(why)
        return out

    def _complaint(self, text: str) -> str | None:
        listed = "customer_said_not_helped" in self.settings.failure_reasons
        return "customer_said_not_helped" if listed and self.complaint(text) else None

    def _sentiment_of(self, turn: PriorTurn) -> float:
        return turn.sentiment if turn.sentiment is not None else self.sentiment(turn.text)


@lru_cache(maxsize=4)
def _language_gate(
    supported: tuple[str, ...],
    candidates: tuple[str, ...],
    low_accuracy: bool,
    min_words: int,
    max_supported: float,
    max_english_share: float,
) -> LanguageGate:
    # One detector per configuration per process: lingua's models are large, and tests build many apps.
    return LanguageGate(
        supported, candidates, low_accuracy=low_accuracy, min_words=min_words,
        max_supported_confidence=max_supported, max_english_share=max_english_share,
    )
