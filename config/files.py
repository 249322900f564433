"""Reading the files a support team hands Helpline, with errors that name the file and line.

- :func:`read_utf8`: a text file (UTF-8, a BOM dropped).
- :func:`read_objects`: JSONL, one JSON object per line (https://jsonlines.org/); golden sets,
  knowledge-base chunk exports. :func:`scan_objects` yields bad lines too, to report all of them.
- :func:`read_json_object`: one JSON object (RFC 8259), e.g. an order store keyed by order id.
- :func:`read_message_rows`: a table of customer messages, CSV (RFC 4180, header row) or JSONL,
  with a text column and an optional label column; used by ``helpline replay`` and ``helpline
  train``. Bad rows are returned (``"line N: why"``) so that callers can report all of them.

Every error is :class:`DataFileError` (a ``ValueError``) unless a caller passes its own error type;
``OSError`` is raised as it is when a file cannot be read. Nothing here imports the settings, the
store or the router: clients such as ``helpline replay`` use it too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MESSAGE_TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_SHOWN_PROBLEMS = 5


class DataFileError(ValueError):
    """A data file cannot be used as it is; the message names the file (and line, field or column)."""


@dataclass(frozen=True)
class MessageRow:
    line: int  # line of the file where the row starts (1 = first line, the CSV header included)
    text: str
    label: str | None


def read_utf8(path: Path, error: type[Exception] = DataFileError) -> str:
    """The text of ``path``; raises ``error`` naming the file, line and byte offset when it is not
    UTF-8 (a BOM is dropped), ``OSError`` when it cannot be read."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}:{line}: not valid UTF-8 (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None


def read_objects(path: Path, error: type[Exception] = DataFileError) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield ``(line number, "PATH:LINE", object)`` for each non-blank line of ``path``.

    Raises ``error`` naming the file and line for a line that is not valid JSON or not a JSON object,
    or a file that is not UTF-8; ``OSError`` when it cannot be read.
    """
    for number, where, record, why in scan_objects(path, error):
        if record is None:
            raise error(f"{where}: {why}")
        yield number, where, record


def scan_objects(
    path: Path, error: type[Exception] = DataFileError
) -> Iterator[tuple[int, str, dict[str, Any] | None, str]]:
    """Like :func:`read_objects`, but a bad line does not stop the scan, so that a caller can report
    every bad line at once: yields ``(line number, "PATH:LINE", object, "")`` for a good line and
    ``(line number, "PATH:LINE", None, why)`` for a line that is not valid JSON or not an object.

    Raises ``error`` for a file that is not UTF-8 (nothing can be read past that), ``OSError`` when it
    cannot be read.
    """
    for number, raw in enumerate(read_utf8(path, error).splitlines(), start=1):
        if not raw.strip():
            continue
        record, why = _json_object(raw)
        yield number, f"{path}:{number}", record, why


def read_json_object(path: Path, error: type[Exception] = DataFileError) -> dict[str, Any]:
    """The JSON object in ``path`` (a whole-file document). Raises ``error`` naming the file for
    text that is not UTF-8, not JSON or not an object; ``OSError`` when it cannot be read."""
    record, why = _json_object(read_utf8(path, error))
    if record is None:
        raise error(f"{path}: {why}")
    return record


def read_message_rows(
    path: Path, text_column: str, label_column: str | None = None, *, purpose: str = "use"
) -> tuple[list[MessageRow], list[str]]:
    """The rows of a CSV or JSONL message table and its bad rows (``"line N: why"``, in file order).

    A CSV row the csv module's strict mode refuses (text after a closing quote) is a bad row; a quote
    that is never closed is an error for the whole file, since every row after it would be swallowed.

    Raises :class:`DataFileError` for a missing file, another file type, text that is not UTF-8, a
    CSV quote that is never closed (naming the line of the row where it opened), a column no row has
    (the available ones listed), or no good rows at all (``"no rows to {purpose}"``, with the first
    bad rows).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    if suffix not in MESSAGE_TABLE_SUFFIXES:
        raise DataFileError(f"{path}: unknown file type {suffix!r}; expected .csv or .jsonl")
    text = _table_text(path, suffix)
    load = _csv_rows if suffix == ".csv" else _jsonl_rows
    rows, bad = load(path, text, text_column, label_column)
    if not rows:
        why = f"; bad rows: {'; '.join(bad[:_SHOWN_PROBLEMS])}" if bad else ""
        raise DataFileError(f"{path}: no rows to {purpose}{why}")
    return rows, bad


def _table_text(path: Path, suffix: str) -> str:
    """The UTF-8 text of a message table; the error names the line and, when it can tell, the
    field holding the first byte that is not UTF-8 (a Latin-1 export is the usual cause)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad_at = exc.start
    line_no = raw.count(b"\n", 0, bad_at) + 1
    lines = raw.split(b"\n")
    line = lines[line_no - 1].decode("utf-8", errors="replace")
    names: list[str] = []
    if suffix == ".csv":
        header = next(csv.reader([lines[0].decode("utf-8-sig", errors="replace")]), [])
        values = next(csv.reader([line]), [])
        names = [h for h, v in zip(header, values, strict=False) if "\ufffd" in v]
    else:
        record, _ = _json_object(line)
        names = [str(k) for k, v in (record or {}).items() if "\ufffd" in str(v)]
    where = f", field {names[0]!r}" if names else ""
    raise DataFileError(
        f"{path}: line {line_no}{where}: not valid UTF-8 (byte 0x{raw[bad_at]:02x}); save the file as UTF-8"
    )


def _json_object(raw: str) -> tuple[dict[str, Any] | None, str]:
    """``(object, "")`` or ``(None, why)``."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    return record, ""


def _missing_column(path: Path, kind: str, column: str, available: list[str]) -> DataFileError:
    listed = ", ".join(available) if available else "(none)"
    return DataFileError(f"{path}: no {kind} column {column!r}; available columns: {listed}")


def _row(line: int, record: dict[Any, Any], text_column: str, label_column: str | None) -> MessageRow | str:
    """A row, or why the record is bad."""
    text = record.get(text_column)
    if text is None:
        return f"line {line}: no value in column {text_column!r}"
    if not isinstance(text, str):
        return f"line {line}: {text_column!r} is not text ({type(text).__name__})"
    if not text.strip():
        return f"line {line}: empty {text_column!r}"
    label = record.get(label_column) if label_column else None
    label = str(label).strip() if label is not None and str(label).strip() else None
    return MessageRow(line=line, text=text, label=label)


def _csv_rows(
    path: Path, text: str, text_column: str, label_column: str | None
) -> tuple[list[MessageRow], list[str]]:
    rows: list[MessageRow] = []
    bad: list[str] = []
    # Strict: a quote that is never closed is an error. The default reader silently reads the rest of
    # the file into that one field, which would send every following row as part of one message.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise _csv_error(path, 1, reader.line_num, exc, "the header row: ") from None
    for kind, column in (("text", text_column), ("label", label_column)):
        if column is not None and column not in header:
            raise _missing_column(path, kind, column, header)
    end = reader.line_num  # a quoted field may span lines: a row starts after the last one ended
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if _is_unclosed_quote(exc):
                raise _csv_error(path, end + 1, reader.line_num, exc) from None
            bad.append(f"line {end + 1}: {exc}")  # e.g. text after a closing quote: this row only
            end = reader.line_num
            continue
        start, end = end + 1, reader.line_num
        if not fields:  # a blank line
            continue
        if len(fields) > len(header):  # more fields than the header: the row is misaligned
            bad.append(f"line {start}: {len(fields)} fields, header has {len(header)}")
            continue
        row = _row(start, dict(zip(header, fields, strict=False)), text_column, label_column)
        (rows if isinstance(row, MessageRow) else bad).append(row)  # type: ignore[arg-type]
    return rows, bad


_UNCLOSED_QUOTE = "unexpected end of data"
"""What the csv module's strict mode raises when the file ends inside a quoted field."""


def _is_unclosed_quote(exc: csv.Error) -> bool:
    return _UNCLOSED_QUOTE in str(exc)


def _csv_error(path: Path, start: int, last: int, exc: csv.Error, what: str = "") -> DataFileError:
    """The file-level error for a CSV row the csv module refuses (``start``: the row's first line,
    ``last``: the last line the reader consumed). An unclosed quote gets advice, since the usual
    cause is a stray ``"`` in an export."""
    if not _is_unclosed_quote(exc):
        return DataFileError(f"{path}: line {start}: {what}{exc}")
    return DataFileError(
        f"{path}: line {start}: {what}a quote opened in this row is never closed, so lines "
        f"{start}-{last} (the rest of the file) would be read as one field; close the quote, or write "
        'a quote inside a quoted field twice ("")'
    )


def _jsonl_rows(
    path: Path, text: str, text_column: str, label_column: str | None
) -> tuple[list[MessageRow], list[str]]:
    rows: list[MessageRow] = []
    bad: list[str] = []
    seen: dict[str, None] = {}  # every key met, in first-seen order, for the error message
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        record, why = _json_object(raw)
        if record is None:
            bad.append(f"line {line}: {why}")
            continue
        seen.update(dict.fromkeys(record))
        row = _row(line, record, text_column, label_column)
        (rows if isinstance(row, MessageRow) else bad).append(row)  # type: ignore[arg-type]
    # JSONL has no header: a column is missing when no record has it; a record without it is bad.
    if seen:
        for kind, column in (("text", text_column), ("label", label_column)):
            if column is not None and column not in seen:
                raise _missing_column(path, kind, column, list(seen))
    return rows, bad
