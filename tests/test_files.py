"""config.files: the readers for the files a team hands Helpline name the file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.files import (
    DataFileError,
    read_json_object,
    read_message_rows,
    read_objects,
    read_utf8,
    scan_objects,
)


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_missing_column_names_it_and_lists_the_others(tmp_path: Path, suffix: str) -> None:
    data = tmp_path / f"rows.{suffix}"
    if suffix == "csv":
        data.write_text("instruction,intent\nhello,greet\n", encoding="utf-8")
    else:
        data.write_text(json.dumps({"instruction": "hello", "intent": "greet"}) + "\n", encoding="utf-8")
    with pytest.raises(DataFileError) as caught:
        read_message_rows(data, "utterance")
    assert "'utterance'" in str(caught.value) and "instruction, intent" in str(caught.value)
    with pytest.raises(DataFileError, match="label column 'label'"):
        read_message_rows(data, "instruction", "label")


def test_csv_bad_rows_keep_their_line_numbers(tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text('text,label\n"two\nlines",a\n,b\nok,c,extra\nfine,d\n', encoding="utf-8")
    rows, bad = read_message_rows(data, "text", "label")
    assert [(row.line, row.text, row.label) for row in rows] == [(2, "two\nlines", "a"), (6, "fine", "d")]
    assert bad == ["line 4: empty 'text'", "line 5: 3 fields, header has 2"]


def test_csv_with_a_bom_and_crlf_line_ends(tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_bytes("\ufefftext,label\r\nhello there,greet\r\n\"a\r\nb\",x\r\n".encode())
    rows, bad = read_message_rows(data, "text", "label")
    assert [(row.line, row.text, row.label) for row in rows] == [(2, "hello there", "greet"), (3, "a\r\nb", "x")]
    assert bad == []


def test_jsonl_bad_lines_are_reported_and_the_rest_kept(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hi", "label": "greet"}\n\n{"text": "hi"\n["x"]\n{"text": 3}\n', encoding="utf-8")
    rows, bad = read_message_rows(data, "text", "label")
    assert [(row.line, row.text, row.label) for row in rows] == [(1, "hi", "greet")]
    assert [b.split(":")[0] for b in bad] == ["line 3", "line 4", "line 5"]
    assert "not valid JSON" in bad[0] and "expected a JSON object, got list" in bad[1]
    assert bad[2] == "line 5: 'text' is not text (int)"


def test_no_good_rows_says_what_for_and_shows_the_bad_ones(tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("text\n\n\"\"\n", encoding="utf-8")  # a blank line does not shift line numbers
    with pytest.raises(DataFileError, match=r"rows.csv: no rows to train on; bad rows: line 3: empty 'text'"):
        read_message_rows(data, "text", purpose="train on")


def test_file_type_missing_file_and_encoding(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="unknown file type '.txt'"):
        (tmp_path / "rows.txt").write_text("text\nhi\n", encoding="utf-8")
        read_message_rows(tmp_path / "rows.txt", "text")
    with pytest.raises(DataFileError, match="nope.csv: no such file"):
        read_message_rows(tmp_path / "nope.csv", "text")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\ncaf\xe9 ok\n".encode("latin-1"))
    with pytest.raises(DataFileError, match=r"latin.csv: line 2, field 'text': not valid UTF-8 \(byte 0xe9\)"):
        read_message_rows(latin, "text")
    assert read_utf8(_write(tmp_path / "bom.txt", b"\xef\xbb\xbfhello")) == "hello"


def test_read_objects_names_file_and_line_and_takes_the_callers_error(tmp_path: Path) -> None:
    good = _write(tmp_path / "a.jsonl", b'{"id": 1}\n\n{"id": 2}\n')
    assert [(n, obj["id"]) for n, _, obj in read_objects(good)] == [(1, 1), (3, 2)]
    bad = _write(tmp_path / "b.jsonl", b'{"id": 1}\n[1]\n')

    class GoldenError(ValueError):
        pass

    with pytest.raises(GoldenError, match=r"b.jsonl:2: expected a JSON object, got list"):
        list(read_objects(bad, GoldenError))


def test_read_json_object(tmp_path: Path) -> None:
    assert read_json_object(_write(tmp_path / "o.json", b'{"#W1": {"status": "pending"}}')) == {
        "#W1": {"status": "pending"}
    }
    with pytest.raises(DataFileError, match=r"x.json: not valid JSON: Expecting property name enclosed in double quotes \(line 2, column 1\)"):
        read_json_object(_write(tmp_path / "x.json", b"{\n"))
    with pytest.raises(DataFileError, match="y.json: expected a JSON object, got list"):
        read_json_object(_write(tmp_path / "y.json", b"[]"))
    with pytest.raises(FileNotFoundError):
        read_json_object(tmp_path / "missing.json")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_csv_with_an_unclosed_quote_is_refused_naming_the_line(tmp_path: Path) -> None:
    # Without strict parsing the csv module reads lines 3-5 into one field: one message of three rows.
    data = tmp_path / "rows.csv"
    data.write_text('text,label\nok,a\n"hello, world,b\nsecond,c\nthird,d\n', encoding="utf-8")
    with pytest.raises(DataFileError) as caught:
        read_message_rows(data, "text", "label")
    assert str(caught.value).startswith(
        f"{data}: line 3: a quote opened in this row is never closed, so lines 3-5 (the rest of the file)"
    )
    header = tmp_path / "header.csv"
    header.write_text('"text,label\nok,a\n', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"header.csv: line 1: the header row: a quote opened"):
        read_message_rows(header, "text", "label")


def test_csv_text_after_a_closing_quote_is_a_bad_row_and_the_rest_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text('text,label\n"x"y,a\nfine,b\n"say ""hi"" twice",c\n', encoding="utf-8")
    rows, bad = read_message_rows(data, "text", "label")
    assert [(row.line, row.text, row.label) for row in rows] == [(3, "fine", "b"), (4, 'say "hi" twice', "c")]
    assert bad == ["line 2: ',' expected after '\"'"]


def test_scan_objects_yields_every_bad_line(tmp_path: Path) -> None:
    data = _write(tmp_path / "c.jsonl", b'{"id": 1}\n[1]\n\n{"id"\n{"id": 3}\n')
    scanned = [(n, where, obj, why) for n, where, obj, why in scan_objects(data)]
    assert [(n, obj) for n, _, obj, _ in scanned] == [(1, {"id": 1}), (2, None), (4, None), (5, {"id": 3})]
    assert scanned[1][1:] == (f"{data}:2", None, "expected a JSON object, got list")
    assert scanned[2][3].startswith("not valid JSON: Expecting ':' delimiter")
