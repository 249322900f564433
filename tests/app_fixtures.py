"""Fixtures that run the real application: in-process (aiohttp test client) or as a real
``helpline serve`` subprocess on a free port (for browsers, the terminal client and restarts).

The intent model is trained once per test session into a temp folder and every server loads it
(``HELPLINE_INTENT_MODEL_DIR``), so tests do not each pay for training.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config.settings import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def intent_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved intent model trained on the shipped ``config/intents.yaml`` (once per session)."""
    from bot.embeddings import Embedder
    from bot.intent_model import load_or_train

    models = tmp_path_factory.mktemp("models")
    model = load_or_train(Settings().intents_file, models, Embedder.load())
    path = models / model.version
    assert path.is_dir(), f"load_or_train did not save under {path}"
    return path


@pytest.fixture
def app_settings(tmp_path: Path, database_url: str, intent_model_dir: Path) -> Settings:
    """Settings of a fresh deployment: own data dir, own database, the session's intent model."""
    return Settings(
        data_dir=tmp_path / "var", database_url=database_url, intent_model_dir=intent_model_dir
    )


def runtime(client: Any) -> Any:
    """The :class:`helpline.runtime.Runtime` of an ``aiohttp_client`` test client's app."""
    from helpline.server import RUNTIME

    return client.server.app[RUNTIME]


async def idle(rt: Any, timeout_s: float = 30.0) -> None:
    """Wait until no turn runs in ``rt``'s process (every message received so far is answered)."""
    for _ in range(int(timeout_s / 0.05)):
        if not rt.conversations.in_flight:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("turns still running")


@pytest.fixture
async def helpline_client(app_settings: Settings, aiohttp_client: Any) -> Any:
    """An aiohttp ``TestClient`` on the real application (started: schema, models, KB loaded)."""
    from helpline.server import build_app

    # app_settings (and so its database) is requested before aiohttp_client, so the app is torn
    # down before the database is dropped: the other order leaves shutdown waiting on a missing DB.
    return await aiohttp_client(build_app(app_settings))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``helpline serve`` as a child process; ``start`` waits until ``/healthz`` answers 200."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpline.cli", "serve", "--port", str(self.port)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self, sig: str = "term", timeout: float = 20.0) -> int | None:
        """Send SIGTERM (or SIGKILL) and wait; the exit code. Raises RuntimeError (with the log)
        when the process is still running after ``timeout`` seconds (it is then killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill() if sig == "kill" else self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
                raise RuntimeError(f"server ignored SIGTERM for {timeout} s:\n{self.log()}") from None
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def server_factory(tmp_path: Path, database_url: str, intent_model_dir: Path) -> Iterator[Any]:
    """Make ``ServerProcess`` objects sharing one data dir and database (``extra_env`` per server)."""
    servers: list[ServerProcess] = []
    # The suite shares one Redis: each test's servers get their own key prefix, so locks, rate
    # counters and the kill-switch flag of one test never reach another.
    namespace = f"helpline-test-{uuid.uuid4().hex[:12]}"

    def make(extra_env: dict[str, str] | None = None) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELPLINE_", "AGENT_MODE"))}
        env.update(
            HELPLINE_DATA_DIR=str(tmp_path / "var"),
            HELPLINE_DATABASE_URL=database_url,
            HELPLINE_INTENT_MODEL_DIR=str(intent_model_dir),
            HELPLINE_REDIS_NAMESPACE=namespace,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env or {})
        server = ServerProcess(env, free_port(), tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield make
    errors = []
    for server in servers:
        try:
            server.stop()
        except RuntimeError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def redis_url() -> str:
    """The test Redis (``HELPLINE_TEST_REDIS_URL``, started by ``./dev test``)."""
    url = os.environ.get("HELPLINE_TEST_REDIS_URL", "")
    if not url:
        pytest.skip("HELPLINE_TEST_REDIS_URL is not set (./dev test starts a redis-server and sets it)")
    return url


@pytest.fixture
def server_url(server_factory: Any) -> str:
    """Base URL (``http://127.0.0.1:PORT``) of a running ``helpline serve`` on embedded defaults
    plus this test's database."""
    server = server_factory()
    server.start()
    return server.url


class ChatSocket:
    """A web-chat test client speaking the real protocol over a real websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.session_id: str = welcome["session_id"]
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, url: str, session_id: str | None = None, last_seq: int = 0,
        *, labels: bool = False,
    ) -> "ChatSocket":
        """Say hello. ``labels``: open a replay session (allowed from this machine), whose frames
        carry the bot's labels (tier, intent) in ``meta``; customer sessions never get them."""
        ws = await session.ws_connect(url.rstrip("/") + "/ws/chat")
        hello: dict[str, Any] = {"type": "hello", "session_id": session_id, "last_seq": last_seq}
        if labels:
            hello["replay"] = True
        await ws.send_json(hello)
        welcome = await ws.receive_json(timeout=10)
        assert welcome["type"] == "welcome", welcome
        return cls(ws, welcome)

    async def send(self, text: str, client_message_id: str) -> None:
        await self.ws.send_json({"type": "message", "text": text, "client_message_id": client_message_id})

    async def next_frame(self, timeout: float = 20.0) -> dict[str, Any]:
        frame = await self.ws.receive_json(timeout=timeout)
        self.frames.append(frame)
        return frame

    async def until(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """Read frames until one satisfies ``predicate``; raises ``TimeoutError``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no matching frame; got {self.frames[-5:]}")
            frame = await self.next_frame(timeout=left)
            if predicate(frame):
                return frame

    async def bot_reply(self, timeout: float = 30.0) -> dict[str, Any]:
        return await self.until(
            lambda f: f["type"] == "message" and f["direction"] == "outbound", timeout
        )

    async def drain(self, quiet: float = 0.5) -> list[dict[str, Any]]:
        """Frames that arrive until ``quiet`` seconds pass with none."""
        got = []
        while True:
            try:
                got.append(await self.next_frame(timeout=quiet))
            except (asyncio.TimeoutError, TimeoutError):
                return got

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class OwnRedis:
    """A redis-server of one test: daemonized, stopped and restarted on the same port by PID."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.pidfile = workdir / "redis.pid"
        self.pid: int | None = None

    def start(self) -> None:
        self.pidfile.unlink(missing_ok=True)
        subprocess.run(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "yes", "--dir", str(self.workdir),
             "--pidfile", str(self.pidfile), "--logfile", str(self.workdir / "redis.log")],
            check=True, timeout=10,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.pid is None and self.pidfile.is_file() and self.pidfile.read_text().strip():
                self.pid = int(self.pidfile.read_text())
            if self.pid is not None and self._pong():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM the server by PID and wait until it is gone (it is not our child: a zombie
        left for init counts as gone) and its port refuses connections."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                state = "gone"
            if state in ("gone", "Z", "X") and not self._pong():
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
