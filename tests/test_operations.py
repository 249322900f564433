"""What an operator relies on: the data folder is resolved once and named at start, one log line per
turn (no customer text), replayed traffic kept apart from real customers."""

from __future__ import annotations

import re
from pathlib import Path

from app_fixtures import ChatSocket
from sqlalchemy import select

from config.settings import Settings
from helpline.server import RUNTIME
from state.models import CustomerIdentity, Message, Ticket


def test_the_data_folder_is_resolved_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("var"))
    assert settings.data_dir == tmp_path / "var" and settings.data_dir.is_absolute()
    monkeypatch.chdir("/")  # later reads from elsewhere still mean the same folder
    assert settings.effective_database_url.endswith(f"{tmp_path}/var/helpline.db")
    assert settings.database_display == str(tmp_path / "var" / "helpline.db")


async def test_the_server_names_its_data_folder_and_logs_each_turn_without_text(server_factory, http) -> None:
    server = server_factory()
    server.start()
    chat = await ChatSocket.open(http, server.url)
    await chat.send("my secret phrase is pineapple, how long does a refund take?", "log-1")
    await chat.bot_reply()
    await chat.send("I want to talk to a real person", "log-2")
    await chat.bot_reply()
    await chat.close()
    server.stop()
    log = server.log_path.read_text()
    assert f"data folder {server.env['HELPLINE_DATA_DIR']}; database " in log
    turns = re.findall(r"turn ticket=\d+ message=\d+ channel=webchat tier=(\w+) reason=(\w+) intent=\w+ confidence=[\d.]+ latency_ms=[\d.]+", log)
    assert turns == [("retrieval", "answered"), ("human", "explicit_request")], log
    assert re.search(r"escalated ticket=\d+ reason=explicit_request", log)
    assert "pineapple" not in log


async def test_replayed_traffic_is_kept_apart_and_labelled(helpline_client) -> None:
    rt = helpline_client.server.app[RUNTIME]
    chat = await ChatSocket.open(helpline_client.session, str(helpline_client.make_url("/")), labels=True)
    assert chat.session_id.startswith("r")
    await chat.send("how long does a refund take?", "replay-1")
    reply = await chat.bot_reply()
    assert reply["meta"]["tier"] == "retrieval" and reply["meta"]["intent"] == "check_refund_policy"
    await chat.close()
    async with rt.db.sessions() as session:
        identity = (await session.execute(select(CustomerIdentity))).scalar_one()
        ticket = (await session.execute(select(Ticket))).scalar_one()
        channels = set((await session.execute(select(Message.channel))).scalars())
    assert (identity.channel, ticket.channel, channels) == ("replay", "replay", {"replay"})


async def test_the_log_line_carries_the_text_only_when_asked(app_settings, aiohttp_client, caplog) -> None:
    import asyncio
    import logging

    from helpline.conversation import Inbound
    from helpline.server import build_app

    client = await aiohttp_client(build_app(app_settings.model_copy(update={"log_message_text": True})))
    rt = client.server.app[RUNTIME]
    with caplog.at_level(logging.INFO, logger="helpline.conversation"):
        await rt.conversations.receive(Inbound("webchat", "log-text", "hello there, pineapple"))
        while rt.conversations.in_flight:
            await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("turn ")]
    assert len(lines) == 1 and lines[0].endswith("text='hello there, pineapple'"), lines
