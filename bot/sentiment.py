"""Customer sentiment per message: VADER's compound score (Hutto & Gilbert, ICWSM 2014).

The lexicon ships inside the ``vaderSentiment`` package; nothing is downloaded. Scores are in
[-1, 1]; around -0.6 and below reads as clearly angry or upset in support messages.
"""

from __future__ import annotations

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


class Sentiment:
    """Thin wrapper so the analyser is built once (it loads its lexicon at construction)."""

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def compound(self, text: str) -> float:
        """VADER compound score of ``text`` in [-1, 1]; 0.0 for empty text."""
        if not text.strip():
            return 0.0
        return float(self._analyzer.polarity_scores(text)["compound"])
