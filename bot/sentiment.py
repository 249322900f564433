"""Customer sentiment per message: VADER's compound score (Hutto & Gilbert, ICWSM 2014).

The lexicon ships inside the ``vaderSentiment`` package; nothing is downloaded. Scores are in
[-1, 1]; around -0.6 and below reads as clearly angry or upset in support messages.

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

    def _negation_check(self, valence, words_and_emoticons, start_i, i):  # type: ignore[no-untyped-def,override]
        if i < 3:
            return SentimentIntensityAnalyzer._negation_check(valence, words_and_emoticons, start_i, i)
        return SentimentIntensityAnalyzer._negation_check(valence, words_and_emoticons[i - 3 : i + 1], start_i, 3)

    def _special_idioms_check(self, valence, words_and_emoticons, i):  # type: ignore[no-untyped-def,override]
        if i < 3:
            return SentimentIntensityAnalyzer._special_idioms_check(valence, words_and_emoticons, i)
        return SentimentIntensityAnalyzer._special_idioms_check(valence, words_and_emoticons[i - 3 : i + 3], 3)


class Sentiment:
    """Thin wrapper so the analyser is built once (it loads its lexicon at construction)."""

    def __init__(self) -> None:
        self._analyzer = _WindowedVader()

    def compound(self, text: str) -> float:
        """VADER compound score of ``text`` in [-1, 1]; 0.0 for empty text. Texts over
        :data:`CHUNK_CHARS` characters: the mean over their :func:`chunks`."""
        if not text.strip():
            return 0.0
        if len(text) <= CHUNK_CHARS:
            return float(self._analyzer.polarity_scores(text)["compound"])
        scores = [float(self._analyzer.polarity_scores(piece)["compound"]) for piece in chunks(text)]
        return sum(scores) / len(scores) if scores else 0.0
