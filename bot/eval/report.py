"""Eval output: the text summary, the failure list, and the Markdown report with PNG plots.

``write_report(folder, ...)`` writes ``report.md``, ``curve.png`` (deflection and wrong-answer rate
across confidence thresholds), ``reliability.png`` (reliability diagram of the last turn's intent
confidence), ``confusion.png`` (expected x predicted intents) and ``cases.jsonl`` (every case's
turns, replies, judgments and groundedness). Plots use matplotlib's Agg backend (no display).

Must not: compute metrics (:mod:`bot.eval.metrics`) or run cases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bot.eval.calibrate import CurvePoint
from bot.eval.gates import GateResult
from bot.eval.metrics import reliability_bins, worst_intents
from bot.eval.outcome import CaseOutcome


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _tiers(by_tier: Mapping[str, Mapping[str, Any]], key: str, money: bool = False) -> str:
    parts = []
    for tier, row in by_tier.items():
        value = row.get(key)
        parts.append(f"{tier} {'$' if money else ''}{_f(value, 6 if money else 1)}")
    return ", ".join(parts) or "n/a"


def summary_lines(summary: Mapping[str, Any], source: str) -> list[str]:
    """The readable summary, one metric group per line."""
    s = summary
    lat = s["latency_ms"]
    lat_tiers = "; ".join(
        f"{tier} p50 {_f(row.get('p50'), 1)} p95 {_f(row.get('p95'), 1)} ({row['turns']} turns)"
        for tier, row in lat["by_tier"].items()
    )
    confused = ", ".join(f"{e} -> {p} ({n})" for e, p, n in s["confused_pairs"]) or "none"
    return [
        f"Helpline eval: {s['cases']} cases ({s['turns']} turns) from {source}",
        (f"  intent model {s['intent_model']}, knowledge base {s['kb_version']}, "
         f"confidence threshold {s['threshold']}"),
        f"  intent accuracy     {_f(s['intent_accuracy'])}   macro-F1 {_f(s['macro_f1'])}",
        (f"  in-scope accuracy   {_f(s['in_scope_accuracy'])} ({s['in_scope_cases']} cases)   "
         f"out-of-scope recall {_f(s['oos_recall'])} ({s['oos_cases']} cases)"),
        (f"  deflection          {_f(s['deflection'])}   wrong-answer rate "
         f"{_f(s['wrong_answer_rate'])} ({s['wrong_answers']} cases)   wrong among answered "
         f"{_f(s['wrong_among_answered'])} ({s['answered']} answered)"),
        *conversation_lines(s),
        (f"  escalation          precision {_f(s['escalation_precision'])}   recall "
         f"{_f(s['escalation_recall'])} ({s['escalation_cases']} labelled cases)"),
        (f"  retrieval           hit@1 {_f(s['retrieval_hit_at_1'])}   hit@5 "
         f"{_f(s['retrieval_hit_at_5'])}   MRR {_f(s['retrieval_mrr'])} ({s['retrieval_cases']} cases; "
         f"{s['retrieval_searched']} ranked by a knowledge-base search because the routed turn did "
         "not retrieve)"),
        (f"  reference answers   {_f(s['reference_agreement'])} agree ({s['reference_cases']} "
         "automated cases whose reference answer states numbers)"),
        (f"  groundedness        {_f(s['groundedness'])} over {s['claim_answers']} answers, "
         f"{s['unscored']} unscored; {s['deterministic_answers']} deterministic replies not scored"),
        f"  latency (ms)        p50 {_f(lat['p50'], 1)}   p95 {_f(lat['p95'], 1)}; {lat_tiers or 'n/a'}",
        (f"  cost per ticket     ${_f(s['cost_usd']['per_ticket'], 6)} "
         f"({_tiers(s['cost_usd']['by_tier'], 'per_ticket', money=True)})"),
        *([(f"  handoff brief       {_f(s['brief_field_accuracy'])} of named fields right over "
              f"{s['brief_cases']} cases; " + ", ".join(
                  f"{name} {_f(row['accuracy'], 2)}" for name, row in s['brief_fields'].items()))]
          if s.get("brief_cases") else []),
        f"  most confused       {confused}",
        *per_intent_lines(s),
        f"  throughput          {_f(s['cases_per_s'], 1)} cases/s",
    ]


def conversation_lines(summary: Mapping[str, Any]) -> list[str]:
    """The lines of the cases with ``expect`` (none when the set has no such case)."""
    s = summary
    if not s.get("conversations"):
        return []
    kinds = "; ".join(
        f"{kind} {_f(row['accuracy'])} of {row['cases']} (got "
        + ", ".join(f"{got} {n}" for got, n in row["got"].items()) + ")"
        for kind, row in s["by_expect"].items()
    )
    return [
        (f"  conversations       {s['conversations']}: accuracy {_f(s['conversation_accuracy'])}   "
         f"deflection of answerable {_f(s['deflection_answerable'])} ({s['answerable']} answerable)   "
         f"clarify rate {_f(s['clarify_rate'])}"),
        (f"  incomplete answers  {_f(s['incomplete_among_answered'])} among answered "
         f"({s['incomplete_answers']} cases: right article or intent, a fact or the lead missing)"),
        f"  by expected kind    {kinds}",
    ]


def per_intent_lines(summary: Mapping[str, Any], top: int = 10) -> list[str]:
    """A table of the ``top`` intents with the lowest F1 (none when the set names no intent)."""
    rows = worst_intents(summary.get("per_intent") or {}, top)
    if not rows:
        return []
    width = max(len("intent"), *(len(name) for name, _ in rows))
    out = [f"  worst intents       {'intent':<{width}}  support  correct  precision  recall     F1"]
    for name, r in rows:
        out.append(f"                      {name:<{width}}  {r['support']:7d}  {r['correct']:7d}  "
                   f"{_f(r['precision']):>9}  {_f(r['recall']):>6}  {_f(r['f1']):>5}")
    return out


def failure_lines(outcomes: Sequence[CaseOutcome], limit: int = 40) -> list[str]:
    """One line per failed case: wrong answer, missed or needless escalation, out-of-scope answered,
    unsupported or unscored answer, wrong intent; at most ``limit`` lines plus a count of the rest."""
    lines = []
    for o in outcomes:
        problems = []
        if o.wrong:
            problems.append("WRONG ANSWER")
        elif o.incomplete:
            problems.append("INCOMPLETE ANSWER")
        problems.extend(o.why())
        if o.case.expected_escalation is True and not o.escalated:
            problems.append("missed escalation")
        if o.case.expected_escalation is False and o.escalated:
            problems.append(f"needless escalation ({_reasons(o)})")
        if o.case.out_of_scope and not o.oos_recalled:
            problems.append("out-of-scope answered")
        if o.reference_agrees is False:
            problems.append("reply disagrees with the reference answer")
        if not o.intent_correct and o.case.expect is None:  # with expect, why() names it
            problems.append(f"intent {o.judged_intent} (expected {o.case.intent}, "
                            f"confidence {_f(o.confidence, 2)})")
        for a in o.answers:
            g = a.groundedness
            if not g.scored:
                problems.append(f"turn {a.turn + 1} unscored: {g.unscored_reason}")
            elif not g.fully_supported:
                problems.append(f"turn {a.turn + 1} groundedness {g.supported}/{g.total}")
        if o.brief_fields:
            missed = [name for name, ok in o.brief_fields.items() if not ok]
            if missed:
                problems.append("brief misses " + ", ".join(missed))
        if problems:
            lines.append(f"  {o.case.id} (line {o.case.line}): {'; '.join(problems)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more (see cases.jsonl with --report)"]
    return lines


def _reasons(o: CaseOutcome) -> str:
    return ", ".join(str(t.payload.get("reason")) for t in o.turns if t.escalated) or "?"


def gate_lines(results: Sequence[GateResult]) -> list[str]:
    failed = [r for r in results if not r.passed]
    if not failed:
        return [f"gate: PASS ({len(results)} thresholds)"]
    return [f"gate: FAIL ({len(failed)} of {len(results)} thresholds)"] + [
        f"  FAILED {r.describe()}" for r in failed
    ]


def curve_lines(points: Sequence[CurvePoint], picked: CurvePoint | None = None, width: int = 25) -> list[str]:
    """The calibration curve as a table (at most ``width`` rows, evenly sampled, the pick kept)."""
    rows = list(points)
    if len(rows) > width:
        keep = set(np.linspace(0, len(rows) - 1, width).round().astype(int).tolist())
        rows = [p for i, p in enumerate(rows) if i in keep or p == picked]
    out = ["  threshold  deflection  wrong among answered  (automated / wrong of cases)"]
    for p in rows:
        mark = "  <- picked" if p == picked else ""
        out.append(f"  {p.threshold:9.4f}  {p.deflection:10.3f}  {p.wrong_among_answered:20.4f}  "
                   f"({p.automated} / {p.wrong} of {p.cases}){mark}")
    return out


# --- plots ---------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(path: Path, points: Sequence[CurvePoint], threshold: float,
               max_wrong: float | None = None) -> None:
    """Deflection and wrong-answer rate against the confidence threshold (step curves, since the
    outcome only changes at case confidences), and deflection against wrong-answer rate."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    t = [p.threshold for p in points]
    left.step(t, [p.deflection for p in points], where="post", label="deflection")
    left.step(t, [p.wrong_among_answered for p in points], where="post", label="wrong among answered")
    left.axvline(threshold, color="grey", linestyle=":", label=f"configured {threshold:g}")
    if max_wrong is not None:
        left.axhline(max_wrong, color="red", linestyle="--", linewidth=0.8, label=f"max wrong {max_wrong:g}")
    left.set(xlabel="confidence threshold", ylabel="share", xlim=(0, 1), ylim=(0, 1.02),
             title="Outcome by confidence threshold")
    left.legend(loc="center left", fontsize=8)
    right.plot([p.wrong_among_answered for p in points], [p.deflection for p in points], marker=".")
    right.set(xlabel="wrong answers among answered", ylabel="deflection", title="Deflection vs wrong answers")
    if max_wrong is not None:
        right.axvline(max_wrong, color="red", linestyle="--", linewidth=0.8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(path: Path, outcomes: Sequence[CaseOutcome], bins: int = 10) -> float | None:
    """Reliability diagram of the last turn's intent confidence; returns the ECE (None: no data)."""
    plt = _pyplot()
    scored = [o for o in outcomes if o.confidence is not None and o.case.intent is not None]
    rows, ece = reliability_bins([o.confidence for o in scored], [o.intent_correct for o in scored], bins)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    if rows:
        centres = [(r["lo"] + r["hi"]) / 2 for r in rows]
        ax.bar(centres, [r["accuracy"] for r in rows], width=1 / bins * 0.9, alpha=0.6, label="accuracy")
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", color="C1",
                label="mean confidence vs accuracy")
        for c, r in zip(centres, rows, strict=True):
            ax.annotate(str(r["count"]), (c, r["accuracy"]), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="intent confidence (last turn)", ylabel="accuracy",
           title=f"Reliability (ECE {_f(ece)}, {len(scored)} cases)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ece


def plot_confusion(path: Path, outcomes: Sequence[CaseOutcome]) -> None:
    """Heatmap of expected (rows) x predicted (columns) intents, counts written in the cells."""
    plt = _pyplot()
    named = [o for o in outcomes if o.case.intent is not None]
    labels = sorted({str(o.case.intent) for o in named} | {o.judged_intent for o in named}) or ["(no intents)"]
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for o in named:
        matrix[index[str(o.case.intent)], index[o.judged_intent]] += 1
    size = max(5.0, 0.32 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted intent", ylabel="expected intent", title="Intent confusion")
    for (r, c), n in np.ndenumerate(matrix):
        if n:
            ax.text(c, r, str(n), ha="center", va="center", fontsize=6,
                    color="white" if n > matrix.max() / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    folder: Path,
    *,
    source: str,
    summary: Mapping[str, Any],
    outcomes: Sequence[CaseOutcome],
    points: Sequence[CurvePoint],
    gates: Sequence[GateResult] = (),
    max_wrong: float | None = None,
) -> Path:
    """Write ``report.md``, the three PNG plots and ``cases.jsonl`` into ``folder`` (created);
    returns the path of ``report.md``. ``points``: the curve from a run at threshold 0."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plot_curve(folder / "curve.png", points, float(summary["threshold"]), max_wrong)
    ece = plot_reliability(folder / "reliability.png", outcomes)
    plot_confusion(folder / "confusion.png", outcomes)
    with (folder / "cases.jsonl").open("w", encoding="utf-8") as fh:
        for o in outcomes:
            fh.write(json.dumps(o.to_json(), ensure_ascii=False) + "\n")

    failures = failure_lines(outcomes, limit=200)
    text = [
        "# Helpline eval report",
        "",
        "```",
        *summary_lines(summary, source),
        *(gate_lines(gates) if gates else []),
        "```",
        "",
        "## Deflection and wrong answers across confidence thresholds",
        "",
        ("Measured by running every case once with the confidence threshold at 0 and replaying the "
         "router's low-confidence check at each threshold (see `bot/eval/calibrate.py`)."),
        "",
        "![deflection vs wrong-answer rate](curve.png)",
        "",
        "```",
        *curve_lines(points),
        "```",
        "",
        f"## Reliability of the intent confidence (ECE {_f(ece)})",
        "",
        "![reliability diagram](reliability.png)",
        "",
        "## Intent confusion",
        "",
        "![confusion heatmap](confusion.png)",
        "",
        "## Failed cases",
        "",
        *(["```", *failures, "```"] if failures else ["None."]),
        "",
        "Every case's turns, replies and scores: `cases.jsonl`.",
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path
