"""``helpline train``: the intent model trained on a team's own labelled messages.

Reads a CSV or JSONL file of (text, label) rows, checks it strictly (any bad row is an error naming its
line and field, and nothing is written), fills Bitext-style ``{{Placeholder}}`` slots with realistic
values (:func:`bot.placeholders.fill_placeholders`, seeded), embeds the texts with a progress bar,
fits :meth:`bot.intent_model.IntentModel.train_examples` (5 cross-validation fits, then one on every
row, with a second progress bar), and saves the model as ``OUT/intent-<hash>``: the hash covers the
rows, the tiers, the seed, the embedding model and the training code, like the model trained from
``config/intents.yaml``. Point ``HELPLINE_INTENT_MODEL_DIR`` at that folder to serve it.

The report (:class:`TrainingReport`) is computed on cross-validated predictions: every row is
predicted once by a model fitted on the other four fifths (stratified by label), with precision,
recall and F1 per label, worst first; ``--validation FILE`` adds the same figures on a file the model
never saw. :func:`predict_file` (``helpline predict``) runs a saved model over a file.

Labels: any non-empty string; ``out_of_scope`` or ``oos`` (any case) train the out-of-scope class.
A label may have fewer rows than there are folds (even one): it is trained, and its cross-validated
figures are pessimistic (folds without it cannot predict it); the report warns. Each label's tier
comes from ``--tiers`` (YAML ``label: tier``) or else from the intents file; labels with neither get
:data:`bot.intent_model.DEFAULT_TIER` (``retrieval``: answered from the knowledge base), saved with
the model and listed in a warning.

Must not: touch the database or the network, or write anything before the input is fully checked.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bot.embeddings import Embedder
from bot.intent_model import (
    CV_FOLDS,
    DEFAULT_TIER,
    OUT_OF_SCOPE,
    TIERS,
    IntentModel,
    IntentSpec,
    canonical_label,
    model_version,
    save_versioned,
)
from bot.placeholders import fill_placeholders
from config.files import DataFileError, read_message_rows

EMBED_CHUNK = 512
"""Texts per embedding call: one progress-bar step (the embedder batches them by 64 inside)."""
WORST_LABELS = 5
"""Labels listed in the report, lowest F1 first."""


class TrainingDataError(ValueError):
    """The training file, the tiers file or the options cannot be used; the message names the file,
    the line and the field. The CLI prints it and exits with status 2; nothing has been written."""


@dataclass(frozen=True)
class TrainingRow:
    """One labelled message. ``line``: where it starts in the file (1 = first line, a CSV header
    included); ``text`` as in the file (placeholders not filled); ``label`` canonical
    (:func:`bot.intent_model.canonical_label`)."""

    line: int
    text: str
    label: str


@dataclass(frozen=True)
class LabelScore:
    """Figures for one label: ``support`` rows, ``correct`` of them predicted as this label,
    ``precision``, ``recall``, ``f1`` (0..1), and the label its rows were most often mistaken for
    (None if never)."""

    label: str
    support: int
    correct: int
    precision: float
    recall: float
    f1: float
    confused_with: str | None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "support": self.support, "correct": self.correct,
                "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4), "confused_with": self.confused_with}


@dataclass(frozen=True)
class Validation:
    """Figures of the saved model on a ``--validation`` file it never saw: ``rows``, ``accuracy``,
    ``macro_f1`` (over the labels of that file), ``per_class`` (worst F1 first), ``flagged_out_of_scope``
    (share of rows the model marks ``out_of_scope``), ``unknown_labels`` (label -> rows for labels the
    model was not trained on: always wrong)."""

    data: Path
    rows: int
    accuracy: float
    macro_f1: float
    per_class: list[LabelScore]
    flagged_out_of_scope: float
    unknown_labels: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"data": str(self.data), "rows": self.rows, "accuracy": round(self.accuracy, 4),
                "macro_f1": round(self.macro_f1, 4), "per_class": [c.to_json() for c in self.per_class],
                "flagged_out_of_scope": round(self.flagged_out_of_scope, 4), "unknown_labels": self.unknown_labels}


@dataclass
class TrainingReport:
    """What ``helpline train`` did. Accuracy, macro-F1 and the label scores (``per_class``, worst F1
    first; ``worst`` its first ``WORST_LABELS``) are cross-validated (every row predicted once by a
    model that did not see it). ``unknown_labels``: label -> rows for labels that had no tier (neither
    ``--tiers`` nor the intents file) and got ``DEFAULT_TIER``. ``validation``: figures on
    ``--validation`` (None without). ``oos_*``: the out-of-scope flag threshold (on ``oos_score``) and
    the share of cross-validated rows above it, in scope and (when the data has an
    out-of-scope class) out of scope; ``oos_class_recall``: share of out-of-scope rows predicted as
    the out-of-scope class (None without one). Times in seconds, wall clock (``*_s``) and CPU of this
    process, all threads (``*_cpu_s``: what a busy machine does not inflate); ``model_bytes`` on disk."""

    data: Path
    model_dir: Path
    version: str
    rows: int
    labels: dict[str, int]
    accuracy: float
    macro_f1: float
    worst: list[LabelScore]
    per_class: list[LabelScore]
    unknown_labels: dict[str, int]
    tiers: dict[str, str]
    oos_threshold: float
    oos_flagged_in_scope: float
    oos_flagged_out_of_scope: float | None
    oos_class_recall: float | None
    embed_s: float
    fit_s: float
    embed_cpu_s: float
    fit_cpu_s: float
    model_bytes: int
    reused: bool = False
    warnings: list[str] = field(default_factory=list)
    validation: Validation | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able figures (``helpline train --json`` prints this as its last line)."""
        return {
            "model_dir": str(self.model_dir),
            "version": self.version,
            "rows": self.rows,
            "labels": len(self.labels),
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "worst_labels": [s.to_json() for s in self.worst],
            "per_class": [s.to_json() for s in self.per_class],
            "validation": self.validation.to_json() if self.validation else None,
            "unknown_labels": self.unknown_labels,
            "oos_threshold": round(self.oos_threshold, 4),
            "oos_flagged_in_scope": round(self.oos_flagged_in_scope, 4),
            "oos_flagged_out_of_scope": _round(self.oos_flagged_out_of_scope),
            "oos_class_recall": _round(self.oos_class_recall),
            "embed_s": round(self.embed_s, 2),
            "fit_s": round(self.fit_s, 2),
            "embed_cpu_s": round(self.embed_cpu_s, 2),
            "fit_cpu_s": round(self.fit_cpu_s, 2),
            "model_bytes": self.model_bytes,
            "warnings": self.warnings,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --- input ------------------------------------------------------------------------------------------


def load_training_rows(path: Path, text_column: str, label_column: str) -> list[TrainingRow]:
    """Every row of a ``.csv`` (with a header) or ``.jsonl`` training file, checked strictly.

    Returns:
        the rows in file order, labels canonical.
    Raises:
        TrainingDataError: no such file, unknown suffix, not UTF-8 (line and field), a missing column
            (the available ones listed), a malformed JSONL line or CSV row, an empty or missing text
            or label (each with its line number and field), or no rows at all. Up to five bad rows
            are named, with the total count.
    """
    path = Path(path)
    try:
        loaded, bad = read_message_rows(path, text_column, label_column, purpose="train on")
    except DataFileError as exc:
        raise TrainingDataError(str(exc)) from None
    rows: list[TrainingRow] = []
    for row in loaded:
        if row.label is None:
            bad.append(f"line {row.line}: field {label_column!r} is missing or empty")
        else:
            rows.append(TrainingRow(row.line, row.text, canonical_label(row.label)))
    if bad:
        bad.sort(key=lambda b: int(b.split(":")[0].split()[1]))
        shown = "; ".join(bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise TrainingDataError(f"{path}: {len(bad)} bad row(s): {shown}{more}")
    return rows


def load_tiers(path: Path, intents: dict[str, IntentSpec]) -> dict[str, str]:
    """Read a tiers file: YAML mapping ``label: tier``, tiers from :data:`bot.intent_model.TIERS`.

    Raises:
        TrainingDataError: unreadable or not a mapping; a tier not in TIERS (names the label and the
            line); ``deterministic`` for a label the intents file does not already have as
            deterministic (a deterministic intent needs a ``reply`` or ``handler`` there).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise TrainingDataError(f"{path}: cannot read the tiers file ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TrainingDataError(f"{path}: the tiers file is not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise TrainingDataError(f"{path}: the tiers file must be a YAML mapping 'label: tier'")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    tiers: dict[str, str] = {}
    for raw_label, tier in data.items():
        label = canonical_label(str(raw_label))
        where = f"{path}: line {lines.get(str(raw_label), '?')}: label {label!r}"
        if tier not in TIERS:
            raise TrainingDataError(f"{where}: field 'tier': {tier!r} is not one of {', '.join(TIERS)}")
        spec = intents.get(label)
        if tier == "deterministic" and (spec is None or spec.tier != "deterministic"):
            raise TrainingDataError(
                f"{where}: field 'tier': a deterministic intent needs a reply or handler: add the intent "
                "to the intents file, or give it another tier"
            )
        tiers[label] = tier
    return tiers


def data_version(rows: Sequence[TrainingRow], tiers: dict[str, str], seed: int, embedder_model_id: str) -> str:
    """``intent-<12 hex>``: hash of the rows (text, label), the tiers, the placeholder seed, the
    embedding model and the training code (:func:`bot.intent_model.model_version`)."""
    canonical = json.dumps(
        {"rows": [[r.text, r.label] for r in rows], "tiers": sorted(tiers.items()), "seed": seed},
        ensure_ascii=False,
    )
    return model_version(canonical, embedder_model_id)


# --- training ---------------------------------------------------------------------------------------


def embed_with_progress(embedder: Embedder, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
    """``embedder.embed(texts)`` in chunks of EMBED_CHUNK (longest-similar texts together), with a tqdm
    bar on stderr. Returns ``(len(texts), 384)`` float32, rows in the order of ``texts``."""
    from tqdm import tqdm

    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with tqdm(total=len(texts), desc="embedding", unit="text", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(order), EMBED_CHUNK):
            idx = order[start : start + EMBED_CHUNK]
            out[idx] = embedder.embed([texts[i] for i in idx])
            bar.update(len(idx))
    return out


def label_scores(y: np.ndarray, predicted: np.ndarray, labels: Sequence[str]) -> list[LabelScore]:
    """Per-label support, correct count, precision, recall, F1 and most frequent confusion, worst F1
    first (ties by label); ``y``/``predicted``: indices into ``labels``, shape ``(n,)``. Labels with
    no rows in ``y`` are left out."""
    from sklearn.metrics import precision_recall_fscore_support

    index = list(range(len(labels)))
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, labels=index, zero_division=0)
    confusions = Counter((int(t), int(p)) for t, p in zip(y, predicted) if t != p)
    scores = []
    for i, label in enumerate(labels):
        mask = y == i
        if not mask.any():
            continue
        mistaken = [(n, p) for (t, p), n in confusions.items() if t == i]
        scores.append(LabelScore(
            label=label, support=int(mask.sum()), correct=int((predicted[mask] == i).sum()),
            precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]),
            confused_with=labels[max(mistaken)[1]] if mistaken else None,
        ))
    return sorted(scores, key=lambda s: (s.f1, s.label))


def train_from_file(
    data: Path,
    *,
    text_column: str,
    label_column: str,
    intents: dict[str, IntentSpec],
    out_dir: Path,
    tiers_file: Path | None = None,
    seed: int = 0,
    add_config_examples: bool = False,
    embedder: Embedder | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    validation: Path | None = None,
) -> TrainingReport:
    """Check, train, save; see the module docstring. About 1.5 s per 1,000 rows embedding plus
    1.5 s per 1,000 rows fitting on 2 cores (10,000 rows: about 30 s).

    Args:
        data: the ``.csv`` or ``.jsonl`` file.
        text_column, label_column: column (CSV) or field (JSONL) names.
        intents: the intents config (``load_intents(settings.intents_file)``): known labels and tiers.
        out_dir: the models folder; the model goes to ``out_dir/<version>``.
        tiers_file: optional YAML ``label: tier``.
        seed: placeholder filling seed (part of the version).
        add_config_examples: also train every intent of ``intents`` that has no row in the data on its
            examples from the intents file (small talk, handoff and out-of-scope intents a team's
            ticket export rarely holds); they are part of the data version.
        embedder: reused when given (tests, benchmarks); loaded otherwise.
        progress: show tqdm bars on stderr.
        log: called with each warning line as it arises (the CLI echoes them to stderr).
        validation: a file with the same columns, scored by the saved model (``report.validation``);
            checked before anything is trained.
    Raises:
        TrainingDataError: see :func:`load_training_rows` and :func:`load_tiers` (also for
            ``validation``), fewer than ``CV_FOLDS`` rows in all, or fewer than two labels. Nothing
            is written then.
    """
    from tqdm import tqdm

    rows = load_training_rows(data, text_column, label_column)
    in_data = {r.label for r in rows}
    missing = [name for name in intents if name not in in_data]
    if add_config_examples:
        rows += [TrainingRow(0, example, name) for name in missing for example in intents[name].examples]
        missing = []
    tiers_given = load_tiers(tiers_file, intents) if tiers_file is not None else {}
    valid_rows = load_training_rows(validation, text_column, label_column) if validation is not None else None
    counts = Counter(r.label for r in rows)
    if len(rows) < CV_FOLDS:
        raise TrainingDataError(f"{data}: {len(rows)} rows; at least {CV_FOLDS} are needed (one per "
                                "cross-validation fold)")
    if len(counts) < 2:
        raise TrainingDataError(f"{data}: field {label_column!r}: at least two labels are needed, found {list(counts)}")

    warnings: list[str] = []

    def warn(line: str) -> None:
        warnings.append(line)
        if log is not None:
            log(line)

    few = [f"{label} ({n})" for label, n in sorted(counts.items()) if n < CV_FOLDS]
    if few:
        warn(f"{len(few)} label(s) have fewer than {CV_FOLDS} rows: trained, but their cross-validated "
             f"figures are pessimistic (the folds without them cannot predict them); add rows: {', '.join(few)}")
    if missing:
        warn(f"{len(missing)} intent(s) of the intents file have no rows, so the model never predicts them "
             f"(add rows, or --add-config-examples to train them on the intents file's examples): "
             f"{', '.join(missing)}")
    unused = sorted(set(tiers_given) - set(counts))
    if unused:
        warn(f"tiers file labels not in the data (ignored): {', '.join(unused)}")
    tiers = {label: tiers_given.get(label) or intents[label].tier for label in counts
             if label in tiers_given or label in intents}
    unknown = {label: n for label, n in sorted(counts.items()) if label not in tiers and label != OUT_OF_SCOPE}
    if unknown:
        listed = ", ".join(f"{label} ({n} rows)" for label, n in unknown.items())
        warn(f"{len(unknown)} label(s) have no tier (not in the intents file, not in --tiers) and get "
             f"'{DEFAULT_TIER}' (answered from the knowledge base): {listed}")
        tiers.update({label: DEFAULT_TIER for label in unknown})

    embedder = embedder or Embedder.load()
    version = data_version(rows, tiers, seed, embedder.model_id)
    valid_texts = _filled([r.text for r in valid_rows], seed + 1) if valid_rows else []
    texts = _filled([r.text for r in rows], seed)
    labels = [r.label for r in rows]

    started, started_cpu = time.perf_counter(), time.process_time()
    embeddings = embed_with_progress(embedder, texts, progress=progress)
    embed_s, embed_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    started, started_cpu = time.perf_counter(), time.process_time()
    with tqdm(total=CV_FOLDS + 1, desc="fitting", unit="fit", file=sys.stderr, disable=not progress) as bar:
        try:
            model = IntentModel.train_examples(
                texts, labels, embedder, version=version, embeddings=embeddings, tiers=tiers,
                info={"data": Path(data).name, "rows": len(rows), "seed": seed},
                on_step=lambda step: (bar.set_postfix_str(step), bar.update(1)),
            )
        except ValueError as exc:
            raise TrainingDataError(f"{data}: {exc}") from None
    fit_s, fit_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu

    reused = (Path(out_dir) / version / "meta.json").is_file()
    model_dir = save_versioned(model, Path(out_dir))
    report = _report(Path(data), model, model_dir, tiers, unknown, (embed_s, fit_s, embed_cpu_s, fit_cpu_s),
                     reused, warnings)
    if valid_rows:
        valid_emb = embed_with_progress(embedder, valid_texts, progress=progress)
        report.validation = validate(model, validation, valid_texts, [r.label for r in valid_rows], valid_emb)
    return report


def _filled(texts: Sequence[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [fill_placeholders(text, rng) for text in texts]


def validate(model: IntentModel, data: Path, texts: Sequence[str], labels: Sequence[str],
             embeddings: np.ndarray | None = None) -> Validation:
    """Score ``model`` on labelled ``texts`` it never saw (``embeddings``: their ``(n, 384)`` rows, or
    None to embed here). Accuracy counts a row right when the predicted intent equals its label;
    labels the model does not know are always wrong (listed in ``unknown_labels``)."""
    from sklearn.metrics import f1_score

    predictions = model.predict_batch(texts, embeddings)
    names = list(model.labels) + sorted(set(labels) - set(model.labels))
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[label] for label in labels])
    predicted = np.array([index[p.intent] for p in predictions])
    present = sorted(set(y.tolist()))
    return Validation(
        data=Path(data), rows=len(texts), accuracy=float((y == predicted).mean()),
        macro_f1=float(f1_score(y, predicted, labels=present, average="macro", zero_division=0)),
        per_class=label_scores(y, predicted, names),
        flagged_out_of_scope=float(np.mean([p.out_of_scope for p in predictions])),
        unknown_labels=dict(sorted(Counter(label for label in labels if label not in model.labels).items())),
    )


def _report(data: Path, model: IntentModel, model_dir: Path, tiers: dict[str, str],
            unknown: dict[str, int], times: tuple[float, float, float, float], reused: bool,
            warnings: list[str]) -> TrainingReport:
    from sklearn.metrics import accuracy_score, f1_score

    held = model.held_out
    assert held is not None  # a freshly trained model always has its cross-validated predictions
    predicted = held.probabilities.argmax(axis=1)
    scores = label_scores(held.y, predicted, model.labels)
    oos_index = model.labels.index(OUT_OF_SCOPE) if OUT_OF_SCOPE in model.labels else None
    in_scope = held.y != oos_index if oos_index is not None else np.ones(len(held.y), dtype=bool)
    flagged = held.oos_scores > model.oos_threshold
    return TrainingReport(
        data=data,
        model_dir=model_dir,
        version=model.version,
        rows=len(held.y),
        labels={s.label: s.support for s in scores},
        accuracy=float(accuracy_score(held.y, predicted)),
        macro_f1=float(f1_score(held.y, predicted, average="macro")),
        worst=scores[:WORST_LABELS],
        per_class=scores,
        unknown_labels=unknown,
        tiers=tiers,
        oos_threshold=model.oos_threshold,
        oos_flagged_in_scope=float(flagged[in_scope].mean()),
        oos_flagged_out_of_scope=float(flagged[~in_scope].mean()) if (~in_scope).any() else None,
        oos_class_recall=float((predicted[~in_scope] == oos_index).mean()) if (~in_scope).any() else None,
        embed_s=times[0],
        fit_s=times[1],
        embed_cpu_s=times[2],
        fit_cpu_s=times[3],
        model_bytes=sum(p.stat().st_size for p in model_dir.iterdir()),
        reused=reused,
        warnings=warnings,
    )


def _class_table(scores: Sequence[LabelScore]) -> list[str]:
    rows = [f"  {'label':30s} {'prec':>5s} {'recall':>6s} {'F1':>5s} {'right/rows':>10s}  most often mistaken for"]
    rows += [f"  {s.label:30s} {s.precision:5.3f} {s.recall:6.3f} {s.f1:5.3f} {f'{s.correct}/{s.support}':>10s}  "
             f"{s.confused_with or '-'}" for s in scores]
    return rows


def format_report(report: TrainingReport) -> str:
    """The human-readable report ``helpline train`` prints (several lines, no trailing newline).
    Warnings are not repeated here: ``train_from_file`` hands them to its ``log`` as they arise."""
    lines = [
        (f"trained on {report.rows} rows, {len(report.labels)} labels from {report.data.name} "
         f"(embedding {report.embed_s:.1f} s, fitting {report.fit_s:.1f} s; CPU "
         f"{report.embed_cpu_s:.1f} + {report.fit_cpu_s:.1f} s)"),
        (f"held-out ({CV_FOLDS}-fold cross-validation, stratified): accuracy {report.accuracy:.2%}, "
         f"macro-F1 {report.macro_f1:.4f}"),
        "per label, worst first:",
        *_class_table(report.per_class),
    ]
    if report.validation is not None:
        v = report.validation
        lines += [f"validation on {v.data.name} ({v.rows} rows the model never saw): accuracy {v.accuracy:.2%}, "
                  f"macro-F1 {v.macro_f1:.4f}, flagged out of scope {v.flagged_out_of_scope:.1%}"
                  + (f"; labels the model does not know (always wrong): {v.unknown_labels}" if v.unknown_labels else ""),
                  "validation per label, worst first:", *_class_table(v.per_class)]
    lines.append(
        f"out of scope: flag threshold {report.oos_threshold:.3f} on oos_score (1 - confidence x (1 - "
        f"density)^w); above it: {report.oos_flagged_in_scope:.1%} of in-scope rows"
        + (f", {report.oos_flagged_out_of_scope:.1%} of {OUT_OF_SCOPE} rows; {OUT_OF_SCOPE} class recall "
           f"{report.oos_class_recall:.1%}" if report.oos_class_recall is not None else "")
    )
    state = "already saved (same data and code)" if report.reused else "saved"
    lines.append(f"model {report.version} {state}: {report.model_dir} ({report.model_bytes / 1e6:.1f} MB)")
    lines.append(f"serve it with: HELPLINE_INTENT_MODEL_DIR={report.model_dir}")
    return "\n".join(lines)


# --- batch prediction -------------------------------------------------------------------------------

PREDICT_FIELDS = ("line", "text", "intent", "confidence", "oos_score", "out_of_scope")


def predict_file(model: IntentModel, embedder: Embedder, data: Path, text_column: str, out: Path, *,
                 seed: int = 0, progress: bool = True) -> int:
    """``helpline predict``: classify every row of a ``.csv``/``.jsonl`` file (same reading rules as
    :func:`load_training_rows`, no label needed; placeholders filled with ``seed``) and write one
    record per row to ``out`` (``.csv`` with a header, or ``.jsonl``): :data:`PREDICT_FIELDS`, where
    ``line`` is the row's line in ``data``, ``text`` the text as in the file, ``confidence`` and
    ``oos_score`` in 0..1, ``out_of_scope`` a bool. Returns the number of rows.

    Raises:
        TrainingDataError: the input cannot be read (names the line and field), or ``out`` has
            another suffix. Nothing is written then.
    """
    import csv

    out = Path(out)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise TrainingDataError(f"{out}: the output must be a .csv or .jsonl file")
    try:
        rows, bad = read_message_rows(Path(data), text_column, None, purpose="predict")
    except DataFileError as exc:
        raise TrainingDataError(str(exc)) from None
    if bad:
        raise TrainingDataError(f"{data}: {len(bad)} bad row(s): {'; '.join(bad[:5])}")
    texts = _filled([r.text for r in rows], seed)
    embeddings = embed_with_progress(embedder, texts, progress=progress)
    predictions = model.predict_batch(texts, embeddings)
    records = [
        {"line": r.line, "text": r.text, "intent": p.intent, "confidence": round(p.confidence, 6),
         "oos_score": round(p.oos_score, 6), "out_of_scope": p.out_of_scope}
        for r, p in zip(rows, predictions)
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as fh:
        if out.suffix.lower() == ".jsonl":
            fh.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        else:
            writer = csv.DictWriter(fh, fieldnames=PREDICT_FIELDS)
            writer.writeheader()
            writer.writerows(records)
    return len(records)
