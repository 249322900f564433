"""Issue 12's Bitext live-path measurement: deflection and wrong answers of a Bitext-trained model
through the whole router, at the default and the calibrated threshold, and why turns are not deflected.

Steps (each a real ``helpline`` command, as a team would run them):

1. ``helpline train`` on the Bitext train file (21,540 rows; about 10 min on 2 busy cores), unless
   ``--model DIR`` reuses a model trained before;
2. a golden set from the Bitext test file (``bench/bitext_golden.py``): ``contact_human_agent`` and
   ``complaint`` left out (a person must take those), ``--limit`` rows sampled per intent in
   proportion (stratified, seeded), placeholders filled;
3. ``helpline eval --model DIR`` at the default threshold (``--report``);
4. ``helpline eval --calibrate --max-wrong X`` (writes ``confidence_threshold`` into a private
   ``HELPLINE_CONFIG_FILE``, ``WORK/calibrated.yaml``), then ``helpline eval`` at that threshold;
5. every case not deflected, not answered or answered wrong, grouped by cause (:func:`cause`).

Everything runs with ``HELPLINE_DATA_DIR=WORK/data`` (knowledge base, models). Writes into ``--out``
(default ``bench/results/eval-bitext-live``): ``summary.json`` (both runs' figures, the calibration,
the groups with counts, per-intent counts and examples), ``causes.md`` (the same as tables) and per
run the eval report (``default/``, ``calibrated/``: report.md and plots; ``cases.jsonl`` stays in
WORK, since it holds every reply).

    .venv/bin/python bench/bitext_live.py --limit 1500                       # trains first
    .venv/bin/python bench/bitext_live.py --limit 1500 --model WORK/models/intent-XXXX
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bitext_golden import golden_cases, read_rows, write_jsonl  # noqa: E402
from bot.clarify import vagueness  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "bitext"
HELPLINE = ROOT / ".venv" / "bin" / "helpline"
EXCLUDED = ("contact_human_agent", "complaint")
EXAMPLES = 4
RUN_KEYS = ("cases", "deflection", "answered", "wrong_answers", "wrong_answer_rate", "wrong_among_answered",
            "intent_accuracy", "macro_f1", "clarify_rate", "groundedness", "unscored", "threshold",
            "intent_model", "cases_per_s")


def helpline(args: list[str], env: Mapping[str, str], log: Path) -> dict[str, Any]:
    """Run ``helpline ARGS --json``; returns the JSON object of its last stdout line. Stderr goes to
    ``log``. Raises ``RuntimeError`` (with the log's tail) when the exit status is not 0 or 1 (1: a
    calibration that wrote nothing still prints its figures)."""
    with log.open("w", encoding="utf-8") as err:
        done = subprocess.run([str(HELPLINE), *args, "--json"], cwd=ROOT, env=dict(env), text=True,
                              stdout=subprocess.PIPE, stderr=err, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode not in (0, 1) or not lines:
        tail = log.read_text(encoding="utf-8")[-2000:]
        raise RuntimeError(f"helpline {args[0]} exited {done.returncode}:\n{tail}")
    return json.loads(lines[-1])


def cause(record: Mapping[str, Any]) -> str | None:
    """Why a case (a ``cases.jsonl`` record of one single-turn case) is not a right answer, as
    ``"<group>: <detail>"``, or None when it was answered right.

    Groups: ``escalated: <router reason>`` (a trigger, ``no_kb_match``, a human-tier intent, ...),
    ``clarify: <empty|gibberish|vague|low_confidence>`` (the bot asked what the customer needs),
    ``off_topic`` (the polite decline), ``wrong: <expected> -> <predicted>`` (answered with another
    intent) and ``ungrounded`` (right intent, answer not fully supported by its articles).
    """
    last = record["turns"][-1]
    kind = record["kind"]
    if kind == "escalate":
        return f"escalated: {last['reason']}"
    if kind == "clarify":
        return f"clarify: {vagueness(last['text']) or 'low_confidence'}"
    if kind == "decline":
        return "off_topic"
    if record["wrong"]:
        if record["judged_intent"] != record["expected_intent"]:
            return f"wrong: {record['expected_intent']} -> {record['judged_intent']}"
        return "ungrounded"
    if record["judged_intent"] != record["expected_intent"]:
        return f"right kind, other intent: {record['expected_intent']} -> {record['judged_intent']}"
    return None


def group_causes(records: Iterable[Mapping[str, Any]], examples: int = EXAMPLES) -> list[dict[str, Any]]:
    """Cases grouped by :func:`cause`, biggest group first: ``cause``, ``count``, ``intents``
    (expected intent -> count), ``predicted`` (recorded intent -> count), ``examples`` (the first
    ``examples``: id, text, predicted intent, confidence, reason)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        why = cause(record)
        if why is not None:
            groups[why].append(record)
    out = []
    for why, members in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        out.append({
            "cause": why,
            "count": len(members),
            "intents": dict(Counter(r["expected_intent"] for r in members).most_common()),
            "predicted": dict(Counter(str(r["turns"][-1]["intent"]) for r in members).most_common()),
            "examples": [
                {"id": r["id"], "text": r["turns"][-1]["text"], "intent": r["turns"][-1]["intent"],
                 "confidence": r["turns"][-1]["confidence"], "reason": r["turns"][-1]["reason"],
                 "ranking": (r.get("ranking") or [])[:3]}
                for r in members[:examples]
            ],
        })
    return out


def run_eval(golden: Path, model: Path, env: Mapping[str, str], work: Path, name: str,
             out: Path, concurrency: int) -> dict[str, Any]:
    """``helpline eval`` with ``--report WORK/NAME``; the report (without cases.jsonl) is copied to
    ``OUT/NAME``. Returns the summary's :data:`RUN_KEYS` plus ``kinds`` and ``groups``."""
    report = work / name
    shutil.rmtree(report, ignore_errors=True)
    summary = helpline(["eval", "--golden", str(golden), "--model", str(model), "--report", str(report),
                        "--concurrency", str(concurrency)], env, work / f"{name}.log")
    records = [json.loads(line) for line in (report / "cases.jsonl").open(encoding="utf-8")]
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(report, target, ignore=shutil.ignore_patterns("cases.jsonl"))
    result = {key: summary.get(key) for key in RUN_KEYS}
    result["answered_share"] = round(summary["answered"] / summary["cases"], 4)
    result["kinds"] = dict(Counter(r["kind"] for r in records).most_common())
    result["groups"] = group_causes(records)
    return result


def train(data: Path, env: Mapping[str, str], work: Path) -> Path:
    """``helpline train`` on ``data`` into ``WORK/models``; returns the model folder."""
    started = time.monotonic()
    report = helpline(["train", "--data", str(data), "--text-column", "instruction",
                       "--label-column", "intent", "--out", str(work / "models")], env, work / "train.log")
    print(f"trained in {time.monotonic() - started:.0f} s: {report.get('model_dir')}", file=sys.stderr)
    return Path(report["model_dir"])


def causes_markdown(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """``causes.md``: per run, the groups as a table with two examples each."""
    lines = ["# Bitext live path: why cases are not answered right", ""]
    for name, run in runs.items():
        lines += [f"## {name} (threshold {run['threshold']})", "",
                  f"deflection {run['deflection']}, answered {run['answered_share']}, "
                  f"wrong among answered {run['wrong_among_answered']}, wrong of all {run['wrong_answer_rate']}", "",
                  "| cause | cases | expected intents | examples |", "|---|---|---|---|"]
        for group in run["groups"]:
            intents = ", ".join(f"{k} {v}" for k, v in list(group["intents"].items())[:4])
            examples = "; ".join(f"\"{e['text'][:70]}\" ({e['intent']} {e['confidence']})"
                                 for e in group["examples"][:2])
            lines.append(f"| {group['cause']} | {group['count']} | {intents} | {examples} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, default=SHARED / "llm_27k_instructions_train.csv")
    parser.add_argument("--test", type=Path, default=SHARED / "llm_27k_instructions_test.csv")
    parser.add_argument("--limit", type=int, default=1500, help="Test rows sampled (stratified).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="Reuse this trained model folder.")
    parser.add_argument("--max-wrong", type=float, default=0.01)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bitext"), help="Private scratch folder.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval-bitext-live")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if args.model is not None and not (args.model / "meta.json").is_file():
        parser.error(f"--model {args.model}: not a saved intent model (no meta.json)")

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HELPLINE_CONFIG_FILE", "HELPLINE_CONFIDENCE_THRESHOLD", "HELPLINE_INTENT_MODEL_DIR")}
    env["HELPLINE_DATA_DIR"] = str(args.work / "data")
    model = args.model or train(args.train, env, args.work)

    golden = args.work / f"golden{args.limit}.jsonl"
    cases = golden_cases(read_rows(args.test), limit=args.limit, seed=args.seed, exclude=EXCLUDED, stratify=True)
    write_jsonl(golden, cases)

    runs = {"default": run_eval(golden, model, env, args.work, "default", args.out, args.concurrency)}
    calibrated_file = args.work / "calibrated.yaml"
    calibrated_file.unlink(missing_ok=True)
    calibrated_env = {**env, "HELPLINE_CONFIG_FILE": str(calibrated_file)}
    calibration = helpline(["eval", "--golden", str(golden), "--model", str(model), "--calibrate",
                            "--max-wrong", str(args.max_wrong), "--concurrency", str(args.concurrency)],
                           calibrated_env, args.work / "calibrate.log")["calibration"]
    calibration.pop("curve", None)
    if calibration.get("written"):
        runs["calibrated"] = run_eval(golden, model, calibrated_env, args.work, "calibrated", args.out,
                                      args.concurrency)
    summary = {
        "golden": {"test_file": args.test.name, "rows": len(cases), "limit": args.limit, "seed": args.seed,
                   "stratified": True, "excluded": list(EXCLUDED)},
        "model": str(model.name),
        "max_wrong": args.max_wrong,
        "calibration": calibration,
        "runs": runs,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "causes.md").write_text(causes_markdown(runs), encoding="utf-8")
    for name, run in runs.items():
        print(f"{name}: threshold {run['threshold']} deflection {run['deflection']} answered {run['answered_share']} "
              f"wrong/answered {run['wrong_among_answered']} wrong/all {run['wrong_answer_rate']}")
    print(f"wrote {args.out}/summary.json and causes.md")


if __name__ == "__main__":
    main()
