"""Customer sentiment per message: VADER's compound score (Hutto & Gilbert, ICWSM 2014), with a
support-domain lexicon.

The lexicon ships inside the ``vaderSentiment`` package; nothing is downloaded. Scores are in
[-1, 1]; around -0.6 and below reads as clearly angry or upset in support messages.

VADER's general lexicon reads the words customers use to describe what went wrong as feelings:
"the exchange rate looks WRONG" scores -0.48, "my card was STOLEN, can I still pay?" -0.56, "I
need to see the GODDAMN early exit penalty" -0.73. In support traffic those words name the
problem the customer wants solved, not anger at us, so this analyser adjusts VADER's lexicon (the
way VADER's authors suggest for a domain): :data:`PROBLEM_WORDS` carry no sentiment,
:data:`INTENSIFIERS` (swear words used for emphasis) carry none of their own, and
:data:`ADDED_WORDS` gives a valence to words of anger the general lexicon lacks ("nightmare",
"scammers"). Everything else, negation, boosters, "but" and capitals included, is VADER's.
Measured in ``bench/escalation_bench.py`` (false fires on ordinary messages, recall on angry ones).

VADER scores sentences, and its implementation (3.3.2) lower-cases the whole word list again for
every sentiment word's negation and idiom checks, so one call costs the square of the text's length
(4,000 characters: ~60 ms). Two measures make it linear with the same scores on sentences:

- :class:`_WindowedVader` hands those two checks only the words they look at (three before the
  word, two after), instead of the whole list; the scores are VADER's own (tested against it);
- a text longer than :data:`CHUNK_CHARS` is scored in pieces of at most that length, cut at sentence
  ends (else at a space), and the message's score is the mean of the pieces' scores, as VADER's
  authors advise for paragraphs (this also bounds its ``but`` rule, which is quadratic in a piece).
  Shorter texts (nearly every message) are scored whole.
"""

from __future__ import annotations

import re

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

CHUNK_CHARS = 300

PROBLEM_WORDS = frozenset({
    # what is wrong with an order, a payment, an account or a product
    "wrong", "problem", "problems", "problematic", "issue", "issues", "error", "errors", "mistake",
    "mistakes", "mistaken", "lost", "lose", "losing", "stolen", "missing", "miss", "missed", "broken",
    "broke", "damage", "damaged", "damages", "fail", "failed", "failing", "fails", "failure", "declined",
    "decline", "blocked", "block", "penalty", "penalties", "fee", "fees", "fined", "charged", "charge",
    "charges", "cancel", "cancelled", "canceled", "cancellation", "debt", "crash", "crashed", "crashing",
    "faulty", "fault", "defect", "defective", "leak", "leaked", "leaking", "cracked", "dent", "dented",
    "expired", "expire", "stuck", "delay", "delayed", "late", "unable", "trouble", "doubt", "suspicious",
    "fake", "fraud", "scratch", "scratched", "torn", "weird", "strange", "sorry", "unfortunately", "sadly",
    "troubles", "troubled", "dead", "died", "killer", "killing", "dying", "hazard", "choking", "emergency",
    "urgent", "warning", "risk", "danger", "dangerous", "worry", "worried", "confused", "confusing",
    "stranger", "fire", "alarm", "alarms", "accident", "allergic", "hacked", "spam", "complaint", "complain",
})
"""Words that name the customer's problem, not their mood: valence 0 here (kept in the lexicon, so
VADER still reads "no problem" as "no" negating a word, not as a negative "no")."""
INTENSIFIERS = frozenset({"goddamn", "goddamned", "damn", "damned", "bloody", "freaking", "frigging", "effing"})
"""Swear words customers use for emphasis ("the goddamn penalty"): no valence of their own (VADER
already reads "fucking" this way); the words of anger next to them still count."""
ADDED_WORDS = {
    "nightmare": -2.5, "shambles": -2.5, "ripoff": -2.5, "scammers": -2.7, "scammer": -2.7,
    "crooks": -2.5, "clowns": -2.0, "idiots": -2.5, "rubbish": -2.0, "garbage": -2.0, "atrocious": -2.8,
    "abysmal": -2.8, "robbed": -2.5, "stole": -2.2, "disgusted": -2.6, "fuming": -2.6,
}
"""Words of anger missing from VADER's lexicon, valued like their neighbours there ("livid" -2.5,
"disgusting" -2.4)."""
NEUTRAL_IDIOMS = frozenset({("worst", "case")})
"""Word pairs whose first word carries no sentiment in them ("worst case I'll return it")."""
_SENTENCE_END = re.compile(r"(?<=[.!?\n])\s+")


def chunks(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` characters: whole sentences packed together,
    a longer sentence cut at its last space before the limit (or at the limit). Linear in the length."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return [p for p in pieces if p.strip()]


class _WindowedVader(SentimentIntensityAnalyzer):
    """VADER with its two per-word checks given a window of the word list around the word.

    ``_negation_check`` reads words ``i-3 .. i-1`` and ``_special_idioms_check`` words ``i-3 .. i+2``
    of the list; each first lower-cases the whole list. For ``i >= 3`` the window holds exactly the
    words they read, at the same offsets. For ``i < 3`` the originals read negative indices, which
    wrap to the end of the list, so those three words get the whole list as VADER would.
    """

    neutral_idioms: frozenset[tuple[str, str]] = frozenset()

    def sentiment_valence(self, valence, sentitext, item, i, sentiments):  # type: ignore[no-untyped-def,override]
        words = sentitext.words_and_emoticons
        if self.neutral_idioms and i + 1 < len(words) and (item.lower(), words[i + 1].lower()) in self.neutral_idioms:
            sentiments.append(0.0)
            return sentiments
        return super().sentiment_valence(valence, sentitext, item, i, sentiments)

    def _negation_check(self, valence, words_and_emoticons, start_i, i):  # type: ignore[no-untyped-def,override]
        if i < 3:
            return SentimentIntensityAnalyzer._negation_check(valence, words_and_emoticons, start_i, i)
        return SentimentIntensityAnalyzer._negation_check(valence, words_and_emoticons[i - 3 : i + 1], start_i, 3)

    def _special_idioms_check(self, valence, words_and_emoticons, i):  # type: ignore[no-untyped-def,override]
        if i < 3:
            return SentimentIntensityAnalyzer._special_idioms_check(valence, words_and_emoticons, i)
        return SentimentIntensityAnalyzer._special_idioms_check(valence, words_and_emoticons[i - 3 : i + 3], 3)


class Sentiment:
    """Thin wrapper so the analyser is built once (it loads its lexicon at construction).

    ``support_lexicon`` True (the default): VADER's lexicon adjusted for support traffic (see the
    module docstring); False: VADER's own lexicon.
    """

    def __init__(self, *, support_lexicon: bool = True) -> None:
        self._analyzer = _WindowedVader()
        if support_lexicon:
            lexicon = self._analyzer.lexicon  # this analyser's own dict, built by its constructor
            lexicon.update(dict.fromkeys(PROBLEM_WORDS | INTENSIFIERS, 0.0))
            lexicon.update(ADDED_WORDS)
            self._analyzer.neutral_idioms = NEUTRAL_IDIOMS

    def compound(self, text: str) -> float:
        """VADER compound score of ``text`` in [-1, 1] (with the support-domain lexicon unless built
        without it); 0.0 for empty text. Texts over :data:`CHUNK_CHARS` characters: the mean over
        their :func:`chunks`."""
        if not text.strip():
            return 0.0
        if len(text) <= CHUNK_CHARS:
            return float(self._analyzer.polarity_scores(text)["compound"])
        scores = [float(self._analyzer.polarity_scores(piece)["compound"]) for piece in chunks(text)]
        return sum(scores) / len(scores) if scores else 0.0
