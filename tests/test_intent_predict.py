"""issue 12 training side: labels with fewer than 5 rows, default tiers, the intents file without
examples, per-class and validation reports, ``helpline predict``, TF-IDF vocabulary limits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bot.embeddings import Embedder
from bot.intent_model import DEFAULT_TIER, IntentModel, load_intents, routing_intents
from bot.tfidf import Tfidf, word_analyzer
from bot.training import TrainingDataError, format_report, predict_file, train_from_file
from config.settings import CONFIG_DIR
from helpline.cli import main as cli

# Written for this test (not Bitext). "lost_card" has only 2 rows: fewer than the 5 folds.
ROWS = {
    "track_order": ["where is my order #W2611340", "has my parcel shipped yet", "tracking for order 55123",
                    "my package hasn't arrived", "when will my delivery get here", "is my order on the way"],
    "get_refund": ["I want my money back", "please refund order 88412", "how do I get a refund",
                   "refund me for the broken lamp", "give me a refund please", "I need a refund for my order"],
    "lost_card": ["I lost my gift card", "my gift card is missing, can you block it"],
}
VALID = [("where's my parcel?", "track_order"), ("refund my order please", "get_refund"),
         ("can I pay with bitcoin", "payment_methods")]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="module")
def trained(embedder: Embedder, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("small")
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps({"m": t, "l": label}) + "\n" for label, ts in ROWS.items() for t in ts),
                    encoding="utf-8")
    valid = tmp / "valid.csv"
    with valid.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("m", "l"), *VALID])
    report = train_from_file(data, text_column="m", label_column="l", intents={}, out_dir=tmp / "models",
                             embedder=embedder, progress=False, validation=valid)
    return report, tmp


def test_a_label_with_two_rows_is_trained_and_warned_about(trained, embedder: Embedder) -> None:
    report, _ = trained
    assert report.labels == {"track_order": 6, "get_refund": 6, "lost_card": 2}
    assert any("fewer than 5 rows" in w and "lost_card (2)" in w for w in report.warnings)
    model = IntentModel.load(report.model_dir, embedder)
    assert model.predict("I lost my gift card, please block it").intent == "lost_card"


def test_labels_without_a_tier_default_to_retrieval(trained, embedder: Embedder) -> None:
    report, _ = trained
    assert DEFAULT_TIER == "retrieval"
    assert report.tiers == {label: "retrieval" for label in ROWS}
    model = IntentModel.load(report.model_dir, embedder)
    assert {n: s.tier for n, s in routing_intents({}, model).items()} == report.tiers
    model.tiers = {}  # a model saved before default tiers were recorded
    assert routing_intents({}, model)["lost_card"].tier == "retrieval"


def test_per_class_report_worst_first_with_precision_and_recall(trained) -> None:
    report, _ = trained
    f1s = [s.f1 for s in report.per_class]
    assert f1s == sorted(f1s) and {s.label for s in report.per_class} == set(ROWS)
    for s in report.per_class:
        assert 0.0 <= s.precision <= 1.0 and s.recall == pytest.approx(s.correct / s.support)
    # lost_card's two rows sit in different folds: each is predicted by a model trained on the other.
    lost = next(s for s in report.per_class if s.label == "lost_card")
    assert (lost.support, lost.correct) == (2, 2)
    text = format_report(report)
    assert "per label, worst first:" in text and "prec" in text and "recall" in text


def test_validation_file_is_scored_by_the_saved_model(trained) -> None:
    report, _ = trained
    v = report.validation
    assert v is not None and v.rows == 3
    assert v.unknown_labels == {"payment_methods": 1}
    assert v.accuracy == pytest.approx(2 / 3)  # the unknown label is always wrong; the others right
    assert {s.label for s in v.per_class} == {"track_order", "get_refund", "payment_methods"}
    assert report.to_json()["validation"]["accuracy"] == pytest.approx(0.6667, abs=1e-4)
    assert "validation on valid.csv (3 rows" in format_report(report)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_file_writes_one_record_per_row(trained, embedder: Embedder, suffix: str) -> None:
    report, tmp = trained
    model = IntentModel.load(report.model_dir, embedder)
    data = tmp / "in.csv"
    data.write_text("message\nwhere is order {{Order Number}}\ntell me a joke about cats\n", encoding="utf-8")
    out = tmp / f"out{suffix}"
    assert predict_file(model, embedder, data, "message", out, progress=False) == 2
    if suffix == ".csv":
        with out.open(newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh))
    else:
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [int(r["line"]) for r in records] == [2, 3]
    assert records[0]["text"] == "where is order {{Order Number}}" and records[0]["intent"] == "track_order"
    assert float(records[0]["oos_score"]) < float(records[1]["oos_score"])
    assert 0.0 < float(records[0]["confidence"]) <= 1.0


def test_predict_file_refuses_bad_input(trained, embedder: Embedder) -> None:
    report, tmp = trained
    model = IntentModel.load(report.model_dir, embedder)
    data = tmp / "in2.csv"
    data.write_text("message\nhello\n", encoding="utf-8")
    with pytest.raises(TrainingDataError, match=r"\.csv or \.jsonl"):
        predict_file(model, embedder, data, "message", tmp / "out.txt", progress=False)
    with pytest.raises(TrainingDataError, match="text"):
        predict_file(model, embedder, data, "text", tmp / "out.csv", progress=False)


def test_cli_predict(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report, _ = trained
    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"q": "please refund my order"}) + "\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(cli, ["predict", "--data", str(data), "--text-column", "q", "--out", str(out),
                                      "--model", str(report.model_dir)])
    assert result.exit_code == 0, result.output
    assert f"1 predictions by model {report.version}" in result.output
    assert json.loads(out.read_text(encoding="utf-8"))["intent"] == "get_refund"
    bad = CliRunner().invoke(cli, ["predict", "--data", str(tmp_path / "none.csv"), "--text-column", "q",
                                   "--out", str(out), "--model", str(report.model_dir)])
    assert bad.exit_code == 2 and "no such file" in bad.output


def test_intents_file_needs_examples_only_when_it_trains(tmp_path: Path) -> None:
    path = tmp_path / "intents.yaml"
    path.write_text("intents:\n  warranty:\n    tier: retrieval\n    description: warranty questions\n"
                    "  greeting:\n    tier: deterministic\n    description: hi\n    reply: Hello!\n"
                    "    examples: [hi, hello]\n", encoding="utf-8")
    specs = load_intents(path, min_examples=0)
    assert specs["warranty"].examples == () and specs["greeting"].reply == "Hello!"
    with pytest.raises(ValueError, match="'examples'"):
        load_intents(path)
    assert len(load_intents(CONFIG_DIR / "intents.yaml", min_examples=0)) == len(load_intents(CONFIG_DIR / "intents.yaml"))


def test_tfidf_min_df_and_max_features() -> None:
    texts = ["refund my order", "refund the order", "track my parcel", "order status"]
    full = Tfidf.fit(texts, word_analyzer((1, 1)))
    assert full.terms == ["my", "order", "parcel", "refund", "status", "the", "track"]
    assert Tfidf.fit(texts, word_analyzer((1, 1)), min_df=2).terms == ["my", "order", "refund"]
    assert Tfidf.fit(texts, word_analyzer((1, 1)), max_features=1).terms == ["order"]
    with pytest.raises(ValueError, match="min_df"):
        Tfidf.fit(texts, word_analyzer((1, 1)), min_df=0)
    idx, values = Tfidf.fit(texts, word_analyzer((1, 1)), min_df=2).row("refund order")
    assert len(idx) == 2 and np.linalg.norm(values) == pytest.approx(1.0)
