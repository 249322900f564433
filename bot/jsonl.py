"""Reading text and JSONL files (one JSON object per line) with errors that name the file and line.

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

    Raises ``error`` naming the file and line for a line that is not valid JSON or not a JSON object,
    or a file that is not UTF-8; ``OSError`` when it cannot be read.
    """
    for number, raw in enumerate(read_utf8(path, error).splitlines(), start=1):
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


def read_utf8(path: Path, error: type[Exception] = ValueError) -> str:
    """The text of ``path``; raises ``error`` naming the file, line and byte offset when it is not
    UTF-8 (a BOM is dropped), ``OSError`` when it cannot be read."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}:{line}: not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
