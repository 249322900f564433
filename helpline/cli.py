"""The ``helpline`` command: serve, db, kb, chat, replay.

Each command builds :class:`config.settings.Settings` once (environment + optional config file) and
passes it down; options given here override the corresponding settings.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from config.settings import Settings


def _settings(**overrides: object) -> Settings:
    try:
        base = Settings()
    except Exception as exc:  # pydantic's message names the setting and the problem
        raise click.ClickException(f"invalid settings: {exc}") from None
    values = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=values) if values else base


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Helpline customer-support bot."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # Alembic and procrastinate narrate every plugin, task and job at INFO
        for chatty in ("alembic", "procrastinate"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


@main.command()
@click.option("--host", default=None, help="Bind address (default HELPLINE_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default HELPLINE_PORT or 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the server (web chat at http://HOST:PORT/)."""
    from bot.embeddings import ModelIntegrityError
    from bot.escalation import TopicConfigError
    from bot.intent_model import IntentConfigError, IntentModelError
    from helpline.server import serve as run_server
    from state.hot import HotStateUnavailable
    from state.migrate import PendingMigrationsError, UnknownRevisionError

    settings = _settings(host=host, port=port)
    try:
        run_server(settings)
    except (
        PendingMigrationsError, UnknownRevisionError, IntentModelError, IntentConfigError,
        TopicConfigError, ModelIntegrityError, HotStateUnavailable,
    ) as exc:  # a configuration problem: say what, no traceback
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # typically: the port is taken
        raise click.ClickException(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}") from None


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply pending schema migrations (Alembic)."""
    from state.migrate import current_revision, upgrade

    settings = _settings()
    url = settings.effective_database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> str | None:
        await upgrade(url, revision)
        return await current_revision(url)

    click.echo(f"database at revision {asyncio.run(run())}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the one the code expects."""
    from state.migrate import current_revision, head_revision

    settings = _settings()
    current = asyncio.run(current_revision(settings.effective_database_url))
    click.echo(f"database: {current or 'empty'}\ncode expects: {head_revision()}")


@main.group()
def kb() -> None:
    """Knowledge base."""


@kb.command("ingest")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def kb_ingest(path: Path) -> None:
    """(Re)build the knowledge base from PATH: a folder of Markdown articles, one long Markdown
    file (split into documents by its headings) or a JSONL file of exported chunks."""
    from bot.embeddings import Embedder
    from bot.knowledge import KnowledgeBase
    from state.db import open_database
    from state.migrate import ensure_schema

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> tuple[str | None, str, int, int]:
        url = settings.effective_database_url
        await ensure_schema(url, settings.migrate.value)
        database = open_database(url)
        try:
            knowledge = KnowledgeBase(database, await asyncio.to_thread(Embedder.load))
            await knowledge.load()
            before = knowledge.version
            version = await knowledge.ingest(path)
            return before, version, knowledge.documents, knowledge.chunks
        finally:
            await database.dispose()

    try:
        before, version, documents, chunks = asyncio.run(run())
    except ValueError as exc:  # invalid input, named by file, line and field: exit 2 like train/eval
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"knowledge base {version}: {documents} documents, {chunks} chunks")
    if version == before:
        click.echo("Unchanged: running servers already serve this version.")
    else:
        click.echo("Restart running servers to serve the new version.")


@main.command()
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Labelled messages: .csv (with a header) or .jsonl.")
@click.option("--text-column", required=True, help="Column (CSV) or field (JSONL) with the message.")
@click.option("--label-column", required=True, help="Column with the intent label.")
@click.option("--tiers", "tiers_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML 'label: tier' (deterministic, retrieval, reasoning, human) for the labels.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Models folder (default: DATA_DIR/models); the model goes to OUT/intent-<hash>.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for placeholder values.")
@click.option("--add-config-examples", is_flag=True,
              help="Also train the intents-file intents missing from the data on their examples there.")
@click.option("--json", "json_line", is_flag=True, help="Print the figures as one JSON object, last line.")
def train(data: Path, text_column: str, label_column: str, tiers_file: Path | None, out_dir: Path | None,
          seed: int, add_config_examples: bool, json_line: bool) -> None:
    """Train the intent model on your own labelled messages and save it (see bot/training.py).

    Exit status: 0 saved, 2 invalid input (the message names the line and the field; nothing written).
    """
    import json

    from bot.intent_model import IntentConfigError, load_intents
    from bot.training import TrainingDataError, format_report, train_from_file

    settings = _settings()
    try:
        report = train_from_file(
            data, text_column=text_column, label_column=label_column,
            intents=load_intents(settings.intents_file), out_dir=out_dir or settings.models_dir,
            tiers_file=tiers_file, seed=seed, add_config_examples=add_config_examples, log=lambda line: click.echo(f"warning: {line}", err=True),
        )
    except (TrainingDataError, IntentConfigError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    click.echo(format_report(report))
    if json_line:
        click.echo(json.dumps(report.to_json()))


@main.command("agent-mode")
@click.argument("mode", required=False, type=click.Choice(["enabled", "disabled", "default"]))
def agent_mode(mode: str | None) -> None:
    """Show or set the run-time kill switch shared by all processes (needs HELPLINE_REDIS_URL).

    MODE: enabled, disabled (every reply becomes the static auto-reply), or default (follow each
    process's AGENT_MODE). Takes effect on the next turn of every process; no restart.
    """
    from state.hot import close_hot_state, open_hot_state

    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException(
            "the run-time switch lives in shared state: set HELPLINE_REDIS_URL. Without Redis, set "
            "AGENT_MODE=disabled and restart the server."
        )

    async def run() -> str | None:
        hot = await open_hot_state(settings.redis_url, namespace=settings.redis_namespace)
        try:
            if mode is not None:
                await hot.flags.set_agent_mode(None if mode == "default" else mode)
            return await hot.flags.get_agent_mode()
        finally:
            await close_hot_state(hot)

    try:
        shared = asyncio.run(run())
    except Exception as exc:  # unreachable Redis: say so plainly
        raise click.ClickException(str(exc)) from None
    effective = shared or settings.agent_mode.value
    source = "shared switch" if shared else "AGENT_MODE of each process (no shared switch set)"
    click.echo(f"agent mode: {effective} ({source})")


@main.command()
@click.argument("url", default="http://127.0.0.1:8080")
@click.option("--session", "session_id", default=None, help="Resume a web-chat session id.")
def chat(url: str, session_id: str | None) -> None:
    """Chat with a running server from the terminal (same websocket as the widget)."""
    from helpline.chat_client import run_chat

    sys.exit(asyncio.run(run_chat(url, session_id=session_id)))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text-column", required=True, help="Column (CSV) or field (JSONL) with the message.")
@click.option("--label-column", default=None, help="Column with the expected intent.")
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML mapping label -> intent when the label names differ.")
@click.option("--limit", type=int, default=None, help="Replay N rows (seeded sample).")
@click.option("--concurrency", type=int, default=8, show_default=True)
@click.option("--url", default="http://127.0.0.1:8080", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_line", is_flag=True, help="Print one JSON object as the last line.")
def replay(file: Path, text_column: str, label_column: str | None, label_map: Path | None,
           limit: int | None, concurrency: int, url: str, seed: int, json_line: bool) -> None:
    """Send real customer messages through the running server and report tiers and latency."""
    from helpline.replay import print_report, run_replay

    try:
        report = asyncio.run(
            run_replay(file, text_column=text_column, label_column=label_column, label_map=label_map,
                       limit=limit, concurrency=concurrency, url=url, seed=seed)
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    print_report(report, json_line=json_line)


@main.command("eval")
@click.option("--golden", "golden", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Golden set (JSONL, one case a line; see the README).")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Saved intent model to evaluate (default: the configured one).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.md, PNG plots and cases.jsonl into this folder.")
@click.option("--gate", is_flag=True, help="Exit 1 when a threshold of the gates file fails.")
@click.option("--gates", "gates_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Gates file (default: config/gates.yaml).")
@click.option("--json", "json_line", is_flag=True, help="Print the metrics as one JSON object, last line.")
@click.option("--calibrate", is_flag=True,
              help="Pick the confidence threshold with the most deflection at --max-wrong and write it "
              "to the config file (HELPLINE_CONFIG_FILE, else ./helpline.yaml).")
@click.option("--max-wrong", type=float, default=0.02, show_default=True,
              help="Wrong-answer rate allowed by --calibrate (share of cases).")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Cases run at once.")
@click.option("--database-url", default=None,
              help="Run on this (empty, throw-away) database instead of a temporary SQLite file.")
@click.option("--prices", "prices_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Token price table (default: config/prices.yaml).")
def eval_command(golden: Path, model_dir: Path | None, report_dir: Path | None, gate: bool,
                 gates_file: Path | None, json_line: bool, calibrate: bool, max_wrong: float,
                 concurrency: int, database_url: str | None, prices_file: Path | None) -> None:
    """Run a golden set through the live routing path and report quality; gate or calibrate.

    Exit status: 0 done, 1 a gate failed (--gate), 2 invalid input.
    """
    import os

    from bot.eval.command import EvalInputError, EvalOptions, run_command
    from bot.eval.gates import DEFAULT_GATES
    from bot.eval.prices import DEFAULT_PRICES

    if calibrate and gate:
        raise click.UsageError("--calibrate and --gate are separate runs: calibrate first, then gate")
    # Settings reads these two itself; the eval needs to know where a calibrated threshold goes and
    # whether the environment would override it.
    config_file = os.environ.get("HELPLINE_CONFIG_FILE") or None
    if calibrate and config_file:
        from bot.eval.calibrate import ensure_config_file

        ensure_config_file(Path(config_file))  # --calibrate creates the file it writes to
    options = EvalOptions(
        golden=golden, model_dir=model_dir, report_dir=report_dir, gate=gate,
        gates_file=gates_file or DEFAULT_GATES, json_line=json_line, calibrate=calibrate,
        max_wrong=max_wrong, config_file=Path(config_file) if config_file else None,
        env_threshold="HELPLINE_CONFIDENCE_THRESHOLD" in os.environ, concurrency=concurrency,
        database_url=database_url, prices_file=prices_file or DEFAULT_PRICES,
    )
    try:
        status = run_command(_settings(), options, click.echo)
    except EvalInputError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main()
