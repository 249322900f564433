"""``helpline train`` on Bitext: accuracy, deflection, out-of-scope detection, cost; against baselines.

Data: ``../shared/data/bitext/llm_27k_instructions_{train,test}.csv`` (21,540 / 5,332 rows, 27 intents).
Placeholders are filled with realistic values: train rows by ``helpline train`` itself (seed 0), test
rows with the seed of ``bench/intent_accuracy.py`` (so the shipped model scores as it does there).

Models, all on the same filled texts and splits:

- ``helpline_train``: :func:`bot.training.train_from_file` on the train file, exactly what
  ``helpline train --data ... --text-column instruction --label-column intent`` runs; then loaded from
  disk the way the server loads it.
- ``shipped``: the model trained only on ``config/intents.yaml`` (scored as in ``bench/intent_accuracy.py``:
  Bitext intent names are ours, our extra intents count as wrong).
- ``tfidf_lr``: classic baseline, scikit-learn ``TfidfVectorizer`` word (1-2) + ``char_wb`` (2-5) n-grams,
  sublinear tf, ``LogisticRegression`` with its default C=1.
- ``embedding_lr``: classic baseline, the same MiniLM sentence embeddings + ``LogisticRegression`` (C=1).
- ablations ``our_tfidf_part`` / ``our_embedding_part``: each half of our model alone (its own C).

Figures: accuracy, macro-F1; the coverage (deflection) vs wrong-answer curve over confidence
thresholds (answered = confidence >= t; wrong-answer rate = answered with the wrong intent, over all
test rows) and the deflection at <= 1% wrong; training time (embedding, fitting), model size on disk,
eval throughput (embedding + classification, cases/s, one process); and a 10,000-row run of
``helpline train`` for the "10,000 rows in well under a minute" target.

Out of scope (Bitext has no such class): ``OOS_HELD_OUT`` intents, drawn with ``random.Random(OOS_SEED)``
from the sorted intent names (fixed before any run), are removed from training entirely; their test rows
are the out-of-scope queries. Every model is retrained on the remaining intents. For each rejection
score, in-scope accuracy(t) = share of in-scope test rows that are accepted (score >= t) AND correctly
classified; OOS recall(t) = share of out-of-scope rows rejected. Reported: OOS recall where in-scope
accuracy first falls to each of ``IN_SCOPE_TARGETS`` (equal in-scope accuracy across models), and AUROC.
Scores: max probability (every model); for ours also ``oos_score``, the density score (1 - cosine to
the nearest training example, :meth:`IntentModel.density_scores`), the confidence with the model's
fitted out-of-scope flag, and confidence x (1 - density score). Several draws against the simple
average of two classic models: ``bench/oos_bench.py``. Method (a), an out-of-scope class in the data: ``OOS_LABELLED`` more
intents (same seed) are relabelled ``out_of_scope`` in training; accepted = predicted intent is not
out_of_scope and confidence >= t; measured on the unseen held-out intents against the same model
trained without that class.

Run: ``.venv/bin/python bench/train_bench.py`` (about 6-8 minutes on 2 cores; ``--quick`` samples
every 5th row for a smoke run). Writes ``bench/results/train_bench.json`` and ``train_*.png``.
Nothing here is shipped.

Scale (``--scale``, run on its own; it only replaces the ``scale`` entry of the JSON): the cost of
``helpline train`` itself at ``SCALE_ROWS`` rows of the train file (sampled with ``random.Random(1)``,
placeholders filled by the command), each size in its own child process (the real CLI, ``helpline
train ... --json``) so that its peak RSS (``ru_maxrss`` from ``wait4``) and CPU time (user + system,
all threads) are that run's alone. Twice per size: with Bitext's 27 intents, and with a CLINC-sized
label set (each intent split by the first word of the message where that pair has at least
``FINE_MIN_ROWS`` rows: 131 labels at 10,000 rows, 197 at 15,000), since the TF-IDF weights grow with the number of labels.
Records wall time, CPU time, peak RSS, model size on disk and the load average around each run.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.intent_accuracy import SEED as TEST_SEED  # noqa: E402
from bench.intent_accuracy import expected_calibration_error  # noqa: E402
from bot.embeddings import Embedder  # noqa: E402
from bot.intent_model import (  # noqa: E402
    OUT_OF_SCOPE,
    IntentModel,
    _fit,
    load_intents,
    load_or_train,
)
from bot.training import embed_with_progress, load_training_rows, train_from_file  # noqa: E402
from config.settings import CONFIG_DIR  # noqa: E402
from bot.placeholders import fill_placeholders  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "bitext"
RESULTS = ROOT / "bench" / "results"
TRAIN_SEED = 0  # helpline train's default --seed
OOS_SEED = 5
OOS_HELD_OUT = 4
OOS_LABELLED = 3
IN_SCOPE_TARGETS = (0.99, 0.98, 0.95, 0.90)
MAX_WRONG = 0.01
TEN_K = 10_000
SCALE_ROWS = (10_000, 15_000)
FINE_MIN_ROWS = 20


# --- metrics ----------------------------------------------------------------------------------------


def macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, labels=sorted(set(truth)), average="macro", zero_division=0))


def coverage_curve(correct: np.ndarray, confidence: np.ndarray) -> dict[str, list[float]]:
    """Deflection and wrong-answer rate (both over all rows) for thresholds at every distinct
    confidence, from answering everything down to answering nothing."""
    order = np.argsort(-confidence, kind="stable")
    wrong_cum = np.cumsum(~correct[order])
    n = len(correct)
    # Cut after each run of equal confidences: a threshold cannot separate ties.
    conf_sorted = confidence[order]
    cuts = np.nonzero(np.append(conf_sorted[1:] != conf_sorted[:-1], True))[0]
    thresholds = [1.0 + 1e-9] + [float(conf_sorted[i]) for i in cuts]
    deflection = [0.0] + [float((i + 1) / n) for i in cuts]
    wrong = [0.0] + [float(wrong_cum[i] / n) for i in cuts]
    return {"threshold": thresholds, "deflection": deflection, "wrong": wrong}


def deflection_at(curve: dict[str, list[float]], max_wrong: float) -> tuple[float, float]:
    """(highest deflection with wrong-answer rate <= max_wrong, the threshold that gives it)."""
    best = max((d, t) for d, w, t in zip(curve["deflection"], curve["wrong"], curve["threshold"]) if w <= max_wrong)
    return best


def thin(curve: dict[str, list[float]], points: int = 200) -> dict[str, list[float]]:
    n = len(curve["threshold"])
    keep = sorted(set(np.linspace(0, n - 1, min(points, n)).astype(int)))
    return {k: [round(v[i], 6) for i in keep] for k, v in curve.items()}


def oos_table(in_scope: np.ndarray, correct: np.ndarray, score: np.ndarray) -> dict[str, object]:
    """OOS recall at each in-scope accuracy target, and AUROC of ``score`` (higher = in scope).

    in-scope accuracy(t) = accepted-and-correct in-scope rows / in-scope rows, accepted = score >= t.
    The threshold is the highest-coverage one at which in-scope accuracy is still >= the target;
    ``None`` when the target cannot be reached."""
    from sklearn.metrics import roc_auc_score

    order = np.argsort(-score, kind="stable")
    s = score[order]
    good = np.cumsum(correct[order] & in_scope[order]) / in_scope.sum()  # accept the first i+1 rows
    rejected_oos = ((~in_scope).sum() - np.cumsum(~in_scope[order])) / (~in_scope).sum()
    ends = np.nonzero(np.append(s[1:] != s[:-1], True))[0]
    out: dict[str, object] = {"auroc": round(float(roc_auc_score(in_scope, score)), 4)}
    for target in IN_SCOPE_TARGETS:
        # Accepting more rows only raises in-scope accuracy: the first cut reaching the target wins.
        reach = ends[good[ends] >= target]
        out[f"oos_recall_at_{target}"] = round(float(rejected_oos[reach[0]]), 4) if len(reach) else None
    out["in_scope_accuracy_all_accepted"] = round(float(good[-1]), 4)
    return out


def oos_curve(in_scope: np.ndarray, correct: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="stable")
    good = np.cumsum(correct[order] & in_scope[order]) / in_scope.sum()
    rejected_oos = ((~in_scope).sum() - np.cumsum(~in_scope[order])) / (~in_scope).sum()
    step = max(1, len(order) // 400)
    return good[::step], rejected_oos[::step]


# --- baselines --------------------------------------------------------------------------------------


def tfidf_lr(train_texts: list[str], y: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    pipe = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LogisticRegression(max_iter=3000),
    )
    pipe.fit(train_texts, y)
    return pipe.predict_proba


def embedding_lr(train_emb: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=3000).fit(train_emb, y).predict_proba


# --- the run ----------------------------------------------------------------------------------------


def load_split(name: str, every: int) -> tuple[list[dict[str, str]], Path]:
    path = DATA / f"llm_27k_instructions_{name}.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r for i, r in enumerate(csv.DictReader(fh)) if i % every == 0]
    return rows, path


def write_csv(rows: list[dict[str, str]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def fine_labels(rows: list[dict[str, str]]) -> list[str]:
    """A CLINC-sized label per row: ``intent.first_word`` where that pair has ``FINE_MIN_ROWS``+ rows
    among ``rows``, else the intent."""
    def pair(r: dict[str, str]) -> str:
        words = r["instruction"].split()
        return f"{r['intent']}.{words[0].casefold().strip('?,.!') if words else ''}"

    counts: dict[str, int] = {}
    for r in rows:
        counts[pair(r)] = counts.get(pair(r), 0) + 1
    return [pair(r) if counts[pair(r)] >= FINE_MIN_ROWS else r["intent"] for r in rows]


def run_scale(train_rows: list[dict[str, str]], work: Path) -> list[dict[str, object]]:
    """``helpline train`` in a child process per (size, label set); see the module docstring."""
    import subprocess

    helpline = Path(sys.executable).with_name("helpline")
    runs: list[dict[str, object]] = []
    for n in SCALE_ROWS:
        sample = random.Random(1).sample(train_rows, min(n, len(train_rows)))
        for label_set in ("intents", "clinc_sized"):
            labels = [r["intent"] for r in sample] if label_set == "intents" else fine_labels(sample)
            rows = [{"instruction": r["instruction"], "label": label} for r, label in zip(sample, labels)]
            data = write_csv(rows, work / f"scale-{n}-{label_set}.csv")
            out = work / f"scale-models-{n}-{label_set}"
            print(f"== helpline train, {len(rows)} rows, {len(set(labels))} labels", file=sys.stderr)
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            child = subprocess.Popen(
                [str(helpline), "train", "--data", str(data), "--text-column", "instruction",
                 "--label-column", "label", "--out", str(out), "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
            stdout = child.stdout.read() if child.stdout else ""
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.perf_counter() - started
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode != 0:
                raise RuntimeError(f"helpline train exited {child.returncode} on {data}")
            report = json.loads(stdout.strip().splitlines()[-1])
            runs.append({
                "rows": len(rows), "labels": len(set(labels)), "label_set": label_set,
                "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                "embed_s": report["embed_s"], "fit_s": report["fit_s"],
                "embed_cpu_s": report["embed_cpu_s"], "fit_cpu_s": report["fit_cpu_s"],
                "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
                "model_mb": round(report["model_bytes"] / 1e6, 2),
                "cv_accuracy": report["accuracy"],
                "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            })
            print(json.dumps(runs[-1]), file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
    return runs


def write_entry(out: Path, key: str, value: object) -> None:
    """Replace ``key`` in ``out/train_bench.json`` (created if missing), keeping the other entries."""
    path = out / "train_bench.json"
    figures = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    figures[key] = value
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2), encoding="utf-8")


def main() -> int:  # noqa: C901 (one linear script)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every 5th row only (smoke run)")
    parser.add_argument("--scale", action="store_true",
                        help="only the training cost at 10,000 and 15,000 rows (child processes)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} not found (the shared data folder is not present)", file=sys.stderr)
        return 2
    if args.scale:
        rows, _ = load_split("train", 1)
        work = Path(tempfile.mkdtemp(prefix="train-scale-"))
        try:
            runs = run_scale(rows, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_entry(args.out, "scale", {
            "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
            "date": time.strftime("%Y-%m-%d"), "runs": runs})
        return 0
    from threadpoolctl import threadpool_limits

    every = 5 if args.quick else 1
    train_rows, train_path = load_split("train", every)
    test_rows, _ = load_split("test", every)
    intents = load_intents(CONFIG_DIR / "intents.yaml")
    embedder = Embedder.load()
    figures: dict[str, object] = {
        "data": {"train": len(train_rows), "test": len(test_rows), "quick": args.quick},
        "machine": {"nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine()},
    }
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    atexit.register(shutil.rmtree, work, True)  # the trained models (tens of MB) are not results
    if args.quick:
        train_path = write_csv(train_rows, work / "train.csv")

    # 1. helpline train on the whole train split (what the CLI runs), then 10,000 rows for timing.
    print("== helpline train on Bitext train", file=sys.stderr)
    report = train_from_file(train_path, text_column="instruction", label_column="intent", intents=intents,
                             out_dir=work / "models", seed=TRAIN_SEED, embedder=embedder)
    figures["helpline_train"] = {"train_report": report.to_json()}
    ten_k = random.Random(1).sample(train_rows, min(TEN_K, len(train_rows)))
    ten_k_report = train_from_file(write_csv(ten_k, work / "train-10k.csv"), text_column="instruction",
                                   label_column="intent", intents=intents, out_dir=work / "models-10k",
                                   embedder=embedder)
    figures["train_10k_rows"] = {
        "rows": ten_k_report.rows, "embed_s": round(ten_k_report.embed_s, 1), "fit_s": round(ten_k_report.fit_s, 1),
        "total_s": round(ten_k_report.embed_s + ten_k_report.fit_s, 1),
        "embed_cpu_s": round(ten_k_report.embed_cpu_s, 1), "fit_cpu_s": round(ten_k_report.fit_cpu_s, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }

    # The same filled train texts the model saw (train_from_file fills in row order from the seed).
    rng = random.Random(TRAIN_SEED)
    train_texts = [fill_placeholders(r.text, rng) for r in
                   load_training_rows(train_path, "instruction", "intent")]
    train_labels = np.array([r["intent"] for r in train_rows])
    rng = random.Random(TEST_SEED)
    test_texts = [fill_placeholders(r["instruction"], rng) for r in test_rows]
    test_labels = np.array([r["intent"] for r in test_rows])

    # 2. Evaluate the saved model as the server loads it; throughput = embed + classify.
    model = load_or_train(CONFIG_DIR / "intents.yaml", work / "unused", embedder, model_dir=report.model_dir)
    started = time.perf_counter()
    test_emb = embedder.embed(test_texts)
    predictions = model.predict_batch(test_texts, test_emb)
    eval_s = time.perf_counter() - started
    print("== shipped model, baselines", file=sys.stderr)
    shipped = load_or_train(CONFIG_DIR / "intents.yaml", work / "shipped", embedder)
    shipped_pred = shipped.predict_batch(test_texts, test_emb)
    train_emb = embed_with_progress(embedder, train_texts)

    results: dict[str, dict[str, object]] = {}
    curves: dict[str, dict[str, list[float]]] = {}

    def score(name: str, pred: np.ndarray, conf: np.ndarray, extra: dict[str, object] | None = None) -> None:
        correct = pred == test_labels
        curve = coverage_curve(correct, conf)
        deflection, threshold = deflection_at(curve, MAX_WRONG)
        curves[name] = curve
        results[name] = {
            "accuracy": round(float(correct.mean()), 4),
            "errors": int((~correct).sum()),
            "macro_f1": round(macro_f1(test_labels, pred), 4),
            "ece_15bins": round(expected_calibration_error(conf, correct), 4),
            f"deflection_at_wrong_le_{MAX_WRONG}": round(deflection, 4),
            f"threshold_at_wrong_le_{MAX_WRONG}": round(threshold, 4),
            **(extra or {}),
        }

    model_bytes = sum(p.stat().st_size for p in report.model_dir.iterdir())
    score("helpline_train", np.array([p.intent for p in predictions]), np.array([p.confidence for p in predictions]), {
        "train_embed_s": round(report.embed_s, 1), "train_fit_s": round(report.fit_s, 1),
        "train_embed_cpu_s": round(report.embed_cpu_s, 1), "train_fit_cpu_s": round(report.fit_cpu_s, 1),
        "model_bytes": model_bytes, "eval_cases_per_s": round(len(test_texts) / eval_s, 1),
        "emb_weight": model.emb_weight, "temperature": round(model.temperature, 4),
        "density_flagged_share": round(float(np.mean([p.out_of_scope for p in predictions])), 4),
    })
    score("shipped", np.array([p.intent for p in shipped_pred]), np.array([p.confidence for p in shipped_pred]), {
        "model_version": shipped.version, "emb_weight": shipped.emb_weight,
        "density_flagged_share": round(float(np.mean([p.out_of_scope for p in shipped_pred])), 4),
    })
    labels = sorted(set(train_labels))
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        proba = tfidf_lr(train_texts, train_labels)(test_texts)
        score("tfidf_lr", np.array(labels)[proba.argmax(1)], proba.max(1), {"fit_s": round(time.perf_counter() - started, 1)})
        started = time.perf_counter()
        proba = embedding_lr(train_emb, train_labels)(test_emb)
        score("embedding_lr", np.array(labels)[proba.argmax(1)], proba.max(1), {"fit_s": round(time.perf_counter() - started, 1)})
        index = {label: i for i, label in enumerate(labels)}
        parts = _fit(train_texts, train_emb, np.array([index[x] for x in train_labels]), len(labels))
        log_emb, log_tfidf = parts.log_probabilities(test_texts, test_emb)
    score("our_tfidf_part", np.array(labels)[log_tfidf.argmax(1)], np.exp(log_tfidf.max(1)))
    score("our_embedding_part", np.array(labels)[log_emb.argmax(1)], np.exp(log_emb.max(1)))
    ours, best_base = results["helpline_train"]["errors"], min(results[b]["errors"] for b in ("tfidf_lr", "embedding_lr"))
    figures["accuracy"] = results
    figures["accuracy_note"] = (
        f"helpline_train {ours} errors vs best classic baseline {best_base} on {len(test_texts)} rows; "
        "differences of a few rows are within noise at this accuracy"
    )

    # 3. Out of scope: held-out intents.
    print("== out of scope", file=sys.stderr)
    draw = random.Random(OOS_SEED)
    held = sorted(draw.sample(labels, OOS_HELD_OUT))
    relabelled = sorted(draw.sample([x for x in labels if x not in held], OOS_LABELLED))
    figures["oos_setup"] = {"seed": OOS_SEED, "held_out_intents": held, "labelled_out_of_scope_intents": relabelled}
    keep = ~np.isin(train_labels, held)
    is_in = ~np.isin(test_labels, held)
    oos: dict[str, dict[str, object]] = {}
    oos_curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def measure(name: str, mask: np.ndarray, pred: np.ndarray, accept_score: np.ndarray) -> None:
        inside = is_in[mask]
        correct = (pred == test_labels[mask]) & inside
        oos[name] = oos_table(inside, correct, accept_score)
        oos_curves[name] = oos_curve(inside, correct, accept_score)

    def train_ours(labels_for_rows: np.ndarray, rows: np.ndarray) -> IntentModel:
        return IntentModel.train_examples([train_texts[i] for i in np.nonzero(rows)[0]], list(labels_for_rows[rows]),
                                          embedder, version="intent-bench", embeddings=train_emb[rows])

    started = time.perf_counter()
    sub = train_ours(train_labels, keep)
    preds = sub.predict_batch(test_texts, test_emb)
    pred = np.array([p.intent for p in preds])
    conf = np.array([p.confidence for p in preds])
    dens = sub.density_scores(test_emb)
    gate = np.array([p.out_of_scope for p in preds])
    everything = np.ones(len(test_texts), dtype=bool)
    measure("helpline_train: max probability", everything, pred, conf)
    measure("helpline_train: oos_score", everything, pred, -np.array([p.oos_score for p in preds]))
    measure("helpline_train: density (nearest-neighbour cosine)", everything, pred, -dens)
    measure("helpline_train: max probability + fitted out-of-scope flag", everything, pred, np.where(gate, -1.0, conf))
    measure("helpline_train: max probability x (1 - density)", everything, pred, conf * (1.0 - dens))
    sub_labels = sorted(set(train_labels[keep]))
    with threadpool_limits(limits=1):
        proba = tfidf_lr([train_texts[i] for i in np.nonzero(keep)[0]], train_labels[keep])(test_texts)
        measure("tfidf_lr: max probability", everything, np.array(sub_labels)[proba.argmax(1)], proba.max(1))
        proba = embedding_lr(train_emb[keep], train_labels[keep])(test_emb)
        measure("embedding_lr: max probability", everything, np.array(sub_labels)[proba.argmax(1)], proba.max(1))

    # Method (a): an out-of-scope class. Test rows of the relabelled intents are excluded (they are
    # seen out-of-scope kinds); in scope = the other intents, out of scope = the unseen held-out ones.
    a_mask = ~np.isin(test_labels, relabelled)
    with_class = np.where(np.isin(train_labels, relabelled), OUT_OF_SCOPE, train_labels)
    model_a = train_ours(with_class, keep)
    without = train_ours(train_labels, keep & ~np.isin(train_labels, relabelled))
    for name, m in (("with an out_of_scope class", model_a), ("without (same in-scope intents)", without)):
        preds = m.predict_batch([test_texts[i] for i in np.nonzero(a_mask)[0]], test_emb[a_mask])
        pred = np.array([p.intent for p in preds])
        conf = np.array([p.confidence for p in preds])
        dens = m.density_scores(test_emb[a_mask])
        accept = np.where(pred == OUT_OF_SCOPE, -1.0, conf)
        measure(f"method (a) {name}: max probability", a_mask, pred, accept)
        measure(f"method (a) {name}: max probability x (1 - density)", a_mask, pred,
                np.where(pred == OUT_OF_SCOPE, -1.0, conf * (1.0 - dens)))
    figures["oos"] = oos
    figures["oos_time_s"] = round(time.perf_counter() - started, 1)

    # 4. Plots and JSON.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in ("helpline_train", "shipped", "tfidf_lr", "embedding_lr"):
        c = curves[name]
        ax.plot(np.array(c["wrong"]) * 100, np.array(c["deflection"]) * 100, label=f"{name} ({results[name]['accuracy']:.2%})")
    ax.axvline(MAX_WRONG * 100, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 3)
    ax.set_xlabel("wrong answers (% of all test rows)")
    ax.set_ylabel("deflection: answered (% of test rows)")
    ax.set_title("Bitext test: coverage vs wrong answers over confidence thresholds")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "train_coverage.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (acc, rec) in oos_curves.items():
        if name.startswith("method (a)"):
            continue
        ax.plot(acc * 100, rec * 100, label=name)
    ax.set_xlim(85, 100)
    ax.set_xlabel("in-scope accuracy (% of in-scope rows accepted and correct)")
    ax.set_ylabel("out-of-scope recall (% rejected)")
    ax.set_title(f"Bitext test, held-out intents as out of scope:\n{', '.join(held)}", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "train_oos.png", dpi=120)
    plt.close(fig)

    figures["curves"] = {name: thin(c) for name, c in curves.items() if name in ("helpline_train", "shipped")}
    (args.out / ("train_bench_quick.json" if args.quick else "train_bench.json")).write_text(
        json.dumps(figures, indent=2), encoding="utf-8")

    print(f"\n{'model':22s} {'accuracy':>9s} {'errors':>6s} {'macro-F1':>8s} {'defl@<=1%':>9s}")
    for name, r in results.items():
        print(f"{name:22s} {r['accuracy']:9.2%} {r['errors']:6d} {r['macro_f1']:8.4f} "
              f"{r[f'deflection_at_wrong_le_{MAX_WRONG}']:9.2%}")
    h = results["helpline_train"]
    k10 = figures["train_10k_rows"]
    print(f"helpline train: embed {h['train_embed_s']} s + fit {h['train_fit_s']} s on {len(train_texts)} rows "
          f"(CPU {h['train_embed_cpu_s']} + {h['train_fit_cpu_s']} s); 10,000 rows: {k10['total_s']} s "
          f"(CPU {k10['embed_cpu_s']} + {k10['fit_cpu_s']} s, load average {k10['load_average_1min']}); "
          f"model {h['model_bytes'] / 1e6:.1f} MB; eval {h['eval_cases_per_s']} cases/s")
    print(f"\nout of scope (held out: {', '.join(held)}): OOS recall at in-scope accuracy "
          + " / ".join(str(t) for t in IN_SCOPE_TARGETS) + ", AUROC")
    for name, r in oos.items():
        cells = " / ".join("-" if r[f"oos_recall_at_{t}"] is None else f"{r[f'oos_recall_at_{t}']:.3f}"
                           for t in IN_SCOPE_TARGETS)
        print(f"  {name:62s} {cells}   {r['auroc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
