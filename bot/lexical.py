"""Lexical similarity between a question and knowledge-base chunks: the word-overlap half of hybrid
retrieval (:mod:`bot.knowledge` adds it to the embedding cosine).

Sentence embeddings match meaning but blur rare, exact words ("gift card", "two-factor", "promo
code", "zip code"); TF-IDF matches those words and weighs them by how rare they are in this knowledge
base. Two TF-IDF views are averaged: word 1-2-grams (English stop words removed, sublinear term
frequency) and character 3-5-grams inside words, which survive typos and plural forms
("refnd", "giftcards").

Built in memory from the chunk texts when a knowledge-base version is loaded (milliseconds for
hundreds of chunks); nothing is stored. The TF-IDF is :mod:`bot.tfidf` (numpy, scikit-learn's
formulas and analyzers, without importing scikit-learn in the server). Must not: read the database or
embed anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bot.tfidf import Tfidf, char_wb_analyzer, english_stop_words, word_analyzer


class LexicalIndex:
    """TF-IDF index over a fixed list of texts.

    ``scores(query)`` returns one similarity per text, shape ``(len(texts),)``, in [0, 1]: the mean of
    the word-n-gram and character-n-gram TF-IDF cosines. An empty list of texts gives an empty index.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self.size = len(texts)
        self._views: list[tuple[Tfidf, object]] = []
        if not texts:
            return
        for analyzer in (word_analyzer((1, 2), english_stop_words()), char_wb_analyzer((3, 5))):
            tfidf = Tfidf.fit(texts, analyzer)
            if not tfidf.terms:  # every text is stop words only: this view has no vocabulary
                continue
            self._views.append((tfidf, tfidf.matrix(texts)))

    def scores(self, query: str) -> np.ndarray:
        """Similarity of ``query`` to every indexed text, shape ``(size,)``, values in [0, 1]."""
        total = np.zeros(self.size, dtype=np.float32)
        if not self._views:
            return total
        for tfidf, matrix in self._views:
            idx, values = tfidf.row(query)
            if len(idx):
                total += np.asarray(matrix[:, idx] @ values, dtype=np.float32).ravel()
        return total / len(self._views)
