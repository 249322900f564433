"""The ``helpline`` command: serve, db, kb, agents, agent-mode, report, chat, replay.

Each command builds :class:`config.settings.Settings` once (environment + optional config file) and
passes it down; options given here override the corresponding settings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from config.settings import Settings

if TYPE_CHECKING:
    from bot.knowledge import KbChange, KbUpdate, KnowledgeBase
    from state.db import Database
    from datetime import datetime

    from state.reports import CsatStats, Report

T = TypeVar("T")


def _env_name(field: str) -> str:
    """The environment variable that sets settings field ``field`` (its alias, or the prefix + name)."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, str):
        return alias
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _settings(**overrides: object) -> Settings:
    from pydantic import ValidationError

    try:
        base = Settings()
    except ValidationError as exc:  # name the variables people set, not the field names
        problems = [
            f"{_env_name(str(error['loc'][0]) if error['loc'] else '?')}: {error['msg']} "
            f"(got {error.get('input')!r})"
            for error in exc.errors()
        ]
        raise click.ClickException("invalid settings: " + "; ".join(problems)) from None
    except Exception as exc:  # a config file that cannot be read, or is not a mapping
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


@main.command(epilog="Exit status: 0 stopped by SIGINT/SIGTERM, 1 a configuration problem (named in one "
                     "line) or the port is taken.")
@click.option("--host", default=None, help="Bind address (default HELPLINE_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default HELPLINE_PORT or 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the server (web chat at http://HOST:PORT/).

    Everything it keeps (SQLite database, trained models) is in the data folder, HELPLINE_DATA_DIR
    (default ./var of the folder you start it from); it logs the folder at start. Example:

    \b
        HELPLINE_DATA_DIR=/srv/helpline helpline serve --port 8090
    """
    from bot.embeddings import ModelIntegrityError
    from bot.escalation import TopicConfigError
    from bot.intent_model import IntentConfigError, IntentModelError
    from bot.order_policy import OrderPolicyError
    from config.replies import RepliesError
    from helpline.server import serve as run_server
    from state.hot import HotStateUnavailable
    from state.migrate import PendingMigrationsError, UnknownRevisionError

    settings = _settings(host=host, port=port)
    try:
        run_server(settings)
    except (
        PendingMigrationsError, UnknownRevisionError, IntentModelError, IntentConfigError,
        TopicConfigError, ModelIntegrityError, HotStateUnavailable, RepliesError, OrderPolicyError,
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


class InputError(click.ClickException):
    """Invalid input (a file, a column, an option): ``Error: ...`` on stderr and exit status 2, the
    status click gives its own usage errors. Exit status 1 is for a command that ran and whose
    outcome failed (replay: a turn failed; eval: a gate failed)."""

    exit_code = 2


INPUT_EXIT = "2 invalid input or usage (the message names the file, line or option)"

KB_EPILOG = f"Exit status: 0 done, {INPUT_EXIT}."

KB_PICKED_UP = "Running servers pick up the new version within a few seconds."
KB_UNCHANGED = "Unchanged: running servers already serve this version."
KB_SHOWN_IDS = 20  # doc ids listed per kind of change; the rest are counted


@main.group(epilog="Running servers pick up a new knowledge-base version within a few seconds.")
def kb() -> None:
    """Knowledge base: the articles that retrieval answers quote.

    A source is a folder of Markdown articles (one file per document, doc id = file name without
    .md, first line '# Title', each '## Section' one passage), one long Markdown file (a wiki: every
    heading of level 1-3 starts a document) or a JSONL export of chunks (one object per line with
    'doc_id' and 'text', optional 'title' and 'heading').
    """


def _db_run(settings: Settings, action: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``action`` on the configured database (schema checked or migrated first); ``ValueError``
    (a bad source, an unknown doc id) becomes exit status 2."""
    from state.db import open_database
    from state.migrate import ensure_schema

    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> T:
        url = settings.effective_database_url
        await ensure_schema(url, settings.migrate.value)
        database = open_database(url)
        try:
            return await action(database)
        finally:
            await database.dispose()

    from bot.knowledge import KnowledgeBaseBusy

    try:
        return asyncio.run(run())
    except ValueError as exc:  # named by file, line and field, or by doc id
        raise InputError(str(exc)) from None
    except KnowledgeBaseBusy as exc:  # ran, but other writers kept winning: exit 1
        raise click.ClickException(str(exc)) from None


def _kb_write(
    settings: Settings, write: Callable[[KnowledgeBase], Awaitable[KbUpdate]], *, show_change: bool = True
) -> None:
    """Apply ``write`` to the knowledge base; print the change (unless already shown) and the
    version it leaves active."""
    from bot.embeddings import Embedder
    from bot.knowledge import KnowledgeBase

    async def action(database: Database) -> tuple[KbUpdate, KnowledgeBase]:
        knowledge = KnowledgeBase(database, await asyncio.to_thread(Embedder.load))
        return await write(knowledge), knowledge

    update, knowledge = _db_run(settings, action)
    if show_change:
        _echo_change(update.change)
    reused = knowledge.chunks - knowledge.embedded_last
    click.echo(
        f"knowledge base {update.version}: {knowledge.documents} documents, {knowledge.chunks} chunks"
        + (f" ({knowledge.embedded_last} embedded, {reused} reused)" if not update.change.empty else "")
    )
    click.echo(KB_UNCHANGED if update.change.empty else KB_PICKED_UP)


def _echo_change(change: KbChange) -> None:
    """One line per kind of change, naming up to KB_SHOWN_IDS doc ids."""
    for kind, ids in (("add", change.added), ("update", change.changed), ("remove", change.removed)):
        if ids:
            shown = ", ".join(ids[:KB_SHOWN_IDS])
            more = f" ... and {len(ids) - KB_SHOWN_IDS} more" if len(ids) > KB_SHOWN_IDS else ""
            click.echo(f"{kind} {len(ids)}: {shown}{more}")
    if change.unchanged and not change.empty:
        click.echo(f"keep {len(change.unchanged)} unchanged")


def _stdin_is_interactive() -> bool:
    return sys.stdin.isatty()


@kb.command("ingest", epilog="Exit status: 0 done, 1 you declined the confirmation (nothing changed), "
                             f"{INPUT_EXIT}; also 2 when documents would be removed, stdin is not a "
                             "terminal and --replace is not given.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--replace", is_flag=True,
              help="Remove the documents that PATH does not have without asking.")
def kb_ingest(path: Path, replace: bool) -> None:
    """Make PATH the whole knowledge base: a folder of Markdown articles, one long Markdown file
    (split into documents by its headings) or a JSONL file of exported chunks.

    Documents active now that PATH does not have are removed: the command lists what it will add,
    update and remove, and asks first (--replace: do not ask). To add or update single articles
    and keep the rest, use `helpline kb add`. Unchanged passages are not embedded again.

    \b
    Article file (refunds.md -> doc id 'refunds'):
        # Refunds
        ## How long does a refund take?
        Refunds reach your card within 5 to 10 business days.
    \b
    JSONL line:
        {"doc_id": "hc-12", "title": "Refunds", "heading": "Timing", "text": "Refunds take 5 days."}
    """
    from bot.knowledge import active_documents, describe_change, load_documents

    settings = _settings()
    try:
        documents = load_documents(path)
    except (ValueError, OSError) as exc:
        raise InputError(str(exc)) from None

    async def preview(database: Database) -> KbChange:
        _, stored = await active_documents(database)
        ids = {d.doc_id for d in documents}
        return describe_change(stored, documents, [d.doc_id for d in stored if d.doc_id not in ids])

    change = _db_run(settings, preview)
    _echo_change(change)
    if change.removed and not replace:
        if not _stdin_is_interactive():
            raise InputError(
                f"{len(change.removed)} documents active now are not in {path} and would be removed; "
                "pass --replace to confirm (or `helpline kb add FILE...` to add articles and keep the rest)"
            )
        click.confirm(f"Remove {len(change.removed)} documents from the knowledge base?", abort=True)
    _kb_write(settings, lambda knowledge: knowledge.replace_documents(documents), show_change=False)


@kb.command("add", epilog=KB_EPILOG)
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
def kb_add(files: tuple[Path, ...]) -> None:
    """Add Markdown articles, or update the ones with the same doc id, keeping every other document.

    Each FILE is one article: the doc id is the file name without .md (returns.md -> 'returns'),
    the first line is '# Title' and each '## Section' is one passage. A new knowledge-base version
    results; unchanged passages are not embedded again.
    """
    from bot.knowledge import chunk_article, load_article

    try:
        documents = [load_article(file) for file in files]
    except (ValueError, OSError) as exc:
        raise InputError(str(exc)) from None
    for file, document in zip(files, documents, strict=True):
        if not chunk_article(document.doc_id, document.title, document.markdown):
            # It would be stored and listed, and never quoted.
            raise InputError(f"{file}: no text under the title: add '## Question' sections with answers")
    _kb_write(_settings(), lambda knowledge: knowledge.add_documents(documents))


@kb.command("remove", epilog=f"Exit status: 0 done, {INPUT_EXIT}, an unknown doc id, or nothing left.")
@click.argument("doc_ids", nargs=-1, required=True)
def kb_remove(doc_ids: tuple[str, ...]) -> None:
    """Remove documents by doc id (as `helpline kb list` shows them), keeping the others."""
    _kb_write(_settings(), lambda knowledge: knowledge.remove_documents(doc_ids))


@kb.command("list", epilog="Exit status: 0 done.")
def kb_list() -> None:
    """List the documents of the active knowledge-base version: doc id, chunks (passages), title."""
    from bot.knowledge import active_documents

    version, documents = _db_run(_settings(), active_documents)
    if version is None:
        click.echo("knowledge base: empty (nothing ingested yet)")
        return
    chunks = sum(d.chunks for d in documents)
    click.echo(f"knowledge base {version}: {len(documents)} documents, {chunks} chunks")
    width = max([len("doc id"), *(len(d.doc_id) for d in documents)])
    click.echo(f"{'doc id':<{width}}  chunks  title")
    for document in documents:
        click.echo(f"{document.doc_id:<{width}}  {document.chunks:>6}  {document.title}")


@main.command(epilog=f"Exit status: 0 model saved, {INPUT_EXIT}; nothing is written on invalid input.")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Labelled messages: .csv (UTF-8, a header row) or .jsonl (one JSON object per line).")
@click.option("--text-column", required=True, help="Column (CSV) or field (JSONL) with the message.")
@click.option("--label-column", required=True, help="Column with the intent label.")
@click.option("--tiers", "tiers_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML 'label: tier' (deterministic, retrieval, reasoning, human) for the labels.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Models folder (default: DATA_DIR/models); the model goes to OUT/intent-<hash>.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for placeholder values.")
@click.option("--add-config-examples", is_flag=True,
              help="Also train the intents-file intents missing from the data on their examples there.")
@click.option("--validation", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also report on this labelled file (same columns), which the model never sees.")
@click.option("--json", "json_line", is_flag=True, help="Print the figures as one JSON object, last line.")
def train(data: Path, text_column: str, label_column: str, tiers_file: Path | None, out_dir: Path | None,
          seed: int, add_config_examples: bool, validation: Path | None, json_line: bool) -> None:
    """Train the intent model on your own labelled messages and save it.

    --data has one customer message per row, in --text-column, with its intent in --label-column
    (any name; out_of_scope or oos for off-topic messages); labels with fewer than 5 rows are
    trained but warned about, labels with no tier get 'retrieval'.
    {{Order Number}}-style placeholders are filled with realistic values (--seed). Bad rows are
    named by line and field (the first five, and how many in all) and nothing is trained. Examples:

    \b
        message,intent
        "where is my order #W2611340?",track_order
    \b
        {"message": "how long does a refund take?", "intent": "check_refund_policy"}

    It prints cross-validated accuracy, macro-F1 and precision/recall/F1 per label (worst first;
    also on --validation when given), and saves the model to OUT/intent-<hash>; serve it with
    HELPLINE_INTENT_MODEL_DIR=OUT/intent-<hash> helpline serve.
    """
    import json

    from bot.intent_model import IntentConfigError, load_intents
    from bot.training import TrainingDataError, format_report, train_from_file

    settings = _settings()
    try:
        report = train_from_file(
            data, text_column=text_column, label_column=label_column,
            intents=load_intents(settings.intents_file, min_examples=0), out_dir=out_dir or settings.models_dir,
            tiers_file=tiers_file, seed=seed, add_config_examples=add_config_examples, validation=validation,
            log=lambda line: click.echo(f"warning: {line}", err=True),
        )
    except (TrainingDataError, IntentConfigError) as exc:
        raise InputError(str(exc)) from None
    click.echo(format_report(report))
    if json_line:
        click.echo(json.dumps(report.to_json()))


@main.command(epilog=f"Exit status: 0 predictions written, {INPUT_EXIT}.")
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Messages: .csv (UTF-8, a header row) or .jsonl, read like helpline train reads them.")
@click.option("--text-column", required=True, help="Column (CSV) or field (JSONL) with the message.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the predictions: .csv or .jsonl.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A saved model folder (default: the one the server would use).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for placeholder values.")
def predict(data: Path, text_column: str, out_file: Path, model_dir: Path | None, seed: int) -> None:
    """Classify every message of a file with a saved intent model, without a server.

    Writes one record per row to --out: line, text, intent, confidence (0..1), oos_score (0..1,
    higher = less like anything trained) and out_of_scope (the model's flag). Example:

    \b
        helpline predict --data tickets.csv --text-column message --out predictions.csv
    """
    from bot.embeddings import Embedder
    from bot.intent_model import IntentConfigError, IntentModelError, load_or_train
    from bot.training import TrainingDataError, predict_file

    settings = _settings()
    embedder = Embedder.load()
    try:
        model = load_or_train(settings.intents_file, settings.models_dir, embedder,
                              model_dir=model_dir or settings.intent_model_dir)
        count = predict_file(model, embedder, data, text_column, out_file, seed=seed)
    except (TrainingDataError, IntentConfigError, IntentModelError) as exc:
        raise InputError(str(exc)) from None
    click.echo(f"{count} predictions by model {model.version} written to {out_file}")


@main.command("agent-mode")
@click.argument("mode", required=False, type=click.Choice(["enabled", "disabled", "default"]))
@click.option("--reason", default=None, help="Why (recorded with the switch, shown on the inbox's kill-switch page).")
def agent_mode(mode: str | None, reason: str | None) -> None:
    """Show or set the kill switch of every process of this deployment.

    MODE: disabled (every reply becomes the static auto-reply HELPLINE_DISABLED_REPLY, no model
    runs), enabled, or default (follow each process's AGENT_MODE). The switch is stored in the
    database (HELPLINE_DATABASE_URL), so it needs no Redis and survives restarts of anything;
    every running process obeys it within one second. Customers who wrote while the bot was off
    get their answers from the bot within one sweep interval of switching it back on, unless an
    agent has taken their ticket.

    Run it where the server runs (the same HELPLINE_DATA_DIR or HELPLINE_DATABASE_URL): it refuses a
    data folder with no database rather than create one. Example:

    \b
        HELPLINE_DATA_DIR=/srv/helpline helpline agent-mode disabled --reason "wrong refund answers"

    Exit status: 0 done, 1 no database there, or it cannot be reached or is not migrated.
    """
    import getpass
    import socket

    from state.db import open_database
    from state.flags import AGENT_MODE, get_flag, set_agent_mode
    from state.migrate import ensure_schema

    settings = _settings()
    if not settings.database_url and not (settings.data_dir / "helpline.db").is_file():
        # A switch written where no server reads it would look like success and change nothing.
        raise click.ClickException(
            f"no Helpline database at {settings.database_display}: run this where the server runs, or "
            "set HELPLINE_DATA_DIR (or HELPLINE_DATABASE_URL) to the server's"
        )
    actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"

    async def run() -> str | None:
        url = settings.effective_database_url
        await ensure_schema(url, "refuse")  # never create or migrate a database from here
        database = open_database(url)
        try:
            if mode is not None:
                await set_agent_mode(database, None if mode == "default" else mode, actor=actor,
                                     reason=reason.strip()[:500] if reason else None)
            return await get_flag(database, AGENT_MODE)
        finally:
            await database.dispose()

    try:
        shared = asyncio.run(run())
    except Exception as exc:  # unreachable database or pending migrations: say so plainly
        raise click.ClickException(f"cannot read or set the switch in the database: {exc}") from None
    if shared:
        click.echo(f"agent mode: {shared} (set for every process using database {settings.database_display})")
    else:
        # This shell's AGENT_MODE says nothing about the servers' (set in their own environment).
        click.echo(
            f"agent mode: no switch set in database {settings.database_display}; each process follows its "
            f"own AGENT_MODE (enabled unless its environment says disabled; see /healthz agent_mode)"
        )


@main.group(epilog="Agents log in at /agent on the server (see docs/agent-inbox.md).")
def agents() -> None:
    """Manage the people who work the agent inbox (stored in the server's database)."""


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password (12+ characters)", hide_input=True, confirmation_prompt=True)


@agents.command("add", epilog=f"Exit status: 0 created, {INPUT_EXIT}; a duplicate email is refused.")
@click.argument("email")
@click.option("--role", type=click.Choice(["agent", "admin"]), default="agent", show_default=True,
              help="admin also manages agents and the kill switch.")
@click.option("--name", default=None, help="Name shown to other agents (default: the email).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def agents_add(email: str, role: str, name: str | None, password_stdin: bool) -> None:
    """Create an agent account with a password (asked twice unless --password-stdin). Example:

    \b
        helpline agents add lead@example.com --role admin
    """
    from state.agents import add_agent

    password = _password(password_stdin)
    agent = _db_run(_settings(), lambda db: add_agent(db, email, password, role=role, display_name=name))
    click.echo(f"agent {agent.id} {agent.email} ({agent.role}) created; log in at /agent")


@agents.command("list", epilog="Exit status: 0 done.")
def agents_list() -> None:
    """Every agent: id, email, role, and whether it is disabled."""
    from state.agents import list_agents

    found = _db_run(_settings(), list_agents)
    if not found:
        click.echo("no agents yet: helpline agents add EMAIL")
    for agent in found:
        state = "disabled" if agent.disabled else "active"
        click.echo(f"{agent.id}\t{agent.email}\t{agent.role}\t{state}\t{agent.display_name or ''}")


@agents.command("disable", epilog=f"Exit status: 0 done, {INPUT_EXIT} (an unknown email).")
@click.argument("email")
@click.option("--enable", is_flag=True, help="Enable a disabled agent again instead.")
def agents_disable(email: str, enable: bool) -> None:
    """Stop an agent from logging in; its open sessions end at once (tickets it owns stay assigned
    until an admin transfers them)."""
    from state.agents import set_disabled

    agent = _db_run(_settings(), lambda db: set_disabled(db, email, not enable))
    click.echo(f"agent {agent.email} {'disabled' if agent.disabled else 'enabled'}")


@agents.command("password", epilog=f"Exit status: 0 done, {INPUT_EXIT}.")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def agents_password(email: str, password_stdin: bool) -> None:
    """Set a new password for an agent; its open sessions end."""
    from state.agents import set_password

    password = _password(password_stdin)
    _db_run(_settings(), lambda db: set_password(db, email, password))
    click.echo(f"password of {email.strip().lower()} changed; its sessions ended")


@agents.command("token", epilog=f"Exit status: 0 made, {INPUT_EXIT} (an unknown or disabled agent).")
@click.argument("email")
@click.option("--label", default=None, help="What the token is for (shown by 'tokens'; 200 characters at most).")
def agents_token(email: str, label: str | None) -> None:
    """Make an API token for the inbox's JSON API (/agent/api, see docs/agent-api.md). It acts as
    the agent, with the agent's role, until revoked or the agent is disabled. The token alone goes
    to stdout, shown this once (the database keeps only its SHA-256); its id goes to stderr. Example:

    \b
        TOKEN=$(helpline agents token desk@example.com --label "help desk sync")
    """
    from state.api_tokens import issue

    secret, info = _db_run(_settings(), lambda db: issue(db, email, label=label))
    click.echo(secret)
    click.echo(f"token {info.id} for {info.agent_email} made; store it now: it is not shown again", err=True)


@agents.command("tokens", epilog=f"Exit status: 0 done, {INPUT_EXIT} (an unknown email).")
@click.argument("email")
def agents_tokens(email: str) -> None:
    """An agent's API tokens: id, active or revoked, created, last used (UTC, to the minute), label."""
    from datetime import datetime

    from state.api_tokens import list_tokens

    found = _db_run(_settings(), lambda db: list_tokens(db, email))
    if not found:
        click.echo(f"no API tokens: helpline agents token {email.strip().lower()}")

    def when(moment: datetime | None) -> str:
        return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "never"

    for token in found:
        state = "active" if token.active else f"revoked {when(token.revoked_at)}"
        click.echo(f"{token.id}\t{state}\t{when(token.created_at)}\t{when(token.last_used_at)}\t{token.label or ''}")


@agents.command("revoke-token", epilog=f"Exit status: 0 revoked (or already revoked), {INPUT_EXIT} (no such "
                                       "token, or the id matches several).")
@click.argument("token_id")
def agents_revoke_token(token_id: str) -> None:
    """Revoke an API token at once. TOKEN_ID: its id from 'helpline agents tokens EMAIL' (at least
    8 of its hex characters), or the whole token (hlp_...)."""
    from state.api_tokens import revoke

    info = _db_run(_settings(), lambda db: revoke(db, token_id))
    click.echo(f"token {info.id} of {info.agent_email} revoked")


def _day(value: str | None, option: str) -> datetime | None:
    """A ``YYYY-MM-DD`` option as midnight UTC of that day; :class:`InputError` when malformed."""
    from datetime import datetime, timezone

    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise InputError(f"{option} must be a date written YYYY-MM-DD, got {value!r}") from None


@main.command(epilog=f"Exit status: 0 done, {INPUT_EXIT} (a malformed date, or --since not before --until).")
@click.option("--since", default=None, metavar="YYYY-MM-DD", help="First day (UTC; default: 30 days before --until).")
@click.option("--until", default=None, metavar="YYYY-MM-DD", help="Last day, included (UTC; default: up to now).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout (the shape is in docs/agent-inbox.md).")
def report(since: str | None, until: str | None, as_json: bool) -> None:
    """CSAT (overall, by resolver, intent and channel), deflection, escalations by reason, median
    first response and resolution times, and SLA breaches, for the tickets opened in the window.
    The same numbers as the admin page /agent/reports. Example:

    \b
        helpline report --since 2026-11-01 --until 2026-11-30 --json
    """
    import json
    from datetime import timedelta

    from state.reports import compute

    start = _day(since, "--since")
    end = _day(until, "--until")
    if end is not None:
        end += timedelta(days=1)  # the last day is included
    found = _db_run(_settings(), lambda db: compute(db, start, end))  # ValueError: exit 2
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2, sort_keys=True))
        return
    for line in report_lines(found):
        click.echo(line)


def report_lines(found: Report) -> list[str]:
    """The human-readable report: one fact per line."""

    def csat(stats: CsatStats) -> str:
        if not stats.count:
            return "no ratings"
        return f"{stats.mean:.2f} of 5 from {stats.count} rating(s), {stats.satisfied:.0%} rated 4-5"

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def duration(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        minutes = seconds / 60
        return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"

    lines = [
        f"tickets opened {found.since:%Y-%m-%d %H:%M} to {found.until:%Y-%m-%d %H:%M} UTC: {found.tickets}",
        f"CSAT: {csat(found.csat)}",
    ]
    for title, groups in (("resolver", found.csat_by_resolver), ("intent", found.csat_by_intent),
                          ("channel", found.csat_by_channel)):
        lines += [f"  by {title} {key}: {csat(stats)}" for key, stats in groups.items()]
    lines.append(f"deflection: {share(found.deflection)} ({found.deflected} resolved without a person)")
    lines.append(f"escalated: {share(found.escalation_rate)} ({found.escalated} ticket(s))")
    lines += [f"  {reason}: {share(row['rate'])} ({row['tickets']})" for reason, row in found.escalations_by_reason.items()]
    lines.append(f"median first response: {duration(found.first_response.seconds)} over {found.first_response.count} "
                 f"ticket(s); {found.first_response_waiting} escalated without a reply yet")
    lines.append(f"median resolution: {duration(found.resolution.seconds)} over {found.resolution.count} ticket(s)")
    lines.append(f"SLA breaches: {found.sla_breaches} on {found.sla_breached_tickets} ticket(s)")
    return lines


def _local_url() -> str:
    """The server this machine's settings describe: http://HELPLINE_HOST:HELPLINE_PORT (a wildcard
    bind address means this machine)."""
    settings = _settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


@main.command(epilog="Exit status: 0 done, 1 the connection was lost for good, 2 the server cannot be "
                     "reached or refused the session.")
@click.argument("url", required=False)
@click.option("--session", "session_id", default=None, help="Resume a web-chat session id.")
def chat(url: str | None, session_id: str | None) -> None:
    """Chat with a running server from the terminal (same websocket as the widget).

    URL defaults to http://HELPLINE_HOST:HELPLINE_PORT (http://127.0.0.1:8080). Type a line to send
    it; /quit or Ctrl-D leaves. Examples:

    \b
        helpline chat
        helpline chat https://help.example.com --session SESSION_ID
        echo "Where is my order?" | helpline chat http://127.0.0.1:8090
    """
    from helpline.chat_client import run_chat

    sys.exit(asyncio.run(run_chat(url or _local_url(), session_id=session_id)))


def _check_writable(path: Path, option: str) -> None:
    """Refuse (exit 2) an output file whose folder is missing or that cannot be written; an
    existing file is left as it is until the output is ready."""
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{option} {path}: no such folder {folder}")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise InputError(f"{option} {path}: not writable")


@main.command(epilog="Exit status: 0 every turn answered, 1 some turn failed (no reply, an error frame, "
                     f"a refused or dropped connection), {INPUT_EXIT}.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text-column", required=True, help="Column (CSV) or field (JSONL) with the message.")
@click.option("--label-column", default=None, help="Column with the expected intent.")
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML mapping 'file label: Helpline intent' when the label names differ.")
@click.option("--limit", type=int, default=None, help="Replay N rows (seeded sample).")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Customers in flight at once.")
@click.option("--url", default=None,
              help="The running server (default http://HELPLINE_HOST:HELPLINE_PORT, i.e. http://127.0.0.1:8080).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the sample and the placeholder values.")
@click.option("--show", is_flag=True,
              help="Print every row: its line, the customer's text and the bot's reply (with tier and "
              "intent when the server sends them), or the error.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one JSON object per row to this .jsonl file: line, text, label, reply, tier, "
              "intent, confidence, escalated, latency_ms, error (null when not sent or not failed).")
@click.option("--token", envvar="HELPLINE_ADMIN_TOKEN", default=None, show_envvar=True,
              help="The server's admin token, needed when the server is not on this machine.")
@click.option("--json", "json_line", is_flag=True, help="Print one JSON object as the last line.")
def replay(file: Path, text_column: str, label_column: str | None, label_map: Path | None,
           limit: int | None, concurrency: int, url: str | None, seed: int, show: bool, out_file: Path | None,
           token: str | None, json_line: bool) -> None:
    """Send real customer messages through a running server, each row as a new customer, and report
    tiers, escalations, intent accuracy (with --label-column) and latency.

    FILE is .csv (UTF-8, a header row) or .jsonl (one JSON object per line), one message per row in
    the column or field named by --text-column. Rows with an empty text or broken JSON are skipped
    and listed; a CSV quote that is never closed stops the run. Examples:

    \b
        text,label
        "where is my order #W2611340?",track_order
    \b
        {"text": "how long does a refund take?", "label": "check_refund_policy"}

    The traffic is marked as replayed: the server keeps its tickets out of the agent queue and the
    reports and sends tier, intent and confidence with each reply. A server accepts that from its
    own machine, or from anywhere with its admin token (--token).
    """
    from helpline.replay import (
        ReplayInputError,
        print_report,
        print_rows,
        run_replay,
        write_rows,
    )

    if out_file is not None:
        _check_writable(out_file, "--out")  # before the run, which may take minutes
    try:
        report = asyncio.run(
            run_replay(file, text_column=text_column, label_column=label_column, label_map=label_map,
                       limit=limit, concurrency=concurrency, url=url or _local_url(), seed=seed, token=token)
        )
    except ReplayInputError as exc:
        raise InputError(str(exc)) from None
    if out_file is not None:
        with out_file.open("w", encoding="utf-8") as out:
            write_rows(report, out)
    if show:
        print_rows(report)
    print_report(report, json_line=json_line)
    sys.exit(1 if report.errors else 0)


@main.command("eval", epilog="Exit status: 0 done (with --gate: every gate passed), 1 a gate failed "
                             "(--gate) or --calibrate wrote no threshold (none meets --max-wrong, or the "
                             f"re-run at the picked one misses it), {INPUT_EXIT}; every bad golden-set "
                             "line is listed.")
@click.option("--golden", "golden", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Golden set: JSONL, one case per line (fields above).")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Saved intent model to evaluate (default: the configured one).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.md, PNG plots and cases.jsonl into this folder.")
@click.option("--gate", is_flag=True, help="Exit 1 when a threshold of the gates file fails.")
@click.option("--gates", "gates_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Gates file, YAML 'gates: {metric: \"<op> <number>\"}' with op one of "
              ">=, <=, ==, >, < and metric a key of the --json summary, nested keys joined with dots, "
              "e.g. 'latency_ms.p95: \"<= 1000\"' (default: config/gates.yaml).")
@click.option("--json", "json_line", is_flag=True, help="Print the metrics as one JSON object, last line.")
@click.option("--calibrate", is_flag=True,
              help="Pick the confidence threshold with the most deflection at --max-wrong and write it "
              "to the config file (HELPLINE_CONFIG_FILE, else ./helpline.yaml).")
@click.option("--max-wrong", type=float, default=0.02, show_default=True,
              help="Wrong answers allowed by --calibrate, as a share of the answered (automated) cases.")
@click.option("--oos-share", type=float, default=None,
              help="Share of out-of-scope messages expected in real traffic: --calibrate weighs the "
              "cases to it (default: the golden set's own share).")
@click.option("--label-map", "label_map", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="YAML or JSON mapping 'label: intent' applied to the golden set's "
              "intents (labels not in it are kept), as for helpline replay.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Cases run at once.")
@click.option("--database-url", default=None,
              help="Run on this (empty, throw-away) database instead of a temporary SQLite file.")
@click.option("--prices", "prices_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Token price table, YAML 'local_tiers: [...]' and 'providers: {provider: "
              "{model: {input_per_1k: USD, output_per_1k: USD}}}' (default: config/prices.yaml).")
def eval_command(golden: Path, model_dir: Path | None, report_dir: Path | None, gate: bool,
                 gates_file: Path | None, json_line: bool, calibrate: bool, max_wrong: float,
                 oos_share: float | None, label_map: Path | None, concurrency: int,
                 database_url: str | None, prices_file: Path | None) -> None:
    """Run a golden set through the live routing path and report quality; gate or calibrate.

    The golden set (--golden) is JSONL, one case per line: "id" (unique), "text" (one customer
    message) or "turns" (a list of messages), "intent" (expected intent of the last message;
    out_of_scope for anything off-topic; any label helpline train accepts), "expect" (what the bot
    must do on the last message: answer, ask, clarify, decline or escalate; makes "intent"
    optional); optional "must_include" / "must_not_include" (strings the last reply must / must
    not contain), "lead" (how it must start), "escalate" (true/false: should a person take it),
    "relevant_docs" (knowledge-base doc ids that answer it), "reference_answer" (its numbers are
    checked against the reply) and "note". Any other field is an error. Examples:

    \b
        {"id": "r1", "text": "how long does a refund take?", "intent": "check_refund_policy"}
        {"id": "h1", "turns": ["hi", "get me a person"], "intent": "contact_human_agent", "escalate": true}
        {"id": "c1", "turns": ["do you ship to Canada?", "how much does that cost?"], "expect": "answer", "relevant_docs": ["shipping"], "must_include": ["Canada"]}
    """
    import os

    from bot.eval.command import EvalInputError, EvalOptions, run_command

    logging.getLogger("helpline.conversation").setLevel(logging.WARNING)  # no per-turn lines: the report has them
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
        max_wrong=max_wrong, oos_share=oos_share, label_map=label_map,
        config_file=Path(config_file) if config_file else None,
        env_threshold="HELPLINE_CONFIDENCE_THRESHOLD" in os.environ, concurrency=concurrency,
        database_url=database_url, prices_file=prices_file or DEFAULT_PRICES,
    )
    try:
        status = run_command(_settings(), options, click.echo)
    except EvalInputError as exc:
        raise InputError(str(exc)) from None
    sys.exit(status)


if __name__ == "__main__":
    main()
