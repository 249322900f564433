"""Write a golden set (JSONL, the format of ``helpline eval``) from the Bitext test file.

Each sampled row becomes one case ``{"id": "bitext-ROW", "text": ..., "intent": ...}`` with every
``{{Placeholder}}`` filled by :func:`bot.placeholders.fill_placeholders` (fixed seed), so the text
looks like what customers type. Bitext has no escalation labels, documents or reference answers: those
metrics are not measured on this set.

``--exclude INTENT`` (repeatable) drops an intent's rows before sampling (issue 12 measures the live
path without ``contact_human_agent`` and ``complaint``, which a person must take); ``--stratify``
samples ``--limit`` rows in proportion to each intent's share of the file (largest remainder), so a
small sample still covers every intent. Without ``--stratify`` the sample is a plain seeded
``random.sample`` (the figures in docs/benchmarks.md before issue 12 used that).

Run (about 1 s), then evaluate the shipped bot through the live routing path:

    .venv/bin/python bench/bitext_golden.py --limit 1000 --out /tmp/bitext1000.jsonl
    .venv/bin/helpline eval --golden /tmp/bitext1000.jsonl --report bench/results/eval-bitext --json

``bench/bitext_live.py`` does the whole issue-12 measurement (train on the train file, this golden
set, eval at the default and the calibrated threshold, causes of non-deflection).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.placeholders import fill_placeholders  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bitext" / "llm_27k_instructions_test.csv"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a Bitext CSV (columns ``instruction``, ``intent``, optionally ``row_id``).

    Raises ``ValueError`` naming the file when a required column is missing.
    """
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"instruction", "intent"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)} (has {reader.fieldnames})")
        return list(reader)


def stratified_sample(
    rows: Sequence[dict[str, str]], limit: int, rng: random.Random, key: str = "intent"
) -> list[dict[str, str]]:
    """``limit`` rows drawn without replacement, each ``key`` value getting its share of ``limit``
    in proportion to its share of ``rows`` (largest-remainder rounding, ties broken by the value's
    name), in the order the rows appear in the file.

    Raises ``ValueError`` when ``limit`` is not in ``1..len(rows)``.
    """
    if not 1 <= limit <= len(rows):
        raise ValueError(f"limit must be between 1 and {len(rows)} (the rows left), got {limit}")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[row[key]].append(index)
    quotas = {name: limit * len(members) / len(rows) for name, members in groups.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(groups, key=lambda name: (-(quotas[name] - counts[name]), name))
    for name in by_remainder[: limit - sum(counts.values())]:
        counts[name] += 1
    chosen = [i for name in sorted(groups) for i in rng.sample(groups[name], counts[name])]
    return [rows[i] for i in sorted(chosen)]


def golden_cases(
    rows: Sequence[dict[str, str]], *, limit: int | None, seed: int, exclude: Iterable[str] = (),
    stratify: bool = False,
) -> list[dict[str, str]]:
    """Golden cases ``{"id", "text", "intent"}`` from Bitext rows: intents in ``exclude`` dropped,
    ``limit`` rows sampled (all when None), placeholders filled; everything from ``seed``.

    Raises ``ValueError`` when an excluded intent is not in the rows (a typo would silently keep
    it) or when ``limit`` is below 1.
    """
    dropped = set(exclude)
    unknown = dropped - {row["intent"] for row in rows}
    if unknown:
        raise ValueError(f"--exclude: no rows with intent(s) {sorted(unknown)}")
    kept = [row for row in rows if row["intent"] not in dropped]
    rng = random.Random(seed)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is not None and limit < len(kept):
        kept = stratified_sample(kept, limit, rng) if stratify else rng.sample(kept, limit)
    return [
        {
            "id": f"bitext-{row.get('row_id') or i}",
            "text": fill_placeholders(row["instruction"], rng),
            "intent": row["intent"],
        }
        for i, row in enumerate(kept)
    ]


def write_jsonl(path: Path, cases: Iterable[dict[str, str]]) -> int:
    """Write ``cases`` one JSON object a line; returns how many."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for case in cases:
            out.write(json.dumps(case, ensure_ascii=False) + "\n")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Bitext CSV (instruction, intent).")
    parser.add_argument("--limit", type=int, default=None, help="Sample this many rows (seeded).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude", action="append", default=[], metavar="INTENT",
                        help="Leave this intent's rows out (repeatable).")
    parser.add_argument("--stratify", action="store_true", help="Sample each intent in proportion.")
    parser.add_argument("--out", type=Path, required=True, help="Golden JSONL to write.")
    args = parser.parse_args()
    try:
        cases = golden_cases(read_rows(args.data), limit=args.limit, seed=args.seed,
                             exclude=args.exclude, stratify=args.stratify)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {write_jsonl(args.out, cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
