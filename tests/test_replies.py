"""The replies file (config/replies.py): validation, placeholders, handoff texts by the calendar."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from config.replies import DEFAULT_REPLIES_FILE, RepliesError, describe_duration, describe_hours, is_open, load_replies
from config.sla import BusinessCalendar, load_sla_config


def _write(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(DEFAULT_REPLIES_FILE.read_text(encoding="utf-8"))
    data.update(changes)
    path = tmp_path / "replies.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_shipped_file_fills_its_placeholders() -> None:
    replies = load_replies()
    assert replies.greeting_text().startswith("Hi, I'm Nora, the Northwind Goods assistant.")
    assert "{" not in replies.off_topic_text() and "Northwind Goods" in replies.off_topic_text()
    assert replies.fill("Hi from {assistant} at {shop} {unknown}") == "Hi from Nora at Northwind Goods {unknown}"
    assert replies.apology("refund") != replies.apology("no-such-topic") == replies.apology(None)
    assert replies.topic_label("track_order") == "Track my order" and replies.topic_label("nope") is None


def test_handoff_text_says_when_a_person_replies() -> None:
    replies, sla = load_replies(), load_sla_config()
    monday_11_london = datetime(2026, 12, 7, 11, 0, tzinfo=timezone.utc)
    sunday = datetime(2026, 12, 6, 11, 0, tzinfo=timezone.utc)
    assert "usually within 4 hours" in replies.handoff_text(sla, monday_11_london)
    closed = replies.handoff_text(sla, sunday)
    assert "Monday to Friday, 09:00-17:00 (Europe/London time)" in closed and "within" not in closed
    christmas = datetime(2026, 12, 25, 11, 0, tzinfo=timezone.utc)  # a bank holiday in England
    assert "Monday to Friday" in replies.handoff_text(sla, christmas)


def test_calendar_helpers() -> None:
    night = BusinessCalendar(time_zone="UTC", hours={"fri": ["22:00-02:00"]})
    assert is_open(night, datetime(2026, 12, 11, 23, 0, tzinfo=timezone.utc))  # Friday 23:00
    assert is_open(night, datetime(2026, 12, 12, 1, 0, tzinfo=timezone.utc))  # Saturday 01:00
    assert not is_open(night, datetime(2026, 12, 12, 3, 0, tzinfo=timezone.utc))
    assert is_open(BusinessCalendar(time_zone="UTC", always_open=True), datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert describe_hours(BusinessCalendar(time_zone="UTC", always_open=True)) == "around the clock"
    split = BusinessCalendar(time_zone="UTC", hours={"mon": ["09:00-12:00"], "sat": ["10:00-14:00"]})
    assert describe_hours(split) == "Monday 09:00-12:00; Saturday 10:00-14:00 (UTC time)"
    assert [describe_duration(s) for s in (1800, 3600, 5400, 14400)] == [
        "30 minutes", "1 hour", "1 hour 30 minutes", "4 hours"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"greeting": "Hi from {bot}"}, "greeting: unknown placeholder {bot}"),
        ({"handoff": {"open": "in {first_response}", "closed": "see {wait}"}}, "handoff.closed: unknown placeholder {wait}"),
        ({"apologies": {"refund": "Sorry."}}, "apologies: needs a 'default' apology"),
        ({"suggestions": ["a", "b", "c", "d", "e"]}, "suggestions: List should have at most 4 items"),
        ({"clarify": "unbalanced {"}, "clarify:"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_file_is_refused_with_the_key(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(RepliesError) as error:
        load_replies(_write(tmp_path, **change))
    assert message in str(error.value) and "replies.yaml" in str(error.value)


def test_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "replies.yaml"
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(RepliesError, match="expected a mapping"):
        load_replies(path)
