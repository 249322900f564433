"""Conversation golden cases (``expect``, content checks), their metrics, labels as ``helpline
train`` accepts them, the label map, the judged intent of out-of-scope escalations and the per-intent
report: on constructed outcomes with hand-computed values, and a small set through the live path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bot.eval.golden import GoldenCase, GoldenError, load_golden
from bot.eval.metrics import conversation_scores, per_intent_scores, summarise, worst_intents
from bot.eval.outcome import CaseOutcome, GradedAnswer, TurnRecord
from bot.eval.prices import PriceTable
from bot.eval.report import summary_lines
from bot.eval.runner import EvalRun, eval_settings, evaluate
from bot.eval.groundedness import Groundedness
from config.settings import Settings


def _write(tmp_path: Path, *lines: str, name: str = "golden.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _turn(tier: str | None, reason: str = "answered", intent: str | None = "greeting", *,
          reply: str | None = "ok", escalated: bool = False, citations: tuple[str, ...] = (),
          **data: Any) -> TurnRecord:
    payload = {"tier": tier, "reason": reason, "intent": intent, "confidence": 0.9,
               "escalated": escalated, "citations": list(citations), "data": data}
    return TurnRecord(text="m", payload=payload, reply=reply)


def _case(case_id: str, expect: str | None, intent: str | None = None, **fields: Any) -> GoldenCase:
    if isinstance(fields.get("lead"), str):
        fields["lead"] = (fields["lead"],)
    return GoldenCase(id=case_id, turns=("m",) * fields.pop("turns", 1), intent=intent, expect=expect,
                      line=1, **fields)


# --- golden format ---------------------------------------------------------------------------------


def test_expect_fields_parse_and_make_intent_optional(tmp_path: Path) -> None:
    golden = load_golden(_write(
        tmp_path,
        '{"id": "a", "turns": ["do you ship to Canada?", "how much does that cost?"], "expect": "answer", '
        '"relevant_docs": ["shipping"], "must_include": ["Canada"], "must_not_include": ["United States"], '
        '"lead": "Yes"}',
        '{"id": "b", "text": "?", "expect": "clarify"}',
        '{"id": "c", "text": "get me a person", "expect": "escalate", "intent": "contact_human_agent"}',
        '{"id": "d", "text": "what is the weather", "expect": "decline"}',
        '{"id": "e", "text": "hi", "intent": "greeting"}',
    ), known_intents={"greeting", "contact_human_agent"})
    a, b, c, d, e = golden.cases
    assert (a.expect, a.intent, a.relevant_docs) == ("answer", None, ("shipping",))
    assert (a.must_include, a.must_not_include, a.lead) == (("Canada",), ("United States",), ("Yes",))
    assert (b.expect, b.intent, b.must_include, b.lead) == ("clarify", None, (), ())
    # escalate follows expect unless given; old cases keep None (left out of escalation metrics)
    assert [x.expected_escalation for x in golden.cases] == [False, False, True, False, None]
    assert [x.out_of_scope for x in golden.cases] == [False, False, False, True, False]
    assert golden.unknown_intents == {}


def test_labels_train_accepts_are_accepted_and_mapped(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{"id": "a", "text": "x", "intent": "Card_Arrival"}',
        '{"id": "b", "text": "x", "intent": "24h-support!"}',
        '{"id": "c", "text": "x", "intent": " OOS "}',
        '{"id": "d", "text": "x", "intent": "lost or stolen card"}',
        '{"id": "e", "text": "x", "intent": "refund_not_showing_up"}',
    )
    assert [c.intent for c in load_golden(path).cases] == [
        "Card_Arrival", "24h-support!", "out_of_scope", "lost or stolen card", "refund_not_showing_up"]
    mapped = load_golden(path, known_intents={"track_order", "out_of_scope", "check_refund_policy"},
                         label_map={"Card_Arrival": "track_order", "lost or stolen card": "oos",
                                    "refund_not_showing_up": "check_refund_policy"})
    assert [c.intent for c in mapped.cases] == [
        "track_order", "24h-support!", "out_of_scope", "out_of_scope", "check_refund_policy"]
    assert mapped.unknown_intents == {"24h-support!": ["b"]}


def test_label_map_file_is_read_by_the_replay_loader(tmp_path: Path) -> None:
    from bot.eval.command import EvalInputError, EvalOptions, _load_inputs

    golden = _write(tmp_path, '{"id": "a", "text": "where is my card", "intent": "Card_Arrival"}')
    as_json = tmp_path / "map.json"
    as_json.write_text('{"Card_Arrival": "track_order"}')
    loaded, _, _ = _load_inputs(Settings(), EvalOptions(golden=golden, label_map=as_json))
    assert loaded.cases[0].intent == "track_order" and loaded.unknown_intents == {}
    bad = tmp_path / "map.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(EvalInputError, match="the label map must be a YAML mapping"):
        _load_inputs(Settings(), EvalOptions(golden=golden, label_map=bad))
    with pytest.raises(EvalInputError, match="--oos-share: out-of-scope share 0.3: the golden set has no"):
        _load_inputs(Settings(), EvalOptions(golden=golden, oos_share=0.3))


# --- kinds and scoring -----------------------------------------------------------------------------


def test_kind_is_read_from_the_last_turn() -> None:
    def kind(*turns: TurnRecord) -> str:
        return CaseOutcome(_case("k", "answer", "greeting", turns=len(turns)), list(turns)).kind

    assert kind(_turn("deterministic")) == "answer"
    assert kind(_turn("retrieval", citations=("refunds",))) == "answer"
    assert kind(_turn("deterministic", "clarify")) == "clarify"
    assert kind(_turn("deterministic", "off_topic")) == "decline"
    assert kind(_turn("deterministic", "asked_slot")) == "ask"
    assert kind(_turn("deterministic", "asked_proof")) == "ask"
    assert kind(_turn("human", "explicit_request", escalated=True)) == "escalate"
    # the bot stayed silent after an earlier handoff: the last message went to a person
    assert kind(_turn("human", "anger", escalated=True), _turn(None, "human_owns_ticket", reply=None)) == "escalate"
    assert kind(_turn(None, reply=None)) == "none"


def test_scoring_of_expect_cases() -> None:
    refund_reply = "Yes, refunds go back to the original payment method.\n\nSource: Refunds"
    retrieval = _turn("retrieval", intent="check_refund_policy", citations=("refunds",), reply=refund_reply)
    grounded = [GradedAnswer(0, Groundedness(1, 1, 1.0, None))]

    def outcome(case: GoldenCase, turn: TurnRecord, answers: list[GradedAnswer] | None = None) -> CaseOutcome:
        return CaseOutcome(case, [turn], answers=list(grounded if answers is None else answers))

    rows = {
        "right": outcome(_case("right", "answer", relevant_docs=("refunds", "returns"), must_include=("PAYMENT method",),
                               must_not_include=("store credit",), lead="yes"), retrieval),
        # judged by citations: the intent is the model's guess and not checked
        "docs-win": outcome(_case("docs-win", "answer", "track_order", relevant_docs=("refunds",)), retrieval),
        "wrong-doc": outcome(_case("wrong-doc", "answer", relevant_docs=("shipping",)), retrieval),
        "wrong-intent": outcome(_case("wrong-intent", "answer", "track_order"), retrieval),
        "lacks": outcome(_case("lacks", "answer", relevant_docs=("refunds",), must_include=("5 business days",)), retrieval),
        "contains": outcome(_case("contains", "answer", relevant_docs=("refunds",), must_not_include=("payment",)), retrieval),
        "no-lead": outcome(_case("no-lead", "answer", relevant_docs=("refunds",), lead=("Refunds go",)), retrieval),
        "opposite-lead": outcome(_case("opposite-lead", "answer", relevant_docs=("refunds",), lead=("No",)), retrieval),
        "ungrounded": outcome(_case("ungrounded", "answer", relevant_docs=("refunds",)), retrieval,
                              [GradedAnswer(0, Groundedness(0, 1, 0.0, None))]),
        "answered-oos": outcome(_case("answered-oos", "decline"), retrieval),
        "answered-esc": outcome(_case("answered-esc", "escalate"), retrieval),
        "answered-clar": outcome(_case("answered-clar", "clarify"), retrieval),
        "ask-answered": outcome(_case("ask-answered", "ask", "check_refund_policy"), retrieval),
        "clarified": outcome(_case("clarified", "answer", "check_refund_policy"), _turn("deterministic", "clarify")),
        "escalated": outcome(_case("escalated", "answer", "check_refund_policy"),
                             _turn("human", "low_confidence", "check_refund_policy", escalated=True), []),
        "declined": outcome(_case("declined", "decline"), _turn("deterministic", "off_topic", "out_of_scope",
                                                                reply="Sorry, I can only help with orders.")),
        "asked": outcome(_case("asked", "ask", "track_order", must_include=("order number",)),
                         _turn("deterministic", "asked_slot", "track_order", reply="What is your order number?"), []),
    }
    got = {name: (o.correct, o.wrong) for name, o in rows.items()}
    assert got == {
        "right": (True, False), "docs-win": (True, False),
        "wrong-doc": (False, True), "wrong-intent": (False, True),
        # right article, a fact or the opening missing: incomplete, not wrong
        "lacks": (False, False), "no-lead": (False, False),
        # a "Yes" where the case expects "No" contradicts it: wrong
        "opposite-lead": (False, True),
        "contains": (False, True), "ungrounded": (False, True),
        "answered-oos": (False, True), "answered-esc": (False, True), "answered-clar": (False, True),
        # a question expected, an answer given: not wrong, not correct
        "ask-answered": (False, False),
        # a clarifying question or a handoff where an answer was expected: not wrong either
        "clarified": (False, False), "escalated": (False, False),
        "declined": (True, False), "asked": (True, False),
    }
    assert rows["wrong-doc"].why() == ["cites refunds (expected one of shipping)"]
    assert rows["wrong-intent"].why() == ["intent check_refund_policy (expected track_order)"]
    assert rows["lacks"].why() == ["reply lacks '5 business days'"]
    assert rows["contains"].why() == ["reply contains 'payment'"]
    assert rows["no-lead"].why() == ["reply does not lead with 'Refunds go'"]
    assert rows["opposite-lead"].why() == ["reply leads with 'yes' (expected 'No')"]
    assert [name for name, o in rows.items() if o.incomplete] == ["lacks", "no-lead"]
    assert rows["ungrounded"].why() == ["answer not fully grounded"]
    assert rows["answered-esc"].why() == ["expected escalate, got answer"]
    assert rows["clarified"].why() == ["expected answer, got clarify", "intent greeting (expected check_refund_policy)"]
    assert rows["right"].why() == [] and rows["declined"].judged_intent == "out_of_scope"
    assert [o.answered for o in (rows["right"], rows["clarified"], rows["declined"], rows["asked"])] == [
        True, False, False, True]


def test_lead_ignores_leading_punctuation_and_case() -> None:
    case = _case("l", "answer", "delivery_options", lead="yes, we ship")
    for reply, ok in [("  **Yes,  we ship** to Canada.", True), ("- YES, WE SHIP to Canada", True),
                      ("We ship to Canada: yes.", False), (None, False)]:
        outcome = CaseOutcome(case, [_turn("retrieval", intent="delivery_options", reply=reply)])
        assert outcome.correct is ok, reply


def test_out_of_scope_escalation_is_a_correct_intent_and_declines_are_never_wrong() -> None:
    oos = GoldenCase("o", ("what's the capital of australia?",), "out_of_scope", line=1)
    escalated = CaseOutcome(oos, [_turn("human", "low_confidence", "delivery_options", escalated=True)])
    answered = CaseOutcome(oos, [_turn("retrieval", intent="delivery_options")])
    refund = GoldenCase("r", ("refund?",), "check_refund_policy", line=2)
    declined = CaseOutcome(refund, [_turn("deterministic", "off_topic", "out_of_scope")])
    clarified = CaseOutcome(refund, [_turn("deterministic", "clarify", "track_order")])
    assert (escalated.predicted, escalated.judged_intent, escalated.intent_correct) == (
        "delivery_options", "out_of_scope", True)
    assert (answered.judged_intent, answered.intent_correct, answered.wrong) == ("delivery_options", False, True)
    # an in-scope message declined or clarified got no answer: a wrong intent, not a wrong answer
    assert (declined.intent_correct, declined.wrong, clarified.intent_correct, clarified.wrong) == (
        False, False, False, False)
    s = summarise(_run([escalated, answered, declined, clarified]), PriceTable())
    assert s["intent_accuracy"] == 0.25 and s["oos_recall"] == 0.5
    # predicted out_of_scope: the escalated case (judged) and the declined refund question
    assert s["per_intent"]["out_of_scope"] == {"support": 2, "correct": 1, "precision": 0.5,
                                               "recall": 0.5, "f1": 0.5}
    # answered: escalated is not automated; declined and clarified are not answers -> 1 of 1 wrong
    assert (s["answered"], s["wrong_answers"], s["wrong_among_answered"], s["wrong_answer_rate"]) == (1, 1, 1.0, 0.25)


def _run(outcomes: list[CaseOutcome]) -> EvalRun:
    return EvalRun(outcomes=outcomes, threshold=0.5, intent_model="intent-test", kb_version="kb-test",
                   wall_s=1.0, intents=frozenset())


# --- conversation metrics --------------------------------------------------------------------------


def test_conversation_metrics_on_constructed_cases() -> None:
    answer = _turn("retrieval", intent="check_refund_policy", citations=("refunds",))
    outcomes = [
        CaseOutcome(_case("a1", "answer", relevant_docs=("refunds",)), [answer]),                     # correct
        CaseOutcome(_case("a2", "answer", relevant_docs=("shipping",)), [answer]),                    # wrong
        CaseOutcome(_case("a3", "answer", relevant_docs=("refunds",), turns=2),                       # escalated
                    [_turn("human", "anger", escalated=True), _turn(None, "human_owns_ticket", reply=None)]),
        CaseOutcome(_case("c1", "clarify"), [_turn("deterministic", "clarify")]),                     # correct
        CaseOutcome(_case("c2", "clarify"), [answer]),                                                # wrong
        CaseOutcome(_case("e1", "escalate", "contact_human_agent"),
                    [_turn("human", "explicit_request", "contact_human_agent", escalated=True)]),     # correct
        CaseOutcome(_case("e2", "escalate"), [_turn("deterministic", "clarify")]),                    # missed
        CaseOutcome(GoldenCase("old", ("hi",), "greeting", line=9),
                    [_turn("deterministic", intent="greeting")]),                                     # no expect
    ]
    c = conversation_scores(outcomes)
    assert (c["conversations"], c["answerable"]) == (7, 5)
    assert c["deflection_answerable"] == 0.8  # a3 escalated
    assert c["conversation_accuracy"] == round(3 / 7, 4)
    assert c["clarify_rate"] == round(2 / 7, 4)
    assert c["by_expect"] == {
        "answer": {"cases": 3, "correct": 1, "accuracy": round(1 / 3, 4), "got": {"answer": 2, "escalate": 1}},
        "clarify": {"cases": 2, "correct": 1, "accuracy": 0.5, "got": {"answer": 1, "clarify": 1}},
        "escalate": {"cases": 2, "correct": 1, "accuracy": 0.5, "got": {"clarify": 1, "escalate": 1}},
    }
    assert c["failing_cases"] == [
        {"id": "a2", "line": 1, "wrong": True, "incomplete": False, "why": ["cites refunds (expected one of shipping)"]},
        {"id": "a3", "line": 1, "wrong": False, "incomplete": False, "why": ["expected answer, got escalate"]},
        {"id": "c2", "line": 1, "wrong": True, "incomplete": False, "why": ["expected clarify, got answer"]},
        {"id": "e2", "line": 1, "wrong": False, "incomplete": False, "why": ["expected escalate, got clarify"]},
    ]
    s = summarise(_run(outcomes), PriceTable())
    assert s["conversations"] == 7 and s["wrong_answers"] == 2
    # answered: a1 a2 c2 old (a3, e1 escalated; c1, e2 clarified)
    assert (s["answered"], s["wrong_among_answered"]) == (4, 0.5)
    # expected escalation follows expect: e1 e2 need a person, a1..c2 not; a3 escalated needlessly
    assert (s["escalation_cases"], s["escalation_precision"], s["escalation_recall"]) == (7, 0.5, 0.5)
    # intent metrics only over cases naming an intent: e1 and old
    assert (s["intent_cases"], s["intent_accuracy"]) == (2, 1.0)
    text = "\n".join(summary_lines(s, "constructed"))
    assert "conversations       7: accuracy 0.429" in text and "clarify rate 0.286" in text
    assert "answer 0.333 of 3 (got answer 2, escalate 1)" in text


def test_wrong_and_incomplete_are_counted_apart() -> None:
    refund = "Refunds go back to the original payment method within 5 business days.\n\nSource: Refunds"
    answer = _turn("retrieval", intent="check_refund_policy", citations=("refunds",), reply=refund)
    ask = _turn("deterministic", "asked_slot", "track_order", reply="What is your order number?")
    outcomes = [
        CaseOutcome(_case("ok", "answer", relevant_docs=("refunds",), must_include=("5 business days",)), [answer]),
        CaseOutcome(_case("no-fact", "answer", relevant_docs=("refunds",), must_include=("store credit",)), [answer]),
        CaseOutcome(_case("no-lead", "answer", relevant_docs=("refunds",), lead=("Yes",)), [answer]),
        # a missing fact does not excuse a wrong article: wrong, not incomplete
        CaseOutcome(_case("wrong-doc", "answer", relevant_docs=("shipping",), must_include=("free",)), [answer]),
        CaseOutcome(_case("ask-lacks", "ask", "track_order", must_include=("postcode",)), [ask]),
        # a clarifying question is not an answer: neither wrong nor incomplete
        CaseOutcome(_case("clarified", "answer", relevant_docs=("refunds",), must_include=("days",)),
                    [_turn("deterministic", "clarify")]),
    ]
    assert [(o.case.id, o.wrong, o.incomplete, o.correct) for o in outcomes] == [
        ("ok", False, False, True), ("no-fact", False, True, False), ("no-lead", False, True, False),
        ("wrong-doc", True, False, False), ("ask-lacks", False, True, False), ("clarified", False, False, False)]
    s = summarise(_run(outcomes), PriceTable())
    # answered: every case but the clarified one
    assert (s["answered"], s["wrong_answers"], s["wrong_among_answered"]) == (5, 1, 0.2)
    assert (s["incomplete_answers"], s["incomplete_among_answered"]) == (3, 0.6)
    assert [(f["id"], f["wrong"], f["incomplete"]) for f in s["failing_cases"]] == [
        ("no-fact", False, True), ("no-lead", False, True), ("wrong-doc", True, False),
        ("ask-lacks", False, True), ("clarified", False, False)]
    assert "incomplete answers  0.600 among answered (3 cases" in "\n".join(summary_lines(s, "constructed"))
    assert outcomes[2].to_json()["incomplete"] is True


def test_lead_alternatives_match_whole_words() -> None:
    case = _case("l", "answer", "cancel_order", lead=(
        "Yes", "Order #W1571486 is still being prepared, so you can still cancel it"))
    for reply, ok in [
        ("Yes, you can cancel an order while it is Processing.", True),
        ("Order #W1571486 is still being prepared, so you can still cancel it.\nUse Cancel order.", True),
        ("** Order  #W1571486 is still being prepared, so you can still cancel it**", True),
        ("Yesterday we shipped it.", False),       # "Yes" must end a word
        ("Order #W1571486 has already shipped.", False),
        ("You can cancel it.", False),
    ]:
        outcome = CaseOutcome(case, [_turn("retrieval", intent="cancel_order", reply=reply)])
        assert outcome.correct is ok, reply
    no = _case("n", "answer", "delivery_options", lead=("No",))
    northwind = CaseOutcome(no, [_turn("retrieval", intent="delivery_options",
                                       reply="Northwind Goods ships to Canada.")])
    assert northwind.why() == ["reply does not lead with 'No'"] and northwind.incomplete


def test_lead_may_be_a_string_or_a_list(tmp_path: Path) -> None:
    golden = load_golden(_write(
        tmp_path,
        '{"id": "a", "text": "can I cancel it?", "expect": "answer", "intent": "cancel_order", "lead": "Yes"}',
        '{"id": "b", "text": "can I cancel it?", "expect": "answer", "intent": "cancel_order", '
        '"lead": ["No", "Order #W5976205 has already shipped"]}',
    ))
    assert [c.lead for c in golden.cases] == [("Yes",), ("No", "Order #W5976205 has already shipped")]
    for bad, why in [('[]', "must be a non-empty list of strings"), ('["Yes", ""]', "item 1 is empty"),
                     ('["Yes", 3]', "item 1 must be a string"), ('3', "must be a non-empty string or list")]:
        path = _write(tmp_path, f'{{"id": "x", "text": "m", "expect": "answer", "intent": "greeting", "lead": {bad}}}',
                      name="bad.jsonl")
        with pytest.raises(GoldenError, match=f"field 'lead': {re.escape(why)}"):
            load_golden(path)


def test_a_proof_that_did_not_match_is_a_question() -> None:
    no_match = ("I couldn't match those details to order #W5976205. Please check the order number and "
                "the email address or postcode on the order.")
    case = _case("zip", "ask", "track_order", turns=2, must_not_include=("shipped",))
    asked = _turn("deterministic", "asked_proof", "track_order", reply="What is the postcode on the order?")
    unmatched = _turn("deterministic", "answered", "track_order", reply=no_match, not_found=["#W5976205"])
    outcome = CaseOutcome(case, [asked, unmatched])
    assert (outcome.kind, outcome.correct, outcome.wrong, outcome.answered) == ("ask", True, False, True)
    # the same turn with nothing not found is an answer
    found = _turn("deterministic", "answered", "track_order", reply="Order #W5976205 has shipped.", not_found=[])
    leaked = CaseOutcome(case, [asked, found])
    assert (leaked.kind, leaked.wrong) == ("answer", True)
    # a question that discloses what it must not is wrong too
    disclosed = _turn("deterministic", "answered", "track_order", reply=no_match + " It has shipped.",
                      not_found=["#W5976205"])
    assert CaseOutcome(case, [asked, disclosed]).wrong


def test_a_set_without_expect_has_no_conversation_numbers() -> None:
    c = conversation_scores([CaseOutcome(GoldenCase("old", ("hi",), "greeting"), [_turn("deterministic")])])
    assert c == {"conversations": 0, "answerable": 0, "deflection_answerable": None,
                 "conversation_accuracy": None, "clarify_rate": None, "by_expect": {}, "failing_cases": []}


# --- per-intent report -----------------------------------------------------------------------------


def test_per_intent_scores_and_the_worst_table() -> None:
    expected = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "x", "a"]
    scores = per_intent_scores(expected, predicted)
    # a: TP 2, predicted 3 -> P 2/3, R 2/3; b: TP 1, predicted 2 -> P 0.5, R 0.5; c: never predicted
    assert scores == {
        "a": {"support": 3, "correct": 2, "precision": round(2 / 3, 4), "recall": round(2 / 3, 4), "f1": round(2 / 3, 4)},
        "b": {"support": 2, "correct": 1, "precision": 0.5, "recall": 0.5, "f1": 0.5},
        "c": {"support": 1, "correct": 0, "precision": None, "recall": 0.0, "f1": 0.0},
    }
    assert [name for name, _ in worst_intents(scores, 2)] == ["c", "b"]
    assert per_intent_scores([], []) == {}
    outcomes = [CaseOutcome(GoldenCase(f"c{i}", ("m",), e, line=i), [_turn("deterministic", intent=p)])
                for i, (e, p) in enumerate(zip(expected, predicted, strict=True))]
    lines = summary_lines(summarise(_run(outcomes), PriceTable()), "constructed")
    table = [line for line in lines if line.strip().startswith(("worst intents", "c ", "b ", "a "))]
    assert table[0].split()[-5:] == ["support", "correct", "precision", "recall", "F1"]
    assert table[1].split() == ["c", "1", "0", "n/a", "0.000", "0.000"]
    assert table[2].split() == ["b", "2", "1", "0.500", "0.500", "0.500"]


# --- through the live path -------------------------------------------------------------------------


async def test_expect_cases_through_the_live_path(database_url: str, intent_model_dir: Path, tmp_path: Path) -> None:
    golden = load_golden(_write(
        tmp_path,
        '{"id": "refund", "text": "how long does a refund take?", "expect": "answer", '
        '"relevant_docs": ["refunds"], "must_include": ["business days"], "must_not_include": ["capital of"]}',
        '{"id": "slot", "text": "where is my order?", "expect": "ask", "intent": "track_order"}',
        '{"id": "person", "turns": ["hi", "I want to talk to a real person"], "expect": "escalate", '
        '"intent": "contact_human_agent"}',
        '{"id": "refund-but-escalate", "text": "how long does a refund take?", "expect": "escalate"}',
        '{"id": "wrong-doc", "text": "how long does a refund take?", "expect": "answer", "relevant_docs": ["warranty"]}',
    ))
    with eval_settings(Settings(data_dir=tmp_path / "unused"), model_dir=intent_model_dir,
                       database_url=database_url) as settings:
        run = await evaluate(golden.cases, settings, concurrency=3)
    refund, slot, person, should_escalate, wrong_doc = run.outcomes
    assert (refund.kind, refund.correct, refund.wrong) == ("answer", True, False)
    assert (slot.kind, slot.correct) == ("ask", True)
    assert (person.kind, person.correct, person.escalated) == ("escalate", True, True)
    assert (should_escalate.kind, should_escalate.correct, should_escalate.wrong) == ("answer", False, True)
    assert wrong_doc.wrong and wrong_doc.why() == ["cites refunds (expected one of warranty)"]
    s = summarise(run, PriceTable())
    assert (s["conversations"], s["answerable"], s["deflection_answerable"]) == (5, 3, 1.0)
    assert s["conversation_accuracy"] == 0.6 and s["wrong_answers"] == 2
    assert (s["answered"], s["wrong_among_answered"]) == (4, 0.5)
    assert s["escalation_recall"] == 0.5  # person escalated, refund-but-escalate did not
    assert [f["id"] for f in s["failing_cases"]] == ["refund-but-escalate", "wrong-doc"]
