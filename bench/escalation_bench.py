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
  English ones that must never count as foreign).

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

from bot.escalation import Escalation, Topics, explicit_request
from bot.language import LanguageGate
from config.settings import Settings

BITEXT = REPO.parent / "shared" / "data" / "bitext"
FILES = {
    "llm_27k_test": ("llm_27k_instructions_test.csv", "instruction"),
    "llm_27k_train": ("llm_27k_instructions_train.csv", "instruction"),
    "intent_8k_test": ("intent_detection_8.1k_test.csv", "utterance"),
}
LANGUAGES = REPO / "bench" / "data" / "languages.jsonl"


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
    parser.add_argument("--language-only", choices=("low", "high"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = Settings()
    if args.language_only:  # a fresh process per mode: lingua caches models process-wide
        print(json.dumps(language(settings, args.language_only == "low")))
        return
    result = {"settings": {"candidates": settings.language_candidates, "supported": settings.supported_languages,
                           "fuzzy_match_cutoff": settings.fuzzy_match_cutoff},
              "lexical": lexical(settings), "language": []}
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
