"""Groundedness: the share of an answer's sentences that its cited passages support.

The check, sentence by sentence (what the README documents as *groundedness*):

1. The answer's source lines (a line starting ``Source:`` or ``Sources:``, which Helpline appends to
   every knowledge-base answer) are citations, not claims: they are removed. The rest is split into
   sentences with the same splitter the knowledge base uses (:func:`bot.knowledge.split_sentences`).
2. A sentence is **supported** when either
   a. *verbatim*: after normalisation (Unicode NFKC, case folded, whitespace collapsed, trailing
      ``.!?;:`` and surrounding quotes removed) it is a substring of a normalised cited passage; or
   b. *paraphrase*: its cosine similarity (MiniLM sentence embeddings) to the most similar sentence
      of the cited passages is at least :data:`SIMILARITY_BAR` (0.80) **and** its content words are
      covered by the cited passages: every number in it appears there, and at least
      :data:`COVERAGE_BAR` (80%) of its other content words (words not in a short stop list) do.
      The number rule is what catches "60 days" written for "30 days", which embeddings barely
      notice. Without an embedder only the verbatim rule applies.
3. ``score = supported / total``. An answer that cannot be scored (no sentence besides the source
   line, or no cited passage text) gets ``score = 0`` and an ``unscored_reason``: callers count it
   as a failure and report it separately, never drop it from an average.

Must not: decide which passages an answer cites (the caller passes their text) or touch a database.
Blocking (runs the embedding model): call it from a worker thread inside the server's event loop.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bot.knowledge import split_sentences

if TYPE_CHECKING:
    from bot.embeddings import CachedEmbedder, Embedder

SIMILARITY_BAR = 0.80
"""Cosine (MiniLM, L2-normalised) a paraphrased sentence needs to its closest passage sentence."""
COVERAGE_BAR = 0.80
"""Share of a paraphrased sentence's non-numeric content words that must occur in the passages."""

_SOURCE_LINE = re.compile(r"^\s*Sources?\s*:", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"'})
_STOP_WORDS = frozenset(
    """a about after all also an and any are as at be because been before but by can could did do
    does for from has have if in into is it its may more most must no not of on once only or other our
    out so some such than that the their them then there these they this those to too up us was we
    were what when where which while who will with within would you your yours i me my""".split()  # noqa: SIM905
)


@dataclass(frozen=True)
class Groundedness:
    """How well one answer is supported.

    ``supported`` and ``total`` count claim sentences; ``score`` is ``supported / total`` in [0, 1]
    (0 when unscored); ``unscored_reason`` says why an answer could not be scored (None when it
    was); ``unsupported`` lists the sentences that failed, for reports.
    """

    supported: int
    total: int
    score: float
    unscored_reason: str | None = None
    unsupported: tuple[str, ...] = ()

    @property
    def scored(self) -> bool:
        return self.unscored_reason is None

    @property
    def fully_supported(self) -> bool:
        """Scored and every sentence supported: the bar for an answer to count as grounded."""
        return self.scored and self.total > 0 and self.supported == self.total


def unscored(reason: str) -> Groundedness:
    """A failed, unscorable answer (score 0) with its reason."""
    return Groundedness(supported=0, total=0, score=0.0, unscored_reason=reason)


def normalise(text: str) -> str:
    """Text as compared by the verbatim rule: NFKC, case folded, single spaces, no trailing
    sentence punctuation or surrounding quotes."""
    out = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    out = " ".join(out.split())
    return out.strip(" \"'").rstrip(".!?;:").strip(" \"'")


def claim_sentences(answer_text: str) -> list[str]:
    """The sentences of an answer that make claims: everything but its ``Source(s):`` lines."""
    lines = [line for line in answer_text.splitlines() if not _SOURCE_LINE.match(line)]
    return [s for line in lines for s in split_sentences(line.strip()) if normalise(s)]


def content_words(text: str) -> list[str]:
    """Lower-case words of ``text`` without stop words; numbers are kept (``$49`` -> ``49``)."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold())
    return [w for w in words if w not in _STOP_WORDS]


def _covered(sentence: str, vocabulary: set[str]) -> bool:
    words = content_words(sentence)
    numbers = [w for w in words if any(ch.isdigit() for ch in w)]
    if any(n not in vocabulary for n in numbers):
        return False
    others = [w for w in words if w not in numbers]
    if not others:
        return True
    return sum(w in vocabulary for w in others) / len(others) >= COVERAGE_BAR


def score_answer(
    answer_text: str,
    passages: Sequence[str],
    embedder: Embedder | CachedEmbedder | None = None,
) -> Groundedness:
    """Score ``answer_text`` against the text of the passages it cites (see the module docstring).

    Args:
        answer_text: the reply as the customer saw it, source line included.
        passages: plain text of every cited passage (for Helpline answers: all knowledge-base
            chunks of the cited documents).
        embedder: for the paraphrase rule; None applies the verbatim rule only.
    Returns:
        A :class:`Groundedness`; unscored (score 0) when the answer has no claim sentence or no
        passage text was given.
    """
    claims = claim_sentences(answer_text)
    if not claims:
        return unscored("empty answer: no sentence besides the source line")
    texts = [p for p in passages if p and p.strip()]
    if not texts:
        return unscored("no cited passages")

    normalised = [normalise(p) for p in texts]
    supported = [any(normalise(c) in p for p in normalised) for c in claims]
    pending = [i for i, ok in enumerate(supported) if not ok]
    if pending and embedder is not None:
        passage_sentences = [s for p in texts for s in split_sentences(p)]
        vocabulary = {w for p in texts for w in content_words(p)}
        vectors = embedder.embed([claims[i] for i in pending] + passage_sentences)
        claim_vectors, sentence_vectors = vectors[: len(pending)], vectors[len(pending) :]
        best = np.max(claim_vectors @ sentence_vectors.T, axis=1)
        for i, similarity in zip(pending, best, strict=True):
            supported[i] = bool(similarity >= SIMILARITY_BAR) and _covered(claims[i], vocabulary)

    count = sum(supported)
    return Groundedness(
        supported=count,
        total=len(claims),
        score=count / len(claims),
        unsupported=tuple(c for c, ok in zip(claims, supported, strict=True) if not ok),
    )
