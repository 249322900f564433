"""Escalation triggers measured on text nobody here wrote, plus the language detector's cost.

    python bench/escalation_bench.py [--out bench/results/escalation.json]

* explicit request for a person (``bot.escalation.explicit_request``, rules only, no intent model):
  recall on Bitext's ``contact_human_agent`` messages and how often it fires on the other 26 intents
  (``contact_customer_service`` included), on the 27k test and train files and the 8.1k test file;
* sensitive topics (``config/sensitive_topics.yaml``): hits on every Bitext message (all are ordinary
  support requests, so every hit is a false positive);
* language detection (``bot.language.LanguageGate``) in low- and high-accuracy mode, each in a fresh
  process: load time, resident memory added, latency per message, English Bitext messages judged
  foreign, and ``bench/data/languages.jsonl`` (55 support messages in 12 other languages, 47 short or
  English ones that must never count as foreign);
* false fires per trigger on ordinary traffic (messages that need no person): the Bitext 27k and
  8.1k test files without ``complaint`` and ``contact_human_agent``, and
  ``bench/data/escalation_ordinary.jsonl`` (172 short chat messages: problems described calmly, stolen
  or lost cards, safety and privacy questions, words missing from the English word list), and the
  1,500 English sentences of ``../shared/data/presidio_synthetic_pii`` (names, addresses and ids from
  many countries; counted for the language check only, as some of its sentences do ask for a person or
  quote laws). Per message:
  ``unsupported_language``, ``explicit_request`` (rules), ``sensitive_topic``, ``negative_sentiment``;
  ``conversation_sentiment`` on each message with the two before it in its file as the earlier turns;
* recall on messages that should escalate: ``bench/data/escalation_should.jsonl`` (angry customers
  and real sensitive topics, each with the trigger that must fire), Bitext ``contact_human_agent``
  (explicit request), the foreign messages of ``languages.jsonl``, and the conversations of
  ``config/golden/handoff.jsonl`` that must escalate on sentiment (a sentiment trigger must fire by
  their last turn).

``--baseline FILE`` copies the ``false_fires`` and ``recall`` of an earlier run (e.g. this script run at
an older commit) into the output as ``before``.

Needs ``../shared/data/bitext``. Prints one line per measurement and writes the JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np

from bot.entities import extract_entities
from bot.escalation import Escalation, PriorTurn, Topics, explicit_request
from bot.language import LanguageGate
from bot.sentiment import Sentiment
from bot.understanding import Understanding
from config.settings import Settings

BITEXT = REPO.parent / "shared" / "data" / "bitext"
FILES = {
    "llm_27k_test": ("llm_27k_instructions_test.csv", "instruction"),
    "llm_27k_train": ("llm_27k_instructions_train.csv", "instruction"),
    "intent_8k_test": ("intent_detection_8.1k_test.csv", "utterance"),
}
LANGUAGES = REPO / "bench" / "data" / "languages.jsonl"
ORDINARY_CHAT = REPO / "bench" / "data" / "escalation_ordinary.jsonl"
SHOULD_ESCALATE = REPO / "bench" / "data" / "escalation_should.jsonl"
HANDOFF_GOLDEN = REPO / "config" / "golden" / "handoff.jsonl"
PRESIDIO = REPO.parent / "shared" / "data" / "presidio_synthetic_pii"
NEEDS_A_PERSON = frozenset({"complaint", "contact_human_agent"})
"""Bitext intents left out of ordinary traffic: a person may rightly take these."""
LANGUAGE_ONLY = frozenset({"presidio_pii"})
PER_MESSAGE = ("unsupported_language", "explicit_request", "sensitive_topic", "negative_sentiment")
SENTIMENT_REASONS = ("negative_sentiment", "conversation_sentiment")


def _rows(name: str) -> list[tuple[str, str]]:
    file, column = FILES[name]
    with open(BITEXT / file, newline="", encoding="utf-8") as fh:
        return [(r[column], r["intent"]) for r in csv.DictReader(fh)]


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def lexical(settings: Settings) -> dict:
    esc = Escalation(settings, topics=Topics.load(settings.sensitive_topics_file), language=None,
                     embed=lambda texts: None, sentiment=lambda text: 0.0)  # type: ignore[arg-type,return-value]
    out: dict = {}
    for name in FILES:
        rows = _rows(name)
        started = time.perf_counter()
        tokens = [esc.speller.tokens(text) for text, _ in rows]
        fired = [bool(explicit_request(t)) for t in tokens]
        topic_hits = [esc.topics.find(t) for t in tokens]
        ms = (time.perf_counter() - started) / len(rows) * 1000
        human = [f for f, (_, intent) in zip(fired, rows) if intent == "contact_human_agent"]
        others = Counter(intent for f, (_, intent) in zip(fired, rows) if f and intent != "contact_human_agent")
        out[name] = {
            "messages": len(rows),
            "human_requests": len(human),
            "explicit_request_recall": round(sum(human) / len(human), 4),
            "fired_on_other_intents": sum(others.values()),
            "other_intent_messages": len(rows) - len(human),
            "fired_by_intent": dict(others),
            "sensitive_topic_hits": sum(h is not None for h in topic_hits),
            "ms_per_message": round(ms, 4),
        }
        print(f"{name}: explicit request recall {out[name]['explicit_request_recall']:.3f} "
              f"({sum(human)}/{len(human)}), fired on {sum(others.values())}/{len(rows) - len(human)} "
              f"other messages, topic hits {out[name]['sensitive_topic_hits']}, {ms:.3f} ms/message")
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _understood(text: str, sentiment: Sentiment) -> Understanding:
    # The triggers measured here read the words and the sentiment only; the intent is left unknown.
    return Understanding(intent="unknown", confidence=0.0, alternatives=(), entities=extract_entities(text),
                         sentiment=sentiment.compound(text), embedding=np.zeros(384, dtype=np.float32))


def _fired(esc: Escalation, text: str, sentiment: Sentiment) -> dict[str, bool]:
    """Which per-message triggers fire on ``text`` alone, each tried on its own."""
    tokens = esc.speller.tokens(text)
    u = _understood(text, sentiment)
    return {
        "unsupported_language": esc.unsupported_language(text, reasoning_available=False) is not None,
        "explicit_request": explicit_request(tokens) is not None,
        "sensitive_topic": esc.sensitive_topic(tokens) is not None,
        "negative_sentiment": esc.negative_sentiment(u, tokens) is not None,
    }


def _conversation_fires(esc: Escalation, texts: list[str], sentiment: Sentiment) -> int:
    """Messages on which ``conversation_sentiment`` fires with the two before them as earlier turns."""
    fired = 0
    for i, text in enumerate(texts):
        prior = [PriorTurn(t, tier="retrieval", reason="answered") for t in texts[max(0, i - 2) : i]]
        fired += esc.conversation_sentiment(_understood(text, sentiment), prior) is not None
    return fired


def false_fires(settings: Settings) -> dict:
    sentiment = Sentiment()
    esc = Escalation.from_settings(settings, lambda texts: None, sentiment.compound)  # type: ignore[arg-type,return-value]
    sets = {name: [t for t, intent in _rows(name) if intent not in NEEDS_A_PERSON]
            for name in ("llm_27k_test", "intent_8k_test")}
    sets["chat"] = [row["text"] for row in _jsonl(ORDINARY_CHAT)]
    sets["presidio_pii"] = [row["text"] for f in ("synth_pii_train.jsonl", "synth_pii_test.jsonl")
                            for row in _jsonl(PRESIDIO / f)]
    out: dict = {}
    for name, texts in sets.items():
        fired = [_fired(esc, t, sentiment) for t in texts]
        kinds = ("unsupported_language",) if name in LANGUAGE_ONLY else PER_MESSAGE
        counts = {k: sum(f[k] for f in fired) for k in kinds}
        if name not in LANGUAGE_ONLY:
            counts["conversation_sentiment"] = _conversation_fires(esc, texts, sentiment)
            counts["any"] = sum(any(f.values()) for f in fired)
        out[name] = {
            "messages": len(texts),
            "fired": counts,
            "rate": {k: round(v / len(texts), 4) for k, v in counts.items()},
            "examples": {k: [t for t, f in zip(texts, fired) if f[k]][:8] for k in kinds},
        }
        print(f"false fires on {name} ({len(texts)} ordinary messages): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return out


def recall(settings: Settings) -> dict:
    sentiment = Sentiment()
    esc = Escalation.from_settings(settings, lambda texts: None, sentiment.compound)  # type: ignore[arg-type,return-value]
    out: dict = {}
    should = _jsonl(SHOULD_ESCALATE)
    for trigger in sorted({row["trigger"] for row in should}):
        texts = [row["text"] for row in should if row["trigger"] == trigger]
        missed = [t for t in texts if not _fired(esc, t, sentiment)[trigger]]
        out[trigger] = {"messages": len(texts), "recall": round(1 - len(missed) / len(texts), 4), "missed": missed}
    human = [t for t, intent in _rows("llm_27k_test") if intent == "contact_human_agent"]
    hits = sum(explicit_request(esc.speller.tokens(t)) is not None for t in human)
    out["explicit_request"] = {"messages": len(human), "recall": round(hits / len(human), 4),
                               "source": "bitext llm_27k_test contact_human_agent"}
    foreign = [row for row in _jsonl(LANGUAGES) if row["language"]]
    hits = sum(esc.unsupported_language(row["text"], reasoning_available=False) is not None for row in foreign)
    out["unsupported_language"] = {"messages": len(foreign), "recall": round(hits / len(foreign), 4),
                                   "source": "bench/data/languages.jsonl"}
    upset = [c for c in _jsonl(HANDOFF_GOLDEN) if c["brief"].get("reason") in SENTIMENT_REASONS]
    missed = []
    for conv in upset:
        turns = conv["turns"]
        if not any(
            esc.negative_sentiment(_understood(t, sentiment), esc.speller.tokens(t)) or esc.conversation_sentiment(
                _understood(t, sentiment), [PriorTurn(p, tier="retrieval", reason="answered") for p in turns[:i]])
            for i, t in enumerate(turns)
        ):
            missed.append(conv["id"])
    out["sentiment_conversations"] = {"messages": len(upset), "recall": round(1 - len(missed) / len(upset), 4),
                                      "missed": missed, "source": "config/golden/handoff.jsonl"}
    complaints = [t for t, intent in _rows("llm_27k_test") if intent == "complaint"]
    out["bitext_complaint_any_sentiment"] = {
        "messages": len(complaints),
        "share": round(sum(_fired(esc, t, sentiment)["negative_sentiment"] for t in complaints) / len(complaints), 4),
        "note": "for information: filing a complaint is not in itself anger",
    }
    for key, value in out.items():
        print(f"recall {key}: {value.get('recall', value.get('share'))} of {value['messages']}")
    return out


def language(settings: Settings, low_accuracy: bool) -> dict:
    before = _rss_mb()
    started = time.perf_counter()
    gate = LanguageGate(
        settings.supported_languages, settings.language_candidates, low_accuracy=low_accuracy,
        min_words=settings.language_min_words,
        max_supported_confidence=settings.language_max_supported_confidence,
        max_english_share=settings.language_max_english_share,
    )
    load_s = time.perf_counter() - started
    rss = _rss_mb() - before  # english_words() is loaded by the gate and counted here too
    english = [text for text, _ in _rows("llm_27k_test")]
    started = time.perf_counter()
    flagged = [t for t in english if gate.unsupported(t)]
    ms = (time.perf_counter() - started) / len(english) * 1000
    cases = [json.loads(line) for line in LANGUAGES.read_text(encoding="utf-8").splitlines()]
    right = wrong = missed = never_flagged = 0
    for case in cases:
        found = gate.unsupported(case["text"])
        if case["language"] is None:
            never_flagged += found is not None
        elif found is None:
            missed += 1
        elif found.code == case["language"]:
            right += 1
        else:
            wrong += 1
    foreign = sum(c["language"] is not None for c in cases)
    return {
        "mode": "low" if low_accuracy else "high",
        "candidates": len(settings.language_candidates),
        "load_s": round(load_s, 3),
        "rss_added_mb": round(rss, 1),
        "ms_per_message": round(ms, 4),
        "bitext_english_messages": len(english),
        "bitext_english_judged_foreign": len(flagged),
        "foreign_messages": foreign,
        "foreign_right": right,
        "foreign_wrong_language": wrong,
        "foreign_missed": missed,
        "never_foreign_messages": len(cases) - foreign,
        "never_foreign_flagged": never_flagged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "escalation.json")
    parser.add_argument("--baseline", type=Path, help="an earlier result file: its false fires and recall "
                        "are copied in as 'before'")
    parser.add_argument("--triggers-only", action="store_true", help="only false fires and recall (no "
                        "explicit-request sweep of the train file, no language cost)")
    parser.add_argument("--language-only", choices=("low", "high"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = Settings()
    if args.language_only:  # a fresh process per mode: lingua caches models process-wide
        print(json.dumps(language(settings, args.language_only == "low")))
        return
    result: dict = {"settings": {"candidates": settings.language_candidates,
                                 "supported": settings.supported_languages,
                                 "fuzzy_match_cutoff": settings.fuzzy_match_cutoff}}
    result["false_fires"] = false_fires(settings)
    result["recall"] = recall(settings)
    if args.baseline:
        before = json.loads(args.baseline.read_text(encoding="utf-8"))
        result["before"] = {k: before[k] for k in ("commit", "false_fires", "recall") if k in before}
    result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                      text=True).stdout.strip()
    if args.triggers_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    result["lexical"] = lexical(settings)
    result["language"] = []
    for mode in ("low", "high"):
        child = subprocess.run([sys.executable, __file__, "--language-only", mode], check=True,
                               capture_output=True, text=True)
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        result["language"].append(measured)
        print(f"language ({mode} accuracy, {measured['candidates']} candidates): load {measured['load_s']} s, "
              f"+{measured['rss_added_mb']} MB, {measured['ms_per_message']} ms/message, English judged foreign "
              f"{measured['bitext_english_judged_foreign']}/{measured['bitext_english_messages']}, foreign right "
              f"{measured['foreign_right']}/{measured['foreign_messages']} (wrong language "
              f"{measured['foreign_wrong_language']}, missed {measured['foreign_missed']}), short/English "
              f"flagged {measured['never_foreign_flagged']}/{measured['never_foreign_messages']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
