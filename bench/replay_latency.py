"""Latency benchmark: real Bitext customer messages through a real ``helpline serve``.

Starts the server as a subprocess (free port, fresh data dir unless ``--data-dir``; ``--database-url``
is passed through as ``HELPLINE_DATABASE_URL``), waits for ``GET /healthz`` to answer 200, replays
``--rows`` rows of the Bitext 27K test split at ``--concurrency`` through ``helpline.replay.run_replay``
(one new customer per row), reads the server's memory from ``/proc/PID/status``, stops it, and prints
and writes ``bench/results/replay-<backend>.json``.

Run from the repository root:
    .venv/bin/python bench/replay_latency.py                      # SQLite, 2000 rows
    .venv/bin/python bench/replay_latency.py --database-url postgresql+asyncpg://u:p@127.0.0.1/db
``--command 'python bench/fake_replay_server.py --port {port}'`` swaps in another server (tests).

Exit status: 0 when the run completed (errors, if any, are in the result), 1 when every turn failed
or the server did not come up, 2 on bad options. This script only measures; it must not change the
server's configuration beyond the environment it starts it with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the checkout importable without installing it
    sys.path.insert(0, str(ROOT))

from config.files import DataFileError, read_message_rows  # noqa: E402
from helpline.replay import (  # noqa: E402
    ReplayInputError,
    ReplayReport,
    load_label_map,
    print_report,
    run_replay,
)

DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "bitext" / "llm_27k_instructions_test.csv"
RESULTS_DIR = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backend_name(database_url: str | None) -> str:
    """``postgresql+asyncpg://...`` -> ``postgresql``; no URL -> ``sqlite`` (the embedded default)."""
    if not database_url:
        return "sqlite"
    return urlsplit(database_url).scheme.split("+", 1)[0] or "custom"


def server_command(template: str | None, port: int) -> list[str]:
    if template:
        return shlex.split(template.format(port=port))
    script = Path(sys.executable).parent / "helpline"
    # The console script when the package is installed; otherwise the same entry point from the checkout.
    launcher = [str(script)] if script.is_file() else [
        sys.executable, "-c", "import sys; from helpline.cli import main; sys.exit(main())"
    ]
    return [*launcher, "serve", "--host", "127.0.0.1", "--port", str(port)]


def server_env(data_dir: Path, port: int, database_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HELPLINE_DATA_DIR=str(data_dir), HELPLINE_HOST="127.0.0.1", HELPLINE_PORT=str(port))
    # An inherited database URL would silently benchmark another backend than the one named.
    env.pop("HELPLINE_DATABASE_URL", None)
    if database_url:
        env["HELPLINE_DATABASE_URL"] = database_url
    return env


def read_memory_mb(pid: int) -> dict[str, float | None]:
    """VmRSS (now) and VmHWM (peak) of ``pid`` in MiB; None where /proc does not say."""
    found: dict[str, float | None] = {"rss_mb": None, "peak_rss_mb": None}
    keys = {"VmRSS:": "rss_mb", "VmHWM:": "peak_rss_mb"}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                parts = line.split()
                if parts and parts[0] in keys:  # "VmRSS:   123456 kB"
                    found[keys[parts[0]]] = round(int(parts[1]) / 1024, 1)
    except OSError:
        pass
    return found


def read_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) ``pid`` has used so far, from ``/proc/PID/stat``
    (fields 14 and 15, in clock ticks; proc(5)); None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_budget(turns: int, replay_s: float, server_cpu_s: float | None, client_cpu_s: float,
               embed_per_s: float, cores: int) -> dict[str, Any]:
    """Where the CPU of a turn went, in milliseconds per turn, against what the target allows.

    ``target_ms_per_turn``: the CPU time all ``cores`` can give one turn when turns/s must reach half
    the embedding model's batch rate (cores x 1000 / (0.5 x rate)); ``embedding_ms_per_turn``: the
    part of it the model itself needs at its batch rate (cores x 1000 / rate, since the batch run
    used every core); ``server_ms_per_turn`` and ``load_generator_ms_per_turn`` what this run used.
    """
    per_turn = (lambda seconds: round(seconds * 1000 / turns, 1)) if turns else (lambda seconds: None)
    return {
        "cores": cores,
        "server_ms_per_turn": per_turn(server_cpu_s) if server_cpu_s is not None else None,
        "load_generator_ms_per_turn": per_turn(client_cpu_s),
        "target_ms_per_turn": round(cores * 1000 / (0.5 * embed_per_s), 1),
        "embedding_ms_per_turn": round(cores * 1000 / embed_per_s, 1),
        "server_cores_busy": round(server_cpu_s / replay_s, 2) if server_cpu_s is not None and replay_s else None,
    }


def machine_info() -> dict[str, Any]:
    cpu_model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu_model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))  # what `nproc` prints: the CPUs this process may use
    except AttributeError:
        nproc = os.cpu_count()
    return {
        "nproc": nproc,
        "cpu_model": cpu_model or platform.processor() or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until ``GET url/healthz`` answered 200. Raises RuntimeError if the server exits or
    does not answer within ``timeout``."""
    started = time.perf_counter()
    deadline = started + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode} before it was healthy")
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"GET {url}/healthz did not answer 200 within {timeout:g} s")


def stop_server(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> int | None:
    """SIGTERM the server's process group (it runs in a session of its own), SIGKILL after grace_s."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def write_result(result: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")  # bench/results/*.tmp is git-ignored
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, output)


def embedding_rate(dataset: Path, text_column: str, rows: int, seed: int) -> dict[str, Any]:
    """The embedding model's own throughput on this machine, now: sentences per second over the
    replayed texts in length-sorted batches of 64 (its best case), run in this process before the
    server starts, so the turn rate can be compared with it."""
    import random

    from bot.embeddings import Embedder
    from bot.placeholders import fill_placeholders

    found, _ = read_message_rows(dataset, text_column, None, purpose="replay")
    rng = random.Random(seed)
    rng.shuffle(found)
    texts = [fill_placeholders(row.text, rng) for row in found[:rows]]
    embedder = Embedder.load()
    embedder.embed(texts[:64])  # warm up
    started = time.perf_counter()
    embedder.embed(texts)
    seconds = time.perf_counter() - started
    return {"sentences": len(texts), "seconds": round(seconds, 2), "per_s": round(len(texts) / seconds, 1)}


async def bench(args: argparse.Namespace) -> int:
    backend = args.backend or backend_name(args.database_url)
    embed_rate = await asyncio.to_thread(embedding_rate, args.dataset, args.text_column, args.rows, args.seed)
    print(f"embedding model alone: {embed_rate['per_s']} sentences/s", file=sys.stderr)
    output = args.output or RESULTS_DIR / f"replay-{backend}.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="helpline-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        log_path = Path(tmp) / "server.log"
        command = server_command(args.command, port)
        print(f"starting: {shlex.join(command)} (data dir {data_dir}, backend {backend})", file=sys.stderr)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=server_env(data_dir, port, args.database_url),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            try:
                startup_s = await wait_healthy(url, proc, args.startup_timeout)
            except RuntimeError as exc:
                print(f"error: {exc}\n--- server log (last lines) ---\n{_log_tail(log_path)}", file=sys.stderr)
                return 1
            print(f"server healthy after {startup_s:.1f} s; replaying {args.rows} rows", file=sys.stderr)
            server_cpu_before = read_cpu_s(proc.pid)
            client_cpu_before = time.process_time()
            started = time.perf_counter()
            try:
                report: ReplayReport = await run_replay(
                    args.dataset, text_column=args.text_column, label_column=args.label_column,
                    label_map=args.label_map, limit=args.rows, concurrency=args.concurrency, url=url,
                    seed=args.seed, progress=not args.no_progress, timeout=args.turn_timeout,
                )
            except ReplayInputError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            replay_s = time.perf_counter() - started
            client_cpu_s = time.process_time() - client_cpu_before
            server_cpu_after = read_cpu_s(proc.pid)
            server_cpu_s = (
                server_cpu_after - server_cpu_before
                if server_cpu_before is not None and server_cpu_after is not None else None
            )
            memory = read_memory_mb(proc.pid)  # while it is still up, after the load
        finally:
            exit_status = stop_server(proc)
        if report.turns and report.errors == report.turns:
            print(f"--- server log (last lines) ---\n{_log_tail(log_path)}", file=sys.stderr)

    result = {
        "benchmark": "replay_latency",
        "backend": backend,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "dataset": str(args.dataset),
        "text_column": args.text_column,
        "label_column": args.label_column,
        "rows": args.rows,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "report": report.to_json(),
        "server_turn_ms": report.server_latency_ms,
        "error_kinds": report.error_kinds,
        "intent_scored": report.intent_scored,
        "replay_s": round(replay_s, 2),
        "turns_per_s": round(report.turns / replay_s, 1) if replay_s else None,
        "embedding_rate": embed_rate,
        "turns_per_s_vs_embedding_rate": round(report.turns / replay_s / embed_rate["per_s"], 3) if replay_s else None,
        "cpu": cpu_budget(report.turns, replay_s, server_cpu_s, client_cpu_s, embed_rate["per_s"],
                          machine_info()["nproc"] or 1),
        "server": {
            "command": command,
            "startup_s": round(startup_s, 2),
            **memory,
            "exit_status": exit_status,
            "agent_mode": os.environ.get("AGENT_MODE", "enabled"),
        },
        "machine": machine_info(),
    }
    print_report(report, json_line=False)
    print(json.dumps(result, indent=2))
    write_result(result, output)
    print(f"wrote {output}", file=sys.stderr)
    return 1 if report.turns and report.errors == report.turns else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows to replay (seeded sample)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--text-column", default="instruction")
    parser.add_argument("--label-column", default="intent")
    parser.add_argument("--label-map", type=Path, default=None, help="YAML label -> intent")
    parser.add_argument("--database-url", default=None, help="passed as HELPLINE_DATABASE_URL")
    parser.add_argument("--backend", default=None, help="name in the result file (default: from the URL)")
    parser.add_argument("--data-dir", type=Path, default=None, help="HELPLINE_DATA_DIR (default: a temp dir)")
    parser.add_argument("--command", default=None, help="server command line; {port} is replaced")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for /healthz")
    parser.add_argument("--turn-timeout", type=float, default=30.0, help="seconds per turn before an error")
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/replay-<backend>.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.concurrency < 1:
        parser.error("--rows and --concurrency must be at least 1")
    try:  # fail on a bad file or column now, not after a server start that may take minutes
        read_message_rows(args.dataset, args.text_column, args.label_column, purpose="replay")
        if args.label_map is not None:
            load_label_map(args.label_map)
    except (DataFileError, ReplayInputError) as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(bench(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
