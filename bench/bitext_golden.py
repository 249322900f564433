"""Write a golden set (JSONL, the format of ``helpline eval``) from the Bitext test file.

Each sampled row becomes one case ``{"id": "bitext-ROW", "text": ..., "intent": ...}`` with every
``{{Placeholder}}`` filled by :func:`bot.placeholders.fill_placeholders` (fixed seed), so the text
looks like what customers type. Bitext has no escalation labels, documents or reference answers: those
metrics are not measured on this set.

Run (about 1 s), then evaluate the shipped bot through the live routing path:

    .venv/bin/python bench/bitext_golden.py --limit 1000 --out /tmp/bitext1000.jsonl
    .venv/bin/helpline eval --golden /tmp/bitext1000.jsonl --report bench/results/eval-bitext --json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.placeholders import fill_placeholders  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bitext" / "llm_27k_instructions_test.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Bitext CSV (instruction, intent).")
    parser.add_argument("--limit", type=int, default=None, help="Sample this many rows (seeded).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="Golden JSONL to write.")
    args = parser.parse_args()

    with args.data.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(args.seed)
    if args.limit is not None and args.limit < len(rows):
        rows = rng.sample(rows, args.limit)
    with args.out.open("w", encoding="utf-8") as out:
        for i, row in enumerate(rows):
            case = {
                "id": f"bitext-{row.get('row_id') or i}",
                "text": fill_placeholders(row["instruction"], rng),
                "intent": row["intent"],
            }
            out.write(json.dumps(case, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} cases to {args.out}")


if __name__ == "__main__":
    main()
