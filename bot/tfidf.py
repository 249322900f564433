"""TF-IDF in numpy: the lexical half of the intent classifier and of knowledge-base search.

A server answers questions with these vectors all day, so it must not need scikit-learn at run time
(importing it costs ~65 MB of memory in every process; training still uses it). :class:`Tfidf` is a
fitted vocabulary with smoothed idf, sublinear term frequency and L2-normalised rows, the same
formulas as scikit-learn's ``TfidfVectorizer(sublinear_tf=True)``; the analyzers here produce the
same terms as its ``analyzer="word"`` (``token_pattern=r"(?u)\\b\\w\\w+\\b"``, English stop words,
n-grams after stop-word removal) and ``analyzer="char_wb"``, so vectors match it to rounding
(``tests/test_lexical.py`` compares them).

Must not: read files other than scikit-learn's stop-word list, or import scikit-learn.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

Analyzer = Callable[[str], list[str]]

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_WHITE_SPACES = re.compile(r"\s\s+")


@lru_cache(maxsize=1)
def english_stop_words() -> frozenset[str]:
    """scikit-learn's English stop-word list (Glasgow IR group), read from its module file without
    importing scikit-learn (its package ``__init__`` is what costs the memory)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed (it provides the stop-word list)")
    path = Path(next(iter(spec.submodule_search_locations))) / "feature_extraction" / "_stop_words.py"
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # a frozenset literal
    words = namespace["ENGLISH_STOP_WORDS"]
    if not isinstance(words, frozenset):
        raise TypeError(f"{path}: ENGLISH_STOP_WORDS is not a frozenset")
    return words


def word_analyzer(ngram_range: tuple[int, int] = (1, 2), stop_words: frozenset[str] | None = None) -> Analyzer:
    """scikit-learn's ``analyzer="word"``: lower case, tokens of 2+ word characters, stop words
    removed, then n-grams of the remaining tokens."""
    low, high = ngram_range

    def analyze(text: str) -> list[str]:
        tokens = _TOKEN.findall(text.lower())
        if stop_words:
            tokens = [t for t in tokens if t not in stop_words]
        grams = list(tokens) if low == 1 else []
        for n in range(max(low, 2), min(high, len(tokens)) + 1):
            grams += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return grams

    return analyze


def char_wb_analyzer(ngram_range: tuple[int, int] = (3, 5)) -> Analyzer:
    """scikit-learn's ``analyzer="char_wb"``: character n-grams inside ``" word "`` windows (a word
    shorter than n counts once, whole)."""
    low, high = ngram_range

    def analyze(text: str) -> list[str]:
        grams: list[str] = []
        for word in _WHITE_SPACES.sub(" ", text.lower()).split():
            padded = f" {word} "
            length = len(padded)
            for n in range(low, high + 1):
                if length <= n:
                    grams.append(padded)
                    break
                grams += [padded[i : i + n] for i in range(length - n + 1)]
        return grams

    return analyze


class Tfidf:
    """TF-IDF over a fixed vocabulary: smoothed idf ``ln((1 + n) / (1 + df)) + 1``, term frequency
    ``1 + ln(tf)``, rows L2-normalised. Build with :meth:`fit`; ``terms`` and ``idf`` can be saved
    and given back to the constructor."""

    def __init__(self, vocabulary: Sequence[str], idf: np.ndarray, analyzer: Analyzer) -> None:
        self.terms = list(vocabulary)
        self.index = {t: i for i, t in enumerate(self.terms)}
        self.idf = np.asarray(idf, dtype=np.float64)
        self.analyzer = analyzer

    @classmethod
    def fit(
        cls, texts: Sequence[str], analyzer: Analyzer, *, min_df: int = 1, max_features: int | None = None
    ) -> Tfidf:
        """Vocabulary (sorted) and idf of ``texts``.

        ``min_df``: keep only terms found in at least this many texts (scikit-learn's ``min_df`` as a
        count). ``max_features``: keep at most this many terms, the most frequent by document
        frequency (ties: alphabetical), like scikit-learn's ``max_features``. Raises ValueError when
        ``min_df < 1`` or ``max_features < 1``.
        """
        if min_df < 1 or (max_features is not None and max_features < 1):
            raise ValueError(f"min_df must be >= 1 and max_features >= 1, got {min_df}, {max_features}")
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(analyzer(text)))
        kept = [t for t, n in df.items() if n >= min_df]
        if max_features is not None and len(kept) > max_features:
            kept = sorted(kept, key=lambda t: (-df[t], t))[:max_features]
        terms = sorted(kept)
        n = len(texts)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in terms])
        return cls(terms, idf, analyzer)

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values) of one text's L2-normalised TF-IDF vector; empty when it has no
        known term."""
        counts = Counter(g for g in self.analyzer(text) if g in self.index)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        idx = np.fromiter((self.index[g] for g in counts), dtype=np.int64, count=len(counts))
        tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
        values = tf * self.idf[idx]
        return idx, values / np.linalg.norm(values)

    def matrix(self, texts: Sequence[str]) -> Any:
        """The rows of ``texts`` as a ``scipy.sparse.csr_matrix`` of shape ``(len(texts), terms)``."""
        from scipy.sparse import csr_matrix

        indptr, indices, data = [0], [], []
        for text in texts:
            idx, values = self.row(text)
            indices.append(idx)
            data.append(values)
            indptr.append(indptr[-1] + len(idx))
        return csr_matrix(
            (np.concatenate(data) if data else [], np.concatenate(indices) if indices else [], indptr),
            shape=(len(texts), len(self.terms)),
        )
