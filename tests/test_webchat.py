"""Web chat end to end over real websockets against a real ``helpline serve`` process:
connect, chat, disconnect, reconnect (missed messages exactly once), bad frames, restart."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from app_fixtures import ChatSocket


def _messages(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "message"]


async def test_chat_roundtrip(server_url: str, http: aiohttp.ClientSession) -> None:
    chat = await ChatSocket.open(http, server_url, labels=True)
    assert chat.welcome["ticket_id"] is None and len(chat.session_id) >= 16
    await chat.send("Hello there!", "c-1")
    ack = await chat.until(lambda f: f["type"] == "ack")
    assert ack["client_message_id"] == "c-1" and ack["seq"] > 0
    reply = await chat.bot_reply()
    assert reply["author"] == "bot" and reply["seq"] > ack["seq"]
    assert reply["meta"]["tier"] == "deterministic" and reply["meta"]["intent"] == "greeting"
    echoed = [f for f in _messages(chat.frames) if f["direction"] == "inbound"]
    assert [(f["text"], f["client_message_id"], f["seq"]) for f in echoed] == [("Hello there!", "c-1", ack["seq"])]

    await chat.send("How long does a refund take to reach my card?", "c-2")
    reply = await chat.bot_reply()
    assert reply["meta"]["tier"] == "retrieval", reply
    assert reply["text"].endswith("Source: Refunds") and "kb-" not in reply["text"]
    await chat.close()

    # The same session resumes the same ticket.
    again = await ChatSocket.open(http, server_url, chat.session_id, last_seq=reply["seq"])
    assert again.welcome["ticket_id"] == reply["ticket_id"]
    assert again.welcome["ticket_state"] == "awaiting_customer"
    assert _messages(await again.drain()) == []  # nothing missed, nothing repeated
    await again.close()


async def test_reconnect_delivers_missed_messages_exactly_once(server_url: str, http: aiohttp.ClientSession) -> None:
    chat = await ChatSocket.open(http, server_url, labels=True)
    await chat.send("hi", "m-1")
    first_reply = await chat.bot_reply()
    await chat.send("what payment methods do you accept?", "m-2")
    ack = await chat.until(lambda f: f["type"] == "ack")
    await chat.close()  # gone before the reply is produced
    last_seen = max(f["seq"] for f in _messages(chat.frames))

    await asyncio.sleep(2.0)  # the reply is produced while the customer is away
    back = await ChatSocket.open(http, server_url, chat.session_id, last_seq=last_seen)
    frames = _messages(await back.drain(quiet=3.0))
    seqs = [f["seq"] for f in frames]
    assert len(seqs) == len(set(seqs)), f"duplicate delivery: {seqs}"
    assert all(s > last_seen for s in seqs)
    outbound = [f for f in frames if f["direction"] == "outbound"]
    assert len(outbound) == 1 and outbound[0]["seq"] > ack["seq"]
    assert outbound[0]["meta"]["intent"] == "check_payment_methods"

    # A second reconnect from scratch replays the whole history once, in order.
    full = await ChatSocket.open(http, server_url, chat.session_id, last_seq=0)
    history = _messages(await full.drain(quiet=1.0))
    assert [f["seq"] for f in history] == sorted({f["seq"] for f in history})
    assert [f["direction"] for f in history] == ["inbound", "outbound", "inbound", "outbound"]
    assert history[1]["seq"] == first_reply["seq"]
    await back.close()
    await full.close()


async def test_duplicate_client_message_id_is_stored_once(server_url: str, http: aiohttp.ClientSession) -> None:
    chat = await ChatSocket.open(http, server_url)
    await chat.send("hello", "dup-1")
    first_ack = await chat.until(lambda f: f["type"] == "ack")
    await chat.bot_reply()
    await chat.send("hello", "dup-1")  # a re-send after a flaky network
    second_ack = await chat.until(lambda f: f["type"] == "ack")
    assert second_ack["seq"] == first_ack["seq"]
    late = _messages(await chat.drain(quiet=2.0))
    assert late == []  # no second turn, no second reply
    await chat.close()


async def test_bad_frames_get_clear_errors_and_the_socket_survives(server_url: str, http: aiohttp.ClientSession) -> None:
    chat = await ChatSocket.open(http, server_url, labels=True)
    await chat.ws.send_str("{not json")
    err = await chat.until(lambda f: f["type"] == "error")
    assert err["code"] == "bad_frame" and "not JSON" in err["message"]
    await chat.ws.send_str(json.dumps({"type": "message", "text": 5, "client_message_id": "x"}))
    err = await chat.until(lambda f: f["type"] == "error")
    assert err["code"] == "bad_frame" and '"text"' in err["message"]
    await chat.ws.send_str(json.dumps({"type": "message", "text": "hi", "client_message_id": "bad id!"}))
    err = await chat.until(lambda f: f["type"] == "error")
    assert "client_message_id" in err["message"]
    await chat.ws.send_json({"type": "ping"})
    assert (await chat.until(lambda f: f["type"] in ("pong", "error")))["type"] == "pong"
    # Still usable.
    await chat.send("hello", "ok-1")
    assert (await chat.bot_reply())["meta"]["intent"] == "greeting"
    await chat.close()


async def test_hello_must_come_first(server_url: str, http: aiohttp.ClientSession) -> None:
    ws = await http.ws_connect(server_url + "/ws/chat")
    await ws.send_json({"type": "message", "text": "hi", "client_message_id": "a"})
    err = await ws.receive_json(timeout=10)
    assert err["type"] == "error" and "hello" in err["message"]
    closing = await ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


async def test_a_binary_hello_gets_an_error_before_the_close(server_url: str, http: aiohttp.ClientSession) -> None:
    ws = await http.ws_connect(server_url + "/ws/chat")
    await ws.send_bytes(json.dumps({"type": "hello", "session_id": None, "last_seq": 0}).encode())
    err = await ws.receive_json(timeout=10)
    assert (err["type"], err["code"]) == ("error", "bad_frame") and "JSON text hello" in err["message"]
    closing = await ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


async def test_an_empty_message_gets_the_guard_reply_and_is_stored(server_url: str, http: aiohttp.ClientSession) -> None:
    chat = await ChatSocket.open(http, server_url, labels=True)
    await chat.send("   ", "g-1")
    ack = await chat.until(lambda f: f["type"] == "ack")
    reply = await chat.bot_reply()
    assert reply["meta"]["tier"] == "guard" and reply["meta"]["intent"] is None
    await chat.close()
    back = await ChatSocket.open(http, server_url, chat.session_id, last_seq=0)
    stored = [f for f in _messages(await back.drain()) if f["direction"] == "inbound"]
    assert [(f["seq"], f["text"]) for f in stored] == [(ack["seq"], "   ")]
    await back.close()


async def test_a_long_message_is_routed_on_its_start_and_kept_up_to_the_storage_cap(
    server_factory, http: aiohttp.ClientSession
) -> None:
    server = server_factory({"HELPLINE_MAX_STORED_CHARS": "6000"})
    server.start()
    text = "how long does a refund take? " + "x" * 9000
    chat = await ChatSocket.open(http, server.url, labels=True)
    await chat.send(text, "g-1")
    ack = await chat.until(lambda f: f["type"] == "ack")
    reply = await chat.bot_reply()
    assert reply["meta"]["tier"] != "guard"
    assert "is 9,029 characters long; I read the first 4,000" in reply["text"]
    await chat.close()
    back = await ChatSocket.open(http, server.url, chat.session_id, last_seq=0)
    stored = [f for f in _messages(await back.drain()) if f["direction"] == "inbound"]
    assert [(f["seq"], f["text"]) for f in stored] == [(ack["seq"], text[:6000])]  # cut at the cap
    await back.close()


async def test_a_long_message_handed_to_a_person_does_not_ask_for_the_question_again(
    server_url: str, http: aiohttp.ClientSession
) -> None:
    chat = await ChatSocket.open(http, server_url, labels=True)
    await chat.send("I want to talk to a real person. " + "My order never came. " * 230, "g-1")
    reply = await chat.bot_reply()
    assert reply["meta"]["escalated"] is True
    assert "member of our support team" in reply["text"] and "send it on its own" not in reply["text"]
    await chat.close()


async def test_persistence_across_restart(server_factory, http: aiohttp.ClientSession) -> None:
    server = server_factory()
    server.start()
    chat = await ChatSocket.open(http, server.url)
    await chat.send("Where is my order #W0000000?", "p-1")
    reply = await chat.bot_reply()
    await chat.close()
    server.stop()

    server = server_factory()
    server.start()
    back = await ChatSocket.open(http, server.url, chat.session_id, last_seq=0)
    assert back.welcome["ticket_id"] == reply["ticket_id"]
    history = _messages(await back.drain())
    assert [(f["direction"], f["text"]) for f in history] == [
        ("inbound", "Where is my order #W0000000?"),
        ("outbound", reply["text"]),
    ]
    await back.close()


async def test_healthz_reports_backends(server_factory, database_url: str) -> None:
    server = server_factory()
    server.start()
    health = server.health()
    assert health["status"] == "ok"
    expected_backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    assert health["database"]["backend"] == expected_backend
    assert health["database"]["version"][0].isdigit()
    assert health["model"]["embedding"].startswith("all-MiniLM-L6-v2")
    assert health["model"]["intent"].startswith("intent-")
    assert health["knowledge_base"]["version"].startswith("kb-")
    assert health["knowledge_base"]["documents"] >= 7
    assert health["orders"] > 0


async def test_client_message_ids_are_scoped_to_one_customer(server_url: str, http: aiohttp.ClientSession) -> None:
    alice = await ChatSocket.open(http, server_url)
    await alice.send("my secret order #W1111111", "same-id")
    await alice.until(lambda f: f["type"] == "ack")
    await alice.bot_reply()
    bob = await ChatSocket.open(http, server_url)
    await bob.send("hello", "same-id")
    assert (await bob.until(lambda f: f["type"] == "ack"))["seq"] == 1  # seqs are per customer
    reply = await bob.bot_reply()
    seen_by_bob = [f["text"] for f in _messages(bob.frames)]
    assert seen_by_bob == ["hello", reply["text"]]
    assert not any("W1111111" in t for t in seen_by_bob)
    await alice.close()
    await bob.close()


async def test_backlog_ends_with_synced_frame(server_url: str, http: aiohttp.ClientSession) -> None:
    chat = await ChatSocket.open(http, server_url)
    await chat.send("hi", "s-1")
    reply = await chat.bot_reply()
    await chat.close()
    back = await ChatSocket.open(http, server_url, chat.session_id, last_seq=0)
    frames = await back.drain()
    kinds = [f["type"] for f in frames]
    assert kinds == ["message", "message", "synced"]
    assert frames[-1]["last_seq"] == reply["seq"]
    await back.close()


async def test_text_that_is_not_valid_unicode_gets_a_clear_error(server_url: str, http: aiohttp.ClientSession) -> None:
    chat = await ChatSocket.open(http, server_url, labels=True)
    # json.dumps writes the lone surrogate as an ASCII escape; the server decodes it back.
    await chat.ws.send_str(json.dumps({"type": "message", "text": "caf\udce9 order?", "client_message_id": "enc-1"}))
    err = await chat.until(lambda f: f["type"] == "error")
    assert (err["code"], err["client_message_id"]) == ("bad_encoding", "enc-1")
    assert "character 3" in err["message"]
    await chat.ws.send_str("[" * 100_000)
    err = await chat.until(lambda f: f["type"] == "error")
    assert err["code"] == "bad_frame" and "nested" in err["message"]
    await chat.send("hello", "enc-2")  # the socket survived and nothing bad was stored
    assert (await chat.bot_reply())["meta"]["intent"] == "greeting"
    await chat.close()
    back = await ChatSocket.open(http, server_url, chat.session_id, last_seq=0)
    assert [f["text"] for f in _messages(await back.drain()) if f["direction"] == "inbound"] == ["hello"]
    await back.close()


async def test_a_client_ahead_of_the_server_is_resynchronised(server_url: str, http: aiohttp.ClientSession) -> None:
    # E.g. the database was restored from a backup while the browser kept its last seq (50): the
    # replies made since (seq 1-4 here) must reach it, and it must drop what it showed before.
    chat = await ChatSocket.open(http, server_url, last_seq=50)
    assert (chat.welcome["resync"], chat.welcome["last_seq"]) == (True, 0)
    await chat.send("hi", "ahead-1")
    reply = await chat.bot_reply()
    assert reply["seq"] == 2
    await chat.send("what payment methods do you accept?", "ahead-2")
    second = await chat.bot_reply()
    await chat.close()
    back = await ChatSocket.open(http, server_url, chat.session_id, last_seq=50)
    assert (back.welcome["resync"], back.welcome["last_seq"]) == (True, 4)
    frames = await back.drain()
    assert [(f["seq"], f["text"]) for f in _messages(frames)] == [
        (1, "hi"), (2, reply["text"]), (3, "what payment methods do you accept?"), (4, second["text"]),
    ]
    assert frames[-1] == {"type": "synced", "last_seq": 4}
    # A client that is not ahead is not resynchronised.
    level = await ChatSocket.open(http, server_url, chat.session_id, last_seq=4)
    assert level.welcome["resync"] is False and _messages(await level.drain()) == []
    await back.close()
    await level.close()
    ws = await http.ws_connect(server_url + "/ws/chat")
    await ws.send_json({"type": "hello", "session_id": None, "last_seq": 2**63})
    err = await ws.receive_json(timeout=10)
    assert err["type"] == "error" and "last_seq" in err["message"]
    await ws.close()


async def test_sigterm_closes_open_sockets_and_exits_promptly(server_factory, http: aiohttp.ClientSession) -> None:
    server = server_factory()
    server.start()
    chat = await ChatSocket.open(http, server.url)
    await chat.send("hi", "t-1")
    await chat.bot_reply()
    # The client keeps reading (answering pings), as a live browser tab does.
    async def read_until_closed() -> aiohttp.WSMessage:
        while True:
            msg = await chat.ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return msg

    reader = asyncio.create_task(read_until_closed())
    # SIGTERM. Idle, the process exits in about 3 s (job worker, pools, sockets); a task left
    # running past on_shutdown would hold it for aiohttp's whole 30 s shutdown timeout.
    code = await asyncio.to_thread(server.stop, "term", 15.0)
    assert code == 0
    closing = await reader
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert chat.ws.close_code == 1001 or closing.data == 1001


async def test_a_customer_flooding_messages_is_rate_limited(server_factory, http: aiohttp.ClientSession) -> None:
    server = server_factory({"HELPLINE_CUSTOMER_RATE_LIMIT": "3", "HELPLINE_CUSTOMER_RATE_WINDOW_S": "60"})
    server.start()
    chat = await ChatSocket.open(http, server.url)
    for i in range(4):
        await chat.send(f"hello {i}", f"rl-{i}")
    err = await chat.until(lambda f: f["type"] == "error")
    assert (err["code"], err["client_message_id"]) == ("rate_limited", "rl-3")
    await chat.close()
    back = await ChatSocket.open(http, server.url, chat.session_id, last_seq=0)
    inbound = [f for f in _messages(await back.drain(quiet=2.0)) if f["direction"] == "inbound"]
    assert [f["text"] for f in inbound] == ["hello 0", "hello 1", "hello 2"]
    # Still over the limit, a re-send of a stored message (its ack was lost) is acknowledged with
    # the original's seq, not refused: the customer must not be told a stored message failed.
    await back.send("hello 2", "rl-2")
    ack = await back.until(lambda f: f["type"] in ("ack", "error"))
    assert (ack["type"], ack["client_message_id"], ack["seq"]) == ("ack", "rl-2", inbound[2]["seq"])
    await back.send("hello 4", "rl-4")
    err = await back.until(lambda f: f["type"] == "error")
    assert (err["code"], err["client_message_id"]) == ("rate_limited", "rl-4")
    await back.close()
