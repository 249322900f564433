"""Grounded answers: a reply built only from sentences of retrieved knowledge-base passages.

The answer is extractive. It quotes, verbatim, the few passage sentences that best answer the
customer's question, then names its sources. Nothing is paraphrased or generated, so every claim in a
reply can be traced to an article line, with two exceptions in the bot's own words from
``config/order_policy.yaml``: a "Yes," / "No," before the first sentence of a yes/no question whose
best sentence clearly affirms or negates the asked thing (:mod:`bot.yes_no`), and a lead sentence from
the real state of the order in focus when the question is about cancelling, changing, returning or
refunding it (:mod:`bot.order_policy`). When the best passage is less similar than the threshold there
is no answer (``None``): the bot must not guess, and the caller hands the turn on.

Each candidate sentence is scored against the question: embedding similarity, plus the share of the
question's content words it contains (rare words count more: "Canada" over "ship"), plus its
similarity to the earlier conversation and to the order lead when given (embedding and words alike);
sentences of a lower-ranked passage carry its score gap. The best-scoring sentence leads; the others follow in article order, a
sentence that qualifies a rule (a negation, "except", "unless") after the rules, so "can I return it?"
gets the rule before the exclusions (and "which items cannot be returned?" the exclusions first).

Must not: search the knowledge base (the caller passes the passages), touch the database, or run on
the event loop (``compose_answer`` calls the embedding model; the server runs it in a worker thread).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bot.knowledge import Passage, split_sentences
from bot.order_policy import OrderFacts, OrderPolicy, default_policy, order_lead
from bot.tfidf import english_stop_words
from bot.context import canonical_slots
from bot.yes_no import overlap, read_sentence, yes_no_answer

if TYPE_CHECKING:
    from bot.embeddings import CachedEmbedder, Embedder

MAX_SENTENCES = 3
MAX_CHARS = 600
"""Quoted characters at most (the order lead, when there is one, counts too)."""
MAX_PASSAGES = 3
PASSAGE_MARGIN = 0.15
"""Passages scoring within this of the best one are quoted from; their sentences carry the score gap,
so a lower passage's sentence must be that much closer to the question to be chosen."""
SENTENCE_MARGIN = 0.15
"""Sentences scoring less than the best sentence minus this are left out."""
LEAD_BONUS = 0.05
"""Articles are written answer-first, so the best passage's opening sentence gets a small lift."""
LEXICAL_WEIGHT = 0.15
"""Weight of the share of the question's content words a sentence contains (rare words weigh more)."""
CONTEXT_WEIGHT = 0.25
"""Weight of a sentence's similarity to the earlier conversation and to the order lead: their mean
embedding similarity plus the share of their content words it contains."""
QUALIFIER_PENALTY = 0.10
"""Subtracted from a sentence that qualifies a rule (a negation, an exception word) when the question
does not ask about exceptions, and from a rule when it does; the best fitting sentence within
``SENTENCE_MARGIN`` of the top leads, and fitting sentences are quoted before the others."""
CONTEXT_CHARS = 512
"""The most recent characters of the conversation context that are embedded."""


@dataclass(frozen=True)
class GroundedAnswer:
    """A reply quoted from the knowledge base.

    ``text`` is what the customer sees (the lead, the quoted sentences, a blank line, then the source
    line); ``citations`` the doc ids quoted from, best first; ``passages`` the passages quoted from;
    ``score`` the best passage similarity. The bot's own words in ``text``, for the turn record and
    for groundedness checks (they are not quoted): ``yes_no`` (``"yes"``, ``"no"`` or None) said as
    the configured word before the first quoted sentence; ``order_lead`` the order-state sentence
    that opens the reply (None when none); ``order_topic`` the topic it answers (``"cancel"``...).
    """

    text: str
    citations: tuple[str, ...]
    kb_version: str
    passages: tuple[Passage, ...]
    score: float
    yes_no: str | None = None
    order_lead: str | None = None
    order_topic: str | None = None


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
    *,
    question: str | None = None,
    context: str | None = None,
    order: OrderFacts | None = None,
    policy: OrderPolicy | None = None,
) -> GroundedAnswer | None:
    """Quote the passage sentences that answer the question, or ``None`` below ``threshold``.

    Args:
        query: the customer's message; ``query_embedding`` is the embedder's vector of it, shape
            ``(384,)`` or ``(1, 384)``.
        passages: search results, any order; the best :data:`MAX_PASSAGES` within
            :data:`PASSAGE_MARGIN` of the best one are quoted from.
        kb_version: the version the passages came from; recorded with the answer.
        threshold: score the best passage must reach.
        embedder: embeds the candidate sentences (blocking: call from a worker thread).
        question: what the customer asks, when it differs from ``query`` (e.g. the previous message
            combined with this one); sentences are scored against it (its last sentence decides a
            yes/no). Default: ``query``.
        context: earlier conversation text; its last :data:`CONTEXT_CHARS` characters add
            :data:`CONTEXT_WEIGHT` x similarity to each sentence's score. None: no context.
        order: the order in focus, already proved to be the customer's; a question about cancelling,
            changing, returning or refunding gets a lead sentence from its state (no yes/no then).
        policy: the bot's own words (default: ``config/order_policy.yaml``).
    Returns:
        At most :data:`MAX_SENTENCES` sentences and about :data:`MAX_CHARS` characters, each copied
        verbatim from a passage: the best one first (after the order lead, or after "Yes,"/"No,"),
        then the others in article order, qualifying sentences after rules; then the source line.
    Raises:
        ValueError: ``query_embedding`` does not match the embedder's dimension.
    """
    ranked = sorted(passages, key=lambda p: p.score, reverse=True)
    if not ranked or ranked[0].score < threshold:
        return None
    best = ranked[0].score
    used = [p for p in ranked[:MAX_PASSAGES] if p.score >= threshold and p.score >= best - PASSAGE_MARGIN]
    # (passage rank, sentence index, sentence)
    candidates = [
        (rank, index, sentence)
        for rank, passage in enumerate(used)
        for index, sentence in enumerate(split_sentences(passage.text))
    ]
    if not candidates:
        return None
    policy = policy or default_policy()
    vocab = policy.answers
    asked = question if question is not None else query
    topic = policy.topic(asked) if order is not None else None
    lead_text = order_lead(topic, order, policy)

    # One batch: the sentences, then the question (when it is not the query) and the context texts.
    extra = [asked] if question is not None and question != query else []
    contexts = [t for t in (context[-CONTEXT_CHARS:] if context else None, lead_text) if t and t.strip()]
    vectors = embedder.embed([s for _, _, s in candidates] + extra + contexts)
    n = len(candidates)
    query_vector = vectors[n] if extra else np.asarray(query_embedding, dtype=np.float32).reshape(-1)
    if query_vector.shape[0] != vectors.shape[1]:
        raise ValueError(f"query_embedding has {query_vector.shape[0]} values, the embedder {vectors.shape[1]}")
    similarity = vectors[:n] @ query_vector
    readings = [read_sentence(s, vocab) for _, _, s in candidates]
    question_reading = read_sentence(asked, vocab)
    lexical = np.asarray(overlap(question_reading.stems, readings))
    if contexts:
        context_stems = frozenset().union(*(read_sentence(t, vocab).stems for t in contexts))
        similarity = similarity + CONTEXT_WEIGHT * (
            (vectors[:n] @ vectors[n + len(extra) :].T).mean(axis=1) + np.asarray(overlap(context_stems, readings))
        )
    # The rule before its exceptions; the exceptions first when the question (or the order's state)
    # is about one ("which items cannot be returned?", an order that can no longer be cancelled).
    exceptions = question_reading.qualifies or bool(lead_text and read_sentence(lead_text, vocab).negated)
    off = [readings[k].qualifies != exceptions for k in range(n)]
    scores = np.array([
        similarity[k] + LEXICAL_WEIGHT * lexical[k] - (best - used[r].score)
        + (LEAD_BONUS if (r, i) == (0, 0) else 0.0)
        - (QUALIFIER_PENALTY if off[k] else 0.0)
        for k, (r, i, _) in enumerate(candidates)
    ])

    texts = [s for _, _, s in candidates]
    preference = [(-r, float(scores[k])) for k, (r, _, _) in enumerate(candidates)]
    verdict = None if lead_text else yes_no_answer(canonical_slots(asked), texts, readings, preference, vocab)
    ranking = np.argsort(-scores, kind="stable")
    top = float(scores[ranking[0]])
    fitting = [k for k in ranking if not off[k] and scores[k] >= top - SENTENCE_MARGIN]
    # An order that can no longer be cancelled or changed gets at most the rule that says so, never
    # the steps for doing it ("You can cancel the whole order" after "it can no longer be cancelled").
    if lead_text and read_sentence(lead_text, vocab).negated:
        chosen = [int(k) for k in ranking if readings[k].negated][:1]
    else:
        first = verdict[1] if verdict else int(fitting[0] if fitting else ranking[0])
        chosen = [first]
        length = len(candidates[first][2]) + (len(lead_text) + 1 if lead_text else 0)
        for position in ranking:
            sentence = candidates[position][2]
            if len(chosen) >= MAX_SENTENCES:
                break
            if position == first or scores[position] < top - SENTENCE_MARGIN:
                continue
            if length + len(sentence) + 1 > MAX_CHARS:
                continue
            chosen.append(int(position))
            length += len(sentence) + 1
        rest = sorted(chosen[1:], key=lambda k: (off[k], candidates[k][:2]))
        chosen = [first, *rest]

    quoted = sorted({candidates[k][0] for k in chosen}) or [0]  # the lead alone cites the best article
    titles: dict[str, str] = {}  # doc id -> title, in citation order
    for rank in quoted:
        titles.setdefault(used[rank].doc_id, used[rank].title or used[rank].doc_id)
    body = [candidates[k][2] for k in chosen]
    if verdict:
        body[0] = _after_word(vocab.yes if verdict[0] == "yes" else vocab.no, body[0], texts)
    if lead_text:
        body.insert(0, lead_text)
    return GroundedAnswer(
        text=f"{' '.join(body)}\n\n{source_line(list(titles.values()))}",
        citations=tuple(titles),
        kb_version=kb_version,
        passages=tuple(used[rank] for rank in quoted),
        score=best,
        yes_no=verdict[0] if verdict else None,
        order_lead=lead_text,
        order_topic=topic if lead_text else None,
    )


def _after_word(word: str, sentence: str, corpus: Sequence[str]) -> str:
    """``"Yes,"`` + sentence. After a comma, the sentence's first word loses its capital when it is a
    stop word or the candidate sentences also use it in lower case ("Yes, you can ...", "No, orders
    to ..."), and keeps it otherwise: a name ("Yes, Northwind Goods ...")."""
    first = sentence.split(" ", 1)[0]
    lower = first[:1].lower() + first[1:]
    if word.endswith(",") and first != "I" and lower != first and (
        lower in english_stop_words()
        or any(re.search(rf"(?<!\S){re.escape(lower)}\b", text) for text in corpus)
    ):
        sentence = lower + sentence[len(first):]
    return f"{word} {sentence}"
