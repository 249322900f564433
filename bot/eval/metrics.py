"""The eval's numbers: small pure functions, and :func:`summarise` that applies them to a run.

Every rate is a share in [0, 1], or None when nothing was there to measure (no out-of-scope case, no
case with ``relevant_docs``...): a gate on a metric that is None fails as "not measured".
Definitions of the case-level judgments (automated, wrong, recalled) are in :mod:`bot.eval.outcome`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.eval.golden import OUT_OF_SCOPE

if TYPE_CHECKING:
    from bot.eval.outcome import CaseOutcome
    from bot.eval.prices import PriceTable
    from bot.eval.runner import EvalRun


def share(flags: Sequence[bool]) -> float | None:
    """Fraction of true values, None for an empty sequence."""
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def intent_scores(expected: Sequence[str], predicted: Sequence[str]) -> tuple[float | None, float | None]:
    """``(accuracy, macro_f1)``. Macro-F1 (scikit-learn) is the unweighted mean of the per-intent F1
    over the intents the golden set expects; predicting another label (``(none)``, an intent no case
    expects) still lowers the expected intent's recall. ``(None, None)`` if empty."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(expected)} expected labels but {len(predicted)} predicted")
    if not expected:
        return None, None
    from sklearn.metrics import accuracy_score, f1_score

    return (
        float(accuracy_score(expected, predicted)),
        float(f1_score(expected, predicted, labels=sorted(set(expected)), average="macro",
                       zero_division=0)),
    )


def confused_pairs(
    expected: Sequence[str], predicted: Sequence[str], top: int = 5
) -> list[tuple[str, str, int]]:
    """The most frequent ``(expected, predicted, count)`` mistakes, most frequent first (ties by
    name)."""
    counts = Counter((e, p) for e, p in zip(expected, predicted, strict=True) if e != p)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(e, p, n) for (e, p), n in ranked[:top]]


def per_intent_scores(expected: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per expected intent: ``support`` (cases expecting it), ``correct`` (of them predicted as it),
    and ``precision``, ``recall``, ``f1`` of predicting it (scikit-learn; precision None when no case
    was predicted as it). Keyed by intent, sorted by name; empty for no cases."""
    if len(expected) != len(predicted):
        raise ValueError(f"{len(expected)} expected labels but {len(predicted)} predicted")
    if not expected:
        return {}
    from sklearn.metrics import precision_recall_fscore_support

    labels = sorted(set(expected))
    precision, recall, f1, support = precision_recall_fscore_support(
        expected, predicted, labels=labels, zero_division=np.nan
    )
    predicted_as = Counter(predicted)
    out: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(labels):
        correct = sum(e == p == label for e, p in zip(expected, predicted, strict=True))
        out[label] = {
            "support": int(support[i]),
            "correct": correct,
            "precision": None if not predicted_as[label] else _round(float(precision[i])),
            "recall": _round(float(recall[i])),
            "f1": _round(0.0 if np.isnan(f1[i]) else float(f1[i])),
        }
    return out


def worst_intents(per_intent: dict[str, dict[str, Any]], top: int = 10) -> list[tuple[str, dict[str, Any]]]:
    """The ``top`` intents of :func:`per_intent_scores` with the lowest F1 (ties: more support
    first, then by name)."""
    ranked = sorted(per_intent.items(), key=lambda item: (item[1]["f1"], -item[1]["support"], item[0]))
    return ranked[:top]


def conversation_scores(outcomes: Sequence[CaseOutcome]) -> dict[str, Any]:
    """The metrics of cases with ``expect`` (see docs/eval.md, "Conversation sets").

    Keys: ``conversations`` (cases with ``expect``), ``answerable`` (of them, ``expect`` other than
    ``escalate``), ``deflection_answerable`` (answerable cases no turn of which escalated, over
    answerable), ``conversation_accuracy`` (correct over conversations), ``clarify_rate`` (share of
    conversations whose last message got a clarifying question), ``by_expect`` (per expected kind:
    ``cases``, ``correct``, ``accuracy``, ``got``: kind -> cases), ``failing_cases`` (``id``,
    ``line``, ``wrong``, ``incomplete``, ``why`` of every case that is not correct, in file order). Rates are None
    when there is nothing to measure.
    """
    cases = [o for o in outcomes if o.case.expect is not None]
    answerable = [o for o in cases if o.case.expect != "escalate"]
    by_expect: dict[str, dict[str, Any]] = {}
    for kind in sorted({o.case.expect for o in cases if o.case.expect is not None}):
        group = [o for o in cases if o.case.expect == kind]
        by_expect[kind] = {
            "cases": len(group),
            "correct": sum(bool(o.correct) for o in group),
            "accuracy": _round(share([bool(o.correct) for o in group])),
            "got": dict(sorted(Counter(o.kind for o in group).items())),
        }
    return {
        "conversations": len(cases),
        "answerable": len(answerable),
        "deflection_answerable": _round(share([o.automated for o in answerable])),
        "conversation_accuracy": _round(share([bool(o.correct) for o in cases])),
        "clarify_rate": _round(share([o.kind == "clarify" for o in cases])),
        "by_expect": by_expect,
        "failing_cases": [
            {"id": o.case.id, "line": o.case.line, "wrong": o.wrong, "incomplete": o.incomplete,
             "why": o.why()}
            for o in cases if not o.correct
        ],
    }


def precision_recall(
    expected: Sequence[bool], predicted: Sequence[bool]
) -> tuple[float | None, float | None]:
    """Precision and recall of ``predicted`` against ``expected`` (positives: True). Precision is
    None when nothing was predicted positive, recall when nothing is expected positive."""
    pairs = list(zip(expected, predicted, strict=True))
    tp = sum(e and p for e, p in pairs)
    predicted_pos = sum(p for _, p in pairs)
    expected_pos = sum(e for e, _ in pairs)
    return (
        tp / predicted_pos if predicted_pos else None,
        tp / expected_pos if expected_pos else None,
    )


def ranking_scores(
    rankings: Sequence[Sequence[str]], relevant: Sequence[Sequence[str]]
) -> dict[str, float | None]:
    """``hit_at_1``, ``hit_at_5`` and ``mrr`` of ranked doc ids against the relevant ids per case.

    hit@k: a relevant id is among the first k; MRR: mean of 1/rank of the first relevant id (0 when
    none is ranked). All None for no cases.
    """
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings but {len(relevant)} relevance lists")
    if not rankings:
        return {"hit_at_1": None, "hit_at_5": None, "mrr": None}
    ranks = []
    for ranking, wanted in zip(rankings, relevant, strict=True):
        wanted_set = set(wanted)
        rank = next((i + 1 for i, doc in enumerate(ranking) if doc in wanted_set), None)
        ranks.append(rank)
    n = len(ranks)
    return {
        "hit_at_1": sum(r is not None and r <= 1 for r in ranks) / n,
        "hit_at_5": sum(r is not None and r <= 5 for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks if r is not None) / n,
    }


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """``{"p50", "p95"}`` (numpy linear interpolation), rounded to 0.01; None for no values."""
    if not values:
        return None
    p50, p95 = np.percentile(np.asarray(values, dtype=float), [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarise(run: EvalRun, prices: PriceTable) -> dict[str, Any]:
    """Every metric of ``run`` as one JSON-able dict (the object ``helpline eval --json`` prints).

    Keys: ``cases``, ``turns``, ``intent_cases`` (cases that name an intent: the intent metrics are
    over them), ``intent_accuracy``, ``macro_f1``, ``confused_pairs``, ``per_intent`` (see
    :func:`per_intent_scores`), ``in_scope_cases``, ``in_scope_accuracy``, ``oos_cases``,
    ``oos_recall``, ``deflection``, ``wrong_answers``, ``wrong_answer_rate`` (wrong over all cases),
    ``answered`` (automated cases whose last message got an answer or a question, not a clarifying
    question or a decline), ``wrong_among_answered`` (wrong over answered), ``incomplete_answers``
    and ``incomplete_among_answered`` (cases with ``expect`` answered with the right kind and
    article or intent but missing a ``must_include`` or the ``lead``; over answered), the keys of
    :func:`conversation_scores`, ``escalation_cases``, ``escalation_precision``,
    ``escalation_recall``, ``retrieval_cases``, ``retrieval_searched``, ``retrieval_hit_at_1``,
    ``retrieval_hit_at_5``, ``retrieval_mrr``, ``reference_cases``, ``reference_agreement``,
    ``claim_answers``, ``groundedness``, ``unscored``, ``brief_cases``, ``brief_field_accuracy`` (share
    of the named brief fields shown correctly, over every case with a ``brief`` object; None when no
    case has one), ``brief_fields`` (per field: ``checked``, ``accuracy``),
    ``deterministic_answers``, ``latency_ms`` (``p50``, ``p95``, ``by_tier``), ``cost_usd``
    (``per_ticket``, ``by_tier``), ``threshold``, ``intent_model``, ``kb_version``, ``cases_per_s``.
    Latencies are the turn events' ``latency_ms`` (server turn time); costs are USD.
    """
    outcomes = run.outcomes
    named = [o for o in outcomes if o.case.intent is not None]
    expected = [str(o.case.intent) for o in named]
    predicted = [o.judged_intent for o in named]
    accuracy, macro_f1 = intent_scores(expected, predicted)
    in_scope = [o for o in named if o.case.intent != OUT_OF_SCOPE]
    oos = [o for o in outcomes if o.case.out_of_scope]
    answered = [o for o in outcomes if o.answered]
    labelled = [o for o in outcomes if o.case.expected_escalation is not None]
    esc_precision, esc_recall = precision_recall(
        [bool(o.case.expected_escalation) for o in labelled], [o.escalated for o in labelled]
    )
    ranked = [o for o in outcomes if o.case.relevant_docs and o.ranking is not None]
    retrieval = ranking_scores([o.ranking or [] for o in ranked], [o.case.relevant_docs for o in ranked])
    answers = [a.groundedness for o in outcomes for a in o.answers]
    briefs = [o.brief_fields for o in outcomes if o.brief_fields is not None]
    by_field: dict[str, list[bool]] = defaultdict(list)
    for fields in briefs:
        for name, ok in fields.items():
            by_field[name].append(ok)
    references = [o.reference_agrees for o in outcomes if o.reference_agrees is not None]

    routed = [t for o in outcomes for t in o.turns if t.routed]
    by_tier: dict[str, list[float]] = defaultdict(list)
    for turn in routed:
        if turn.latency_ms is not None:
            by_tier[str(turn.tier)].append(turn.latency_ms)
    latency = percentiles([v for values in by_tier.values() for v in values]) or {"p50": None, "p95": None}
    latency_by_tier = {tier: {"turns": len(v), **(percentiles(v) or {})} for tier, v in sorted(by_tier.items())}

    cost_by_tier: dict[str, dict[str, Any]] = {}
    total_cost = 0.0
    for tier in sorted({str(t.tier) for t in routed}):
        tickets = [o for o in outcomes if any(t.routed and str(t.tier) == tier for t in o.turns)]
        cost = sum(prices.turn_cost(t.payload) for o in tickets for t in o.turns if str(t.tier) == tier)
        total_cost += cost
        cost_by_tier[tier] = {
            "turns": sum(1 for t in routed if str(t.tier) == tier),
            "tickets": len(tickets),
            "total": round(cost, 6),
            "per_ticket": round(cost / len(tickets), 6),
        }

    return {
        "cases": len(outcomes),
        "turns": sum(len(o.turns) for o in outcomes),
        "intent_cases": len(named),
        "intent_accuracy": _round(accuracy),
        "macro_f1": _round(macro_f1),
        "confused_pairs": [list(p) for p in confused_pairs(expected, predicted)],
        "per_intent": per_intent_scores(expected, predicted),
        "in_scope_cases": len(in_scope),
        "in_scope_accuracy": _round(share([o.intent_correct for o in in_scope])),
        "oos_cases": len(oos),
        "oos_recall": _round(share([o.oos_recalled for o in oos])),
        "deflection": _round(share([o.automated for o in outcomes])),
        "wrong_answers": sum(o.wrong for o in outcomes),
        "wrong_answer_rate": _round(share([o.wrong for o in outcomes])),
        "answered": len(answered),
        "wrong_among_answered": _round(share([o.wrong for o in answered])),
        "incomplete_answers": sum(o.incomplete for o in outcomes),
        "incomplete_among_answered": _round(share([o.incomplete for o in answered])),
        **conversation_scores(outcomes),
        "escalation_cases": len(labelled),
        "escalation_precision": _round(esc_precision),
        "escalation_recall": _round(esc_recall),
        "retrieval_cases": len(ranked),
        "retrieval_searched": sum(o.ranking_source == "searched" for o in ranked),
        "retrieval_hit_at_1": _round(retrieval["hit_at_1"]),
        "retrieval_hit_at_5": _round(retrieval["hit_at_5"]),
        "retrieval_mrr": _round(retrieval["mrr"]),
        "reference_cases": len(references),
        "reference_agreement": _round(share(references)),
        "claim_answers": len(answers),
        "groundedness": _round(float(np.mean([g.score for g in answers])) if answers else None),
        "unscored": sum(not g.scored for g in answers),
        "brief_cases": len(briefs),
        "brief_field_accuracy": _round(share([ok for values in by_field.values() for ok in values])),
        "brief_fields": {name: {"checked": len(v), "accuracy": _round(share(v))} for name, v in sorted(by_field.items())},
        "deterministic_answers": sum(
            1 for o in outcomes for t in o.turns
            if t.routed and t.tier == "deterministic" and not t.escalated and t.reply is not None
        ),
        "latency_ms": {**latency, "by_tier": latency_by_tier},
        "cost_usd": {
            "per_ticket": round(total_cost / len(outcomes), 6) if outcomes else None,
            "by_tier": cost_by_tier,
        },
        "threshold": run.threshold,
        "intent_model": run.intent_model,
        "kb_version": run.kb_version,
        "cases_per_s": round(run.cases_per_s, 2),
    }


def reliability_bins(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> tuple[list[dict[str, float]], float | None]:
    """Equal-width confidence bins over [0, 1] for a reliability diagram, and the expected
    calibration error (ECE: bin-size-weighted mean of |accuracy - mean confidence|).

    Returns ``([{"lo", "hi", "count", "confidence", "accuracy"}, ...] for non-empty bins, ece)``;
    ``([], None)`` when there are no confidences. A confidence of exactly 1 falls in the last bin.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness flags")
    if not confidences:
        return [], None
    conf = np.clip(np.asarray(confidences, dtype=float), 0.0, 1.0)
    ok = np.asarray(correct, dtype=float)
    index = np.minimum((conf * bins).astype(int), bins - 1)
    rows = []
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if not mask.any():
            continue
        mean_conf, accuracy = float(conf[mask].mean()), float(ok[mask].mean())
        rows.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(mask.sum()),
                     "confidence": mean_conf, "accuracy": accuracy})
        ece += mask.sum() / len(conf) * abs(accuracy - mean_conf)
    return rows, float(ece)
