"""Out-of-scope detection of the intent model against the simple average of two classic models.

The issue's bar: at EQUAL in-scope accuracy, catch at least as many out-of-scope messages as simply
averaging a TF-IDF logistic regression and an embedding logistic regression (scikit-learn defaults,
``bench/train_bench.py``'s ``tfidf_lr`` and ``embedding_lr``). Data: the Bitext 27k split
(``../shared/data/bitext``), placeholders filled as in ``bench/train_bench.py``. Each draw
(``random.Random(seed).sample`` of ``HELD_OUT`` sorted intent names) removes those intents from
training; their test rows are the out-of-scope messages. Every model is retrained per draw on the
remaining rows; the same embeddings feed all of them.

Scores compared (accepted = score says in scope), each at the threshold where in-scope accuracy
(in-scope rows accepted AND correctly classified, over all in-scope rows) first reaches 99 / 98 /
95 / 90% (``train_bench.oos_table``):

- ``baseline``: max probability of the average of ``tfidf_lr`` and ``embedding_lr``;
- ``helpline``: the model's ``oos_score`` (format 4: averaged halves and density), intents from
  ``predict_batch``;
- ``before``: the format-3 rule of the previous release, ``1 - confidence * (1 - density)^0.25``,
  on the same model's calibrated confidence and density.

Run: ``.venv/bin/python bench/oos_bench.py [--draws 5 11 1 2 3] [--cache /tmp/x.npz]`` (about
2-4 minutes per draw on 2 cores, plus embedding 27k texts once; ``--cache`` keeps the embeddings
between runs). Writes ``bench/results/oos_bench.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.intent_accuracy import SEED as TEST_SEED  # noqa: E402
from bench.train_bench import (  # noqa: E402
    DATA,
    IN_SCOPE_TARGETS,
    RESULTS,
    TRAIN_SEED,
    embedding_lr,
    load_split,
    oos_table,
    tfidf_lr,
)
from bot.embeddings import Embedder  # noqa: E402
from bot.intent_model import OOS_DENSITY_WEIGHT, IntentModel  # noqa: E402
from bot.placeholders import fill_placeholders  # noqa: E402
from bot.training import embed_with_progress  # noqa: E402

DRAWS = (5, 11, 1, 2, 3)
HELD_OUT = 4


def texts_and_embeddings(cache: Path | None) -> dict[str, np.ndarray]:
    """Filled train/test texts, labels and embeddings; read from / written to ``cache`` if given."""
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    train, _ = load_split("train", 1)
    test, _ = load_split("test", 1)
    rng = random.Random(TRAIN_SEED)
    train_texts = [fill_placeholders(r["instruction"], rng) for r in train]
    rng = random.Random(TEST_SEED)
    test_texts = [fill_placeholders(r["instruction"], rng) for r in test]
    embedder = Embedder.load()
    data = {
        "train_texts": np.array(train_texts), "train_labels": np.array([r["intent"] for r in train]),
        "test_texts": np.array(test_texts), "test_labels": np.array([r["intent"] for r in test]),
        "train_emb": embed_with_progress(embedder, train_texts), "test_emb": embed_with_progress(embedder, test_texts),
    }
    if cache is not None:
        np.savez(cache, **data)
    return data


def run_draw(seed: int, d: dict[str, np.ndarray], embedder: Embedder) -> dict[str, object]:
    """Train the three contenders without the draw's held-out intents; their ``oos_table`` rows."""
    from threadpoolctl import threadpool_limits

    train_labels, test_labels = d["train_labels"], d["test_labels"]
    held = sorted(random.Random(seed).sample(sorted(set(train_labels)), HELD_OUT))
    keep = ~np.isin(train_labels, held)
    in_scope = ~np.isin(test_labels, held)
    texts = [str(t) for t in d["train_texts"][keep]]
    test_texts = [str(t) for t in d["test_texts"]]
    started = time.perf_counter()
    model = IntentModel.train_examples(texts, list(train_labels[keep]), embedder, version="intent-oos-bench",
                                       embeddings=d["train_emb"][keep])
    preds = model.predict_batch(test_texts, d["test_emb"])
    intent = np.array([p.intent for p in preds])
    confidence = np.array([p.confidence for p in preds])
    before = 1.0 - confidence * (1.0 - model.density_scores(d["test_emb"])) ** OOS_DENSITY_WEIGHT
    labels = np.array(sorted(set(train_labels[keep])))
    with threadpool_limits(limits=1):
        proba = (tfidf_lr(texts, train_labels[keep])(test_texts) + embedding_lr(d["train_emb"][keep], train_labels[keep])(d["test_emb"])) / 2
    rows: dict[str, object] = {}
    for name, pred, accept in (
        ("baseline", labels[proba.argmax(1)], proba.max(1)),
        ("helpline", intent, -np.array([p.oos_score for p in preds])),
        ("before", intent, -before),
    ):
        rows[name] = oos_table(in_scope, (pred == test_labels) & in_scope, accept)
    return {"seed": seed, "held_out": held, "seconds": round(time.perf_counter() - started, 1), "scores": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, nargs="+", default=list(DRAWS))
    parser.add_argument("--cache", type=Path, help="embeddings cache (.npz), written if missing")
    parser.add_argument("--out", type=Path, default=RESULTS / "oos_bench.json")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} not found (the shared data folder is not present)", file=sys.stderr)
        return 2
    data = texts_and_embeddings(args.cache)
    embedder = Embedder.load()
    draws = []
    for seed in args.draws:
        draws.append(run_draw(seed, data, embedder))
        print(json.dumps(draws[-1]), file=sys.stderr)
    names = ("baseline", "before", "helpline")
    keys = [f"oos_recall_at_{t}" for t in IN_SCOPE_TARGETS]
    mean = {n: [round(float(np.mean([dr["scores"][n][k] or 0.0 for dr in draws])), 4) for k in keys] for n in names}
    worst = {n: [round(min((dr["scores"][n][k] or 0.0) - (dr["scores"]["baseline"][k] or 0.0) for dr in draws), 4)
                 for k in keys] for n in names}
    summary = {"targets": list(IN_SCOPE_TARGETS), "mean_recall": mean, "worst_draw_minus_baseline": worst}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"draws": draws, "summary": summary}, indent=2), encoding="utf-8")
    print("out-of-scope recall at in-scope accuracy " + " / ".join(f"{t:.0%}" for t in IN_SCOPE_TARGETS))
    for n in names:
        print(f"  {n:9s} mean {' / '.join(f'{x:.3f}' for x in mean[n])}   "
              f"worst draw vs baseline {' / '.join(f'{x:+.3f}' for x in worst[n])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
