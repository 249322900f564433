"""bot.intent_model: intents.yaml validation, training, calibrated prediction, persistence."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from bot.embeddings import Embedder
from bot.intent_model import (
    EMBEDDING_WEIGHTS,
    OUT_OF_SCOPE,
    TIERS,
    IntentConfigError,
    IntentModel,
    MIN_DF,
    IntentModelError,
    char_ngrams,
    load_intents,
    load_or_train,
    model_version,
    word_ngrams,
)
from config.settings import CONFIG_DIR

INTENTS_FILE = CONFIG_DIR / "intents.yaml"
BITEXT_INTENTS = (
    "cancel_order change_order change_shipping_address check_cancellation_fee check_invoice "
    "check_payment_methods check_refund_policy complaint contact_customer_service contact_human_agent "
    "create_account delete_account delivery_options delivery_period edit_account get_invoice get_refund "
    "newsletter_subscription payment_issue place_order recover_password registration_problems review "
    "set_up_shipping_address switch_account track_order track_refund"
).split()

# Written for this test; none of them is in intents.yaml (checked below).
UNSEEN = [
    ("hey, good morning to you", "greeting"),
    ("cheers for sorting that out", "thanks"),
    ("alright, that's all from me. bye now", "goodbye"),
    ("any idea where parcel #W4182736 is right now?", "track_order"),
    ("I sent the boots back last week, when does my refund of $79.00 come through?", "track_refund"),
    ("please cancel order 88412, I no longer want it", "cancel_order"),
    ("I'd like to add a phone case to my order #W3300917 before it ships", "change_order"),
    ("I typed the wrong street when I checked out, can the delivery address still be changed?",
     "change_shipping_address"),
    ("how many days does shipping to Denver normally take", "delivery_period"),
    ("do you ship to New Zealand", "delivery_options"),
    ("what's your policy on refunds for worn shoes?", "check_refund_policy"),
    ("my card got declined three times at checkout", "payment_issue"),
    ("can I pay using Apple Pay or only cards", "check_payment_methods"),
    ("could you email me a PDF copy of invoice #55821", "get_invoice"),
    ("I forgot the password for anna.k@mail.com and the reset mail never comes", "recover_password"),
    ("I'd like to upgrade from standard to the gold plan", "switch_account"),
    ("I want to unsubscribe from the weekly promo emails", "newsletter_subscription"),
    ("please put me through to a real human, the bot isn't helping", "contact_human_agent"),
    ("I will be contacting my lawyer about this", "legal_threat"),
    ("why has my account been suspended? I can't log in", "account_suspension"),
    ("I've asked my bank to reverse your charge", "chargeback"),
    ("what's the weather going to be like in Paris this weekend", "out_of_scope"),
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def model(embedder: Embedder, models_dir: Path) -> IntentModel:
    return load_or_train(INTENTS_FILE, models_dir, embedder)


# ------------------------------------------------------------------------------ the shipped file
def test_shipped_intents_cover_bitext_and_our_extras() -> None:
    specs = load_intents(INTENTS_FILE)
    assert set(BITEXT_INTENTS) <= set(specs)
    extras = {"greeting", "thanks", "goodbye", "legal_threat", "account_suspension", "chargeback", "out_of_scope"}
    assert set(specs) == set(BITEXT_INTENTS) | extras
    assert all(len(s.examples) >= 25 for s in specs.values())
    for name in ("greeting", "thanks", "goodbye"):
        assert specs[name].tier == "deterministic" and specs[name].reply
    for name in ("track_order", "track_refund"):
        assert specs[name].tier == "deterministic" and specs[name].slots == ("order_id",)
    assert specs["track_order"].handler == "order_status"
    assert specs["track_refund"].handler == "refund_status"
    for name in ("contact_human_agent", "complaint", "legal_threat", "account_suspension", "chargeback",
                 "out_of_scope"):
        assert specs[name].tier == "human", name
    retrieval = set(BITEXT_INTENTS) - {"track_order", "track_refund", "contact_human_agent", "complaint"}
    assert {specs[n].tier for n in retrieval} == {"retrieval"}


def _write(tmp_path: Path, intents: dict) -> Path:
    path = tmp_path / "intents.yaml"
    path.write_text(yaml.safe_dump({"intents": intents}), encoding="utf-8")
    return path


def _examples(prefix: str, n: int = 15) -> list[str]:
    return [f"{prefix} example {i}" for i in range(n)]


def _valid() -> dict:
    return {
        "hello": {"tier": "deterministic", "description": "hi", "reply": "Hi!", "examples": _examples("hi")},
        "refunds": {"tier": "retrieval", "description": "refund", "examples": _examples("refund")},
    }


def test_minimal_valid_file_loads(tmp_path: Path) -> None:
    specs = load_intents(_write(tmp_path, _valid()))
    assert list(specs) == ["hello", "refunds"]
    assert specs["hello"].reply == "Hi!" and specs["refunds"].reply is None
    assert isinstance(specs["refunds"].examples, tuple)


@pytest.mark.parametrize(
    ("mutate", "intent", "field", "detail"),
    [
        (lambda d: d["refunds"].pop("tier"), "refunds", "tier", "missing"),
        (lambda d: d["refunds"].update(tier="robot"), "refunds", "tier", "unknown tier 'robot'"),
        (lambda d: d["refunds"].update(examples=_examples("refund", 14)), "refunds", "examples",
         "14 examples, at least 15"),
        (lambda d: d["refunds"]["examples"].append("HI  example 3"), "refunds", "examples",
         "also in intent 'hello'"),
        (lambda d: d["refunds"]["examples"].append("refund example 0"), "refunds", "examples", "twice"),
        (lambda d: d["refunds"].update(reply="x"), "refunds", "reply", "only deterministic"),
        (lambda d: d["refunds"].update(handler="refund_status"), "refunds", "handler", "only deterministic"),
        (lambda d: d["hello"].pop("reply"), "hello", "reply", "exactly one of 'reply' or 'handler'"),
        (lambda d: d["hello"].update(handler="order_status"), "hello", "reply", "exactly one"),
        (lambda d: d["refunds"].update(colour="red"), "refunds", "colour", "unknown field"),
        (lambda d: d["refunds"].update(slots=["order_id"]), "refunds", "slots", "handler"),
        (lambda d: d["refunds"].pop("description"), "refunds", "description", "missing"),
    ],
)
def test_validation_errors_name_the_intent_and_the_field(
    tmp_path: Path, mutate, intent: str, field: str, detail: str
) -> None:
    data = _valid()
    mutate(data)
    with pytest.raises(IntentConfigError) as info:
        load_intents(_write(tmp_path, data))
    message = str(info.value)
    assert f"intent {intent!r}" in message
    assert f"field '{field}'" in message
    assert detail in message


def test_broken_yaml_and_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "intents.yaml"
    path.write_text("intents:\n  a: [unclosed", encoding="utf-8")
    with pytest.raises(IntentConfigError, match="not valid YAML"):
        load_intents(path)
    path.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(IntentConfigError, match="top-level mapping"):
        load_intents(path)


# ------------------------------------------------------------------------------ the model
def test_unseen_utterances_are_not_in_the_training_file() -> None:
    seen = {" ".join(e.casefold().split()) for s in load_intents(INTENTS_FILE).values() for e in s.examples}
    assert not [t for t, _ in UNSEEN if " ".join(t.casefold().split()) in seen]


def test_model_predicts_unseen_utterances(model: IntentModel) -> None:
    predictions = model.predict_batch([t for t, _ in UNSEEN])
    wrong = [(t, want, p.intent, round(p.confidence, 2)) for (t, want), p in zip(UNSEEN, predictions)
             if p.intent != want]
    assert wrong == []
    # Clear cases come with high, calibrated confidence (measured: 0.997-1.0).
    assert statistics.median(p.confidence for p in predictions) > 0.9


def test_prediction_shape(model: IntentModel, embedder: Embedder) -> None:
    assert re.fullmatch(r"intent-[0-9a-f]{12}", model.version)
    assert set(model.labels) == set(load_intents(INTENTS_FILE))
    p = model.predict("where is my order #W2611340")
    assert p.intent == "track_order"
    assert len(p.alternatives) == 3
    assert p.alternatives[0] == (p.intent, p.confidence)
    probs = [a[1] for a in p.alternatives]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-9
    full = model.probabilities(["where is my order #W2611340"])
    assert full.shape == (1, len(model.labels))
    assert abs(full.sum() - 1.0) < 1e-9
    assert 0.05 < model.temperature < 20


def test_precomputed_embedding_is_used_and_gives_the_same_answer(model: IntentModel, embedder: Embedder) -> None:
    text = "I want my money back for order 4417"
    row = embedder.embed([text])[0]
    calls = embedder.calls
    with_row = model.predict(text, embedding=row)
    assert embedder.calls == calls  # no second embedding
    assert with_row == model.predict(text)
    batch = model.predict_batch([text, "hi"], embeddings=embedder.embed([text, "hi"]))
    # Batched embeddings differ from single ones by float rounding (~1e-7), hence approx.
    assert batch[0].intent == with_row.intent and batch[0].confidence == pytest.approx(with_row.confidence)
    assert batch[1].intent == "greeting"


def test_numpy_tfidf_matches_scikit_learn(model: IntentModel) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [e for s in load_intents(INTENTS_FILE).values() for e in s.examples]
    probe = ["cancel order #W123 please!!", "Wo ist meine Bestellung?", "refund refund refund"]
    for analyzer, ours in ((word_ngrams, model._word), (char_ngrams, model._char)):
        # The shipped file is far below the vocabulary caps: only min_df prunes here.
        reference = TfidfVectorizer(analyzer=analyzer, sublinear_tf=True, min_df=MIN_DF).fit(texts)
        assert reference.get_feature_names_out().tolist() == ours.terms
        np.testing.assert_allclose(reference.idf_, ours.idf)
        np.testing.assert_allclose(reference.transform(probe).toarray(), ours.matrix(probe).toarray(), atol=1e-12)


def test_save_load_round_trip_gives_identical_probabilities(
    model: IntentModel, embedder: Embedder, tmp_path: Path
) -> None:
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["meta.json", "weights.npz"]
    loaded = IntentModel.load(tmp_path / "m", embedder)
    texts = [t for t, _ in UNSEEN]
    rows = embedder.embed(texts)
    assert loaded.version == model.version and loaded.labels == model.labels
    assert np.array_equal(loaded.probabilities(texts, rows), model.probabilities(texts, rows))
    assert np.array_equal(loaded.oos_scores(texts, rows), model.oos_scores(texts, rows))
    assert loaded.oos_rule == model.oos_rule == "averaged"
    assert loaded.oos_threshold == model.oos_threshold and loaded.emb_weight == model.emb_weight
    with np.load(tmp_path / "m" / "weights.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype.kind == "f" for k in npz.files)
        assert npz["tfidf_coef"].dtype == np.float16 and npz["density"].dtype == np.float16


def test_load_or_train_reuses_the_saved_model(model: IntentModel, embedder: Embedder, models_dir: Path) -> None:
    target = models_dir / model.version
    assert (target / "meta.json").is_file()
    assert [p.name for p in models_dir.iterdir()] == [model.version]  # no temporary folder left
    assert model.version == model_version(INTENTS_FILE.read_bytes(), embedder.model_id)
    mtime = (target / "weights.npz").stat().st_mtime_ns
    again = load_or_train(INTENTS_FILE, models_dir, embedder)
    assert again.source == "loaded"
    assert again.version == model.version
    assert (target / "weights.npz").stat().st_mtime_ns == mtime
    explicit = load_or_train(INTENTS_FILE, models_dir, embedder, model_dir=target)
    assert explicit.source == "loaded"


def test_editing_the_intents_file_changes_the_version(embedder: Embedder, tmp_path: Path) -> None:
    text = INTENTS_FILE.read_text(encoding="utf-8")
    edited = text.replace('- "hi"\n', '- "hi"\n      - "hello hello"\n', 1)
    assert edited != text
    assert model_version(edited, embedder.model_id) != model_version(text, embedder.model_id)
    assert model_version(text, "other-model@00000000") != model_version(text, embedder.model_id)


def test_load_or_train_with_missing_model_dir_fails(embedder: Embedder, tmp_path: Path) -> None:
    with pytest.raises(IntentModelError, match="no meta.json"):
        load_or_train(INTENTS_FILE, tmp_path, embedder, model_dir=tmp_path / "absent")


def test_model_of_another_embedder_is_refused(model: IntentModel, embedder: Embedder, models_dir: Path,
                                              tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(models_dir / model.version, copy)
    meta = json.loads((copy / "meta.json").read_text(encoding="utf-8"))
    meta["embedder_model_id"] = "some-other-model@deadbeef"
    (copy / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(IntentModelError, match="some-other-model"):
        IntentModel.load(copy, embedder)


def test_train_small_file_and_tiers_constant(embedder: Embedder, tmp_path: Path) -> None:
    assert TIERS == ("deterministic", "retrieval", "reasoning", "human")
    specs = load_intents(_write(tmp_path, {
        "hello": {"tier": "deterministic", "description": "hi", "reply": "Hi!",
                  "examples": ["hi", "hello", "hey there", "good morning", "hiya", "howdy", "yo", "greetings",
                               "hello there", "hi team", "morning", "hey", "good evening", "hi all", "heya"]},
        "refunds": {"tier": "retrieval", "description": "refund",
                    "examples": [f"I want a refund for order {n}" for n in range(15)]},
    }))
    small = IntentModel.train(specs, embedder)
    assert small.source == "trained" and small.labels == ("hello", "refunds")
    assert small.predict("a refund for my order please").intent == "refunds"
    assert small.predict("hey hey").intent == "hello"


def test_out_of_scope_class_and_density_score(model: IntentModel) -> None:
    assert model.emb_weight in EMBEDDING_WEIGHTS and 0.0 < model.oos_threshold < 1.0
    off = model.predict("what's the weather going to be like in Paris this weekend")
    inside = model.predict("where is my order #W2611340")
    assert off.intent == OUT_OF_SCOPE and off.out_of_scope
    assert inside.intent == "track_order" and not inside.out_of_scope
    assert 0.0 <= inside.oos_score < model.oos_threshold < off.oos_score
    # A training example itself is at density ~0 (float16 storage rounds it).
    example = load_intents(INTENTS_FILE)["track_order"].examples[0]
    assert model.density_scores(model._rows([example], None))[0] < 1e-3
    # oos_score = 1 - p * (1 - density)^0.25, p = top in-scope probability of the average of the two
    # halves, each softened by temperature 2 (computed here from the saved arrays).
    rows = model._rows([example], None)
    assert model.predict(example).intent == "track_order"
    assert model.predict(example).oos_score == pytest.approx(
        1 - _averaged_top(model, example, rows) * (1 - model.density_scores(rows)[0]) ** 0.25, abs=1e-6)
    # The threshold leaves at most ~0.5% of the correctly predicted cross-validated in-scope rows out
    # of scope (by construction).
    held = model.held_out
    assert held is not None and held.probabilities.shape == (model.info["examples"], len(model.labels))
    right = (held.y != model.labels.index(OUT_OF_SCOPE)) & (held.probabilities.argmax(1) == held.y)
    assert 0.0 < np.mean(held.oos_scores[right] > model.oos_threshold) <= 0.006


def _averaged_top(model: IntentModel, text: str, rows: np.ndarray) -> float:
    """Top in-scope probability of (softmax(emb logits / 2) + softmax(tfidf logits / 2)) / 2, by hand."""
    def soft(z: np.ndarray) -> np.ndarray:
        e = np.exp((z - z.max()) / 2.0)  # log-softmax then /2 then softmax == softmax(logits / 2)
        return e / e.sum()

    emb = soft((rows[0] @ model._emb_coef.T + model._emb_intercept).astype(np.float64))
    x = np.hstack([model._word.matrix([text]).toarray()[0], model._char.matrix([text]).toarray()[0]])
    tfidf = soft(x @ model._tfidf_coef_t.astype(np.float64) + model._tfidf_intercept)
    keep = [i for i, label in enumerate(model.labels) if label != OUT_OF_SCOPE]
    return float(((emb + tfidf) / 2)[keep].max())


def test_models_of_format_3_keep_their_out_of_scope_rule(
    model: IntentModel, embedder: Embedder, tmp_path: Path
) -> None:
    """A format-3 model (previous release) scores out of scope from its calibrated confidence."""
    old = tmp_path / "v3"
    model.save(old)
    meta = json.loads((old / "meta.json").read_text(encoding="utf-8"))
    meta["format"], meta["oos_rule"] = 3, "combined"
    del meta["oos_part_temperature"]
    (old / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    loaded = IntentModel.load(old, embedder)
    text = "what's the weather going to be like in Paris this weekend"
    rows = embedder.embed([text])
    probs = loaded.probabilities([text], rows)
    keep = [i for i, label in enumerate(loaded.labels) if label != OUT_OF_SCOPE]
    expected = 1 - probs[0, keep].max() * (1 - loaded.density_scores(rows)[0]) ** 0.25
    assert loaded.oos_rule == "combined"
    assert loaded.oos_scores([text], rows)[0] == pytest.approx(expected, abs=1e-9)
    assert loaded.oos_scores([text], rows)[0] != pytest.approx(model.oos_scores([text], rows)[0], abs=1e-6)


def test_models_of_format_1_still_load(model: IntentModel, embedder: Embedder, tmp_path: Path) -> None:
    """A model saved by the previous release (mean of the two models, no density) keeps working."""
    old = tmp_path / "old"
    model.save(old)
    meta = json.loads((old / "meta.json").read_text(encoding="utf-8"))
    for key in ("emb_weight", "pooling", "density_k", "oos_threshold", "tiers", "oos_rule", "oos_density_weight",
                "oos_part_temperature"):
        del meta[key]
    meta["format"] = 1
    (old / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with np.load(old / "weights.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "density"}
    np.savez(old / "weights.npz", **arrays)
    loaded = IntentModel.load(old, embedder)
    assert loaded.pooling == "mean" and loaded.emb_weight == 0.5 and loaded.tiers == {}
    text = "where is my order #W2611340"
    prediction = loaded.predict(text)
    assert prediction.intent == "track_order" and prediction.oos_score == 0.0 and not prediction.out_of_scope
    row = embedder.embed([text])
    p_emb = np.exp(row.astype(np.float64) @ arrays["emb_coef"].T.astype(np.float64) + arrays["emb_intercept"])
    p_emb /= p_emb.sum()
    assert loaded.probabilities([text], row)[0].argmax() == p_emb[0].argmax()
    meta["format"] = 99
    (old / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(IntentModelError, match="format 99"):
        IntentModel.load(old, embedder)
