"""Intent classifier: which intent a customer message is, and whether it is out of scope.

Model (see ``shared/docs/stack-notes.md``): two multinomial logistic regressions, one on the MiniLM
sentence embedding (:mod:`bot.embeddings`) and one on TF-IDF word (1-2) + character (2-5, within word
boundaries) n-grams, pooled log-linearly (``p ~ p_emb^w * p_tfidf^(1-w)``, ``w`` chosen on
cross-validated predictions), then temperature scaling fitted on the same 5-fold cross-validated
predictions so that ``confidence`` is a calibrated probability. Out of scope is told two ways: an
``out_of_scope`` class when the training data has one, and :attr:`IntentPrediction.oos_score`, which
combines the *simple average* of the two halves' probabilities (each softened by
``OOS_PART_TEMPERATURE``: where the halves disagree the average's top probability drops) with the
density of the training data around the message (cosine to the nearest in-scope training example)
as ``1 - mean_p * (1 - density)^OOS_DENSITY_WEIGHT``, with a flag threshold fitted on
cross-validated in-scope predictions. The density only softens the score; it never vetoes a confident
answer (as a veto it cost 1-2 points of in-scope accuracy). Measured against averaging a TF-IDF and an
embedding logistic regression on Bitext with held-out intents: ``bench/oos_bench.py``.

Two ways to train: from ``config/intents.yaml`` (:meth:`IntentModel.train`; about 1,000 sentences, a few
seconds on 2 cores, so the server trains at first start and caches the result under
``DATA_DIR/models/<version>``), or from a team's own labelled rows (:meth:`IntentModel.train_examples`,
driven by ``helpline train``, see :mod:`bot.training`).

Why numpy and not joblib: scikit-learn is used to *fit*; the saved model is plain arrays
(``weights.npz``, loaded with ``allow_pickle=False``) plus ``meta.json`` (labels, vocabularies,
temperature, pooling weight, out-of-scope threshold, tiers), and inference is a few lines of numpy
here. Loading a model directory therefore cannot execute code, which matters because
``HELPLINE_INTENT_MODEL_DIR`` may point anywhere, and a saved model keeps working across scikit-learn
upgrades.

Must not: decide what to do with an intent (that is the router's job), read settings, or block the
event loop (``predict`` embeds text when no embedding is passed: call it in a thread).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bot.embeddings import Embedder
from bot.tfidf import Tfidf

TIERS = ("deterministic", "retrieval", "reasoning", "human")
MIN_EXAMPLES = 15
DEFAULT_TIER = "retrieval"
"""Tier of a trained label that neither ``--tiers`` nor the intents file gives one: answer it from the
knowledge base (the router still hands off when nothing there is relevant enough)."""
TRAINING_CODE_VERSION = "intent-train-4"
"""Bump when training or inference changes in a way that must invalidate saved models."""
MODEL_FORMAT = 4
"""``meta.json`` format: 1 = arithmetic mean of the two models, no density; 2 = density veto
(``oos_score`` = density, float64 TF-IDF weights); 3 = ``oos_score`` from the calibrated confidence
and the density (float16 weights, pruned vocabularies); 4 = this module (``oos_score`` from the
averaged halves and the density). Older formats still load and keep their own out-of-scope rule."""

OUT_OF_SCOPE = "out_of_scope"
"""The intent name of "not something this bot handles" (``config/intents.yaml`` routes it to a person)."""
OOS_LABELS = ("out_of_scope", "oos")
"""Label spellings (case ignored) that training data may use for out of scope; stored as OUT_OF_SCOPE."""

# Hyperparameters: set by hand, not searched (C in 2..32 changes little); never tuned on Bitext test.
EMBEDDING_C = 8.0
TFIDF_C = 10.0
CV_FOLDS = 5
"""Cross-validation folds; a label with fewer rows is cross-validated in as many folds as it has
rows (its other folds never saw it: its held-out figures are pessimistic)."""
MIN_DF = 2
"""TF-IDF terms must occur in at least this many training texts (hapax n-grams are mostly noise and
were 60-70% of the vocabulary)."""
MAX_WORD_FEATURES = 12_000
MAX_CHAR_FEATURES = 24_000
"""Vocabulary caps (most frequent terms kept): the TF-IDF weights are features x labels, and L-BFGS
keeps about 25 copies of them while fitting, so these bound training memory and model size."""
TRAIN_JOBS = 2
"""Fits run in parallel threads (the 5 cross-validation fits and the final one are independent)."""
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
EMBEDDING_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)
"""Candidate weights ``w`` of the embedding model in the pooling; the one with the fewest
cross-validated errors wins (ties: the one nearest 0.5)."""
DENSITY_K = 1
"""Neighbours averaged by the density score: 1 = the nearest training example (stack-notes method)."""
DENSITY_QUANTILE = 0.99
"""Format 2 only: its density threshold kept this share of cross-validated in-scope rows in scope."""
OOS_DENSITY_WEIGHT = 0.25
"""Exponent of ``(1 - density)`` in the out-of-scope score (0 = averaged probability alone). Small on
purpose: on Bitext with held-out intents a weight of 1 lost out-of-scope recall at 99% in-scope
accuracy, while far-off messages (weather, jokes) are caught either way (bench/oos_bench.py)."""
OOS_PART_TEMPERATURE = 2.0
"""Each half's probabilities are softened by this temperature before the two are averaged for the
out-of-scope score (the halves are fitted with weak regularisation, so their probabilities are
sharper than a default logistic regression's; 1.5-2 did best on Bitext, 3 was worse,
bench/oos_bench.py). Only the out-of-scope score uses it; ``confidence`` stays the calibrated pooled
probability."""
OOS_QUANTILE = 0.995
"""The ``out_of_scope`` flag threshold keeps this share of the correctly predicted cross-validated
in-scope rows in scope (so the flag costs at most 0.5% of right answers before any other threshold)."""
OOS_RULES = ("averaged", "combined", "density")
"""What ``oos_score`` is, by model format (4, 3, 1-2): see :class:`IntentPrediction`."""
_DENSITY_CHUNK = 512  # query rows per similarity block: bounds memory to chunk x training rows

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_FIELDS = {"tier", "description", "examples", "reply", "handler", "slots"}


# ------------------------------------------------------------------------------------- intents file
@dataclass(frozen=True)
class IntentSpec:
    """One intent from ``intents.yaml``.

    ``reply``: canned answer (deterministic small talk). ``handler``: name of a deterministic
    handler (``order_status``, ``refund_status``). ``slots``: values that handler needs.
    """

    name: str
    tier: str
    description: str
    examples: tuple[str, ...]
    reply: str | None = None
    handler: str | None = None
    slots: tuple[str, ...] = ()


class IntentConfigError(ValueError):
    """``intents.yaml`` is invalid; the message names the file, the intent and the field."""


def _normalise_example(text: str) -> str:
    return " ".join(text.casefold().split())


def load_intents(path: Path, *, min_examples: int = MIN_EXAMPLES) -> dict[str, IntentSpec]:
    """Read and validate an intents file (format: see the header of ``config/intents.yaml``).

    ``min_examples``: examples each intent needs. The default (15) applies when the file trains the
    model (:func:`load_or_train`); pass 0 when a model trained elsewhere (``helpline train``,
    ``HELPLINE_INTENT_MODEL_DIR``) does the classifying and the file only gives tiers, replies and
    handlers: then ``examples`` may be missing or short.

    Returns:
        intent name -> IntentSpec, in file order.
    Raises:
        IntentConfigError: unreadable YAML, unknown or missing field, tier not in ``TIERS``, fewer than
            ``min_examples`` examples, an example repeated (case and spacing ignored) within or across intents, a
            deterministic intent without exactly one of reply/handler, or reply/handler on another
            tier. The message names the intent and the field.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise IntentConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("intents"), dict) or not data["intents"]:
        raise IntentConfigError(f"{path}: expected a top-level mapping 'intents: {{name: {{...}}}}'")

    specs: dict[str, IntentSpec] = {}
    seen: dict[str, str] = {}  # normalised example -> intent that has it
    for name, body in data["intents"].items():
        where = f"{path}: intent {name!r}"

        def fail(field: str, why: str, where: str = where) -> IntentConfigError:
            return IntentConfigError(f"{where}: field '{field}': {why}")

        if not isinstance(name, str) or not _NAME.match(name):
            raise IntentConfigError(f"{where}: the name must match {_NAME.pattern}")
        if not isinstance(body, dict):
            raise IntentConfigError(f"{where}: expected a mapping of fields")
        unknown = sorted(set(map(str, body)) - _FIELDS)
        if unknown:
            raise fail(unknown[0], f"unknown field (allowed: {', '.join(sorted(_FIELDS))})")

        tier = body.get("tier")
        if tier is None:
            raise fail("tier", f"missing (one of {', '.join(TIERS)})")
        if tier not in TIERS:
            raise fail("tier", f"unknown tier {tier!r} (one of {', '.join(TIERS)})")
        description = body.get("description")
        if not isinstance(description, str) or not description.strip():
            raise fail("description", "missing or empty")

        examples = body.get("examples", [] if min_examples == 0 else None)
        if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
            raise fail("examples", "must be a list of strings")
        examples = [e.strip() for e in examples]
        if any(not e for e in examples):
            raise fail("examples", "empty example")
        if len(examples) < min_examples:
            raise fail("examples", f"{len(examples)} examples, at least {min_examples} needed")
        for example in examples:
            key = _normalise_example(example)
            if key in seen:
                other = seen[key]
                where_else = "twice in this intent" if other == name else f"also in intent {other!r}"
                raise fail("examples", f"duplicate example {example!r} ({where_else})")
            seen[key] = name

        reply, handler = body.get("reply"), body.get("handler")
        for field, value in (("reply", reply), ("handler", handler)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise fail(field, "must be a non-empty string")
        if tier == "deterministic":
            if (reply is None) == (handler is None):
                raise fail("reply", "a deterministic intent needs exactly one of 'reply' or 'handler'")
        else:
            if reply is not None:
                raise fail("reply", f"only deterministic intents have a canned reply (tier is {tier})")
            if handler is not None:
                raise fail("handler", f"only deterministic intents have a handler (tier is {tier})")
        if handler is not None and not _NAME.match(handler):
            raise fail("handler", f"{handler!r} is not a handler name")

        slots = body.get("slots", [])
        if not isinstance(slots, list) or not all(isinstance(s, str) and _NAME.match(s) for s in slots):
            raise fail("slots", "must be a list of slot names like order_id")
        if slots and handler is None:
            raise fail("slots", "slots are only filled for intents with a handler")

        specs[name] = IntentSpec(
            name=name,
            tier=tier,
            description=description.strip(),
            examples=tuple(examples),
            reply=reply,
            handler=handler,
            slots=tuple(slots),
        )
    if min_examples and len(specs) < 2:
        raise IntentConfigError(f"{path}: at least two intents are needed to train a classifier")
    return specs


def model_version(intents_text: str | bytes, embedder_model_id: str) -> str:
    """``"intent-"`` + 12 hex of sha256 over (intents file content, embedder id, training code version).

    Any edit to the intents file, a different embedding model or new training code gives a new
    version, hence a new model directory.
    """
    raw = intents_text.encode("utf-8") if isinstance(intents_text, str) else intents_text
    digest = hashlib.sha256()
    for part in (raw, embedder_model_id.encode(), TRAINING_CODE_VERSION.encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return "intent-" + digest.hexdigest()[:12]


def _specs_text(specs: Mapping[str, IntentSpec]) -> str:
    rows = [[s.name, s.tier, list(s.examples), s.reply, s.handler, list(s.slots)] for s in specs.values()]
    return json.dumps(rows, ensure_ascii=False)


# ------------------------------------------------------------------------------------- features
_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"[a-z0-9]+")


def _preprocess(text: str) -> str:
    # Digit runs become "0": order numbers, amounts and dates carry no intent by their value.
    text = unicodedata.normalize("NFKC", text).casefold()
    return _DIGITS.sub("0", text)


def word_ngrams(text: str) -> list[str]:
    """Word uni- and bigrams of the pre-processed text (shared by training and inference)."""
    tokens = _WORD.findall(_preprocess(text))
    grams = list(tokens)
    grams += [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
    return grams


def char_ngrams(text: str) -> list[str]:
    """Character 2-5-grams inside ``" word "`` windows (like scikit-learn's ``char_wb``)."""
    grams: list[str] = []
    low, high = CHAR_NGRAMS
    for word in _preprocess(text).split():
        padded = f" {word} "
        for n in range(low, high + 1):
            if n > len(padded):
                break
            grams += [padded[i : i + n] for i in range(len(padded) - n + 1)]
    return grams


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class IntentPrediction:
    """``confidence``: calibrated probability of ``intent`` (0..1). ``alternatives``: the top 3
    (intent, probability) pairs, descending; the first is ``(intent, confidence)``.

    ``oos_score`` (0..1, higher = less like anything trained): ``1 - p * (1 -
    density)^OOS_DENSITY_WEIGHT``, where ``p`` is the highest in-scope probability of the simple
    average of the two halves (embedding and TF-IDF, each softened by ``OOS_PART_TEMPERATURE``; not
    the calibrated ``confidence``) and density is ``1 - cosine`` between the message's embedding and
    its nearest in-scope training example (0 = a training example, about 0.2-0.5 for paraphrases,
    0.6-1.0 for unrelated text). A prediction both halves are sure of keeps a low score however far
    it is from the training rows (p 0.9998 at density 0.6 scores 0.20). Models of format 3 use the
    calibrated confidence as ``p``, format 2 gives the density alone, format 1 gives 0.0. ``out_of_scope``: the predicted intent is :data:`OUT_OF_SCOPE`, or
    ``oos_score`` is above the model's ``oos_threshold``. ``intent`` is still the most likely
    trained intent either way.
    """

    intent: str
    confidence: float
    alternatives: tuple[tuple[str, float], ...]
    oos_score: float = 0.0
    out_of_scope: bool = False


def canonical_label(label: str) -> str:
    """``label`` stripped; any spelling in :data:`OOS_LABELS` (case ignored) becomes OUT_OF_SCOPE."""
    label = label.strip()
    return OUT_OF_SCOPE if label.casefold() in OOS_LABELS else label


@dataclass(frozen=True)
class HeldOut:
    """Cross-validated predictions made while training: every training row predicted once by a
    model fitted without it (``CV_FOLDS`` stratified folds).

    ``y``: true label index per row, shape ``(n,)``; ``probabilities``: calibrated, ``(n, labels)``;
    ``oos_scores``: the out-of-scope scores (density against the other folds' in-scope
    rows), ``(n,)``; ``seen``: the row's label was in its fold's training rows (False only for labels
    with fewer rows than ``CV_FOLDS``), ``(n,)``. Not saved.
    """

    y: np.ndarray
    probabilities: np.ndarray
    oos_scores: np.ndarray
    seen: np.ndarray


class IntentModelError(RuntimeError):
    """A saved model directory is missing, incomplete, or was made with another embedding model."""


class IntentModel:
    """Trained classifier. Build with :meth:`train`, :meth:`train_examples`, :meth:`load` or
    :func:`load_or_train`.

    Attributes:
        version: ``"intent-<12 hex>"`` (see :func:`model_version`).
        labels: intent names, in the order of the probability columns.
        temperature: the fitted calibration temperature (>1 softens, <1 sharpens).
        emb_weight: weight ``w`` of the embedding model in the pooling (0..1).
        oos_threshold: ``oos_score`` above which a prediction is ``out_of_scope`` (``inf``: never).
        oos_rule: what ``oos_score`` is: ``"averaged"`` (format 4), ``"combined"`` (format 3,
            calibrated confidence and density) or ``"density"`` (formats 1-2).
        tiers: label -> tier saved with the model (``helpline train --tiers``; empty for models
            trained from ``intents.yaml``); see :func:`routing_intents`.
        source: ``"trained"`` or ``"loaded"``: how this instance came to be (tests use it).
        held_out: the cross-validated predictions of training (None on a loaded model).
    Thread-safe: prediction only reads arrays.
    """

    def __init__(
        self,
        *,
        version: str,
        labels: Sequence[str],
        embedder: Embedder,
        emb_coef: np.ndarray,
        emb_intercept: np.ndarray,
        word: Tfidf,
        char: Tfidf,
        tfidf_coef: np.ndarray,
        tfidf_intercept: np.ndarray,
        temperature: float,
        source: str,
        info: Mapping[str, Any] | None = None,
        emb_weight: float = 0.5,
        pooling: str = "log-linear",
        density: np.ndarray | None = None,
        oos_threshold: float = math.inf,
        oos_rule: str = "averaged",
        tiers: Mapping[str, str] | None = None,
        held_out: HeldOut | None = None,
    ) -> None:
        self.version = version
        self.labels = tuple(labels)
        self._embedder = embedder
        self._emb_coef = np.ascontiguousarray(emb_coef, dtype=np.float32)
        self._emb_intercept = emb_intercept.astype(np.float32)
        self._word = word
        self._char = char
        # Column slices per text are the hot path: store features x classes.
        self._tfidf_coef_t = np.ascontiguousarray(np.asarray(tfidf_coef).T, dtype=np.float32)
        self._tfidf_intercept = tfidf_intercept.astype(np.float64)
        self.temperature = float(temperature)
        self.emb_weight = float(emb_weight)
        self.pooling = pooling
        # Saved as float16 (half the disk); rounded the same way here so a trained model and its
        # reloaded copy give identical scores.
        self._density = (
            None if density is None or not len(density)
            else np.ascontiguousarray(np.asarray(density, dtype=np.float16), dtype=np.float32)
        )
        self.oos_threshold = float(oos_threshold)
        if oos_rule not in OOS_RULES:
            raise ValueError(f"unknown oos_rule {oos_rule!r}")
        self.oos_rule = oos_rule
        self.tiers = dict(tiers or {})
        self.source = source
        self.info = dict(info or {})
        self.held_out = held_out

    # --- inference -------------------------------------------------------------------------------
    def _tfidf_logits(self, text: str) -> np.ndarray:
        wi, wv = self._word.row(text)
        ci, cv = self._char.row(text)
        logits = self._tfidf_intercept.copy()
        if len(wi):
            logits += wv @ self._tfidf_coef_t[wi].astype(np.float64)
        if len(ci):
            logits += cv @ self._tfidf_coef_t[len(self._word.terms) + ci].astype(np.float64)
        return logits

    def _rows(self, texts: Sequence[str], embeddings: np.ndarray | None) -> np.ndarray:
        if embeddings is None:
            embeddings = self._embedder.embed(list(texts))
        return np.asarray(embeddings, dtype=np.float32).reshape(len(texts), -1)

    def _log_parts(self, texts: Sequence[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embedding half, TF-IDF half) log-probabilities, each ``(len(texts), labels)``."""
        log_emb = _log_softmax((rows @ self._emb_coef.T + self._emb_intercept).astype(np.float64))
        tfidf_logits = np.zeros((len(texts), len(self.labels)))
        for i, text in enumerate(texts):
            tfidf_logits[i] = self._tfidf_logits(text)
        return log_emb, _log_softmax(tfidf_logits)

    def probabilities(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        """Calibrated class probabilities, shape ``(len(texts), len(labels))``, rows sum to 1.

        ``embeddings``: precomputed ``Embedder.embed(texts)`` rows (shape ``(n, 384)``); embedded
        here when None (blocking).
        """
        return self._scores(list(texts), self._rows(texts, embeddings))[0]

    def _scores(self, texts: list[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(calibrated probabilities ``(n, labels)``, oos scores ``(n,)``) of embedded texts."""
        log_emb, log_tfidf = self._log_parts(texts, rows)
        probs = _calibrate(_pool(log_emb, log_tfidf, self.emb_weight, self.pooling), self.temperature)
        density = self.density_scores(rows)
        if self.oos_rule == "density":
            return probs, density
        base = (_averaged_confidence(log_emb, log_tfidf, self.labels) if self.oos_rule == "averaged"
                else _in_scope_confidence(probs, self.labels))
        return probs, _combined_oos(base, density)

    def density_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Density scores, shape ``(n,)``: ``1 - cosine`` to the nearest in-scope training example.

        ``embeddings``: ``(n, 384)`` Embedder rows. All 0.0 when the model was saved without training
        embeddings (format 1). About 2 ms per message for 20,000 training rows.
        """
        rows = np.asarray(embeddings, dtype=np.float32).reshape(-1, self._emb_coef.shape[1])
        if self._density is None:
            return np.zeros(len(rows))
        return _density_scores(rows, self._density)

    def oos_scores(self, texts: Sequence[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        """:attr:`IntentPrediction.oos_score` of each text, shape ``(len(texts),)``; ``embeddings``
        as in :meth:`probabilities`."""
        return self._scores(list(texts), self._rows(texts, embeddings))[1]

    def _prediction(self, probs: np.ndarray, oos_score: float) -> IntentPrediction:
        top = np.argsort(-probs, kind="stable")[:3]
        alternatives = tuple((self.labels[i], float(probs[i])) for i in top)
        intent, confidence = alternatives[0]
        out = intent == OUT_OF_SCOPE or oos_score > self.oos_threshold
        return IntentPrediction(intent, confidence, alternatives, float(oos_score), bool(out))

    def predict(self, text: str, embedding: np.ndarray | None = None) -> IntentPrediction:
        """Classify one message. ``embedding``: its precomputed 384-d Embedder row (the router
        passes it so the text is embedded once); without it the text is embedded here (blocking).
        Cost beyond the embedding: well under 1 ms for the classifiers, plus the density score
        (about 0.1 ms per 1,000 training rows)."""
        return self.predict_batch([text], None if embedding is None else np.asarray(embedding).reshape(1, -1))[0]

    def predict_batch(
        self, texts: Sequence[str], embeddings: np.ndarray | None = None
    ) -> list[IntentPrediction]:
        """Classify many messages; ``embeddings`` shape ``(len(texts), 384)`` or None."""
        texts = list(texts)
        probs, oos = self._scores(texts, self._rows(texts, embeddings))
        return [self._prediction(p, s) for p, s in zip(probs, oos)]

    # --- training --------------------------------------------------------------------------------
    @classmethod
    def train(
        cls, specs: Mapping[str, IntentSpec], embedder: Embedder, *, version: str | None = None
    ) -> IntentModel:
        """Fit on the examples of ``specs`` (a few seconds on 2 cores for ~1,000 examples).

        ``version``: the model version to record; default: computed from the specs themselves
        (:func:`load_or_train` passes the one of the intents file).
        """
        texts = [e for s in specs.values() for e in s.examples]
        labels = [s.name for s in specs.values() for _ in s.examples]
        if version is None:
            version = model_version(_specs_text(specs), embedder.model_id)
        return cls.train_examples(texts, labels, embedder, version=version)

    @classmethod
    def train_examples(
        cls,
        texts: Sequence[str],
        labels: Sequence[str],
        embedder: Embedder,
        *,
        version: str,
        embeddings: np.ndarray | None = None,
        tiers: Mapping[str, str] | None = None,
        info: Mapping[str, Any] | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> IntentModel:
        """Fit on labelled texts: ``CV_FOLDS`` cross-validation fits (pooling weight, temperature,
        out-of-scope threshold, :attr:`held_out`) and one fit on every row, ``TRAIN_JOBS`` at a time.

        Args:
            texts: n customer messages (placeholders already filled).
            labels: n intent names, columns in order of first appearance; rows labelled
                :data:`OUT_OF_SCOPE` train that class and are left out of the density reference.
            embedder: the sentence embedder (its id is saved with the model).
            version: the model version to record (see :func:`model_version`).
            embeddings: ``Embedder.embed(texts)``, shape ``(n, 384)``; embedded here when None.
            tiers: label -> tier to save with the model.
            info: JSON-able facts to save in ``meta.json`` under ``info``.
            on_step: called with a short description after each of the ``CV_FOLDS + 1`` fits.
        Returns:
            the model, ``source="trained"``, with ``held_out`` set.
        Raises:
            ValueError: lengths differ, fewer than two labels, or fewer than ``CV_FOLDS`` rows in all.
                A label may have a single row (see ``CV_FOLDS``). Time and memory: see
                ``docs/intent-model.md`` (measured by ``bench/train_bench.py --scale``).
        """
        # Import the fitting libraries first: threadpool_limits only reaches BLAS copies already loaded.
        import scipy.optimize  # noqa: F401
        import sklearn.linear_model  # noqa: F401
        from threadpoolctl import threadpool_limits

        texts, labels = list(texts), list(labels)
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        names = tuple(dict.fromkeys(labels))
        if len(names) < 2:
            raise ValueError("at least two labels are needed to train a classifier")
        if len(texts) < CV_FOLDS:
            raise ValueError(f"{len(texts)} rows; at least {CV_FOLDS} are needed (one per cross-validation fold)")
        index = {name: i for i, name in enumerate(names)}
        y = np.array([index[label] for label in labels])
        if embeddings is None:
            embeddings = embedder.embed(texts)
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(texts), -1)
        # BLAS threads only spin on these small matrices (measured 100x slower on a busy 2-core box);
        # the parallelism is across fits instead (TRAIN_JOBS).
        with threadpool_limits(limits=1):
            return cls._train(names, texts, y, embeddings, embedder, version, tiers, info, on_step)

    @classmethod
    def _train(
        cls,
        names: tuple[str, ...],
        texts: list[str],
        y: np.ndarray,
        embeddings: np.ndarray,
        embedder: Embedder,
        version: str,
        tiers: Mapping[str, str] | None,
        info: Mapping[str, Any] | None,
        on_step: Callable[[str], None] | None,
    ) -> IntentModel:
        import warnings

        from joblib import Parallel, delayed
        from sklearn.model_selection import StratifiedKFold

        n, k = len(texts), len(names)
        in_scope = np.array([names[i] != OUT_OF_SCOPE for i in y])
        with warnings.catch_warnings():
            # Labels with fewer rows than folds are allowed (see CV_FOLDS); sklearn warns about them.
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=0).split(np.zeros(n), y))
        jobs = [(train_idx, f"cross-validation fold {i}/{CV_FOLDS}") for i, (train_idx, _) in enumerate(splits, 1)]
        jobs.append((np.arange(n), "final fit on all rows"))

        def run(train_idx: np.ndarray, step: str) -> _Fitted:
            fitted = _fit([texts[i] for i in train_idx], embeddings[train_idx], y[train_idx], k)
            if on_step is not None:
                on_step(step)
            return fitted

        fits = Parallel(n_jobs=min(TRAIN_JOBS, len(jobs)), prefer="threads")(delayed(run)(*job) for job in jobs)
        final = fits.pop()
        log_emb, log_tfidf, density = np.zeros((n, k)), np.zeros((n, k)), np.zeros(n)
        seen = np.ones(n, dtype=bool)
        for fitted, (train_idx, test_idx) in zip(fits, splits):
            log_emb[test_idx], log_tfidf[test_idx] = fitted.log_probabilities(
                [texts[i] for i in test_idx], embeddings[test_idx]
            )
            density[test_idx] = _density_scores(embeddings[test_idx], embeddings[train_idx[in_scope[train_idx]]])
            seen[test_idx] = np.isin(y[test_idx], y[train_idx])

        # Rows whose label their fold never saw say nothing about pooling or calibration.
        weight = _choose_weight(log_emb[seen], log_tfidf[seen], y[seen])
        pooled = _pool(log_emb, log_tfidf, weight, "log-linear")
        temperature = _fit_temperature(pooled[seen], y[seen])
        probabilities = _calibrate(pooled, temperature)
        oos = _combined_oos(_averaged_confidence(log_emb, log_tfidf, names), density)
        held_out = HeldOut(y=y, probabilities=probabilities, oos_scores=oos, seen=seen)
        right = in_scope & seen & (probabilities.argmax(axis=1) == y)
        threshold = float(np.quantile(oos[right], OOS_QUANTILE)) if right.any() else math.inf
        # One reference row per distinct in-scope text: duplicates add size, not density.
        distinct = list({texts[i]: i for i in range(n) if in_scope[i]}.values())
        cv_accuracy = float((held_out.probabilities.argmax(axis=1) == y).mean())
        return cls(
            version=version,
            labels=names,
            embedder=embedder,
            emb_coef=final.emb_coef,
            emb_intercept=final.emb_intercept,
            word=final.word,
            char=final.char,
            # Saved as float16: rounded here too, so this model and its reloaded copy agree exactly.
            tfidf_coef=final.tfidf_coef.astype(np.float16),
            tfidf_intercept=final.tfidf_intercept,
            temperature=temperature,
            source="trained",
            info={"examples": n, "cv_accuracy": round(cv_accuracy, 4), **dict(info or {})},
            emb_weight=weight,
            density=embeddings[sorted(distinct)],
            oos_threshold=threshold,
            oos_rule="averaged",
            tiers=tiers,
            held_out=held_out,
        )

    # --- persistence -----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write ``weights.npz`` (float arrays only) and ``meta.json`` into ``directory`` (created).

        Not atomic by itself; :func:`save_versioned` writes to a temporary folder and renames it.
        Size: 2 bytes per TF-IDF term per label (float16; at most ``MAX_WORD_FEATURES +
        MAX_CHAR_FEATURES`` terms) + 0.8 KB per distinct in-scope training text (its float16
        embedding) + the vocabularies in ``meta.json``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "emb_coef": self._emb_coef,
            "emb_intercept": self._emb_intercept,
            "tfidf_coef": self._tfidf_coef_t.T.astype(np.float16),
            "tfidf_intercept": self._tfidf_intercept,
            "word_idf": self._word.idf,
            "char_idf": self._char.idf,
        }
        if self._density is not None:
            arrays["density"] = self._density.astype(np.float16)
        np.savez(directory / "weights.npz", **arrays)
        meta = {
            "format": MODEL_FORMAT,
            "version": self.version,
            "embedder_model_id": self._embedder.model_id,
            "training_code_version": TRAINING_CODE_VERSION,
            "labels": list(self.labels),
            "temperature": self.temperature,
            "emb_weight": self.emb_weight,
            "pooling": self.pooling,
            "density_k": DENSITY_K,
            "oos_rule": self.oos_rule,
            "oos_density_weight": OOS_DENSITY_WEIGHT,
            "oos_part_temperature": OOS_PART_TEMPERATURE,
            # JSON has no infinity: null means "never out of scope by density".
            "oos_threshold": self.oos_threshold if math.isfinite(self.oos_threshold) else None,
            "tiers": self.tiers,
            "word_vocabulary": self._word.terms,
            "char_vocabulary": self._char.terms,
            "info": self.info,
        }
        (directory / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, embedder: Embedder) -> IntentModel:
        """Load a directory written by :meth:`save` (formats 1-4; older formats keep their own
        out-of-scope rule, see :data:`MODEL_FORMAT`). No pickle: nothing in it can run code.

        Raises:
            IntentModelError: files missing or unreadable, a format newer than this code, or the
                model was trained on vectors of another embedding model (``embedder.model_id``
                differs).
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            with np.load(directory / "weights.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise IntentModelError(f"intent model {directory} cannot be read: {exc}") from exc
        fmt = meta.get("format", 1)
        if fmt not in (1, 2, 3, MODEL_FORMAT):
            raise IntentModelError(
                f"intent model {directory} has format {fmt!r}; this Helpline reads formats 1 to "
                f"{MODEL_FORMAT}: upgrade Helpline or retrain the model"
            )
        if meta.get("embedder_model_id") != embedder.model_id:
            raise IntentModelError(
                f"intent model {directory} was trained with embedder {meta.get('embedder_model_id')!r}"
                f", not {embedder.model_id!r}: retrain it (delete the folder)"
            )
        threshold = meta.get("oos_threshold")
        return cls(
            version=meta["version"],
            labels=meta["labels"],
            embedder=embedder,
            emb_coef=arrays["emb_coef"],
            emb_intercept=arrays["emb_intercept"],
            word=Tfidf(meta["word_vocabulary"], arrays["word_idf"], word_ngrams),
            char=Tfidf(meta["char_vocabulary"], arrays["char_idf"], char_ngrams),
            tfidf_coef=arrays["tfidf_coef"],
            tfidf_intercept=arrays["tfidf_intercept"],
            temperature=meta["temperature"],
            source="loaded",
            info=meta.get("info"),
            # Format 1 averaged the two models' probabilities with equal weight.
            emb_weight=meta.get("emb_weight", 0.5),
            pooling=meta.get("pooling", "mean"),
            density=arrays.get("density"),
            oos_threshold=math.inf if threshold is None else float(threshold),
            oos_rule=(meta.get("oos_rule", "combined" if fmt == 3 else "averaged") if fmt >= 3 else "density"),
            tiers=meta.get("tiers"),
        )


@dataclass
class _Fitted:
    emb_coef: np.ndarray
    emb_intercept: np.ndarray
    word: Tfidf
    char: Tfidf
    tfidf_coef: np.ndarray
    tfidf_intercept: np.ndarray

    def log_probabilities(self, texts: Sequence[str], embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embedding model, TF-IDF model) log-probabilities, each ``(len(texts), classes)``."""
        from scipy.sparse import hstack

        log_emb = _log_softmax(embeddings.astype(np.float64) @ self.emb_coef.T + self.emb_intercept)
        x = hstack([self.word.matrix(texts), self.char.matrix(texts)]).tocsr()
        return log_emb, _log_softmax(np.asarray(x @ self.tfidf_coef.T) + self.tfidf_intercept)


def _full_coef(model: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    # A fold may miss a class entirely; give it weights that never win.
    coef = np.zeros((n_classes, model.coef_.shape[1]))
    intercept = np.full(n_classes, -1e3)
    if len(model.classes_) == 2:
        # Binary fits keep one row (logit of classes_[1] against classes_[0]): softmax([0, z]).
        coef[model.classes_[0]], intercept[model.classes_[0]] = 0.0, 0.0
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[model.classes_] = model.coef_
        intercept[model.classes_] = model.intercept_
    return coef, intercept


def _fit(texts: Sequence[str], embeddings: np.ndarray, y: np.ndarray, n_classes: int) -> _Fitted:
    from scipy.sparse import hstack
    from sklearn.linear_model import LogisticRegression

    emb_lr = LogisticRegression(C=EMBEDDING_C, max_iter=3000)
    emb_lr.fit(embeddings, y)
    # Tiny data (a few rows per label) keeps every term: there, a term seen once may be all a label has.
    min_df = MIN_DF if len(texts) >= 50 * MIN_DF else 1
    word = Tfidf.fit(texts, word_ngrams, min_df=min_df, max_features=MAX_WORD_FEATURES)
    char = Tfidf.fit(texts, char_ngrams, min_df=min_df, max_features=MAX_CHAR_FEATURES)
    x = hstack([word.matrix(texts), char.matrix(texts)]).tocsr()
    tfidf_lr = LogisticRegression(C=TFIDF_C, max_iter=3000)
    tfidf_lr.fit(x, y)
    emb_coef, emb_intercept = _full_coef(emb_lr, n_classes)
    tfidf_coef, tfidf_intercept = _full_coef(tfidf_lr, n_classes)
    return _Fitted(emb_coef, emb_intercept, word, char, tfidf_coef, tfidf_intercept)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _pool(log_emb: np.ndarray, log_tfidf: np.ndarray, weight: float, pooling: str) -> np.ndarray:
    """Pooled probabilities: ``softmax(w log p_emb + (1-w) log p_tfidf)`` ("log-linear"), or the
    weighted mean of the probabilities ("mean", models of format 1)."""
    if pooling == "mean":
        return weight * np.exp(log_emb) + (1.0 - weight) * np.exp(log_tfidf)
    return _softmax(weight * log_emb + (1.0 - weight) * log_tfidf)


def _choose_weight(log_emb: np.ndarray, log_tfidf: np.ndarray, y: np.ndarray) -> float:
    """The weight in EMBEDDING_WEIGHTS with the fewest errors on held-out rows (ties: nearest 0.5)."""

    def errors(w: float) -> int:
        return int(((w * log_emb + (1.0 - w) * log_tfidf).argmax(axis=1) != y).sum())

    return min(EMBEDDING_WEIGHTS, key=lambda w: (errors(w), abs(w - 0.5)))


def _density_scores(queries: np.ndarray, reference: np.ndarray, k: int = DENSITY_K) -> np.ndarray:
    """``1 - mean cosine`` of each query row's ``k`` most similar reference rows, shape ``(n,)``.

    Rows are L2-normalised embeddings, so cosine is the dot product. No reference rows: all 1.0.
    """
    out = np.ones(len(queries))
    if not len(reference):
        return out
    k = min(k, len(reference))
    for start in range(0, len(queries), _DENSITY_CHUNK):
        sims = queries[start : start + _DENSITY_CHUNK] @ reference.T
        top = sims.max(axis=1) if k == 1 else np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
        out[start : start + len(sims)] = 1.0 - top
    return out


def _in_scope_confidence(probabilities: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Highest probability of an in-scope label per row, shape ``(n,)`` (the out-of-scope class's own
    probability is what makes a message out of scope, not what keeps it in)."""
    keep = [i for i, label in enumerate(labels) if label != OUT_OF_SCOPE]
    return probabilities[:, keep].max(axis=1) if keep else np.zeros(len(probabilities))


def _averaged_confidence(log_emb: np.ndarray, log_tfidf: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Highest in-scope probability of the simple average of the two halves, each softened by
    ``OOS_PART_TEMPERATURE``; inputs ``(n, labels)`` log-probabilities, output ``(n,)``."""
    t = OOS_PART_TEMPERATURE
    return _in_scope_confidence((_softmax(log_emb / t) + _softmax(log_tfidf / t)) / 2.0, labels)


def _combined_oos(confidence: np.ndarray, density: np.ndarray) -> np.ndarray:
    """``1 - confidence * (1 - density)^OOS_DENSITY_WEIGHT``, shape of the inputs (see
    :attr:`IntentPrediction.oos_score`)."""
    return 1.0 - confidence * np.clip(1.0 - density, 0.0, 1.0) ** OOS_DENSITY_WEIGHT


def _calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    return _softmax(np.log(np.clip(probs, 1e-12, None)) / temperature)


def _fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood of out-of-fold probabilities."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = _calibrate(probs, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(result.x))


# ------------------------------------------------------------------------------------- routing
def routing_intents(intents: Mapping[str, IntentSpec], model: IntentModel) -> dict[str, IntentSpec]:
    """The intents the router should route by: ``intents`` (from ``intents.yaml``) with the tiers
    saved in ``model`` (``helpline train --tiers``) applied.

    A label of the model's tiers that ``intents`` lacks gets a spec with that tier and no examples;
    one that ``intents`` has with another tier gets that tier (a deterministic intent moved to
    another tier loses its reply and handler). Deterministic tiers need a reply or handler, which a
    tiers file cannot give, so they only ever confirm an intent ``intents`` already has as
    deterministic (``helpline train`` refuses the others). A trained label in neither (a model saved
    before ``helpline train`` recorded default tiers) gets :data:`DEFAULT_TIER`: answered from the
    knowledge base, not sent to a person.
    """
    merged = dict(intents)
    for label, tier in model.tiers.items():
        spec = merged.get(label)
        if tier == "deterministic" or (spec is not None and spec.tier == tier):
            continue
        merged[label] = IntentSpec(
            name=label,
            tier=tier,
            description=spec.description if spec else f"trained label {label!r} (tier from the tiers file)",
            examples=spec.examples if spec else (),
        )
    for label in model.labels:
        if label not in merged and label != OUT_OF_SCOPE:  # out_of_scope is the router's own case
            merged[label] = IntentSpec(name=label, tier=DEFAULT_TIER, examples=(),
                                       description=f"trained label {label!r} (default tier)")
    return merged


# ------------------------------------------------------------------------------------- start-up
def save_versioned(model: IntentModel, models_dir: Path) -> Path:
    """Save ``model`` as ``models_dir/<model.version>`` atomically (temporary folder, then rename).

    Returns the directory. When it exists already (same version: same data and code) it is kept as
    it is; a concurrent saver that wins the race is reused.
    """
    models_dir = Path(models_dir)
    target = models_dir / model.version
    if (target / "meta.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.version}.", dir=models_dir))
    try:
        model.save(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
            # Another process saved the same version first; theirs is identical in content.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def train_and_save(intents_file: Path, models_dir: Path) -> str:
    """Train the model of ``intents_file`` with the default embedder and save it under
    ``models_dir``; returns its version. For a separate process (:func:`load_or_train` with
    ``train_elsewhere``): it loads its own embedder. Raises ``IntentConfigError``."""
    from bot.embeddings import Embedder as _Embedder

    embedder = _Embedder.load()
    version = model_version(Path(intents_file).read_bytes(), embedder.model_id)
    model = IntentModel.train(load_intents(Path(intents_file)), embedder, version=version)
    save_versioned(model, Path(models_dir))
    return version


def load_or_train(
    intents_file: Path, models_dir: Path, embedder: Embedder, model_dir: Path | None = None,
    *, train_elsewhere: bool = False,
) -> IntentModel:
    """The model the server uses.

    ``model_dir`` given (``HELPLINE_INTENT_MODEL_DIR``, e.g. a ``helpline train`` output): load
    exactly that (IntentModelError if missing). Otherwise the version of ``intents_file`` (see
    :func:`model_version`) names ``models_dir/<version>``: load it if present, else validate the
    file, train (a few seconds) and save there atomically (:func:`save_versioned`).

    ``train_elsewhere``: train in a child process (:func:`train_and_save`) and load what it saved, so
    a long-running server never holds training's memory (its peak is over 1 GB; freed memory is
    rarely returned to the system).

    Raises:
        IntentConfigError: the intents file is invalid (only checked when training).
        IntentModelError: ``model_dir`` missing or unreadable, or trained with another embedder.
    """
    if model_dir is not None:
        if not (Path(model_dir) / "meta.json").is_file():
            raise IntentModelError(f"intent model directory {model_dir} has no meta.json")
        return IntentModel.load(Path(model_dir), embedder)

    intents_file = Path(intents_file)
    version = model_version(intents_file.read_bytes(), embedder.model_id)
    target = Path(models_dir) / version
    if (target / "meta.json").is_file():
        return IntentModel.load(target, embedder)

    if train_elsewhere:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            trained = pool.submit(train_and_save, intents_file, Path(models_dir)).result()
        if trained != version:  # the file changed while it trained: load what was trained
            target = Path(models_dir) / trained
        return IntentModel.load(target, embedder)
    specs = load_intents(intents_file)
    model = IntentModel.train(specs, embedder, version=version)
    save_versioned(model, Path(models_dir))
    return model
