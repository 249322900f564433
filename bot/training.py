"""``helpline train``: the intent model trained on a team's own labelled messages.

Reads a CSV or JSONL file of (text, label) rows, checks it strictly (any bad row is an error naming its
line and field, and nothing is written), fills Bitext-style ``{{Placeholder}}`` slots with realistic
values (:func:`bot.placeholders.fill_placeholders`, seeded), embeds the texts with a progress bar,
fits :meth:`bot.intent_model.IntentModel.train_examples` (5 cross-validation fits, then one on every
row, with a second progress bar), and saves the model as ``OUT/intent-<hash>``: the hash covers the
rows, the tiers, the seed, the embedding model and the training code, like the model trained from
``config/intents.yaml``. Point ``HELPLINE_INTENT_MODEL_DIR`` at that folder to serve it.

The report (:class:`TrainingReport`) is computed on cross-validated predictions: every row is
predicted once by a model fitted on the other four fifths (stratified by label).

Labels: any non-empty string; ``out_of_scope`` or ``oos`` (any case) train the out-of-scope class.
Each label's tier comes from ``--tiers`` (YAML ``label: tier``) or else from the intents file; labels
with neither are listed in the report (the router sends them to a person, reason ``unknown_intent_no_reasoning_tier``).

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
    """Cross-validated figures for one label: ``support`` rows, ``correct`` of them predicted as
    this label, ``f1`` (0..1), and the label its rows were most often mistaken for (None if never)."""

    label: str
    support: int
    correct: int
    f1: float
    confused_with: str | None


@dataclass
class TrainingReport:
    """What ``helpline train`` did. Accuracy, macro-F1 and the label scores are cross-validated
    (every row predicted once by a model that did not see it). ``unknown_labels``: label -> rows for
    labels that have no tier (neither ``--tiers`` nor the intents file). ``oos_*``: the density
    threshold and the share of cross-validated rows above it, in scope and (when the data has an
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

    def to_json(self) -> dict[str, Any]:
        """JSON-able figures (``helpline train --json`` prints this as its last line)."""
        return {
            "model_dir": str(self.model_dir),
            "version": self.version,
            "rows": self.rows,
            "labels": len(self.labels),
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "worst_labels": [
                {"label": s.label, "support": s.support, "correct": s.correct, "f1": round(s.f1, 4),
                 "confused_with": s.confused_with}
                for s in self.worst
            ],
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
    """Per-label support, correct count, F1 and most frequent confusion; ``y``/``predicted``: label
    indices, shape ``(n,)``."""
    from sklearn.metrics import f1_score

    f1 = f1_score(y, predicted, labels=list(range(len(labels))), average=None, zero_division=0)
    confusions = Counter((int(t), int(p)) for t, p in zip(y, predicted) if t != p)
    scores = []
    for i, label in enumerate(labels):
        mask = y == i
        mistaken = [(n, p) for (t, p), n in confusions.items() if t == i]
        scores.append(LabelScore(
            label=label, support=int(mask.sum()), correct=int((predicted[mask] == i).sum()),
            f1=float(f1[i]), confused_with=labels[max(mistaken)[1]] if mistaken else None,
        ))
    return scores


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
    Raises:
        TrainingDataError: see :func:`load_training_rows` and :func:`load_tiers`, and labels with
            fewer than ``CV_FOLDS`` rows or fewer than two labels. Nothing is written then.
    """
    from tqdm import tqdm

    rows = load_training_rows(data, text_column, label_column)
    in_data = {r.label for r in rows}
    missing = [name for name in intents if name not in in_data]
    if add_config_examples:
        rows += [TrainingRow(0, example, name) for name in missing for example in intents[name].examples]
        missing = []
    tiers_given = load_tiers(tiers_file, intents) if tiers_file is not None else {}
    counts = Counter(r.label for r in rows)
    few = [f"{label!r} has {n}" for label, n in counts.items() if n < CV_FOLDS]
    if few:
        raise TrainingDataError(
            f"{data}: field {label_column!r}: every label needs at least {CV_FOLDS} rows (one per "
            f"cross-validation fold): {', '.join(few)}"
        )
    if len(counts) < 2:
        raise TrainingDataError(f"{data}: field {label_column!r}: at least two labels are needed, found {list(counts)}")

    warnings: list[str] = []

    def warn(line: str) -> None:
        warnings.append(line)
        if log is not None:
            log(line)

    if missing:
        warn(f"{len(missing)} intent(s) of the intents file have no rows, so the model never predicts them "
             f"(add rows, or --add-config-examples to train them on the intents file's examples): "
             f"{', '.join(missing)}")
    unused = sorted(set(tiers_given) - set(counts))
    if unused:
        warn(f"tiers file labels not in the data (ignored): {', '.join(unused)}")
    tiers = {label: tiers_given.get(label) or intents[label].tier for label in counts
             if label in tiers_given or label in intents}
    unknown = {label: n for label, n in sorted(counts.items()) if label not in tiers}
    if unknown:
        listed = ", ".join(f"{label} ({n} rows)" for label, n in unknown.items())
        warn(f"{len(unknown)} label(s) have no tier (not in the intents file, not in --tiers); the router "
             f"sends them to a person (reason unknown_intent_no_reasoning_tier): {listed}")

    embedder = embedder or Embedder.load()
    version = data_version(rows, tiers, seed, embedder.model_id)
    rng = random.Random(seed)
    texts = [fill_placeholders(r.text, rng) for r in rows]
    labels = [r.label for r in rows]

    started, started_cpu = time.perf_counter(), time.process_time()
    embeddings = embed_with_progress(embedder, texts, progress=progress)
    embed_s, embed_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    started, started_cpu = time.perf_counter(), time.process_time()
    with tqdm(total=CV_FOLDS + 1, desc="fitting", unit="fit", file=sys.stderr, disable=not progress) as bar:
        model = IntentModel.train_examples(
            texts, labels, embedder, version=version, embeddings=embeddings, tiers=tiers,
            info={"data": Path(data).name, "rows": len(rows), "seed": seed},
            on_step=lambda step: (bar.set_postfix_str(step), bar.update(1)),
        )
    fit_s, fit_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu

    reused = (Path(out_dir) / version / "meta.json").is_file()
    model_dir = save_versioned(model, Path(out_dir))
    return _report(Path(data), model, model_dir, tiers, unknown, (embed_s, fit_s, embed_cpu_s, fit_cpu_s),
                   reused, warnings)


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
        worst=sorted(scores, key=lambda s: (s.f1, s.label))[:WORST_LABELS],
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


def format_report(report: TrainingReport) -> str:
    """The human-readable report ``helpline train`` prints (several lines, no trailing newline).
    Warnings are not repeated here: ``train_from_file`` hands them to its ``log`` as they arise."""
    lines = [
        (f"trained on {report.rows} rows, {len(report.labels)} labels from {report.data.name} "
         f"(embedding {report.embed_s:.1f} s, fitting {report.fit_s:.1f} s; CPU "
         f"{report.embed_cpu_s:.1f} + {report.fit_cpu_s:.1f} s)"),
        (f"held-out ({CV_FOLDS}-fold cross-validation, stratified): accuracy {report.accuracy:.2%}, "
         f"macro-F1 {report.macro_f1:.4f}"),
        "worst labels (F1, correct/rows, most often mistaken for):",
    ]
    for s in report.worst:
        lines.append(f"  {s.label:30s} {s.f1:.3f}  {s.correct}/{s.support}  {s.confused_with or '-'}")
    lines.append(
        f"out of scope: density threshold {report.oos_threshold:.3f} (1 - cosine to the nearest training "
        f"example); above it: {report.oos_flagged_in_scope:.1%} of in-scope rows"
        + (f", {report.oos_flagged_out_of_scope:.1%} of {OUT_OF_SCOPE} rows; {OUT_OF_SCOPE} class recall "
           f"{report.oos_class_recall:.1%}" if report.oos_class_recall is not None else "")
    )
    state = "already saved (same data and code)" if report.reused else "saved"
    lines.append(f"model {report.version} {state}: {report.model_dir} ({report.model_bytes / 1e6:.1f} MB)")
    lines.append(f"serve it with: HELPLINE_INTENT_MODEL_DIR={report.model_dir}")
    return "\n".join(lines)
