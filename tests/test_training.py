"""bot.training and ``helpline train``: strict input, real training, held-out report, out of scope,
tiers, and a saved model the server loads."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from shared_data import shared_data_dir

from bot.embeddings import Embedder
from bot.intent_model import (
    OUT_OF_SCOPE,
    IntentModel,
    canonical_label,
    load_intents,
    load_or_train,
    routing_intents,
)
from bot.training import (
    TrainingDataError,
    TrainingReport,
    format_report,
    load_tiers,
    load_training_rows,
    train_from_file,
)
from config.settings import CONFIG_DIR, Settings
from helpline.cli import main as cli
from bot.placeholders import fill_placeholders

INTENTS_FILE = CONFIG_DIR / "intents.yaml"
SAMPLE_EVERY = 40  # every 40th Bitext train row: about 540 rows, 20 per intent

# Written for this test (not Bitext): a tiny support domain with an out-of-scope class spelt "OOS"
# and one label ("warranty_claim") that config/intents.yaml does not know.
SMALL = {
    "track_order": [
        "where is my order #W2611340", "has my parcel shipped yet", "tracking for order 55123 please",
        "my package still hasn't arrived, where is it?", "can you tell me where order #W8812002 is",
        "when will my delivery get here", "order status for 4417", "is my order on the way",
    ],
    "get_refund": [
        "I want my money back", "please refund order 88412", "how do I get a refund for the boots",
        "refund me for the broken lamp", "I returned it, now I want the refund",
        "can I get reimbursed for this purchase", "give me a refund please", "I need a refund for order #W3300917",
    ],
    "OOS": [
        "what's the weather in Paris tomorrow", "tell me a joke", "who won the football match last night",
        "recommend a good pizza recipe", "what is the capital of Australia", "how tall is Mount Everest",
        "can you write me a poem about cats", "what time is it in Tokyo",
    ],
    "warranty_claim": [
        "my blender broke after two months, is it under warranty", "I want to make a warranty claim",
        "does the warranty cover a cracked screen", "the kettle stopped working, warranty please",
        "how do I claim the two year guarantee", "is water damage covered by the warranty",
    ],
}
OFF_TOPIC = [
    "what's the capital of Mongolia",
    "write me a haiku about autumn leaves",
    "how many moons does Jupiter have",
    "who painted the Mona Lisa",
    "best way to cook basmati rice",
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _small_rows() -> list[dict]:
    return [{"message": text, "label": label} for label, texts in SMALL.items() for text in texts]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="module")
def intents() -> dict:
    return load_intents(INTENTS_FILE)


@pytest.fixture(scope="module")
def bitext_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every SAMPLE_EVERY-th row of the Bitext 27K train split, as a CSV with the original columns."""
    source = shared_data_dir() / "bitext" / "llm_27k_instructions_train.csv"
    with source.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [r for i, r in enumerate(reader) if i % SAMPLE_EVERY == 0]
        fields = reader.fieldnames
    path = tmp_path_factory.mktemp("bitext") / "sample.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def bitext_trained(bitext_sample: Path, embedder: Embedder, intents: dict,
                   tmp_path_factory: pytest.TempPathFactory) -> TrainingReport:
    return train_from_file(
        bitext_sample, text_column="instruction", label_column="intent", intents=intents,
        out_dir=tmp_path_factory.mktemp("models"), embedder=embedder, progress=False,
    )


@pytest.fixture(scope="module")
def small_trained(embedder: Embedder, intents: dict, tmp_path_factory: pytest.TempPathFactory) -> TrainingReport:
    data = _write_jsonl(tmp_path_factory.mktemp("small") / "small.jsonl", _small_rows())
    return train_from_file(
        data, text_column="message", label_column="label", intents=intents,
        out_dir=tmp_path_factory.mktemp("small-models"), embedder=embedder, progress=False,
    )


def _bitext_test_rows(n: int) -> tuple[list[str], list[str]]:
    source = shared_data_dir() / "bitext" / "llm_27k_instructions_test.csv"
    with source.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked = random.Random(7).sample(rows, n)
    rng = random.Random(8)
    return [fill_placeholders(r["instruction"], rng) for r in picked], [r["intent"] for r in picked]


# ------------------------------------------------------------------------------ real training
def test_bitext_sample_trains_and_reports_held_out_figures(bitext_trained: TrainingReport) -> None:
    report = bitext_trained
    assert report.rows == len(load_training_rows(report.data, "instruction", "intent"))
    assert 500 < report.rows < 600 and len(report.labels) == 27
    assert min(report.labels.values()) >= 15
    # 20 rows per intent is little data; measured 0.97-0.98 cross-validated.
    assert 0.93 < report.accuracy <= 1.0
    assert 0.93 < report.macro_f1 <= 1.0
    worst = report.worst
    assert len(worst) == 5 and [s.f1 for s in worst] == sorted(s.f1 for s in worst)
    assert all(0 <= s.correct <= s.support for s in worst)
    assert worst[0].f1 < 1.0 and worst[0].confused_with in report.labels
    # Every Bitext intent is in config/intents.yaml: no unknown labels, tiers from the intents file.
    # Our own intents that Bitext lacks are named: the model cannot predict them.
    assert report.unknown_labels == {}
    assert report.warnings == [
        "7 intent(s) of the intents file have no rows, so the model never predicts them (add rows, or "
        "--add-config-examples to train them on the intents file's examples): greeting, thanks, goodbye, "
        "legal_threat, account_suspension, chargeback, out_of_scope"
    ]
    assert report.tiers["track_order"] == "deterministic" and report.tiers["get_refund"] == "retrieval"
    # The density threshold keeps 99% of cross-validated in-scope rows in scope.
    assert report.oos_flagged_in_scope == pytest.approx(0.01, abs=0.01)
    assert report.oos_class_recall is None
    text = format_report(report)
    assert f"accuracy {report.accuracy:.2%}" in text and str(report.model_dir) in text


def test_saved_model_loads_like_the_server_loads_it(bitext_trained: TrainingReport, embedder: Embedder,
                                                    tmp_path: Path) -> None:
    model_dir = bitext_trained.model_dir
    assert model_dir.name == bitext_trained.version and sorted(p.name for p in model_dir.iterdir()) == [
        "meta.json", "weights.npz"]
    # Exactly the call helpline/runtime.py makes, with HELPLINE_INTENT_MODEL_DIR set.
    settings = Settings(data_dir=tmp_path / "var", intent_model_dir=model_dir)
    model = load_or_train(settings.intents_file, settings.models_dir, embedder, settings.intent_model_dir)
    assert model.source == "loaded" and model.version == bitext_trained.version
    assert not settings.models_dir.exists()  # nothing trained from intents.yaml
    texts, truth = _bitext_test_rows(150)
    predictions = model.predict_batch(texts, embedder.embed(texts))
    accuracy = np.mean([p.intent == t for p, t in zip(predictions, truth)])
    assert accuracy > 0.9  # measured 0.97
    assert np.mean([p.out_of_scope for p in predictions]) < 0.1
    meta = json.loads((model_dir / "meta.json").read_text(encoding="utf-8"))
    assert meta["tiers"]["cancel_order"] == "retrieval" and meta["info"]["rows"] == bitext_trained.rows
    # Placeholders were filled before training: no "{{" in any character n-gram.
    assert not [t for t in meta["char_vocabulary"] if "{" in t]


def test_density_score_is_higher_off_topic_than_in_domain(bitext_trained: TrainingReport,
                                                           embedder: Embedder) -> None:
    model = IntentModel.load(bitext_trained.model_dir, embedder)
    assert OUT_OF_SCOPE not in model.labels
    in_domain, _ = _bitext_test_rows(40)
    inside = model.predict_batch(in_domain)
    outside = model.predict_batch(OFF_TOPIC)
    assert min(p.oos_score for p in outside) > np.median([p.oos_score for p in inside])
    # On 20 rows per intent the classifier is unsure of many in-scope rows, so the flag threshold
    # (0.5% of right cross-validated answers flagged) sits high: most, not all, off-topic rows pass it.
    assert np.mean([p.out_of_scope for p in outside]) >= 0.6, [round(p.oos_score, 3) for p in outside]
    assert np.mean([p.out_of_scope for p in inside]) < 0.1
    # The density flag does not change the predicted intent (callers that ignore it see no change).
    assert all(p.intent in model.labels for p in outside)


def test_out_of_scope_label_is_trained_as_a_class(small_trained: TrainingReport, embedder: Embedder) -> None:
    report = small_trained
    assert set(report.labels) == {"track_order", "get_refund", OUT_OF_SCOPE, "warranty_claim"}
    assert report.labels[OUT_OF_SCOPE] == 8  # "OOS" rows, renamed
    assert report.oos_class_recall is not None and report.oos_class_recall >= 0.75
    model = IntentModel.load(report.model_dir, embedder)
    for text in ("what's the best movie of the year", "how do I bake sourdough bread"):
        prediction = model.predict(text)
        assert prediction.intent == OUT_OF_SCOPE and prediction.out_of_scope, (text, prediction)
    in_scope = model.predict("where is my parcel #W1234567?")
    assert in_scope.intent == "track_order" and not in_scope.out_of_scope
    # Out-of-scope rows are not part of the density reference: in-scope text is nearer to it.
    assert model.predict("what's the weather in Paris tomorrow").oos_score > in_scope.oos_score


def test_unknown_labels_are_listed_with_their_counts(small_trained: TrainingReport) -> None:
    assert small_trained.unknown_labels == {"warranty_claim": 6}
    missing, unknown = small_trained.warnings
    assert missing.startswith("31 intent(s) of the intents file have no rows")
    assert "warranty_claim (6 rows)" in unknown
    assert "get 'retrieval'" in unknown
    assert small_trained.tiers["warranty_claim"] == "retrieval"  # the default tier, saved with the model
    assert small_trained.tiers[OUT_OF_SCOPE] == "human"  # from config/intents.yaml


def test_tiers_file_routes_new_labels(embedder: Embedder, intents: dict, tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "small.jsonl", _small_rows())
    tiers = tmp_path / "tiers.yaml"
    tiers.write_text("warranty_claim: retrieval\nget_refund: human\n", encoding="utf-8")
    report = train_from_file(data, text_column="message", label_column="label", intents=intents,
                             out_dir=tmp_path / "models", tiers_file=tiers, embedder=embedder, progress=False)
    assert report.unknown_labels == {} and len(report.warnings) == 1  # only the intents without rows
    assert report.warnings[0].startswith("31 intent(s) of the intents file have no rows")
    assert report.tiers == {"track_order": "deterministic", "get_refund": "human",
                            OUT_OF_SCOPE: "human", "warranty_claim": "retrieval"}
    model = load_or_train(INTENTS_FILE, tmp_path / "unused", embedder, model_dir=report.model_dir)
    assert model.tiers == report.tiers
    routed = routing_intents(intents, model)
    assert routed["warranty_claim"].tier == "retrieval" and routed["warranty_claim"].examples == ()
    assert routed["get_refund"].tier == "human" and intents["get_refund"].tier == "retrieval"
    assert routed["track_order"] is intents["track_order"]  # unchanged: same tier, handler kept
    # Same data, tiers and seed: same version, the saved folder is reused.
    again = train_from_file(data, text_column="message", label_column="label", intents=intents,
                            out_dir=tmp_path / "models", tiers_file=tiers, embedder=embedder, progress=False)
    assert again.version == report.version and again.reused


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("foo: robot\n", "line 1: label 'foo': field 'tier': 'robot' is not one of"),
        ("a: human\nwarranty_claim: deterministic\n",
         ("line 2: label 'warranty_claim': field 'tier': a deterministic intent needs a reply or handler")),
        ("- just a list\n", "must be a YAML mapping"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_tiers_file(tmp_path: Path, intents: dict, content: str, message: str) -> None:
    path = tmp_path / "tiers.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TrainingDataError) as info:
        load_tiers(path, intents)
    assert message in str(info.value)


def test_canonical_label() -> None:
    assert canonical_label(" OOS ") == OUT_OF_SCOPE
    assert canonical_label("Out_Of_Scope") == OUT_OF_SCOPE
    assert canonical_label("track_order ") == "track_order"


# ------------------------------------------------------------------------------ bad input
_GOOD_CSV = "text,label\nwhere is my order,track_order\n"

BAD_FILES = [
    ("missing-column.csv", b"text,intent\nwhere is my order,track_order\n",
     "no label column 'label'; available columns: text, intent"),
    ("empty-text.csv", (_GOOD_CSV + '"   ",get_refund\n').encode(), "line 3: empty 'text'"),
    ("unclosed-quote.csv", (_GOOD_CSV + '"refund me, please,get_refund\nrefund now,get_refund\n').encode(),
     "line 3: a quote opened in this row is never closed, so lines 3-4"),
    ("empty-label.csv", (_GOOD_CSV + "refund me,track_order\nrefund please,\n").encode(),
     "line 4: field 'label' is missing or empty"),
    ("bad-encoding.csv", _GOOD_CSV.encode() + "caf\u00e9 order,track_order\n".encode("latin-1"),
     "line 3, field 'text': not valid UTF-8 (byte 0xe9)"),
    ("broken.jsonl", b'{"text": "hi", "label": "greeting"}\n{"text": "oops", "label": \n',
     "line 2: not valid JSON"),
    ("missing-field.jsonl", b'{"text": "hi", "label": "greeting"}\n{"text": "where", "labl": "x"}\n',
     "line 2: field 'label' is missing or empty"),
    ("missing-text.jsonl", b'{"text": "hi", "label": "greeting"}\n{"txt": "where", "label": "x"}\n',
     "line 2: no value in column 'text'"),
    ("too-few.jsonl", "".join(json.dumps({"text": f"hello {i}", "label": "greeting" if i < 2 else "thanks"})
                              + "\n" for i in range(4)).encode(),
     "4 rows; at least 5 are needed (one per cross-validation fold)"),
    ("notes.txt", b"text,label\n", "unknown file type '.txt'"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_training_file_names_line_and_field_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: bytes, message: str
) -> None:
    data = tmp_path / name
    data.write_bytes(content)
    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--text-column", "text",
                                      "--label-column", "label", "--out", str(tmp_path / "models")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert str(data) in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "models").exists() and not (tmp_path / "var").exists()


def test_many_bad_rows_are_counted(tmp_path: Path, intents: dict) -> None:
    data = tmp_path / "many.csv"
    data.write_text("text,label\nwhere is my order,track_order\n" + "".join(f",label{i}\n" for i in range(8)),
                    encoding="utf-8")
    with pytest.raises(TrainingDataError) as info:
        train_from_file(data, text_column="text", label_column="label", intents=intents, out_dir=tmp_path / "m")
    assert "8 bad row(s): line 3: empty 'text'" in str(info.value) and "(and 3 more)" in str(info.value)
    data.write_text("text,label\n,a\n,b\n", encoding="utf-8")  # nothing usable at all
    with pytest.raises(TrainingDataError, match="no rows to train on; bad rows: line 2: empty 'text'; line 3"):
        load_training_rows(data, "text", "label")


# ------------------------------------------------------------------------------ the CLI
def test_cli_trains_lists_unknown_labels_and_prints_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_jsonl(tmp_path / "small.jsonl", _small_rows())
    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--text-column", "message",
                                      "--label-column", "label", "--json"])
    assert result.exit_code == 0, result.output
    assert "warning: 1 label(s) have no tier" in result.stderr and "retrieval" in result.stderr and "warranty_claim (6 rows)" in result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["rows"] == 30 and figures["labels"] == 4
    assert figures["unknown_labels"] == {"warranty_claim": 6}
    model_dir = Path(figures["model_dir"])
    assert model_dir.parent == tmp_path / "var" / "models"  # default --out: DATA_DIR/models
    assert f"HELPLINE_INTENT_MODEL_DIR={model_dir}" in result.stdout
    assert 0.0 <= figures["accuracy"] <= 1.0 and figures["model_bytes"] > 10_000
    assert yaml.safe_load((model_dir / "meta.json").read_text(encoding="utf-8"))["labels"][2] == OUT_OF_SCOPE


def test_intents_missing_from_the_data_are_named_or_trained_from_the_intents_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, intents: dict
) -> None:
    data = _write_jsonl(tmp_path / "small.jsonl", _small_rows())
    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    args = ["train", "--data", str(data), "--text-column", "message", "--label-column", "label", "--json"]
    in_data = {canonical_label(row["label"]) for row in _small_rows()}
    missing = [name for name in intents if name not in in_data]
    assert "greeting" in missing and "contact_human_agent" in missing

    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0, plain.output
    assert f"warning: {len(missing)} intent(s) of the intents file have no rows" in plain.stderr
    assert ", ".join(missing) in plain.stderr
    assert json.loads(plain.stdout.strip().splitlines()[-1])["rows"] == 30

    merged = CliRunner().invoke(cli, [*args, "--add-config-examples"])
    assert merged.exit_code == 0, merged.output
    assert "have no rows" not in merged.stderr
    figures = json.loads(merged.stdout.strip().splitlines()[-1])
    assert figures["rows"] == 30 + sum(len(intents[name].examples) for name in missing)
    assert figures["labels"] == len(in_data | set(missing))
    model = IntentModel.load(Path(figures["model_dir"]), Embedder.load())
    assert model.predict("hello there, good morning!").intent == "greeting"
