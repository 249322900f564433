"""Reading JSONL files (one JSON object per line) with errors that name the file and the line.

Used by every JSONL input Helpline takes from a team: golden sets, knowledge-base chunk exports.
Format: https://jsonlines.org/ (UTF-8, one value per line); blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_objects(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield ``(line number, "PATH:LINE", object)`` for each non-blank line of ``path``.

    Raises ``error`` naming the file and line for a line that is not valid JSON or not a JSON object;
    ``UnicodeDecodeError`` for a file that is not UTF-8; ``OSError`` when it cannot be read.
    """
    with Path(path).open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict):
                raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield number, where, record
