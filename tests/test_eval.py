"""The eval harness piece by piece: golden-file validation, metrics on hand-computed inputs,
groundedness with the real embedder, calibration on a constructed curve, gates, prices, the report
files, and a few cases end to end through the real runtime."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from bot.eval import calibrate
from bot.eval.gates import Gate, GateError, check_gates, load_gates, metric_value
from bot.eval.golden import GoldenCase, GoldenError, load_golden
from bot.eval.groundedness import claim_sentences, score_answer
from bot.eval.metrics import (
    confused_pairs,
    intent_scores,
    percentiles,
    precision_recall,
    ranking_scores,
    reliability_bins,
    summarise,
)
from bot.eval.outcome import NO_INTENT, CaseOutcome, GradedAnswer, TurnRecord
from bot.eval.prices import PriceTable, load_prices
from bot.eval.report import write_report
from bot.eval.runner import EvalRun, EvalSender, eval_settings, evaluate
from bot.knowledge import chunk_article, load_articles
from config.settings import CONFIG_DIR, Settings

SMOKE = CONFIG_DIR / "golden" / "smoke.jsonl"


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- golden files ----------------------------------------------------------------------------------


def test_golden_file_parses_text_and_turns_with_line_numbers(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{"id": "a", "text": "hi", "intent": "greeting", "escalate": false}',
        "",
        '{"id": "b", "turns": ["where is my order?", "#W5976205"], "intent": "track_order", '
        '"relevant_docs": ["order-tracking"], "reference_answer": "It shipped.", "note": "slot"}',
    )
    golden = load_golden(path)
    assert [c.id for c in golden.cases] == ["a", "b"]
    assert [c.line for c in golden.cases] == [1, 3]
    a, b = golden.cases
    assert a.turns == ("hi",) and a.escalate is False and a.relevant_docs == ()
    assert b.turns == ("where is my order?", "#W5976205") and b.text == "#W5976205"
    assert b.escalate is None and b.relevant_docs == ("order-tracking",)
    assert golden.unknown_intents == {} and golden.warning() is None


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"text": "hi", "intent": "greeting"}', ":2: field 'id': missing"),
        ('{"id": "b", "text": "hi"}', ":2: field 'intent': missing (required unless 'expect' is given)"),
        ('{"id": "b", "text": "   ", "intent": "greeting"}', ":2: field 'text': empty text"),
        ('{"id": "b", "text": 42, "intent": "greeting"}', ":2: field 'text': must be a string, got int"),
        ('{"id": "b", "intent": "greeting"}', ":2: field 'text': give exactly one of"),
        ('{"id": "b", "text": "hi", "turns": ["hi"], "intent": "greeting"}', ":2: field 'text': give exactly one"),
        ('{"id": "b", "turns": ["hi", ""], "intent": "greeting"}', ":2: field 'turns': item 1 is empty"),
        ('{"id": "b", "turns": "hi", "intent": "greeting"}', ":2: field 'turns': must be a non-empty list"),
        ('{"id": "b", "text": "hi", "intent": "greeting", "escalate": "yes"}', ":2: field 'escalate': must be true or false"),
        ('{"id": "b", "text": "hi", "intent": "  "}', ":2: field 'intent': must be a non-empty string"),
        ('{"id": "b", "text": "hi", "intent": 3}', ":2: field 'intent': must be a non-empty string, got 3"),
        ('{"id": "b", "text": "hi", "expect": "reply"}', ":2: field 'expect': must be one of answer, ask"),
        ('{"id": "b", "text": "hi", "expect": "answer"}', ":2: field 'expect': an 'answer' case needs 'intent' or 'relevant_docs'"),
        ('{"id": "b", "text": "hi", "expect": "escalate", "escalate": false}', ":2: field 'escalate': False contradicts expect 'escalate'"),
        ('{"id": "b", "text": "hi", "expect": "clarify", "must_include": "topic"}', ":2: field 'must_include': must be a non-empty list"),
        ('{"id": "b", "text": "hi", "expect": "clarify", "must_not_include": ["ok", ""]}', ":2: field 'must_not_include': item 1 is empty"),
        ('{"id": "b", "text": "hi", "expect": "clarify", "lead": ""}', ":2: field 'lead': must be a non-empty string"),
        ('{"id": "b", "text": "hi", "intent": "greeting", "relevant_docs": "refunds"}', ":2: field 'relevant_docs': must be a non-empty list"),
        ('{"id": "b", "text": "hi", "intent": "greeting", "relevent_docs": ["x"]}', ":2: field 'relevent_docs': unknown field"),
        ('{"id": "a", "text": "hello", "intent": "greeting"}', ":2: field 'id': duplicate id 'a' (first on line 1)"),
        ('{"id": "b", "text": "hi", "intent": "greeting"', ":2: not valid JSON"),
        ('["b", "hi"]', ":2: expected a JSON object, got list"),
    ],
)
def test_golden_errors_name_the_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path, '{"id": "a", "text": "hi", "intent": "greeting"}', line)
    with pytest.raises(GoldenError) as err:
        load_golden(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_golden_errors_list_every_bad_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{"id": "a", "text": "hi", "intent": "greeting"}',
        '{"id": "b", "text": "hi"}',
        '{"id": "c", "text": "   ", "intent": "greeting"}',
        '{"id": "d"',
        '{"id": "e", "text": "hi", "intent": "greeting"}',
        '{"id": "a", "text": "hello", "intent": "greeting"}',
    )
    with pytest.raises(GoldenError) as err:
        load_golden(path)
    assert err.value.problems == [
        f"{path}:2: field 'intent': missing (required unless 'expect' is given)",
        f"{path}:3: field 'text': empty text",
        f"{path}:4: not valid JSON: Expecting ',' delimiter (line 1, column 11)",
        f"{path}:6: field 'id': duplicate id 'a' (first on line 1)",
    ]
    assert str(err.value) == "\n".join([f"{path}: 4 bad lines:", *(f"  {p}" for p in err.value.problems)])


def test_golden_errors_beyond_the_cap_are_counted(tmp_path: Path) -> None:
    from bot.eval.golden import MAX_SHOWN_PROBLEMS

    path = _write(tmp_path, *(f'{{"id": "c{i}", "text": "hi"}}' for i in range(MAX_SHOWN_PROBLEMS + 7)))
    with pytest.raises(GoldenError) as err:
        load_golden(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: {MAX_SHOWN_PROBLEMS + 7} bad lines:"
    assert lines[1] == f"  {path}:1: field 'intent': missing (required unless 'expect' is given)"
    assert len(lines) == MAX_SHOWN_PROBLEMS + 2 and lines[-1] == "  ... and 7 more"
    assert len(err.value.problems) == MAX_SHOWN_PROBLEMS + 7


def test_golden_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GoldenError, match="no cases"):
        load_golden(_write(tmp_path, "", "  "))


def test_unknown_intents_are_listed_with_their_cases_not_fatal(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{"id": "a", "text": "hi", "intent": "greeting"}',
        '{"id": "b", "text": "where is the lamp", "intent": "lamp_status"}',
        '{"id": "c", "text": "and the sofa", "intent": "lamp_status"}',
        '{"id": "d", "text": "hm", "intent": "sofa_status"}',
    )
    golden = load_golden(path, known_intents={"greeting", "track_order"})
    assert len(golden.cases) == 4
    assert golden.unknown_intents == {"lamp_status": ["b", "c"], "sofa_status": ["d"]}
    warning = golden.warning()
    assert warning is not None and "lamp_status (b, c)" in warning and "sofa_status (d)" in warning


def test_shipped_smoke_set_covers_what_the_gate_needs() -> None:
    from bot.intent_model import load_intents

    golden = load_golden(SMOKE, known_intents=load_intents(Settings().intents_file))
    cases = golden.cases
    assert golden.unknown_intents == {}
    assert 40 <= len(cases) <= 60
    assert sum(c.out_of_scope for c in cases) >= 5
    assert sum(c.escalate is True for c in cases) >= 5
    assert sum(len(c.turns) > 1 for c in cases) >= 5
    assert sum(bool(c.relevant_docs) for c in cases) >= 20
    kb_docs = {doc_id for doc_id, _, _ in load_articles(Settings().kb_dir)}
    assert {d for c in cases for d in c.relevant_docs} <= kb_docs


# --- metrics -------------------------------------------------------------------------------------


def test_intent_scores_on_hand_computed_labels() -> None:
    accuracy, macro_f1 = intent_scores(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    # a: P 1, R 0.5 -> F1 2/3; b: P 0.5, R 1 -> 2/3; c: 1.  Mean 7/9.
    assert accuracy == 0.75
    assert macro_f1 == pytest.approx(7 / 9)
    # a label no case expects counts against the expected one, not as a class of its own
    assert intent_scores(["a", "b"], ["a", "x"]) == (0.5, 0.5)
    assert intent_scores([], []) == (None, None)
    with pytest.raises(ValueError):
        intent_scores(["a"], [])


def test_confused_pairs_most_frequent_first() -> None:
    expected = ["a", "a", "a", "b", "b", "c"]
    predicted = ["b", "b", "a", "c", "a", "c"]
    assert confused_pairs(expected, predicted) == [("a", "b", 2), ("b", "a", 1), ("b", "c", 1)]
    assert confused_pairs(expected, predicted, top=1) == [("a", "b", 2)]


def test_precision_recall() -> None:
    assert precision_recall([True, True, False, False], [True, False, True, False]) == (0.5, 0.5)
    assert precision_recall([True, True, True], [True, True, False]) == (1.0, pytest.approx(2 / 3))
    assert precision_recall([False, True], [False, False]) == (None, 0.0)
    assert precision_recall([False, False], [True, False]) == (0.0, None)


def test_ranking_scores_hit_at_k_and_mrr() -> None:
    rankings = [["x", "y", "z"], ["y", "x"], ["q", "r", "s", "t", "u", "x"], ["q"]]
    relevant = [["x"], ["x", "z"], ["x"], ["x"]]
    scores = ranking_scores(rankings, relevant)
    assert scores["hit_at_1"] == 0.25
    assert scores["hit_at_5"] == 0.5
    assert scores["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 0) / 4)
    assert ranking_scores([], []) == {"hit_at_1": None, "hit_at_5": None, "mrr": None}


def test_percentiles_and_reliability_bins() -> None:
    assert percentiles([float(v) for v in range(1, 11)]) == {"p50": 5.5, "p95": 9.55}
    assert percentiles([]) is None
    rows, ece = reliability_bins([0.15, 0.15, 0.95, 0.95, 1.0], [True, False, True, True, True])
    assert [(r["lo"], r["count"]) for r in rows] == [(0.1, 2), (0.9, 3)]
    assert rows[0]["accuracy"] == 0.5 and rows[1]["accuracy"] == 1.0
    assert rows[1]["confidence"] == pytest.approx((0.95 + 0.95 + 1.0) / 3)
    assert ece == pytest.approx(2 / 5 * 0.35 + 3 / 5 * (1 - 2.9 / 3))
    assert reliability_bins([], []) == ([], None)


def _turn(text: str, tier: str | None, intent: str | None = None, *, confidence: float | None = 0.9,
          escalated: bool = False, reply: str | None = "ok", reason: str = "answered",
          latency: float = 10.0, **extra: Any) -> TurnRecord:
    payload = {"tier": tier, "reason": reason, "intent": intent, "confidence": confidence,
               "escalated": escalated, "citations": extra.pop("citations", []), "latency_ms": latency,
               "cost_usd": extra.pop("cost_usd", 0.0), "data": extra.pop("data", {}), **extra}
    return TurnRecord(text=text, payload=payload, reply=reply)


def _case(case_id: str, intent: str, escalate: bool | None = None, docs: tuple[str, ...] = (),
          turns: int = 1) -> GoldenCase:
    return GoldenCase(id=case_id, turns=tuple(f"m{i}" for i in range(turns)), intent=intent,
                      escalate=escalate, relevant_docs=docs, line=1)


def _graded(score: float, supported: int, total: int, reason: str | None = None) -> GradedAnswer:
    from bot.eval.groundedness import Groundedness

    return GradedAnswer(0, Groundedness(supported, total, score, reason))


def _constructed_outcomes() -> list[CaseOutcome]:
    return [
        # 1. right retrieval answer, fully grounded, ranking recorded (relevant at rank 2)
        CaseOutcome(_case("r1", "check_refund_policy", False, ("refunds",)),
                    [_turn("m0", "retrieval", "check_refund_policy", citations=["refunds"], latency=40.0)],
                    answers=[_graded(1.0, 2, 2)], ranking=["returns", "refunds"], ranking_source="recorded"),
        # 2. right intent, but one sentence of the answer unsupported -> a wrong answer
        CaseOutcome(_case("r2", "delivery_options", False, ("shipping",)),
                    [_turn("m0", "retrieval", "delivery_options", citations=["shipping"], latency=60.0)],
                    answers=[_graded(0.5, 1, 2)], ranking=["shipping"], ranking_source="recorded"),
        # 3. wrong intent, answered automatically -> wrong; its answer could not be scored
        CaseOutcome(_case("r3", "check_invoice", False),
                    [_turn("m0", "retrieval", "get_invoice", latency=50.0)],
                    answers=[_graded(0.0, 0, 0, "no citations")]),
        # 4. out of scope, escalated -> recalled; the routed turn did not retrieve
        CaseOutcome(_case("o1", "out_of_scope", None, ("contact",)),
                    [_turn("m0", "human", "out_of_scope", escalated=True, reply="handoff", latency=8.0)],
                    ranking=["faq", "contact"], ranking_source="searched"),
        # 5. out of scope answered as an in-scope intent -> not recalled, and wrong
        CaseOutcome(_case("o2", "out_of_scope"), [_turn("m0", "deterministic", "greeting", latency=5.0)]),
        # 6. should escalate, did (multi-turn: greeting then a request for a person)
        CaseOutcome(_case("h1", "contact_human_agent", True, turns=2),
                    [_turn("m0", "deterministic", "greeting", latency=6.0),
                     _turn("m1", "human", "contact_human_agent", escalated=True, reply="handoff",
                           latency=7.0)]),
        # 7. should escalate, answered instead (missed); an LLM turn with a cost
        CaseOutcome(_case("h2", "complaint", True),
                    [_turn("m0", "reasoning", "complaint", cost_usd=0.002, latency=900.0,
                           citations=["complaints"])],
                    answers=[_graded(1.0, 1, 1)]),
        # 8. escalated on turn 1, the bot stayed silent on turn 2 (not routed)
        CaseOutcome(_case("s1", "track_order", False, turns=2),
                    [_turn("m0", "human", "legal_threat", escalated=True, reply="handoff", latency=9.0),
                     TurnRecord("m1", {"tier": None, "reason": "human_owns_ticket", "latency_ms": 1.0}, None)]),
    ]


def _run(outcomes: list[CaseOutcome], threshold: float = 0.7) -> EvalRun:
    return EvalRun(outcomes=outcomes, threshold=threshold, intent_model="intent-test",
                   kb_version="kb-test", wall_s=2.0, intents=frozenset())


def test_summary_on_constructed_outcomes() -> None:
    outcomes = _constructed_outcomes()
    assert [o.predicted for o in outcomes][-1] == NO_INTENT
    assert [o.wrong for o in outcomes] == [False, True, True, False, True, False, False, False]
    s = summarise(_run(outcomes), PriceTable())
    assert s["cases"] == 8 and s["turns"] == 10
    # correct: r1, r2, o1, h1, h2 (5 of 8)
    assert s["intent_accuracy"] == 0.625
    assert s["in_scope_cases"] == 6 and s["in_scope_accuracy"] == round(4 / 6, 4)
    assert s["oos_cases"] == 2 and s["oos_recall"] == 0.5
    # automated: r1, r2, r3, o2, h2
    assert s["deflection"] == 0.625
    assert s["wrong_answers"] == 3 and s["wrong_answer_rate"] == 0.375
    # labelled: r1 r2 r3 h1 h2 s1; expected True: h1 h2; escalated: h1 s1
    assert s["escalation_cases"] == 6
    assert (s["escalation_precision"], s["escalation_recall"]) == (0.5, 0.5)
    # rankings: r1 (rank 2), r2 (rank 1), o1 (rank 2, searched)
    assert s["retrieval_cases"] == 3 and s["retrieval_searched"] == 1
    assert s["retrieval_hit_at_1"] == round(1 / 3, 4) and s["retrieval_hit_at_5"] == 1.0
    assert s["retrieval_mrr"] == round((0.5 + 1 + 0.5) / 3, 4)
    # answers 1.0, 0.5, unscored (0), 1.0: the unscored one stays in the mean
    assert s["claim_answers"] == 4 and s["unscored"] == 1 and s["groundedness"] == 0.625
    assert (s["reference_cases"], s["reference_agreement"]) == (0, None)
    assert s["deterministic_answers"] == 2
    assert s["latency_ms"]["by_tier"]["reasoning"] == {"turns": 1, "p50": 900.0, "p95": 900.0}
    assert s["latency_ms"]["by_tier"]["human"]["turns"] == 3
    assert s["cost_usd"]["by_tier"]["reasoning"] == {"turns": 1, "tickets": 1, "total": 0.002, "per_ticket": 0.002}
    assert s["cost_usd"]["by_tier"]["retrieval"]["per_ticket"] == 0.0
    assert s["cost_usd"]["per_ticket"] == 0.00025
    assert ["check_invoice", "get_invoice", 1] in s["confused_pairs"]


def test_reference_agreement_checks_the_numbers_of_the_reference() -> None:
    case = GoldenCase("uk", ("how much is shipping to the uk?",), "delivery_options",
                      reference_answer="Shipping to the United Kingdom costs $24.95.")
    right = CaseOutcome(case, [_turn("m0", "retrieval", "delivery_options",
                                     reply="Shipping to the United Kingdom or the European Union costs $24.95.")])
    wrong = CaseOutcome(case, [_turn("m0", "retrieval", "delivery_options",
                                     reply="Standard Shipping within the United States costs $4.95.")])
    handed_over = CaseOutcome(case, [_turn("m0", "human", "delivery_options", escalated=True)])
    wordy = CaseOutcome(GoldenCase("w", ("hi",), "greeting", reference_answer="Hello!"), [_turn("m0", "deterministic", "greeting")])
    assert (right.reference_agrees, wrong.reference_agrees) == (True, False)
    assert handed_over.reference_agrees is None and wordy.reference_agrees is None
    assert not wrong.wrong  # grounded, right intent: reported on its own, not a wrong answer
    s = summarise(_run([right, wrong, handed_over, wordy]), PriceTable())
    assert (s["reference_cases"], s["reference_agreement"]) == (2, 0.5)


def test_out_of_scope_flag_on_the_turn_counts_as_an_out_of_scope_prediction() -> None:
    flagged = CaseOutcome(_case("f", "out_of_scope"), [
        _turn("m0", "human", "delivery_options", escalated=True, data={"out_of_scope": True})])
    unflagged = CaseOutcome(_case("u", "out_of_scope"), [_turn("m0", "retrieval", "delivery_options")])
    assert (flagged.predicted, flagged.intent_correct, flagged.oos_recalled) == ("out_of_scope", True, True)
    assert (unflagged.predicted, unflagged.oos_recalled, unflagged.wrong) == ("delivery_options", False, True)


def test_threshold_confidence_skips_slot_filling_and_guard_turns() -> None:
    case = CaseOutcome(_case("t", "track_order", turns=3), [
        _turn("m0", "guard", None, confidence=None),
        _turn("m1", "deterministic", "track_order", confidence=0.8, reason="asked_slot"),
        _turn("m2", "deterministic", "track_order", confidence=0.3, reason="slot_filled"),
    ])
    assert case.threshold_confidence == 0.8


def test_prices(tmp_path: Path) -> None:
    table = load_prices()
    assert table.turn_cost({"tier": "retrieval", "cost_usd": 5.0}) == 0.0
    usage = {"provider": "openai", "model": "gpt-4o-mini", "input_tokens": 2000, "output_tokens": 500}
    assert table.turn_cost({"tier": "reasoning", "usage": usage}) == pytest.approx(2 * 0.00015 + 0.5 * 0.0006)
    assert table.turn_cost({"tier": "reasoning", "data": {"usage": usage}}) == pytest.approx(0.0006)
    assert table.turn_cost({"tier": "reasoning", "cost_usd": 0.01,
                            "usage": {**usage, "model": "unknown"}}) == 0.01
    bad = tmp_path / "prices.yaml"
    bad.write_text("providers:\n  openai:\n    gpt: {input_per_1k: -1, output_per_1k: 0}\n")
    with pytest.raises(ValueError, match="openai/gpt: field 'input_per_1k'"):
        load_prices(bad)


# --- groundedness (real MiniLM embedder) ----------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    from bot.embeddings import Embedder

    return Embedder.load()


@pytest.fixture(scope="module")
def refund_passages() -> list[str]:
    return [c.text for doc_id, title, md in load_articles(Settings().kb_dir) if doc_id == "refunds"
            for c in chunk_article(doc_id, title, md)]


def test_source_line_is_not_a_claim() -> None:
    answer = "Refunds go back to the original payment method. PayPal refunds are fast.\n\nSource: refunds (kb-0123456789ab)"
    assert claim_sentences(answer) == ["Refunds go back to the original payment method.", "PayPal refunds are fast."]


def test_verbatim_answer_is_fully_supported(embedder, refund_passages) -> None:
    answer = ("We check returned items within 2 business days of receiving them and issue the refund within "
              "3 business days after that. Refunds go back to the original payment method.\n\n"
              "Source: refunds (kb-0123456789ab)")
    g = score_answer(answer, refund_passages, embedder)
    assert (g.supported, g.total, g.score, g.unscored_reason) == (2, 2, 1.0, None)
    assert g.fully_supported
    # the verbatim rule needs no model: normalisation ignores case and spacing
    assert score_answer("REFUNDS  go back to the original payment method", refund_passages).score == 1.0


def test_paraphrase_is_supported_but_a_changed_number_is_not(embedder, refund_passages) -> None:
    paraphrase = "Refunds on cards take another 5 to 10 business days to show on your statement, depending on your bank."
    assert score_answer(paraphrase, refund_passages, embedder).score == 1.0
    assert score_answer(paraphrase, refund_passages, None).score == 0.0  # verbatim rule only
    changed = "Card refunds take a further 15 to 20 business days to appear on your statement, depending on your bank."
    g = score_answer(changed, refund_passages, embedder)
    assert (g.supported, g.total) == (0, 1) and g.unsupported == (changed,)


def test_partly_unsupported_answer_scores_its_share(embedder, refund_passages) -> None:
    answer = ("Refunds go back to the original payment method. We ship to Mars within 3 business days.\n\n"
              "Source: refunds (kb-0123456789ab)")
    g = score_answer(answer, refund_passages, embedder)
    assert (g.supported, g.total, g.score) == (1, 2, 0.5)
    assert not g.fully_supported and g.unsupported == ("We ship to Mars within 3 business days.",)


def test_unscorable_answers_score_zero_with_a_reason(embedder, refund_passages) -> None:
    only_source = score_answer("Source: refunds (kb-0123456789ab)", refund_passages, embedder)
    assert (only_source.score, only_source.scored) == (0.0, False)
    assert "empty answer" in (only_source.unscored_reason or "")
    no_passages = score_answer("Refunds go back to the original payment method.", [], embedder)
    assert no_passages.unscored_reason == "no cited passages" and no_passages.score == 0.0


# --- calibration ---------------------------------------------------------------------------------

_CONSTRUCTED = [
    calibrate.CaseAtZero(automated=True, wrong=False, threshold_confidence=0.9),
    calibrate.CaseAtZero(automated=True, wrong=True, threshold_confidence=0.5),
    calibrate.CaseAtZero(automated=True, wrong=False, threshold_confidence=0.6),
    calibrate.CaseAtZero(automated=False, wrong=False, threshold_confidence=0.95),
    calibrate.CaseAtZero(automated=True, wrong=True, threshold_confidence=0.75),
    calibrate.CaseAtZero(automated=True, wrong=False, threshold_confidence=None),
]


def test_curve_on_constructed_cases() -> None:
    points = calibrate.curve(_CONSTRUCTED)
    assert [p.threshold for p in points] == [0.0, 0.5, 0.6, 0.75, 0.9, 1.0]
    assert [(p.automated, p.wrong) for p in points] == [(5, 2), (5, 2), (4, 1), (3, 1), (2, 0), (1, 0)]
    assert points[2].deflection == pytest.approx(4 / 6)
    # wrong answers are counted among the answered (kept automated) cases, not among all
    assert [p.wrong_among_answered for p in points] == pytest.approx([0.4, 0.4, 0.25, 1 / 3, 0.0, 0.0])


def test_pick_threshold_maximises_deflection_under_the_target() -> None:
    points = calibrate.curve(_CONSTRUCTED)
    assert calibrate.pick_threshold(points, 0.25).threshold == 0.6
    assert calibrate.pick_threshold(points, 0.2).threshold == 0.9  # 1 of 4 answered is over 0.2
    assert calibrate.pick_threshold(points, 0.4).threshold == 0.5  # ties: the highest (safest) threshold
    assert calibrate.pick_threshold(points, 0.0).threshold == 0.9
    with pytest.raises(ValueError):
        calibrate.pick_threshold([p for p in points if p.wrong], 0.0)
    assert calibrate.live_threshold(0.6) == 0.59995
    assert calibrate.live_threshold(0.0) == 0.0


# Eight in-scope cases (one wrong, kept from 0.5) and two out-of-scope ones answered wrongly with
# confidence 0.55 and 0.8: the set's own out-of-scope share is 0.2.
_WITH_OOS = [
    *(calibrate.CaseAtZero(automated=True, wrong=False, threshold_confidence=0.9) for _ in range(7)),
    calibrate.CaseAtZero(automated=True, wrong=True, threshold_confidence=0.5),
    calibrate.CaseAtZero(automated=True, wrong=True, threshold_confidence=0.55, out_of_scope=True),
    calibrate.CaseAtZero(automated=True, wrong=True, threshold_confidence=0.8, out_of_scope=True),
]


def test_points_reweighted_to_an_out_of_scope_share() -> None:
    assert calibrate.own_oos_share(_WITH_OOS) == 0.2
    own = calibrate.point(_WITH_OOS, 0.6)
    assert own.automated == 8 and own.wrong == 1
    assert (own.deflection, own.wrong_among_answered) == (pytest.approx(0.8), pytest.approx(1 / 8))
    # at share 0.5 the one kept out-of-scope case weighs 0.25 of all, the 7 right in-scope ones 0.4375
    half = calibrate.point(_WITH_OOS, 0.6, 0.5)
    assert half.deflection == pytest.approx(0.25 + 0.4375)
    assert half.wrong_among_answered == pytest.approx(0.25 / 0.6875)
    # the set's own share gives the unweighted numbers
    same = calibrate.point(_WITH_OOS, 0.6, 0.2)
    assert (same.deflection, same.wrong_among_answered) == (pytest.approx(0.8), pytest.approx(1 / 8))
    none = calibrate.point(_WITH_OOS, 0.6, 0.0)
    assert none.wrong_among_answered == 0.0 and none.deflection == pytest.approx(7 / 8)


def test_a_threshold_picked_at_a_higher_share_is_stricter() -> None:
    at_own = calibrate.pick_threshold(calibrate.curve(_WITH_OOS), 0.15)
    at_half = calibrate.pick_threshold(calibrate.curve(_WITH_OOS, oos_share=0.5), 0.15)
    # own share: at 0.8, 1 wrong of 8 answered (0.125); at share 0.5 the same threshold gives 0.364
    assert (at_own.threshold, at_half.threshold) == (0.8, 0.9)
    assert at_own.wrong_among_answered == pytest.approx(1 / 8)
    assert (at_half.wrong_among_answered, at_half.deflection) == (0.0, pytest.approx(0.4375))
    # what the own-share pick does at other shares: more out-of-scope traffic, more wrong answers
    others = calibrate.at_shares(_WITH_OOS, at_own.threshold, (0.1, 0.5))
    assert [p.oos_share for p in others] == [0.1, 0.5]
    # share 0.1: the 7 kept in-scope cases weigh 1.125 each, the kept out-of-scope one 0.5
    assert others[0].wrong_among_answered == pytest.approx(0.5 / (7 * 1.125 + 0.5))
    assert others[1].wrong_among_answered == pytest.approx(0.25 / 0.6875)
    assert calibrate.at_shares(_CONSTRUCTED, 0.5, (0.1,)) == []  # nothing out of scope to re-weight


def test_out_of_scope_share_errors() -> None:
    with pytest.raises(ValueError, match="must be in \\[0, 1\\], got 1.5"):
        calibrate.point(_WITH_OOS, 0.5, 1.5)
    with pytest.raises(ValueError, match="no out-of-scope case"):
        calibrate.point(_CONSTRUCTED, 0.5, 0.3)
    calibrate.check_oos_share(2, 10, 1.0)  # all weight on out-of-scope cases is allowed
    with pytest.raises(ValueError, match="only out-of-scope cases"):
        calibrate.check_oos_share(3, 3, 0.5)


def test_a_threshold_whose_rerun_misses_the_target_is_not_written(tmp_path: Path) -> None:
    config = tmp_path / "helpline.yaml"
    config.write_text("confidence_threshold: 0.7\n")
    # a re-run at 0.6 that measured 1 wrong of 4 answered (the replay had promised 0)
    measured = calibrate.point(_CONSTRUCTED, 0.6)
    with pytest.raises(calibrate.TargetMissed, match=f"measured wrong answers among answered 0.2500, over "
                                                     f"the target 0.02; {config} not changed"):
        calibrate.write_confirmed(config, 0.59995, measured, 0.02)
    assert config.read_text() == "confidence_threshold: 0.7\n"
    calibrate.write_confirmed(config, 0.89995, calibrate.point(_CONSTRUCTED, 0.9), 0.02)
    assert config.read_text() == "confidence_threshold: 0.89995\n"


def test_write_threshold_keeps_other_settings_and_comments(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "helpline.yaml"
    config.write_text("# deployment settings\nretrieval_threshold: 0.45\nconfidence_threshold: 0.7\nhistory_turns: 12")
    calibrate.write_threshold(config, 0.61235)
    assert config.read_text() == (
        "# deployment settings\nretrieval_threshold: 0.45\nconfidence_threshold: 0.61235\nhistory_turns: 12"
    )
    monkeypatch.setenv("HELPLINE_CONFIG_FILE", str(config))
    monkeypatch.delenv("HELPLINE_CONFIDENCE_THRESHOLD", raising=False)
    settings = Settings()
    assert (settings.confidence_threshold, settings.retrieval_threshold, settings.history_turns) == (0.61235, 0.45, 12)

    fresh = tmp_path / "sub" / "new.yaml"
    calibrate.ensure_config_file(fresh)  # settings refuse a named config file that does not exist
    monkeypatch.setenv("HELPLINE_CONFIG_FILE", str(fresh))
    assert Settings().confidence_threshold == Settings.model_fields["confidence_threshold"].default
    calibrate.write_threshold(fresh, 0.5)
    assert Settings().confidence_threshold == 0.5
    assert fresh.read_text() == "confidence_threshold: 0.5\n"
    with pytest.raises(ValueError):
        calibrate.write_threshold(fresh, 1.5)


# --- gates ---------------------------------------------------------------------------------------


def test_gates_name_each_failed_threshold(tmp_path: Path) -> None:
    path = tmp_path / "gates.yaml"
    path.write_text('gates:\n  groundedness: ">= 0.85"\n  wrong_answer_rate: "<= 0.02"\n'
                    '  latency_ms.p95: "< 200"\n  oos_recall: ">= 0.8"\n  unscored: "== 0"\n')
    gates = load_gates(path)
    assert gates[0] == Gate("groundedness", ">=", 0.85)
    summary = {"groundedness": 0.81, "wrong_answer_rate": 0.02, "latency_ms": {"p95": 150.0},
               "oos_recall": None, "unscored": 0}
    results = check_gates(summary, gates)
    assert [r.passed for r in results] == [False, True, True, False, True]
    assert results[0].describe() == "groundedness: 0.81 (needs >= 0.85)"
    assert results[3].describe() == "oos_recall: not measured (needs >= 0.8)"
    assert metric_value(summary, "latency_ms.p95") == 150.0 and metric_value(summary, "nope.x") is None


def test_shipped_gates_include_the_issue_bounds() -> None:
    gates = {g.metric: g for g in load_gates()}
    assert gates["groundedness"] == Gate("groundedness", ">=", 0.85)
    assert gates["wrong_answer_rate"] == Gate("wrong_answer_rate", "<=", 0.02)
    assert gates["unscored"] == Gate("unscored", "==", 0)


def test_bad_gate_file_names_the_metric(tmp_path: Path) -> None:
    path = tmp_path / "gates.yaml"
    path.write_text('gates:\n  groundedness: "at least 0.85"\n')
    with pytest.raises(GateError, match="gate 'groundedness': expected '<op> <number>'"):
        load_gates(path)


# --- report --------------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_writes_markdown_plots_and_cases(tmp_path: Path) -> None:
    outcomes = _constructed_outcomes()
    summary = summarise(_run(outcomes), PriceTable())
    points = calibrate.curve(_CONSTRUCTED)
    path = write_report(tmp_path / "rep", source="constructed", summary=summary, outcomes=outcomes,
                        points=points, max_wrong=0.02)
    text = path.read_text()
    for name in ("curve.png", "reliability.png", "confusion.png"):
        width, height = _png_size(tmp_path / "rep" / name)
        assert width > 300 and height > 300
        assert f"]({name})" in text
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "rep" / "confusion.png").shape[2] in (3, 4)
    assert "o2 (line 1): WRONG ANSWER" in text and "out-of-scope answered" in text
    rows = [json.loads(line) for line in (tmp_path / "rep" / "cases.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [o.case.id for o in outcomes]
    assert rows[2]["answers"][0]["unscored_reason"] == "no citations"


# --- end to end through the real runtime ---------------------------------------------------------


async def test_cases_run_through_the_live_path(
    database_url: str, intent_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        GoldenCase("greet", ("hi",), "greeting", escalate=False),
        GoldenCase("slot", ("where is my order?", "it's #W5976205", "28110"), "track_order", escalate=False),
        GoldenCase("refund", ("how long does a refund take?",), "check_refund_policy", escalate=False,
                   relevant_docs=("refunds",)),
        GoldenCase("oos", ("what's the capital of australia?",), "out_of_scope", relevant_docs=("contact",)),
        GoldenCase("human", ("I want to talk to a real person",), "contact_human_agent", escalate=True,
                   relevant_docs=("contact-us-typo",)),
    ]
    base = Settings(data_dir=tmp_path / "unused")
    with eval_settings(base, model_dir=intent_model_dir, database_url=database_url) as settings:
        assert settings.data_dir != base.data_dir and settings.redis_url is None
        run = await evaluate(cases, settings, concurrency=3)
    greet, slot, refund, oos, human = run.outcomes
    assert f"warning: relevant_docs not in knowledge base {run.kb_version}: contact-us-typo (cases human)" in (
        capsys.readouterr().err
    )
    assert run.threshold == base.confidence_threshold and run.kb_version and run.kb_version.startswith("kb-")

    assert (greet.last.tier, greet.predicted, greet.automated, greet.answers) == ("deterministic", "greeting", True, [])
    assert [t.payload["reason"] for t in slot.turns] == ["asked_slot", "asked_proof", "slot_filled"]
    assert "#W5976205" in (slot.last.reply or "") and slot.predicted == "track_order" and not slot.wrong

    assert refund.last.tier == "retrieval" and refund.last.citations == ("refunds",)
    assert refund.last.reply and refund.last.reply.endswith("\n\nSource: Refunds")
    assert refund.last.payload["kb_version"] == run.kb_version
    assert len(refund.answers) == 1 and refund.answers[0].groundedness.score == 1.0
    assert refund.ranking_source == "recorded" and refund.ranking and refund.ranking[0] == "refunds"

    # handed to a person or politely declined: either way recalled, and the judged intent is right
    assert oos.oos_recalled and oos.kind in ("escalate", "decline") and oos.ranking
    assert oos.judged_intent == "out_of_scope" and oos.intent_correct and not oos.wrong
    assert human.escalated and human.last.payload["reason"] == "explicit_request"
    assert all(t.latency_ms is not None and t.latency_ms > 0 for o in run.outcomes for t in o.turns)

    s = summarise(run, load_prices())
    assert s["cases"] == 5 and s["deflection"] == (0.8 if oos.automated else 0.6)
    assert s["wrong_answer_rate"] == 0.0 and s["intent_accuracy"] == 1.0
    assert s["groundedness"] == 1.0 and s["unscored"] == 0 and s["oos_recall"] == 1.0


async def test_eval_sender_collects_what_the_outbox_sends() -> None:
    from datetime import UTC, datetime

    from state.models import Message

    sender = EvalSender()
    message = Message(id=7, seq=1, ticket_id=1, customer_id=1, direction="outbound", author="bot",
                      channel="eval", text="hi", created_at=datetime.now(UTC))
    assert await sender.send(message) == "eval-7" and sender.sent == [7]
