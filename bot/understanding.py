"""Understanding one customer message: intent with calibrated confidence, entities and sentiment.

One embedding per message is computed here and reused by retrieval, so the text is embedded once per
turn. :meth:`Understander.understand` is blocking CPU work; the router runs it in a worker thread so
the event loop keeps serving webhooks and sockets.

What a turn costs must not grow without bound with the message: the embedding reads the first
:data:`MODEL_TOKENS` word pieces (about 45 words: where support requests say what they want; the
model's cost grows with the square of its input), the intent classifier's TF-IDF half and the
retrieval query the first :data:`MODEL_CHARS` characters; entities and sentiment read the whole
(routed) text in linear time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bot.embeddings import Embedder
from bot.entities import Entities, extract_entities
from bot.intent_model import IntentModel
from bot.sentiment import Sentiment

MODEL_CHARS = 512
"""Characters of a message the intent classifier and the retrieval query read."""
MODEL_TOKENS = 64
"""Word pieces of a message the embedding reads (its own limit is 256: ~60 ms; 64: ~4x a short
message's cost)."""


def model_view(text: str) -> str:
    """The part of ``text`` the models read: its first :data:`MODEL_CHARS` characters."""
    return text[:MODEL_CHARS]


@dataclass(frozen=True)
class Understanding:
    """What the bot understood of one message.

    ``confidence`` is the calibrated probability of ``intent`` in [0, 1]; ``alternatives`` the top
    (intent, probability) pairs, descending; ``sentiment`` the VADER compound score in [-1, 1];
    ``embedding`` the (384,) float32 L2-normalised sentence embedding. ``out_of_scope`` and
    ``oos_score`` come from the intent model (:class:`bot.intent_model.IntentPrediction`): the
    predicted intent is ``out_of_scope``, or its out-of-scope score (low confidence and far from
    every in-scope training example, combined) is above the model's threshold.
    """

    intent: str
    confidence: float
    alternatives: tuple[tuple[str, float], ...]
    entities: Entities
    sentiment: float
    embedding: np.ndarray
    out_of_scope: bool = False
    oos_score: float = 0.0


class Understander:
    """Runs the local models over one message. ``calls`` counts messages understood."""

    def __init__(self, embedder: Embedder, intent_model: IntentModel, sentiment: Sentiment) -> None:
        self.embedder = embedder
        self.intent_model = intent_model
        self.sentiment = sentiment
        self.calls = 0
        embedder.embed(["warm up"], max_tokens=MODEL_TOKENS)  # builds that tokenizer now, not in a turn

    def understand(self, text: str) -> Understanding:
        self.calls += 1
        view = model_view(text)
        embedding = self.embedder.embed([view], max_tokens=MODEL_TOKENS)[0]
        prediction = self.intent_model.predict(view, embedding=embedding)
        return Understanding(
            intent=prediction.intent,
            confidence=float(prediction.confidence),
            alternatives=tuple(prediction.alternatives),
            entities=extract_entities(text),
            sentiment=self.sentiment.compound(text),
            embedding=embedding,
            out_of_scope=prediction.out_of_scope,
            oos_score=prediction.oos_score,
        )

    @property
    def model_ids(self) -> dict[str, str]:
        """Model identifiers recorded on every turn: embedding model and intent model versions."""
        return {"embedding": self.embedder.model_id, "intent": self.intent_model.version}
