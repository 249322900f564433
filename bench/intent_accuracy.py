"""Accuracy of the shipped intent model on Bitext text it never saw.

The model is trained only on ``config/intents.yaml`` (our own examples) and scored on
``shared/data/bitext/llm_27k_instructions_test.csv`` (5,332 rows, 27 intents) with every
``{{Placeholder}}`` filled by :func:`bot.placeholders.fill_placeholders` (fixed seed). Our extra
intents (greeting, legal_threat, out_of_scope, ...) have no Bitext rows; a prediction of one of them
counts as wrong, which is what the router would do with it too (send it elsewhere).

Prints accuracy, macro-F1, per-intent accuracy and the most common confusions, the share of
predictions at or above the confidence threshold and the accuracy among those, the expected
calibration error (15 equal-width bins), and timing. ``--json PATH`` also writes the figures.

Run: ``.venv/bin/python bench/intent_accuracy.py`` (about 20 s on 2 cores). Nothing here is shipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.embeddings import Embedder  # noqa: E402
from bot.intent_model import load_or_train  # noqa: E402
from config.settings import CONFIG_DIR  # noqa: E402
from bot.placeholders import fill_placeholders  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bitext" / "llm_27k_instructions_test.csv"
SEED = 20261129


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def macro_f1(truth: list[str], pred: list[str], labels: list[str]) -> float:
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(truth, pred))
        fp = sum(t != label and p == label for t, p in zip(truth, pred))
        fn = sum(t == label and p != label for t, p in zip(truth, pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA,
        help="a Bitext CSV with intent + instruction (27K release) or utterance (8.1K release)",
    )
    parser.add_argument("--intents", type=Path, default=CONFIG_DIR / "intents.yaml")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--threshold", type=float, default=0.70)
    parser.add_argument("--limit", type=int, default=0, help="score only the first N rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--errors", type=int, default=0,
        help="print N random misclassified texts (use with --data on the *train* split for error "
        "analysis; reading test-split errors to write examples would tune on the test set)",
    )
    args = parser.parse_args()

    if not args.data.is_file():
        print(f"{args.data} not found (the shared data folder is not present)", file=sys.stderr)
        return 2
    rng = random.Random(SEED)
    with open(args.data, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if args.limit:
        rows = rows[: args.limit]
    texts = [fill_placeholders(r.get("instruction") or r["utterance"], rng) for r in rows]
    truth = [r["intent"] for r in rows]

    t0 = time.perf_counter()
    embedder = Embedder.load()
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or Path(tmp)
        t0 = time.perf_counter()
        model = load_or_train(args.intents, models_dir, embedder)
        train_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        embeddings = embedder.embed(texts)
        embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds = model.predict_batch(texts, embeddings)
        classify_s = time.perf_counter() - t0

        # Single-message latency, as the router sees it (embedding once, then classify).
        sample = texts[:200]
        t0 = time.perf_counter()
        for text in sample:
            embedder.embed([text])
        single_embed_ms = (time.perf_counter() - t0) / len(sample) * 1000
        sample_emb = embeddings[:200]
        t0 = time.perf_counter()
        for text, row in zip(sample, sample_emb):
            model.predict(text, row)
        single_classify_ms = (time.perf_counter() - t0) / len(sample) * 1000

    pred = [p.intent for p in preds]
    conf = np.array([p.confidence for p in preds])
    correct = np.array([p == t for p, t in zip(pred, truth)])
    labels = sorted(set(truth))
    confident = conf >= args.threshold

    per_intent = {}
    for label in labels:
        mask = np.array([t == label for t in truth])
        per_intent[label] = float(correct[mask].mean())
    confusions = Counter((t, p) for t, p in zip(truth, pred) if t != p).most_common(12)

    figures = {
        "rows": len(rows),
        "model_version": model.version,
        "model_source": model.source,
        "examples": model.info.get("examples"),
        "temperature": round(model.temperature, 3),
        "accuracy": round(float(correct.mean()), 4),
        "macro_f1": round(macro_f1(truth, pred, labels), 4),
        "threshold": args.threshold,
        "share_confident": round(float(confident.mean()), 4),
        "accuracy_confident": round(float(correct[confident].mean()) if confident.any() else 0.0, 4),
        "accuracy_below": round(float(correct[~confident].mean()) if (~confident).any() else 0.0, 4),
        "ece_15bins": round(expected_calibration_error(conf, correct), 4),
        "mean_confidence": round(float(conf.mean()), 4),
        "per_intent_accuracy": {k: round(v, 4) for k, v in per_intent.items()},
        "top_confusions": [[t, p, n] for (t, p), n in confusions],
        "timing": {
            "embedder_load_s": round(load_s, 2),
            "train_or_load_s": round(train_s, 2),
            "embed_all_s": round(embed_s, 2),
            "classify_all_s": round(classify_s, 2),
            "single_embed_ms": round(single_embed_ms, 2),
            "single_classify_ms": round(single_classify_ms, 3),
        },
        "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
    }

    print(f"data: {args.data.name}, {len(rows)} rows, placeholders filled (seed {SEED})")
    print(f"model: {model.version} ({model.source}, {figures['examples']} examples, "
          f"T={figures['temperature']})")
    print(f"accuracy  {figures['accuracy']:.2%}   macro-F1 {figures['macro_f1']:.4f}")
    print(f"confidence >= {args.threshold:.2f}: {figures['share_confident']:.1%} of rows, "
          f"accuracy {figures['accuracy_confident']:.2%} (below: {figures['accuracy_below']:.2%})")
    print(f"calibration: ECE {figures['ece_15bins']:.4f}, mean confidence "
          f"{figures['mean_confidence']:.3f} vs accuracy {figures['accuracy']:.3f}")
    print("per-intent accuracy:")
    for label, acc in sorted(per_intent.items(), key=lambda kv: kv[1]):
        print(f"  {label:28s} {acc:.2%}")
    print("top confusions (truth -> predicted: rows):")
    for (t, p), n in confusions:
        print(f"  {t} -> {p}: {n}")
    if args.errors:
        wrong = [i for i in range(len(rows)) if not correct[i]]
        for i in random.Random(0).sample(wrong, min(args.errors, len(wrong))):
            print(f"  [{truth[i]} -> {pred[i]} {conf[i]:.2f}] {texts[i]}")
    timing = figures["timing"]
    print(f"timing: embedder load {timing['embedder_load_s']} s, train/load {timing['train_or_load_s']} s, "
          f"embed {len(rows)} rows {timing['embed_all_s']} s, classify {timing['classify_all_s']} s; "
          f"one message: embed {timing['single_embed_ms']} ms + classify "
          f"{timing['single_classify_ms']} ms ({os.cpu_count()} cores)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
