"""Grounded answers: a reply built only from sentences of retrieved knowledge-base passages.

The answer is extractive. It quotes, verbatim and in article order, the few passage sentences most
similar to the customer's question, then names its sources and the knowledge-base version. Nothing
is paraphrased or generated, so every claim in a reply can be traced to an article line. When the best
passage is less similar than the threshold there is no answer (``None``): the bot must not guess, and
the caller hands the turn on (clarify, reasoning tier or human).

Must not: search the knowledge base (the caller passes the passages), touch the database, or run on
the event loop (``compose_answer`` calls the embedding model; the server runs it in a worker thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bot.knowledge import Passage, split_sentences

if TYPE_CHECKING:
    from bot.embeddings import CachedEmbedder, Embedder

MAX_SENTENCES = 3
MAX_CHARS = 600
PASSAGE_MARGIN = 0.03
"""A second passage is quoted from only when its score is this close to the best one: a near tie
means the question spans both (e.g. a refund after a cancellation), a clear gap means it does not."""
SENTENCE_MARGIN = 0.15
"""Sentences less similar to the question than the best sentence minus this are left out."""
LEAD_BONUS = 0.05
"""Articles are written answer-first, so the best passage's opening sentence gets a small lift."""


@dataclass(frozen=True)
class GroundedAnswer:
    """A reply quoted from the knowledge base.

    ``text`` is what the customer sees (quoted sentences, a blank line, then the source line);
    ``citations`` the doc ids quoted from, best first; ``passages`` the passages quoted from;
    ``score`` the best passage similarity.
    """

    text: str
    citations: tuple[str, ...]
    kb_version: str
    passages: tuple[Passage, ...]
    score: float


def source_line(titles: Sequence[str]) -> str:
    """``Source: Refunds``, or ``Sources: Refunds; Cancelling an order`` for several articles: the
    titles customers can recognise. Doc ids and the knowledge-base version go to the turn's record
    (``citations``, ``kb_version``), not to the customer."""
    label = "Source" if len(titles) == 1 else "Sources"
    return f"{label}: {'; '.join(titles)}"


def compose_answer(
    query: str,
    query_embedding: np.ndarray,
    passages: Sequence[Passage],
    kb_version: str,
    threshold: float,
    embedder: Embedder | CachedEmbedder,
) -> GroundedAnswer | None:
    """Quote the passage sentences that answer ``query``, or ``None`` below ``threshold``.

    Args:
        query: the customer's question (kept for logging by callers; similarity uses the embedding).
        query_embedding: the embedder's vector of ``query``, shape ``(384,)`` or ``(1, 384)``.
        passages: search results, any order.
        kb_version: the version the passages came from; recorded with the answer.
        threshold: cosine similarity the best passage must reach.
        embedder: embeds the candidate sentences (blocking: call from a worker thread).
    Returns:
        At most ``MAX_SENTENCES`` sentences and about ``MAX_CHARS`` characters, each copied verbatim
        from a passage and kept in passage order, followed by the source line.
    """
    del query  # similarity is computed from query_embedding; the text is not needed here
    ranked = sorted(passages, key=lambda p: p.score, reverse=True)
    if not ranked or ranked[0].score < threshold:
        return None
    best = ranked[0].score
    used = [p for p in ranked[:2] if p.score >= threshold and p.score >= best - PASSAGE_MARGIN]

    # (passage rank, sentence index, sentence)
    candidates = [
        (rank, index, sentence)
        for rank, passage in enumerate(used)
        for index, sentence in enumerate(split_sentences(passage.text))
    ]
    if not candidates:
        return None
    query_vector = np.asarray(query_embedding, dtype=np.float32).reshape(-1)
    vectors = embedder.embed([sentence for _, _, sentence in candidates])
    similarity = vectors @ query_vector
    # A lower-ranked passage's sentences carry its score gap, so the best passage wins near-ties.
    bonus = np.array(
        [
            (LEAD_BONUS if (r, i) == (0, 0) else 0.0) - (best - used[r].score)
            for r, i, _ in candidates
        ]
    )
    order = np.argsort(-(similarity + bonus), kind="stable")
    top = float((similarity + bonus)[order[0]])

    chosen: list[int] = []
    length = 0
    for position in order:
        _, _, sentence = candidates[position]
        if chosen and (
            len(chosen) >= MAX_SENTENCES
            or similarity[position] + bonus[position] < top - SENTENCE_MARGIN
            or length + len(sentence) > MAX_CHARS
        ):
            continue
        chosen.append(int(position))
        length += len(sentence) + 1
    chosen.sort(key=lambda position: candidates[position][:2])

    quoted = sorted({candidates[position][0] for position in chosen})
    titles: dict[str, str] = {}  # doc id -> title, in citation order
    for rank in quoted:
        titles.setdefault(used[rank].doc_id, used[rank].title or used[rank].doc_id)
    citations = list(titles)
    body = " ".join(candidates[position][2] for position in chosen)
    return GroundedAnswer(
        text=f"{body}\n\n{source_line(list(titles.values()))}",
        citations=tuple(citations),
        kb_version=kb_version,
        passages=tuple(used[rank] for rank in quoted),
        score=best,
    )
