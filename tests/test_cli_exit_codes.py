"""One exit-status convention for the commands a team runs on its own data (replay, train, eval, kb):
0 success, 1 the command ran but its outcome failed, 2 invalid input or usage (as click's own usage
errors); and ``--help`` texts that describe the input instead of pointing into the source."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import free_port
from click.testing import CliRunner, Result

from helpline.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["replay"], ["train"], ["eval"], ["kb", "ingest"], ["kb", "add"], ["kb", "remove"], ["kb", "list"]]
ROWS_CSV = 'text,label\n"I want a refund please",get_refund\ntrack my order please,track_order\n'


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text(ROWS_CSV, encoding="utf-8")
    return path


@pytest.fixture
def fake_server() -> Iterator[str]:
    """``bench/fake_replay_server.py`` on a free port (answers every message); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_replay_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- help --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_states_the_exit_status_and_points_at_no_source_file(command: list[str]) -> None:
    result = _run(*command, "--help")
    assert result.exit_code == 0
    epilog = _flat(result.output[result.output.index("Exit status:"):])
    assert epilog.startswith("Exit status: 0 ")
    if command != ["kb", "list"]:
        assert "2 invalid input or usage (the message names the file, line or option)" in epilog
    assert not re.search(r"[\w/]+\.py\b", result.output), result.output
    assert "README" not in result.output and "bot/" not in result.output


def test_help_describes_the_input_with_an_example() -> None:
    replay = _run("replay", "--help").output
    assert '"where is my order #W2611340?",track_order' in replay
    assert "1 some turn failed (no reply, an error frame, a refused or dropped connection)" in _flat(replay)
    train = _run("train", "--help").output
    assert '{"message": "how long does a refund take?", "intent": "check_refund_policy"}' in train
    assert "labels with fewer than 5 rows are trained but warned about" in _flat(train)
    evaluate = _run("eval", "--help").output
    assert '{"id": "r1", "text": "how long does a refund take?", "intent": "check_refund_policy"}' in evaluate
    assert "1 a gate failed (--gate)" in _flat(evaluate)
    ingest = _run("kb", "ingest", "--help").output
    assert "Article file (refunds.md -> doc id 'refunds'):" in ingest and "## How long does a refund take?" in ingest


# --- replay --------------------------------------------------------------------------------------------


def test_replay_exits_1_when_turns_fail(rows: Path) -> None:
    result = _run("replay", str(rows), "--text-column", "text", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "Replayed 2 turns" in result.output and "ALL 2 turns failed" in result.output


def test_replay_exits_0_when_every_turn_is_answered_and_shows_and_writes_rows(
    rows: Path, fake_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "replies.jsonl"
    result = _run("replay", str(rows), "--text-column", "text", "--label-column", "label", "--url", fake_server,
                  "--show", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "line 2\n  customer: I want a refund please\n  bot:      fake answer for get_refund\n"
        "  tier retrieval, intent get_refund (0.90)\nline 3\n"
    )
    assert json.loads(result.stdout.splitlines()[-1])["intent_accuracy"] == 1.0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(o["line"], o["text"], o["reply"], o["intent"], o["error"]) for o in written] == [
        (2, "I want a refund please", "fake answer for get_refund", "get_refund", None),
        (3, "track my order please", "fake answer for track_order", "track_order", None),
    ]


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (ROWS_CSV, ["--text-column", "utterance"], "no text column 'utterance'; available columns: text, label"),
        (ROWS_CSV, ["--text-column", "text", "--limit", "0"], "--limit must be at least 1"),
        (ROWS_CSV, ["--text-column", "text", "--concurrency", "0"], "--concurrency must be at least 1"),
        (ROWS_CSV, ["--text-column", "text", "--url", "localhost:8080"], "expected http://HOST:PORT"),
        (ROWS_CSV + '"hello, world,get_refund\nthanks,thanks\n', ["--text-column", "text"],
         "line 4: a quote opened in this row is never closed, so lines 4-5 (the rest of the file)"),
        (ROWS_CSV, ["--text-column", "text", "--out", "missing/replies.jsonl"], "no such folder missing"),
        (ROWS_CSV, ["--text-column", "text", "--limit", "many"], "'many' is not a valid integer"),  # click's own
    ],
)
def test_replay_invalid_input_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "rows.csv"
    data.write_text(content, encoding="utf-8")
    result = _run("replay", str(data), "--url", f"http://127.0.0.1:{free_port()}", *args)
    assert result.exit_code == 2, result.output
    assert message in _flat(result.stderr) and "Traceback" not in result.output


# --- eval, train, kb -------------------------------------------------------------------------------


def test_eval_lists_every_bad_golden_line_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    golden = tmp_path / "golden.jsonl"
    golden.write_text(
        '{"id": "a", "text": "hi", "intent": "greeting"}\n{"id": "b", "text": "hi"}\n{"id": "c"\n'
        '{"id": "d", "text": "", "intent": "greeting"}\n',
        encoding="utf-8",
    )
    result = _run("eval", "--golden", str(golden))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: {golden}: 3 bad lines:",
        f"  {golden}:2: field 'intent': missing (required unless 'expect' is given)",
        f"  {golden}:3: not valid JSON: Expecting ',' delimiter (line 1, column 11)",
        f"  {golden}:4: field 'text': empty text",
    ]


def test_train_and_kb_invalid_input_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELPLINE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("HELPLINE_DATABASE_URL", raising=False)
    train = _run("train", "--data", str(tmp_path / "none.csv"), "--text-column", "t", "--label-column", "l")
    assert train.exit_code == 2 and f"{tmp_path / 'none.csv'}: no such file" in train.stderr
    remove = _run("kb", "remove", "refunds")  # nothing ingested: no such document
    assert remove.exit_code == 2 and "no such document in the knowledge base: 'refunds'" in remove.stderr
    missing = _run("kb", "add", str(tmp_path / "none.md"))  # click's own check
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
